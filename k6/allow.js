// gRPC AllowRequest (proto/ratelimiter.proto) under load (k6/load-test.sh runs it): each call
// carries one of 1,000 API keys; with k6/bench-config every key gets the `bench` tier, whose
// limit the load never reaches. Every answer must be a decision: status OK with `allowed`
// true or false. Each virtual user keeps one connection.
//   k6 run -e GRPC_ADDR=127.0.0.1:50051 [-e RATE=1000 -e DURATION=30s | -e SATURATE=1] k6/allow.js
// Shape of the load and the other variables: k6/load-shape.js.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { connectOnce, loadOptions, randomKey } from './load-shape.js';

export const options = loadOptions();

const client = new grpc.Client();
client.load(['../proto'], 'ratelimiter.proto');
const call = connectOnce(client);

export default function () {
  const res = call('ratelimiter.v1.RateLimiter/AllowRequest', {
    api_key: randomKey('key-'),
  });
  check(res, {
    'a decision (OK, allowed or not)': (r) =>
      r && r.status === grpc.StatusOK && typeof r.message.allowed === 'boolean',
  });
}
