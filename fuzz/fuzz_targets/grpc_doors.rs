//! The three gRPC doors in process: any bytes that decode as a door's request message are
//! translated and decided; the answer is a response or a status that is never INTERNAL.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use ratelimiter::api::ext_authz::ExtAuthzDoor;
use ratelimiter::api::grpc::AllowRequestService;
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_server::RateLimiter;
use ratelimiter::api::ratelimit_service::RateLimitDoor;
use tonic::{Code, Request, Status};

fn not_internal<T>(answer: Result<T, Status>) {
    if let Err(status) = answer {
        assert_ne!(status.code(), Code::Internal, "{status:?}");
        assert_ne!(status.code(), Code::Unknown, "{status:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&door, message)) = data.split_first() else {
        return;
    };
    let state = common::STATE.clone();
    common::RUNTIME.block_on(async move {
        match door % 3 {
            0 => {
                let Ok(m) = AllowRequestRequest::decode(message) else { return };
                let door = AllowRequestService::new(state);
                not_internal(door.allow_request(Request::new(m)).await);
            }
            1 => {
                let Ok(m) = RateLimitRequest::decode(message) else { return };
                let door = RateLimitDoor::new(state);
                not_internal(door.should_rate_limit(Request::new(m)).await);
            }
            _ => {
                let Ok(m) = CheckRequest::decode(message) else { return };
                let door = ExtAuthzDoor::new(state);
                not_internal(door.check(Request::new(m)).await);
            }
        }
    });
});
