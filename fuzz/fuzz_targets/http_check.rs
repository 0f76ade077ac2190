//! The HTTP door in process (the real router): any method, path, query, headers and body
//! get an answer that is never a server error, and never echoes the API key (every key sent
//! carries [`MARK`], which no answer may contain).
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use arbitrary::Arbitrary;
use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    path: u8,
    query: String,
    headers: Vec<(u8, String)>,
    body: Vec<u8>,
}

/// Part of every API key sent, and of nothing the service writes on its own.
const MARK: &str = "k3y-m4rk";

const METHODS: [&str; 3] = ["POST", "GET", "PUT"];
const PATHS: [&str; 5] = ["/check", "/report", "/json", "/readyz", "/healthcheck"];
const HEADERS: [&str; 6] = [
    "x-api-key",
    "x-ratelimit-cost",
    "content-length",
    "content-type",
    "traceparent",
    "x-request-id",
];

fuzz_target!(|input: Input| {
    // The mark copied into another part of the request may be echoed as that part (an
    // invalid cost is quoted back): only the key must never be.
    let elsewhere = input.query.contains(MARK)
        || String::from_utf8_lossy(&input.body).contains(MARK)
        || input.headers.iter().any(|(n, v)| {
            HEADERS[*n as usize % HEADERS.len()] != "x-api-key" && v.contains(MARK)
        });
    if elsewhere {
        return;
    }
    let method = METHODS[input.method as usize % METHODS.len()];
    let path = PATHS[input.path as usize % PATHS.len()];
    let uri = format!("{path}?{}", input.query);
    let mut request = http::Request::builder().method(method).uri(uri.as_str());
    for (name, value) in &input.headers {
        let name = HEADERS[*name as usize % HEADERS.len()];
        match name {
            "x-api-key" => request = request.header(name, format!("{value}{MARK}")),
            _ => request = request.header(name, value.as_str()),
        }
    }
    let Ok(request) = request.body(Body::from(input.body.clone())) else {
        return; // not a request a client could send (a bad URI or header value)
    };
    let router = ratelimiter::api::http::router(common::STATE.clone());
    let response = common::RUNTIME.block_on(router.oneshot(request));
    let Ok(response) = response;
    let status = response.status();
    assert!(
        !status.is_server_error() || status == http::StatusCode::SERVICE_UNAVAILABLE,
        "{method} {uri}: {status}"
    );
    for (name, value) in response.headers() {
        let shown = String::from_utf8_lossy(value.as_bytes());
        assert!(!shown.contains(MARK), "{name} echoes the key");
    }
    let body = common::RUNTIME.block_on(axum::body::to_bytes(response.into_body(), 1 << 20));
    let body = body.expect("a body within 1 MiB");
    assert!(!String::from_utf8_lossy(&body).contains(MARK), "the body echoes the key");
});
