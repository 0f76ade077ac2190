//! The service's own file shape: `settings:` and the `clients:` table of API keys.
//!
//! This module reads one file; merging files (one `settings`, tiers and keys from every file,
//! keys resolved against tiers) happens in the parent module once every file is read, so a key
//! may name a tier defined in another file.
//!
//! A raw API key is never kept: `key:` is hashed at once, and no message ever quotes a key.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::algorithm::Algorithm;

use super::deserialize::{At, NotBlank, Parsed, read};
use super::error::{Pos, Problems};
use super::limits::{LimitEntry, check_limits};
use super::yaml::Node;
use super::{ExtAuthzDescriptor, ExtAuthzEntry, LimitDef, Settings, ValueSource};

/// The word `unknown_key:` uses for "refuse unknown keys"; no tier may take it as a name.
pub(crate) const REJECT: &str = "reject";

/// An own-format file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServiceFileEntry {
    settings: Option<At<Settings>>,
    clients: Option<ClientsEntry>,
}

/// `ext_authz: { descriptors: … }` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExtAuthzSettings {
    descriptors: Option<Vec<ExtAuthzDescriptor>>,
}

/// `settings.ext_authz`: the descriptors, or the default when none are given.
pub(crate) fn ext_authz_descriptors<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ExtAuthzDescriptor>, D::Error> {
    let written = ExtAuthzSettings::deserialize(deserializer)?;
    Ok(written.descriptors.unwrap_or_else(super::default_ext_authz))
}

impl TryFrom<Vec<ExtAuthzEntry>> for ExtAuthzDescriptor {
    type Error = &'static str;

    fn try_from(entries: Vec<ExtAuthzEntry>) -> Result<Self, Self::Error> {
        if entries.is_empty() {
            return Err("a descriptor needs at least one entry");
        }
        Ok(ExtAuthzDescriptor { entries })
    }
}

/// One entry of an ext_authz descriptor as written: `{ key, from }`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ExtAuthzEntryAsWritten {
    key: Option<DescriptorKey>,
    from: Option<Parsed<ValueSource>>,
}

impl TryFrom<ExtAuthzEntryAsWritten> for ExtAuthzEntry {
    type Error = &'static str;

    fn try_from(entry: ExtAuthzEntryAsWritten) -> Result<Self, Self::Error> {
        match (entry.key, entry.from) {
            (Some(DescriptorKey(key)), Some(Parsed(from))) => Ok(ExtAuthzEntry { key, from }),
            _ => Err("an entry needs `key` and `from`"),
        }
    }
}

/// `settings.allow_request_descriptors`: descriptor keys, none empty.
pub(crate) fn descriptor_keys<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let keys = Vec::<DescriptorKey>::deserialize(deserializer)?;
    Ok(keys.into_iter().map(|DescriptorKey(key)| key).collect())
}

/// A descriptor key as written: not empty.
#[derive(Debug)]
struct DescriptorKey(String);

