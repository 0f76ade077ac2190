//! The service's own file shape: `settings:` and the `clients:` table of API keys.
//!
//! This module reads one file; merging files (one `settings`, tiers and keys from every file,
//! keys resolved against tiers) happens in the parent module once every file is read, so a key
//! may name a tier defined in another file.
//!
//! A raw API key is never kept: `key:` is hashed at once, and no message ever quotes a key.

use sha2::{Digest, Sha256};

use crate::algorithm::Algorithm;

use super::error::{Pos, Problems};
use super::limits::parse_limit_list;
use super::yaml::{self, Node, Value, index, join, no_hint};
use super::{
    ExtAuthzDescriptor, ExtAuthzEntry, FailurePolicy, HeaderStyle, LimitDef, Settings, ValueSource,
};

const TOP_KEYS: [&str; 2] = ["settings", "clients"];
const SETTINGS_KEYS: [&str; 8] = [
    "default_domain",
    "headers",
    "on_store_failure",
    "max_cost",
    "over_limit_body",
    "ext_authz",
    "ext_authz_budget_metadata_key",
    "allow_request_descriptors",
];
const CLIENTS_KEYS: [&str; 3] = ["unknown_key", "tiers", "keys"];
const KEY_KEYS: [&str; 5] = ["key", "sha256", "tier", "limits", "name"];

/// The word `unknown_key:` uses for "refuse unknown keys"; no tier may take it as a name.
pub(crate) const REJECT: &str = "reject";

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
pub(crate) fn parse(problems: &mut Problems<'_>, root: &Node) -> ServiceFile {
    let mut file = ServiceFile::default();
    let Some(fields) = yaml::fields(problems, root, "", &TOP_KEYS, &|key| match key {
        "descriptors" => Some(
            "descriptors belong in an envoyproxy/ratelimit file, which has a domain:".to_owned(),
        ),
        _ => Some(
            "this file has no domain:, so it is in the service's own format: settings, \
                   clients"
                .to_owned(),
        ),
    }) else {
        return file;
    };
    if let Some(node) = fields.get("settings") {
        file.settings = parse_settings(problems, node).map(|s| (s, fields.key_pos("settings")));
    }
    if let Some(node) = fields.get("clients") {
        parse_clients(problems, node, &mut file);
    }
    file
}

fn parse_settings(problems: &mut Problems<'_>, node: &Node) -> Option<Settings> {
    let fields = yaml::fields(problems, node, "settings", &SETTINGS_KEYS, &no_hint)?;
    let mut settings = Settings::default();
    if let Some((domain, node)) = yaml::text(problems, &fields, "default_domain") {
        if domain.trim().is_empty() {
            problems.at(
                node.pos,
                &fields.path_of("default_domain"),
                "must not be empty",
            );
        }
        settings.default_domain = domain;
    }
    if let Some((text, node)) = yaml::text(problems, &fields, "headers") {
        match text.as_str() {
            "ietf" => settings.headers = HeaderStyle::Ietf,
            "x-ratelimit" => settings.headers = HeaderStyle::XRateLimit,
            "both" => settings.headers = HeaderStyle::Both,
            "none" => settings.headers = HeaderStyle::None,
            _ => problems.at(
                node.pos,
                &fields.path_of("headers"),
                format_args!(
                    "unknown header style '{text}' (expected ietf, x-ratelimit, both or none)"
                ),
            ),
        }
    }
    if let Some((text, node)) = yaml::text(problems, &fields, "on_store_failure") {
        match text.as_str() {
            "fail_open" => settings.on_store_failure = FailurePolicy::FailOpen,
            "fail_closed" => settings.on_store_failure = FailurePolicy::FailClosed,
            "local" => settings.on_store_failure = FailurePolicy::Local,
            _ => problems.at(
                node.pos,
                &fields.path_of("on_store_failure"),
                format_args!("unknown policy '{text}' (expected fail_open, fail_closed or local)"),
            ),
        }
    }
    match yaml::uint(problems, &fields, "max_cost") {
        Some((0, node)) => problems.at(node.pos, &fields.path_of("max_cost"), "must be at least 1"),
        Some((n, _)) => settings.max_cost = n,
        None => {}
    }
    if let Some((body, _)) = yaml::text(problems, &fields, "over_limit_body") {
        settings.over_limit_body = body;
    }
    if let Some(node) = fields.get("ext_authz")
        && let Some(rules) = parse_ext_authz(problems, node, &fields.path_of("ext_authz"))
    {
        settings.ext_authz = rules;
    }
    if let Some(items) = yaml::list(problems, &fields, "allow_request_descriptors") {
        let path = fields.path_of("allow_request_descriptors");
        for (i, item) in items.iter().enumerate() {
            match &item.value {
                Value::Str(key) if !key.is_empty() => {
                    settings.allow_request_descriptors.push(key.clone());
                }
                _ => problems.at(item.pos, &index(&path, i), "expected a descriptor key"),
            }
        }
    }
    if let Some((key, _)) = yaml::text(problems, &fields, "ext_authz_budget_metadata_key") {
        settings.ext_authz_budget_metadata_key = key;
    }
    Some(settings)
}

