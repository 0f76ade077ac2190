// What every door's load script (check.js, allow.js, should.js, envoy.js) shares: the shape
// of the load, the keys it spreads over, and one connection per user. Imported, not run.
//
// Environment:
//   RATE=1000        decisions per second (a constant arrival rate: k6 starts RATE iterations
//                    a second whatever the answers' latency, and counts the ones it could not
//                    start as dropped_iterations)
//   DURATION=30s     how long
//   SATURATE=1       a closed loop instead: VUS virtual users, each sending its next request
//                    as soon as the previous one is answered (the saturation figure)
//   VUS=64           the closed loop's users
//   MAX_VUS=1000     the most users the fixed rate may start when answers slow down
//   KEYS=1000        distinct keys (users, API keys) the requests are spread over

const RATE = parseInt(__ENV.RATE || '1000');
const DURATION = __ENV.DURATION || '30s';
const SATURATE = ['1', 'true', 'yes'].includes(__ENV.SATURATE || '');
const VUS = parseInt(__ENV.VUS || '64');
const MAX_VUS = parseInt(__ENV.MAX_VUS || '1000');
const KEYS = parseInt(__ENV.KEYS || '1000');

// The scenario: a fixed arrival rate, or a closed loop under SATURATE.
function scenario() {
  if (SATURATE) {
    return { executor: 'constant-vus', vus: VUS, duration: DURATION };
  }
  return {
    executor: 'constant-arrival-rate',
    rate: RATE,
    timeUnit: '1s',
    duration: DURATION,
    // Enough users for the rate at a few milliseconds per answer; more are started if
    // answers take longer.
    preAllocatedVUs: Math.min(MAX_VUS, Math.max(50, Math.ceil(RATE / 100))),
    maxVUs: MAX_VUS,
  };
}

// The options of a door's script; `extra` adds to them (e.g. discardResponseBodies).
export function loadOptions(extra) {
  return Object.assign(
    {
      scenarios: { load: scenario() },
      summaryTrendStats: ['avg', 'min', 'p(50)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
      thresholds: {
        // Every answer is a decision (allowed or rejected), never an error.
        checks: ['rate==1'],
      },
    },
    extra || {},
  );
}

// One of the KEYS keys, `<prefix><n>`, chosen at random for each request.
export function randomKey(prefix) {
  return `${prefix}${Math.floor(Math.random() * KEYS)}`;
}

// A gRPC call function over `client` (whose protos the script loads, in k6's init context)
// that connects to GRPC_ADDR on its first call: each virtual user keeps one connection.
export function connectOnce(client) {
  let connected = false;
  return (method, message) => {
    if (!connected) {
      client.connect(__ENV.GRPC_ADDR, { plaintext: true });
      connected = true;
    }
    return client.invoke(method, message);
  };
}