impl<'de> Deserialize<'de> for DescriptorKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match String::deserialize(deserializer)? {
            key if key.is_empty() => Err(de::Error::custom("expected a descriptor key")),
            key => Ok(DescriptorKey(key)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ClientsEntry {
    unknown_key: Option<At<String>>,
    tiers: Option<TierEntries>,
    keys: Option<Vec<At<KeyEntry>>>,
}

/// One API key as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct KeyEntry {
    key: Option<At<String>>,
    sha256: Option<At<String>>,
    tier: Option<At<String>>,
    limits: Option<At<Vec<At<LimitEntry>>>>,
    name: Option<NotBlank>,
}

/// `tiers:`, a mapping of tier names to lists of limits, in file order.
#[derive(Debug, Default)]
struct TierEntries(Vec<(At<TierName>, At<Option<TierLimits>>)>);

#[derive(Debug)]
struct TierName(String);

#[derive(Debug)]
struct TierLimits(Vec<At<LimitEntry>>);

/// One own-format file, read but not yet merged.
#[derive(Default)]
pub(crate) struct ServiceFile {
    pub settings: Option<(Settings, Pos)>,
    /// `unknown_key:` as written, and where.
    pub unknown_key: Option<(String, Pos)>,
    pub tiers: Vec<TierDef>,
    /// Tiers that had problems (already reported): keys naming them are not reported again.
    pub broken_tiers: Vec<String>,
    pub keys: Vec<KeyDef>,
}

pub(crate) struct TierDef {
    pub name: String,
    pub pos: Pos,
    pub limits: Vec<LimitDef>,
}

pub(crate) struct KeyDef {
    pub digest: [u8; 32],
    pub pos: Pos,
    pub path: String,
    pub name: Option<String>,
    pub limits: KeyLimits,
}

pub(crate) enum KeyLimits {
    /// A tier by name, and where the name is written.
    Tier(String, Pos),
    Own(Vec<LimitDef>),
}

/// Reads a file whose top level is a mapping without `domain:`.
pub(crate) fn parse(problems: &mut Problems<'_>, root: &Node, text: &str) -> ServiceFile {
    let mut file = ServiceFile::default();
    let Some(entry) = read::<ServiceFileEntry>(problems, root, text) else {
        return file;
    };
    if let Some(settings) = entry.settings {
        // Blame the `settings:` key itself for a second settings block.
        let key_pos = root
            .entries()
            .and_then(|entries| entries.iter().find(|(k, _)| k.show(text) == "settings"))
            .map_or(settings.pos, |(k, _)| k.pos);
        file.settings = Some((settings.value, key_pos));
    }
    if let Some(clients) = entry.clients {
        check_clients(problems, clients, &mut file);
    }
    file
}

fn check_clients(problems: &mut Problems<'_>, clients: ClientsEntry, file: &mut ServiceFile) {
    if let Some(unknown_key) = clients.unknown_key {
        if unknown_key.value.is_empty() {
            problems.about(&unknown_key, "must be reject or the name of a tier");
        } else {
            file.unknown_key = Some((unknown_key.value, unknown_key.pos));
        }
    }
    for (name, limits) in clients.tiers.map(|t| t.0).unwrap_or_default() {
        check_tier(problems, name, limits, file);
    }
    for key in clients.keys.unwrap_or_default() {
        if let Some(key) = check_key(problems, key) {
            file.keys.push(key);
        }
    }
}

fn check_tier(
    problems: &mut Problems<'_>,
    name: At<TierName>,
    limits: At<Option<TierLimits>>,
    file: &mut ServiceFile,
) {
    let TierName(tier) = name.value;
    if tier.trim().is_empty() {
        return problems.at(name.pos, &name.path, "a tier name must not be empty");
    }
    if tier == REJECT {
        let message = "a tier cannot be named 'reject' (unknown_key: reject means refuse)";
        return problems.at(name.pos, &name.path, message);
    }
    let checked = match &limits.value {
        None => {
            problems.about(&limits, "expected a list of limits, found nothing (null)");
            None
        }
        Some(TierLimits(list)) if list.is_empty() => {
            problems.about_unless_reported(&limits, "a tier needs at least one limit");
            None
        }
        Some(TierLimits(list)) => Some(check_limits(
            problems,
            list,
            Algorithm::TokenBucket,
            &[],
            "tier",
        )),
    };
    match checked {
        Some(limits_ok) if !problems.any_under(&limits.path) => file.tiers.push(TierDef {
            name: tier,
            pos: name.pos,
            limits: limits_ok,
        }),
        _ => file.broken_tiers.push(tier),
    }
}

fn check_key(problems: &mut Problems<'_>, entry: At<KeyEntry>) -> Option<KeyDef> {
    let digest = check_digest(problems, &entry);
    let limits = check_key_limits(problems, &entry);
    // A key with other problems (already reported) is still kept when its digest and limits
    // are known, so that the checks across keys (duplicates, unknown tiers) still run.
    Some(KeyDef {
        digest: digest?,
        pos: entry.pos,
        path: entry.path,
        name: entry.value.name.map(|NotBlank(name)| name),
        limits: limits?,
    })
}

/// `key:` (hashed at once) or `sha256:`, exactly one.
fn check_digest(problems: &mut Problems<'_>, entry: &At<KeyEntry>) -> Option<[u8; 32]> {
    match (&entry.value.key, &entry.value.sha256) {
        (Some(_), Some(sha)) => {
            problems.at(sha.pos, &entry.path, "give either key or sha256, not both");
            None
        }
        (Some(key), None) if key.value.is_empty() => {
            problems.about(key, "must not be empty");
            None
        }
        (Some(key), None) => Some(Sha256::digest(key.value.as_bytes()).into()),
        (None, Some(sha)) => parse_sha256(&sha.value).or_else(|| {
            problems.about(
                sha,
                "must be 64 hexadecimal characters (the SHA-256 of the key)",
            );
            None
        }),
        (None, None) => {
            let message = "each key needs key: (the key) or sha256: (its SHA-256)";
            if !problems.any_under(&format!("{}.sha256", entry.path)) {
                problems.missing(entry, "key", message);
            }
            None
        }
    }
}

/// `tier:` or `limits:`, exactly one.
fn check_key_limits(problems: &mut Problems<'_>, entry: &At<KeyEntry>) -> Option<KeyLimits> {
    match (&entry.value.tier, &entry.value.limits) {
        (Some(_), Some(limits)) => {
            problems.at(
                limits.pos,
                &entry.path,
                "give either tier or limits, not both",
            );
            None
        }
        (Some(tier), None) if tier.value.is_empty() => {
            problems.about(tier, "must not be empty");
            None
        }
        (Some(tier), None) => Some(KeyLimits::Tier(tier.value.clone(), tier.pos)),
        (None, Some(limits)) if limits.value.is_empty() => {
            problems.about_unless_reported(limits, "a key needs at least one limit");
            None
        }
        (None, Some(limits)) => Some(KeyLimits::Own(check_limits(
            problems,
            &limits.value,
            Algorithm::TokenBucket,
            &[],
            "key",
        ))),
        (None, None) => {
            let message = "each key needs tier: (a tier's name) or limits:";
            if !problems.any_under(&format!("{}.tier", entry.path)) {
                problems.missing(entry, "limits", message);
            }
            None
        }
    }
}

/// 64 hex digits, either case (surrounding whitespace ignored), to 32 bytes: how a key's
/// SHA-256 is written in the configuration and named to the admin API.
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

impl<'de> Deserialize<'de> for TierEntries {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TierEntriesVisitor)
    }
}