/// `ext_authz: { descriptors: [ [ { key: api_key, from: "header:x-api-key" }, … ], … ] }`
fn parse_ext_authz(
    problems: &mut Problems<'_>,
    node: &Node,
    path: &str,
) -> Option<Vec<ExtAuthzDescriptor>> {
    let fields = yaml::fields(problems, node, path, &["descriptors"], &no_hint)?;
    let items = yaml::list(problems, &fields, "descriptors")?;
    let path = fields.path_of("descriptors");
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let dpath = index(&path, i);
        let Value::Seq(entries) = &item.value else {
            problems.at(
                item.pos,
                &dpath,
                format_args!("expected a list of entries, found {}", item.kind()),
            );
            continue;
        };
        if entries.is_empty() {
            problems.at(item.pos, &dpath, "a descriptor needs at least one entry");
            continue;
        }
        let mut descriptor = ExtAuthzDescriptor {
            entries: Vec::new(),
        };
        for (j, entry) in entries.iter().enumerate() {
            let epath = index(&dpath, j);
            let Some(f) = yaml::fields(problems, entry, &epath, &["key", "from"], &no_hint) else {
                continue;
            };
            let key = yaml::text(problems, &f, "key");
            let from = yaml::text(problems, &f, "from");
            match (key, from) {
                (Some((key, knode)), Some((from, fnode))) => {
                    if key.is_empty() {
                        problems.at(knode.pos, &f.path_of("key"), "must not be empty");
                        continue;
                    }
                    match ValueSource::parse(&from) {
                        Ok(from) => descriptor.entries.push(ExtAuthzEntry { key, from }),
                        Err(e) => problems.at(fnode.pos, &f.path_of("from"), e),
                    }
                }
                _ => problems.at(entry.pos, &epath, "an entry needs `key` and `from`"),
            }
        }
        out.push(descriptor);
    }
    Some(out)
}

fn parse_clients(problems: &mut Problems<'_>, node: &Node, file: &mut ServiceFile) {
    let Some(fields) = yaml::fields(problems, node, "clients", &CLIENTS_KEYS, &no_hint) else {
        return;
    };
    if let Some((text, node)) = yaml::text(problems, &fields, "unknown_key") {
        if text.is_empty() {
            problems.at(
                node.pos,
                &fields.path_of("unknown_key"),
                "must be reject or the name of a tier",
            );
        } else {
            file.unknown_key = Some((text, node.pos));
        }
    }
    if let Some(node) = fields.get("tiers") {
        parse_tiers(problems, node, &fields.path_of("tiers"), file);
    }
    if let Some(items) = yaml::list(problems, &fields, "keys") {
        let path = fields.path_of("keys");
        for (i, item) in items.iter().enumerate() {
            if let Some(key) = parse_key(problems, item, &index(&path, i)) {
                file.keys.push(key);
            }
        }
    }
}

