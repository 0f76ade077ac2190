//! The rate-limit response headers, rendered from a [`Decision`], shared by every door that
//! speaks HTTP (`POST /check`, Envoy's ext_authz and RateLimitService responses).
//!
//! The IETF draft (draft-ietf-httpapi-ratelimit-headers) syntax: `RateLimit-Policy` lists every
//! limit that applied, `RateLimit` reports the tightest, both as structured-field lists:
//! `RateLimit-Policy: "per-minute";q=100;w=60` and `RateLimit: "per-minute";r=42;t=17`.
//! `Retry-After` (seconds) accompanies a rejection that a retry can cure. The older
//! `X-RateLimit-Limit/Remaining/Reset` trio is available behind `settings.headers`.

use std::fmt::Write;

use crate::algorithm::{Micros, RetryAfter};
use crate::config::HeaderStyle;
use crate::limiter::Decision;

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn ceil_secs(us: Micros) -> u64 {
    us.div_ceil(1_000_000)
}

/// The headers for a decision, as `(name, value)` pairs.
pub fn render(decision: &Decision, style: HeaderStyle) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(4);
    if let (false, RetryAfter::After(us)) = (decision.allowed, decision.retry_after) {
        out.push(("retry-after", ceil_secs(us).max(1).to_string()));
    }
    let Some(tightest) = decision.tightest() else {
        return out;
    };
    if matches!(style, HeaderStyle::Ietf | HeaderStyle::Both) {
        let mut policy = String::new();
        let mut seen: Vec<&str> = Vec::new();
        for l in &decision.limits {
            if seen.contains(&&*l.name) {
                continue;
            }
            seen.push(&l.name);
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            push_sf_string(&mut policy, &l.name);
            let _ = write!(
                policy,
                ";q={};w={}",
                l.quota.limit,
                ceil_secs(l.quota.window).max(1)
            );
        }
        out.push(("ratelimit-policy", policy));
        let mut current = String::new();
        push_sf_string(&mut current, &tightest.name);
        let _ = write!(
            current,
            ";r={};t={}",
            tightest.verdict.remaining,
            ceil_secs(tightest.verdict.reset_after)
        );
        out.push(("ratelimit", current));
    }
    if matches!(style, HeaderStyle::XRateLimit | HeaderStyle::Both) {
        out.push(("x-ratelimit-limit", tightest.quota.limit.to_string()));
        out.push((
            "x-ratelimit-remaining",
            tightest.verdict.remaining.to_string(),
        ));
        out.push((
            "x-ratelimit-reset",
            ceil_secs(tightest.verdict.reset_after).to_string(),
        ));
    }
    out
}

/// Appends `s` as a structured-field string (RFC 8941): quoted, with `"` and `\` escaped and
/// anything outside printable ASCII replaced, so a limit name can never break the header.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_strings_are_escaped() {
        let mut s = String::new();
        push_sf_string(&mut s, "a\"b\\c\né");
        assert_eq!(s, r#""a\"b\\c??""#);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1_000_000), 1);
        assert_eq!(ceil_secs(1_000_001), 2);
    }
}
