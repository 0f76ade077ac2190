//! The config loader and validator, both file shapes: any text is either loaded and compiled
//! or refused with located problems, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimiter::config;
use ratelimiter::limiter::Rules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse_str("fuzz.yaml", text) {
        Ok(loaded) => {
            if let Ok(rules) = Rules::compile(&loaded) {
                let _ = rules.warnings();
            }
        }
        Err(problems) => {
            assert!(!problems.0.is_empty(), "refused without a problem");
            for p in &problems.0 {
                assert!(!p.message.is_empty(), "a problem without a message");
            }
        }
    }
});
