//! What a request says about itself for logs: Envoy's `x-request-id` and the W3C
//! `traceparent`'s trace id, borrowed from the request's headers (or gRPC metadata), so that
//! a decision's log lines can be joined with Envoy's access log and the caller's trace.
//!
//! Both are checked before they are logged: a request id is 1 to 128 visible ASCII
//! characters, a trace id 32 lowercase hex digits, not all zero, from a well-formed
//! `traceparent` (`00-<trace id>-<parent id>-<flags>`); anything else is left out. They are
//! borrowed, never copied: no allocation per request.

/// The longest `x-request-id` logged (Envoy's are 36-character UUIDs).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id and trace id a request carried, when well formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceContext<'a> {
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
}

impl<'a> TraceContext<'a> {
    /// Reads `x-request-id` and `traceparent` with `header` (a lowercase name → its value).
    pub fn from_headers(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        TraceContext {
            request_id: header("x-request-id").filter(|id| is_request_id(id)),
            trace_id: header("traceparent").and_then(trace_id),
        }
    }

    /// This one's fields, each taken from `other` where this one has none.
    pub fn or(self, other: TraceContext<'a>) -> Self {
        TraceContext {
            request_id: self.request_id.or(other.request_id),
            trace_id: self.trace_id.or(other.trace_id),
        }
    }

    /// The request id for a log field (empty when absent).
    pub fn request_id(&self) -> &'a str {
        self.request_id.unwrap_or("")
    }

    /// The trace id for a log field (empty when absent).
    pub fn trace_id(&self) -> &'a str {
        self.trace_id.unwrap_or("")
    }
}

fn is_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The trace id of a W3C `traceparent` header: `<version>-<trace id>-<parent id>-<flags>`.
/// Version `ff` is invalid; a later version may append fields, so only the first four are
/// read (version `00` has exactly four).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && !(version == "00" && rest.is_some())
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(t), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn malformed_traceparents_give_nothing() {
        for t in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-secret-key-value-01",
        ] {
            assert_eq!(trace_id(t), None, "{t}");
        }
    }

    #[test]
    fn request_ids_are_bounded_visible_ascii() {
        let ctx = |id: &'static str| TraceContext::from_headers(move |_| Some(id)).request_id;
        assert_eq!(ctx("a1-b2"), Some("a1-b2"));
        assert_eq!(ctx(""), None);
        assert_eq!(ctx("has space"), None);
        assert_eq!(ctx(Box::leak("x".repeat(129).into_boxed_str())), None);
    }
}
