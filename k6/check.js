// POST /check under load (k6/load-test.sh runs it): each request carries one of 1,000 API
// keys in X-API-Key; with k6/bench-config every key gets the `bench` tier, whose limit the
// load never reaches. Every answer must be a decision: 200 (allowed) or 429 (rejected).
//   k6 run -e URL=http://127.0.0.1:8080 [-e RATE=1000 -e DURATION=30s | -e SATURATE=1] k6/check.js
// Shape of the load and the other variables: k6/load-shape.js.
import http from 'k6/http';
import { check } from 'k6';
import { loadOptions, randomKey } from './load-shape.js';

export const options = loadOptions({ discardResponseBodies: true });

const URL = `${__ENV.URL}/check`;
const DECISION = http.expectedStatuses(200, 429);

export default function () {
  const res = http.post(URL, null, {
    headers: { 'X-API-Key': randomKey('key-') },
    responseCallback: DECISION,
  });
  check(res, { 'a decision (200 or 429)': (r) => r.status === 200 || r.status === 429 });
}
