// Envoy's gRPC ShouldRateLimit (k6/proto/envoy_ratelimit.proto) under load, called directly as
// Envoy's rate-limit filter would (k6/load-test.sh runs it): domain `bench`, one descriptor
// [("user", <one of 1,000 values>)], which k6/bench-config/bench.yaml limits far above the
// load. Every answer must be a decision: status OK with overall_code OK or OVER_LIMIT. Each
// virtual user keeps one connection.
//   k6 run -e GRPC_ADDR=127.0.0.1:50051 [-e RATE=1000 -e DURATION=30s | -e SATURATE=1] k6/should.js
// Shape of the load and the other variables: k6/load-shape.js.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { connectOnce, loadOptions, randomKey } from './load-shape.js';

export const options = loadOptions();

const client = new grpc.Client();
client.load(['proto'], 'envoy_ratelimit.proto');
const call = connectOnce(client);

export default function () {
  const res = call('envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit', {
    domain: 'bench',
    descriptors: [{ entries: [{ key: 'user', value: randomKey('user-') }] }],
    hits_addend: 1,
  });
  check(res, {
    'a decision (OK or OVER_LIMIT)': (r) =>
      r &&
      r.status === grpc.StatusOK &&
      (r.message.overallCode === 'OK' || r.message.overallCode === 'OVER_LIMIT'),
  });
}
