//! What a request says about itself for logs and traces: Envoy's `x-request-id` and the W3C
//! `traceparent`, borrowed from the request's headers (or gRPC metadata), so that a
//! decision's log lines can be joined with Envoy's access log and the caller's trace, and its
//! span made a child of the caller's.
//!
//! Both are checked before they are logged: a request id is 1 to 128 visible ASCII
//! characters, a trace id 32 lowercase hex digits, not all zero, from a well-formed
//! `traceparent` (`00-<trace id>-<parent id>-<flags>`); anything else is left out. They are
//! borrowed, never copied: no allocation per request.

/// The longest `x-request-id` logged (Envoy's are 36-character UUIDs).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id and trace context a request carried, when well formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceContext<'a> {
    pub request_id: Option<&'a str>,
    pub traceparent: Option<Traceparent<'a>>,
}

/// A well-formed W3C `traceparent`: the caller's trace, its span, and its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent<'a> {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: &'a str,
    /// The caller's span: 16 lowercase hex digits, not all zero.
    pub parent_id: &'a str,
    /// Bit 0: the caller sampled the trace.
    pub flags: u8,
}

impl<'a> TraceContext<'a> {
    /// Reads `x-request-id` and `traceparent` with `header` (a lowercase name → its value).
    pub fn from_headers(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        TraceContext {
            request_id: header("x-request-id").filter(|id| is_request_id(id)),
            traceparent: header("traceparent").and_then(traceparent),
        }
    }

    /// This one's fields, each taken from `other` where this one has none.
    pub fn or(self, other: TraceContext<'a>) -> Self {
        TraceContext {
            request_id: self.request_id.or(other.request_id),
            traceparent: self.traceparent.or(other.traceparent),
        }
    }

    /// The request id for a log field (empty when absent).
    pub fn request_id(&self) -> &'a str {
        self.request_id.unwrap_or("")
    }

    /// The trace id for a log field (empty when absent).
    pub fn trace_id(&self) -> &'a str {
        self.traceparent.map_or("", |t| t.trace_id)
    }
}

fn is_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A W3C `traceparent` header: `<version>-<trace id>-<parent id>-<flags>`. Version `ff` is
/// invalid; a later version may append fields, so only the first four are read (version
/// `00` has exactly four).
pub fn traceparent(traceparent: &str) -> Option<Traceparent<'_>> {
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
    let flags = u8::from_str_radix(flags, 16).ok()?;
    valid.then_some(Traceparent {
        trace_id: trace,
        parent_id: parent,
        flags,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = traceparent(t).unwrap();
        assert_eq!(parsed.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id, "00f067aa0ba902b7");
        assert_eq!(parsed.flags, 1);
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
            assert_eq!(traceparent(t), None, "{t}");
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
