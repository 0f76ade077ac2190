//! Counter tags and log fingerprints: the one place a descriptor (an API key among its
//! values) is turned into the hash that names its counters and tells clients apart in logs.
//!
//! With a secret ([`TagSecret`], from a file or the environment) both are HMAC-SHA256 under
//! it, so Redis key names and logs cannot be used to guess a weak key offline. Every replica
//! sharing a Redis must have the same secret; a new secret names new counters (rotation starts
//! every client's quota afresh). Without a secret the memory store uses a random key drawn at
//! start-up (its counters live in the process anyway), and the Redis store keeps the unkeyed
//! SHA-256 of earlier versions, with a warning at start-up (`app.rs`).

use std::path::Path;

use ring::hmac;
use sha2::{Digest, Sha256};

use super::Descriptor;

/// A secret for [`TagKey::keyed`]; never printed.
#[derive(Clone)]
pub struct TagSecret(Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum TagSecretError {
    #[error("the tag secret is {0} bytes long; it needs at least {min}", min = TagSecret::MIN_LEN)]
    TooShort(usize),
    #[error("cannot read the tag secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl TagSecret {
    /// The shortest secret accepted, in bytes (128 bits, if they are random).
    pub const MIN_LEN: usize = 16;

    /// A secret from its bytes; trailing whitespace (a file's final newline) is not part of it.
    pub fn new(mut bytes: Vec<u8>) -> Result<Self, TagSecretError> {
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        if bytes.len() < Self::MIN_LEN {
            return Err(TagSecretError::TooShort(bytes.len()));
        }
        Ok(TagSecret(bytes))
    }

    /// The secret in the file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, TagSecretError> {
        let bytes = std::fs::read(path).map_err(|source| TagSecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(bytes)
    }
}

impl std::fmt::Debug for TagSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TagSecret(<redacted>)")
    }
}

/// How descriptors are hashed into counter tags and fingerprints.
#[derive(Clone, Debug)]
pub enum TagKey {
    /// HMAC-SHA256 under a secret (given, or drawn at random).
    Keyed(hmac::Key),
    /// Plain SHA-256, as before keyed tags existed.
    Unkeyed,
}

/// Domain separation: a fingerprint is never a prefix of a counter tag.
const FINGERPRINT: &[u8] = b"fingerprint";

impl TagKey {
    pub fn keyed(secret: &TagSecret) -> Self {
        TagKey::Keyed(hmac::Key::new(hmac::HMAC_SHA256, &secret.0))
    }

    /// A key drawn from the system's random source; `None` if it cannot be read.
    pub fn random() -> Option<Self> {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .ok()
            .map(TagKey::Keyed)
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self, TagKey::Keyed(_))
    }

    /// The tag of a descriptor's counters: the hash of the domain and every entry, first 128
    /// bits. The raw values never leave this function.
    pub fn counter_tag(&self, domain: &str, d: &Descriptor<'_>) -> u128 {
        self.counter_tag_of(domain, d.entries.iter().map(|e| (e.key, e.value)))
    }

    /// [`counter_tag`](Self::counter_tag) of the `(key, value)` entries given, for a counter
    /// named by something other than the request's values (a shared wildcard, a known API
    /// key's digest).
    pub fn counter_tag_of<'e>(
        &self,
        domain: &str,
        entries: impl Iterator<Item = (&'e str, &'e str)>,
    ) -> u128 {
        let mut h = self.digester();
        h.update(domain.as_bytes());
        for (key, value) in entries {
            h.update(&[0]);
            h.update(key.as_bytes());
            h.update(&[0]);
            h.update(value.as_bytes());
        }
        let digest = h.finish();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&digest[..16]);
        u128::from_be_bytes(tag)
    }

    /// A 4-byte fingerprint of a descriptor for logs: enough to tell clients apart, useless
    /// to guess a key from when keyed.
    pub fn fingerprint(&self, d: Option<&Descriptor<'_>>) -> [u8; 4] {
        let mut h = self.digester();
        if self.is_keyed() {
            h.update(FINGERPRINT);
        }
        for e in d.iter().flat_map(|d| d.entries.iter()) {
            h.update(e.key.as_bytes());
            h.update(&[0]);
            h.update(e.value.as_bytes());
            h.update(&[0]);
        }
        let digest = h.finish();
        [digest[0], digest[1], digest[2], digest[3]]
    }

    fn digester(&self) -> Digester {
        match self {
            TagKey::Keyed(key) => Digester::Keyed(hmac::Context::with_key(key)),
            TagKey::Unkeyed => Digester::Unkeyed(Sha256::new()),
        }
    }
}

/// One hash in progress (on the stack: no allocation).
enum Digester {
    Keyed(hmac::Context),
    Unkeyed(Sha256),
}

impl Digester {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Digester::Keyed(c) => c.update(bytes),
            Digester::Unkeyed(h) => h.update(bytes),
        }
    }

    fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        match self {
            Digester::Keyed(c) => out.copy_from_slice(c.sign().as_ref()),
            Digester::Unkeyed(h) => out.copy_from_slice(&h.finalize()),
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::limiter::Entry;

    fn descriptor(key: &str) -> Descriptor<'_> {
        Descriptor {
            entries: vec![Entry::new("api_key", key)],
            ..Descriptor::default()
        }
    }

    #[test]
    fn two_secrets_give_two_tags_and_one_secret_one() {
        let one =
            TagKey::keyed(&TagSecret::new(b"first secret, 32 bytes long....".to_vec()).unwrap());
        let same =
            TagKey::keyed(&TagSecret::new(b"first secret, 32 bytes long....\n".to_vec()).unwrap());
        let two =
            TagKey::keyed(&TagSecret::new(b"second secret, 32 bytes long...".to_vec()).unwrap());
        let d = descriptor("k1");
        assert_eq!(one.counter_tag("rl", &d), same.counter_tag("rl", &d));
        assert_ne!(one.counter_tag("rl", &d), two.counter_tag("rl", &d));
        assert_ne!(
            one.counter_tag("rl", &d),
            TagKey::Unkeyed.counter_tag("rl", &d)
        );
        assert_ne!(one.fingerprint(Some(&d)), two.fingerprint(Some(&d)));
    }

    #[test]
    fn a_short_secret_is_refused_and_never_printed() {
        assert!(matches!(
            TagSecret::new(b"short\n".to_vec()),
            Err(TagSecretError::TooShort(5))
        ));
        let s = TagSecret::new(b"a secret that is long enough".to_vec()).unwrap();
        assert!(!format!("{s:?}").contains("secret that"));
    }
}
