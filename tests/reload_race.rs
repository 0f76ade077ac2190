//! A reload in the middle of a request: the door and the limiter must decide on one and the
//! same configuration snapshot, or a request can be built for one and decided by another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::Request;
use common::config_dir;
use http_body_util::BodyExt;
use ratelimiter::api::http::router;
use ratelimiter::app::{self, AppOptions};
use tower::ServiceExt;

/// One client, 1 request per hour, in the default domain `domain`.
fn config(domain: &str) -> String {
    format!(
        "settings: {{ default_domain: {domain} }}\nclients:\n  tiers:\n    t: [ {{ name: hourly, limit: 1, window: 1h }} ]\n  keys:\n    - {{ key: k, tier: t }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_that_switch_the_default_domain_never_let_an_exhausted_key_through() {
    let a = config_dir("reload-race-a", &[("service.yaml", &config("a"))]);
    let b = config_dir("reload-race-b", &[("service.yaml", &config("b"))]);
    let state = app::build(&AppOptions::new(&a)).unwrap();
    let app = router(state.clone());
    let check = || {
        Request::post("/check")
            .header("x-api-key", "k")
            .body(Body::empty())
            .unwrap()
    };
    // Spend the hour's one request in both domains.
    for (dir, label) in [(&b, "b"), (&a, "a")] {
        state.limiter.reload(app::load_rules(dir).unwrap());
        let r = app.clone().oneshot(check()).await.unwrap();
        assert_eq!(r.status(), 200, "the first request in domain {label}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reloads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let dir = if reloads.is_multiple_of(2) { &a } else { &b };
                state.limiter.reload(app::load_rules(dir).unwrap());
                reloads += 1;
            }
            reloads
        })
    };
    let mut answers = 0;
    let mut leaks = Vec::new();
    while answers < 50_000 {
        let r = app.clone().oneshot(check()).await.unwrap();
        answers += 1;
        if r.status() != 429 {
            let body = r.into_body().collect().await.unwrap().to_bytes();
            leaks.push(String::from_utf8_lossy(&body).into_owned());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    assert!(reloads >= 1_000, "only {reloads} reloads raced");
    assert!(
        leaks.is_empty(),
        "{} of {answers} answers over {reloads} reloads were not 429: {:?}",
        leaks.len(),
        &leaks[..leaks.len().min(3)]
    );
}