fn parse_tiers(problems: &mut Problems<'_>, node: &Node, path: &str, file: &mut ServiceFile) {
    let Some(entries) = node.entries() else {
        problems.at(
            node.pos,
            path,
            format_args!(
                "expected a mapping of tier names to limits, found {}",
                node.kind()
            ),
        );
        return;
    };
    for (key, value) in entries {
        let Value::Str(name) = &key.value else {
            problems.at(
                key.pos,
                path,
                format_args!("tier name is not a string: {}", key.show()),
            );
            continue;
        };
        let tier_path = join(path, name);
        if name.trim().is_empty() {
            problems.at(key.pos, path, "a tier name must not be empty");
            continue;
        }
        if name == REJECT {
            problems.at(
                key.pos,
                path,
                "a tier cannot be named 'reject' (unknown_key: reject means refuse)",
            );
            continue;
        }
        let Value::Seq(items) = &value.value else {
            problems.at(
                value.pos,
                &tier_path,
                format_args!("expected a list of limits, found {}", value.kind()),
            );
            file.broken_tiers.push(name.clone());
            continue;
        };
        if items.is_empty() {
            problems.at(value.pos, &tier_path, "a tier needs at least one limit");
            file.broken_tiers.push(name.clone());
            continue;
        }
        let before = problems.errors.len();
        let limits = parse_limit_list(
            problems,
            items,
            &tier_path,
            Algorithm::TokenBucket,
            &[],
            "tier",
        );
        if problems.errors.len() == before {
            file.tiers.push(TierDef {
                name: name.clone(),
                pos: key.pos,
                limits,
            });
        } else {
            file.broken_tiers.push(name.clone());
        }
    }
}

fn parse_key(problems: &mut Problems<'_>, node: &Node, path: &str) -> Option<KeyDef> {
    let fields = yaml::fields(problems, node, path, &KEY_KEYS, &|key| match key {
        "api_key" | "value" | "secret" => {
            Some("the key itself goes under key: (or its SHA-256 under sha256:)".to_owned())
        }
        "limit" | "window" | "algorithm" | "burst" => {
            Some("a key's own limits go in a list under limits:".to_owned())
        }
        _ => None,
    })?;

    let digest = match (fields.get("key"), fields.get("sha256")) {
        (Some(_), Some(node)) => {
            problems.at(node.pos, path, "give either key or sha256, not both");
            None
        }
        (None, None) => {
            problems.at(
                fields.pos,
                path,
                "each key needs key: (the key) or sha256: (its SHA-256)",
            );
            None
        }
        (Some(_), None) => match yaml::text(problems, &fields, "key") {
            Some((key, node)) if key.is_empty() => {
                problems.at(node.pos, &fields.path_of("key"), "must not be empty");
                None
            }
            Some((key, _)) => Some(Sha256::digest(key.as_bytes()).into()),
            None => None,
        },
        (None, Some(_)) => match yaml::text(problems, &fields, "sha256") {
            Some((text, node)) => {
                let digest = parse_sha256(&text);
                if digest.is_none() {
                    problems.at(
                        node.pos,
                        &fields.path_of("sha256"),
                        "must be 64 hexadecimal characters (the SHA-256 of the key)",
                    );
                }
                digest
            }
            None => None,
        },
    };

    let name = match yaml::text(problems, &fields, "name") {
        Some((name, node)) if name.trim().is_empty() => {
            problems.at(node.pos, &fields.path_of("name"), "must not be empty");
            None
        }
        other => other.map(|(name, _)| name),
    };

    let limits = match (fields.get("tier"), fields.get("limits")) {
        (Some(_), Some(node)) => {
            problems.at(node.pos, path, "give either tier or limits, not both");
            None
        }
        (None, None) => {
            problems.at(
                fields.pos,
                path,
                "each key needs tier: (a tier's name) or limits:",
            );
            None
        }
        (Some(_), None) => match yaml::text(problems, &fields, "tier") {
            Some((tier, node)) if tier.is_empty() => {
                problems.at(node.pos, &fields.path_of("tier"), "must not be empty");
                None
            }
            Some((tier, node)) => Some(KeyLimits::Tier(tier, node.pos)),
            None => None,
        },
        (None, Some(_)) => match yaml::list(problems, &fields, "limits") {
            Some([]) => {
                let pos = fields.get("limits").map_or(fields.pos, |n| n.pos);
                problems.at(
                    pos,
                    &fields.path_of("limits"),
                    "a key needs at least one limit",
                );
                None
            }
            Some(items) => Some(KeyLimits::Own(parse_limit_list(
                problems,
                items,
                &fields.path_of("limits"),
                Algorithm::TokenBucket,
                &[],
                "key",
            ))),
            None => None,
        },
    };

    // A key with other problems (already reported) is still kept when its digest and limits
    // are known, so that the checks across keys (duplicates, unknown tiers) still run.
    Some(KeyDef {
        digest: digest?,
        pos: fields.pos,
        path: path.to_owned(),
        name,
        limits: limits?,
    })
}

/// 64 hex digits, either case, to 32 bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}