struct TierEntriesVisitor;

impl<'de> Visitor<'de> for TierEntriesVisitor {
    type Value = TierEntries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of tier names to limits")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TierEntries, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(TierEntries(entries))
    }
}

impl<'de> Deserialize<'de> for TierName {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TierNameVisitor)
    }
}

/// A tier's name: a string (a number or boolean as a key is refused, not read as text).
struct TierNameVisitor;

impl Visitor<'_> for TierNameVisitor {
    type Value = TierName;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tier name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<TierName, E> {
        Ok(TierName(name.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<TierName, E> {
        Err(E::custom(format!("tier name is not a string: {n}")))
    }

    fn visit_i128<E: de::Error>(self, n: i128) -> Result<TierName, E> {
        Err(E::custom(format!("tier name is not a string: {n}")))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<TierName, E> {
        Err(E::custom(format!("tier name is not a string: {b}")))
    }
}

impl<'de> Deserialize<'de> for TierLimits {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(TierLimitsVisitor)
    }
}

struct TierLimitsVisitor;

impl<'de> Visitor<'de> for TierLimitsVisitor {
    type Value = TierLimits;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of limits")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<TierLimits, A::Error> {
        let mut limits = Vec::new();
        while let Some(limit) = seq.next_element()? {
            limits.push(limit);
        }
        Ok(TierLimits(limits))
    }
}
