// The soak's load (k6/soak.sh runs it): POST /check at a constant arrival rate, each
// request with a key never used before (millions over a 30-minute run), and one request in
// ten on one of 100 hot keys, which run into their limits (429s) all along.
import http from 'k6/http';
import { check } from 'k6';

const RATE = parseInt(__ENV.RATE || '1000');
const DURATION = __ENV.DURATION || '30m';
const URL = `${__ENV.URL}/check`;

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 64,
      maxVUs: 256,
    },
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
  thresholds: {
    // Every answer is a decision: 200 or 429, nothing else.
    checks: ['rate==1'],
  },
};

export default function () {
  const hot = __ITER % 10 === 0;
  const key = hot ? `hot-${__ITER % 100}` : `soak-${__VU}-${__ITER}`;
  const res = http.post(URL, null, {
    headers: { 'X-API-Key': key },
    responseCallback: http.expectedStatuses(200, 429),
  });
  check(res, { 'a decision (200 or 429)': (r) => r.status === 200 || r.status === 429 });
}
