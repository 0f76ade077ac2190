//! What every front door translates its wire format into: Envoy's rate-limit request shape.
//!
//! A request names a domain and lists descriptors; each descriptor is an ordered list of
//! `(key, value)` entries. Values borrow from the wire message, so building a request copies
//! no strings.

use crate::algorithm::Quota;

/// One rate-limit question: "may these descriptors spend `hits` now?"
#[derive(Clone, Debug)]
pub struct LimitRequest<'a> {
    pub domain: &'a str,
    pub descriptors: Vec<Descriptor<'a>>,
    /// The cost of every descriptor that does not set its own.
    pub hits: u64,
    /// The first descriptor names a client that must be known (`POST /check`,
    /// `AllowRequest`): a key the configuration has nothing for is an unknown client, even
    /// when no client table is loaded, rather than an unlimited request.
    pub client_required: bool,
    /// The request reports usage that already happened (`POST /report`, `AllowRequest` with
    /// `report`): every limit records its cost whatever the verdict, into debt if need be.
    pub post_paid: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Descriptor<'a> {
    pub entries: Vec<Entry<'a>>,
    /// This descriptor's own cost; 0 checks without consuming.
    pub hits: Option<u64>,
    /// A limit carried by the request itself (Envoy's per-descriptor `limit`), which replaces
    /// the configured ones for this descriptor.
    pub limit_override: Option<QuotaOverride>,
}

/// A limit sent by the caller in place of the configured one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaOverride {
    pub quota: Quota,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

impl<'a> Entry<'a> {
    pub fn new(key: &'a str, value: &'a str) -> Self {
        Entry { key, value }
    }
}

impl<'a> LimitRequest<'a> {
    /// The request `POST /check` and `AllowRequest` make: the API key as the one entry
    /// `api_key` of the default domain, so Envoy traffic carrying the same descriptor shares
    /// the same counters.
    pub fn for_api_key(domain: &'a str, api_key: &'a str, hits: u64) -> Self {
        LimitRequest {
            domain,
            descriptors: vec![Descriptor {
                entries: vec![Entry::new(API_KEY, api_key)],
                hits: None,
                limit_override: None,
            }],
            hits,
            client_required: true,
            post_paid: false,
        }
    }
}

/// The descriptor key the client table lives under.
pub const API_KEY: &str = "api_key";
