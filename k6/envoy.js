// HTTP through a real Envoy under load (k6/load-test.sh runs it), for either Envoy config:
//   k6/envoy-ext-authz.yaml  ext_authz filter -> our Authorization/Check (the X-API-Key header)
//   k6/envoy-ratelimit.yaml  rate-limit filter -> our ShouldRateLimit, domain bench,
//                            descriptor user = the X-User header
// Each request carries both headers with the same one of 1,000 keys, so one script serves
// both; Envoy answers 200 itself (its own internal listener, no upstream server) when the
// request passes, 429 when it is rejected. Every answer must be a decision: 200 or 429.
//   k6 run -e URL=http://127.0.0.1:10000 [-e RATE=1000 -e DURATION=30s | -e SATURATE=1] k6/envoy.js
// Shape of the load and the other variables: k6/load-shape.js.
import http from 'k6/http';
import { check } from 'k6';
import { loadOptions, randomKey } from './load-shape.js';

export const options = loadOptions({ discardResponseBodies: true });

const URL = `${__ENV.URL}/bench`;
const DECISION = http.expectedStatuses(200, 429);

export default function () {
  const key = randomKey('key-');
  const res = http.get(URL, {
    headers: { 'X-API-Key': key, 'X-User': key },
    responseCallback: DECISION,
  });
  check(res, { 'a decision (200 or 429)': (r) => r.status === 200 || r.status === 429 });
}
