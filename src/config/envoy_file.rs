//! envoyproxy/ratelimit files: `domain:` plus a tree of `descriptors:`, read with that
//! project's rules so existing files load unchanged, plus our opt-in extension keys.
//!
//! Upstream checks kept, with its wording where it has one:
//! - the domain must not be empty ("config file cannot have empty domain") and must not repeat
//!   across files ("duplicate domain 'x' in config file"; upstream's `MERGE_DOMAIN_CONFIG`
//!   merging is not offered);
//! - every descriptor has a key ("descriptor has empty key"); siblings must differ in
//!   `key`+`value` ("duplicate descriptor composite key 'domain.key_value'");
//! - `rate_limit.unit` is second, minute, hour, day, week, month or year, in any case
//!   ("invalid rate limit unit 'x'"); `unlimited: true` takes no unit ("should not specify rate
//!   limit unit when unlimited") — and here no `requests_per_unit` or `unit_multiplier` either;
//! - `replaces` entries need a name ("should not have an empty replaces entry") other than the
//!   descriptor's own ("replaces should not contain name of same descriptor");
//! - `unit_multiplier` (optional, default 1) must be at least 1;
//! - unknown keys are errors (upstream accepts a known key in the wrong place and ignores it;
//!   here keys are checked where they stand).
//!
//! Stricter than upstream, on purpose: `requests_per_unit` is required when the limit is not
//! unlimited (upstream silently reads a missing one as 0, which blocks everything; an explicit
//! `requests_per_unit: 0` still means "block all", as in upstream's README example 3), a `*`
//! in a descriptor *key* is rejected (upstream's wildcards are meant for values), and upstream
//! keys this service does not implement (`quota_mode`, `value_to_metric`, `share_threshold`,
//! `metadata`) are rejected by name rather than ignored.
//!
//! Windows: a limit's window is its unit times `unit_multiplier`, fixed-length, aligned to the
//! epoch like upstream's fixed windows. Upstream's fixed lengths are kept for the long units:
//! week = 7 days, month = 30 days, year = 365 days (upstream's optional calendar-month mode is
//! not offered). The window may not exceed 366 days.
//!
//! Wildcards: a `value` ending in or containing `*` is kept as written; `*` matches any run of
//! characters (upstream's rule). Matching is the limiter's job.
//!
//! Extensions (on a descriptor, all optional):
//! - `algorithm: token_bucket | sliding_window | fixed_window` for its `rate_limit`
//!   (default fixed_window, upstream's behaviour);
//! - `burst: N` for that `rate_limit` when it is a token bucket;
//! - `limits: [{name, algorithm, limit, window, burst, shadow_mode}]`: more limits on the same
//!   descriptor, each defaulting to fixed_window and inheriting the descriptor's `shadow_mode`;
//!   `rate_limit`, if present, is one more (listed first);
//! - `post_paid: true`: this descriptor's limits record usage after the fact (a stream-done
//!   `ShouldRateLimit` whose `hits_addend` is the tokens a response used): a request with a
//!   cost is charged whatever the verdict, into debt if need be, so the next request-time
//!   check (`hits_addend: 0`) is refused until the debt is paid off. It applies to this
//!   descriptor's limits only (not to nested descriptors) and needs at least one limit.
//!
//! A limit without a name (upstream's `rate_limit.name` is optional) is called
//! `<requests>-per-<window>`, e.g. `10-per-1s`; names are unique within one descriptor.

use crate::algorithm::{Algorithm, Micros, Quota};

use super::duration::{MAX_WINDOW, MICROS_PER_DAY, MICROS_PER_SECOND};
use super::error::{Pos, Problems};
use super::limits::{default_name, parse_limit_list};
use super::yaml::{self, Node, index};
use super::{DescriptorDef, LimitDef};

/// How deep descriptors may nest (upstream has no limit; a real config uses a handful).
pub(crate) const MAX_DESCRIPTOR_DEPTH: usize = 16;

const TOP_KEYS: [&str; 2] = ["domain", "descriptors"];
const DESCRIPTOR_KEYS: [&str; 10] = [
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "detailed_metric",
    "algorithm",
    "burst",
    "limits",
    "post_paid",
];
const RATE_LIMIT_KEYS: [&str; 6] = [
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    "unit_multiplier",
];

/// Upstream units and their fixed lengths in seconds.
const UNITS: [(&str, u64); 7] = [
    ("SECOND", 1),
    ("MINUTE", 60),
    ("HOUR", 3_600),
    ("DAY", 86_400),
    ("WEEK", 7 * 86_400),
    ("MONTH", 30 * 86_400),
    ("YEAR", 365 * 86_400),
];

/// One envoyproxy/ratelimit file, read.
pub(crate) struct EnvoyFile {
    /// `None` when the domain was missing or empty (already reported).
    pub domain: Option<String>,
    pub domain_pos: Pos,
    pub descriptors: Vec<DescriptorDef>,
}

/// Reads a file whose top level is a mapping with `domain:`.
pub(crate) fn parse(problems: &mut Problems<'_>, root: &Node) -> Option<EnvoyFile> {
    let fields = yaml::fields(problems, root, "", &TOP_KEYS, &|key| match key {
        "settings" | "clients" => Some(
            "a file with domain: is an envoyproxy/ratelimit file; settings and clients go in \
             a file of their own"
                .to_owned(),
        ),
        _ => None,
    })?;
    let (domain, domain_pos) = match yaml::text(problems, &fields, "domain") {
        Some((domain, node)) if !domain.is_empty() => (Some(domain), node.pos),
        other => {
            let pos = other.map_or(fields.key_pos("domain"), |(_, node)| node.pos);
            problems.at(pos, "domain", "config file cannot have empty domain");
            (None, pos)
        }
    };
    let parent = format!("{}.", domain.as_deref().unwrap_or(""));
    let descriptors = match yaml::list(problems, &fields, "descriptors") {
        Some(items) => parse_descriptors(problems, items, "descriptors", &parent, 1),
        None => Vec::new(),
    };
    Some(EnvoyFile {
        domain,
        domain_pos,
        descriptors,
    })
}

/// Reads one level of descriptors. `parent` is upstream's composite key of the level above,
/// ending in a dot (`domain.` at the top), used in duplicate-key messages.
fn parse_descriptors(
    problems: &mut Problems<'_>,
    items: &[Node],
    path: &str,
    parent: &str,
    depth: usize,
) -> Vec<DescriptorDef> {
    if depth > MAX_DESCRIPTOR_DEPTH {
        let pos = items.first().map_or(Pos::UNKNOWN, |n| n.pos);
        problems.at(
            pos,
            path,
            format_args!("descriptors nested deeper than {MAX_DESCRIPTOR_DEPTH} levels"),
        );
        return Vec::new();
    }
    let mut seen: Vec<(String, Option<String>)> = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = index(path, i);
        let Some(descriptor) = parse_descriptor(problems, item, &item_path, parent, depth) else {
            continue;
        };
        let identity = (descriptor.key.clone(), descriptor.value.clone());
        if !descriptor.key.is_empty() && seen.contains(&identity) {
            let composite = match &descriptor.value {
                Some(value) => format!("{parent}{}_{value}", descriptor.key),
                None => format!("{parent}{}", descriptor.key),
            };
            problems.at(
                key_pos(item),
                &item_path,
                format_args!("duplicate descriptor composite key '{composite}'"),
            );
            continue;
        }
        seen.push(identity);
        out.push(descriptor);
    }
    out
}

/// Where a descriptor's `key` value is written (or the descriptor itself).
fn key_pos(item: &Node) -> Pos {
    item.entries()
        .and_then(|entries| {
            entries
                .iter()
                .find(|(k, _)| k.as_text().as_deref() == Some("key"))
        })
        .map_or(item.pos, |(_, v)| v.pos)
}

fn descriptor_hint(key: &str) -> Option<String> {
    match key {
        "quota_mode" | "value_to_metric" | "share_threshold" | "metadata" => {
            Some("an envoyproxy/ratelimit key that this service does not support".to_owned())
        }
        "replaces" | "unit" | "requests_per_unit" | "unlimited" | "name" | "unit_multiplier" => {
            Some(format!("{key} goes inside rate_limit"))
        }
        "limit" | "window" => Some(format!("{key} goes in an entry of limits:")),
        "ratelimit" | "rate_limits" | "ratelimits" => Some("did you mean rate_limit?".to_owned()),
        _ => None,
    }
}

fn rate_limit_hint(key: &str) -> Option<String> {
    match key {
        "shadow_mode" | "detailed_metric" | "algorithm" | "burst" | "limits" | "post_paid" => {
            Some(format!("{key} goes on the descriptor, next to rate_limit"))
        }
        "requestsperunit" | "requests" | "limit" => {
            Some("did you mean requests_per_unit?".to_owned())
        }
        "soft_requests_per_unit" => {
            Some("an envoyproxy/ratelimit key that this service does not support".to_owned())
        }
        _ => None,
    }
}

/// What a `rate_limit` block says.
struct RateLimit {
    unlimited: bool,
    /// `(requests_per_unit, window)`, when the block is valid and limited.
    quota: Option<(u64, Micros)>,
    name: Option<String>,
    replaces: Vec<String>,
    /// Where `replaces` entries are, for messages about them.
    replaces_pos: Vec<(Pos, String)>,
}

fn parse_descriptor(
    problems: &mut Problems<'_>,
    node: &Node,
    path: &str,
    parent: &str,
    depth: usize,
) -> Option<DescriptorDef> {
    let fields = yaml::fields(problems, node, path, &DESCRIPTOR_KEYS, &descriptor_hint)?;

    let key = match yaml::text(problems, &fields, "key") {
        Some((key, node)) if !key.is_empty() => {
            if key.contains('*') {
                problems.at(
                    node.pos,
                    &fields.path_of("key"),
                    "a descriptor key cannot contain '*' (wildcards belong in value)",
                );
            }
            key
        }
        other => {
            let pos = other.map_or(fields.pos, |(_, node)| node.pos);
            problems.at(pos, path, "descriptor has empty key");
            String::new()
        }
    };
    let value = yaml::text(problems, &fields, "value")
        .map(|(value, _)| value)
        .filter(|value| !value.is_empty());
    let shadow_mode = yaml::boolean(problems, &fields, "shadow_mode").unwrap_or(false);
    let detailed_metric = yaml::boolean(problems, &fields, "detailed_metric").unwrap_or(false);
    let post_paid = yaml::boolean(problems, &fields, "post_paid").unwrap_or(false);

    let rate_limit = fields
        .get("rate_limit")
        .and_then(|node| parse_rate_limit(problems, node, &fields.path_of("rate_limit")));

    // Extension: the rate_limit's algorithm.
    let algorithm = match yaml::text(problems, &fields, "algorithm") {
        None => Algorithm::FixedWindow,
        Some((text, node)) => {
            let at = fields.path_of("algorithm");
            let parsed = text.parse::<Algorithm>();
            match (&rate_limit, &parsed) {
                (_, Err(e)) => problems.at(node.pos, &at, e),
                (None, Ok(_)) if fields.get("rate_limit").is_none() => {
                    problems.at(
                        node.pos,
                        &at,
                        "algorithm applies to this descriptor's rate_limit, and it has none \
                         (entries of limits: take their own algorithm)",
                    );
                }
                (Some(rl), Ok(_)) if rl.unlimited => {
                    problems.at(
                        node.pos,
                        &at,
                        "algorithm does not apply to an unlimited rate_limit",
                    );
                }
                _ => {}
            }
            parsed.unwrap_or(Algorithm::FixedWindow)
        }
    };

    // Extension: the rate_limit's burst, for a token bucket.
    let burst = match yaml::uint(problems, &fields, "burst") {
        None => None,
        Some((n, node)) => {
            let at = fields.path_of("burst");
            if n == 0 {
                problems.at(node.pos, &at, "must be at least 1");
            } else if fields.get("rate_limit").is_none() {
                problems.at(
                    node.pos,
                    &at,
                    "burst applies to this descriptor's rate_limit, and it has none",
                );
            } else if rate_limit.as_ref().is_some_and(|rl| rl.unlimited) {
                problems.at(
                    node.pos,
                    &at,
                    "burst does not apply to an unlimited rate_limit",
                );
            } else if algorithm != Algorithm::TokenBucket {
                problems.at(
                    node.pos,
                    &at,
                    format_args!(
                        "burst applies to token_bucket only (this rate_limit is {}; add \
                         algorithm: token_bucket)",
                        algorithm.as_str()
                    ),
                );
            } else if rate_limit
                .as_ref()
                .and_then(|rl| rl.quota)
                .is_some_and(|(rpu, _)| rpu == 0)
            {
                problems.at(
                    node.pos,
                    &at,
                    "burst cannot be used with requests_per_unit: 0 (which blocks everything)",
                );
            }
            Some(n)
        }
    };

    let mut limits: Vec<LimitDef> = Vec::new();
    let mut unlimited = false;
    let mut replaces = Vec::new();
    let mut replaces_pos = Vec::new();
    if let Some(rl) = rate_limit {
        unlimited = rl.unlimited;
        replaces = rl.replaces;
        replaces_pos = rl.replaces_pos;
        if let Some((rpu, window)) = rl.quota {
            limits.push(LimitDef {
                name: rl.name.unwrap_or_else(|| default_name(rpu, window)),
                algorithm,
                quota: Quota {
                    limit: rpu,
                    window,
                    burst: burst.filter(|b| *b > 0).unwrap_or(rpu),
                },
                shadow_mode,
            });
        }
    }

    // Extension: more limits on the same descriptor.
    if let Some(items) = yaml::list(problems, &fields, "limits") {
        let at = fields.path_of("limits");
        let pos = fields.get("limits").map_or(fields.pos, |n| n.pos);
        if unlimited {
            problems.at(pos, &at, "an unlimited descriptor cannot have limits");
        } else if items.is_empty() {
            problems.at(pos, &at, "must not be empty (leave it out instead)");
        }
        let taken: Vec<String> = limits.iter().map(|l| l.name.clone()).collect();
        let extra = parse_limit_list(
            problems,
            items,
            &at,
            Algorithm::FixedWindow,
            &taken,
            "descriptor",
        );
        limits.extend(extra.into_iter().map(|mut limit| {
            limit.shadow_mode |= shadow_mode;
            limit
        }));
    }

    // Extension: post-paid usage, recorded whatever the verdict (an invalid limit is reported
    // on its own, so only a descriptor with nothing to charge is a post_paid problem).
    let nothing_to_charge =
        unlimited || (fields.get("rate_limit").is_none() && fields.get("limits").is_none());
    if post_paid && nothing_to_charge {
        let pos = fields.get("post_paid").map_or(fields.pos, |n| n.pos);
        problems.at(
            pos,
            &fields.path_of("post_paid"),
            "post_paid applies to this descriptor's limits, and it has none",
        );
    }

    for (pos, name) in &replaces_pos {
        if limits.iter().any(|l| &l.name == name) {
            problems.at(
                *pos,
                &fields.path_of("rate_limit.replaces"),
                "replaces should not contain name of same descriptor",
            );
        }
    }

    let full = match &value {
        Some(value) => format!("{parent}{key}_{value}"),
        None => format!("{parent}{key}"),
    };
    let descriptors = match yaml::list(problems, &fields, "descriptors") {
        Some(items) => parse_descriptors(
            problems,
            items,
            &fields.path_of("descriptors"),
            &format!("{full}."),
            depth + 1,
        ),
        None => Vec::new(),
    };

    Some(DescriptorDef {
        key,
        value,
        limits,
        unlimited,
        shadow_mode,
        replaces,
        detailed_metric,
        post_paid,
        descriptors,
    })
}

fn parse_rate_limit(problems: &mut Problems<'_>, node: &Node, path: &str) -> Option<RateLimit> {
    let fields = yaml::fields(problems, node, path, &RATE_LIMIT_KEYS, &rate_limit_hint)?;
    let unlimited = yaml::boolean(problems, &fields, "unlimited").unwrap_or(false);
    let name = yaml::text(problems, &fields, "name")
        .map(|(name, _)| name)
        .filter(|name| !name.is_empty());
    let unit = yaml::text(problems, &fields, "unit");
    let rpu = yaml::uint(problems, &fields, "requests_per_unit");
    let multiplier = yaml::uint(problems, &fields, "unit_multiplier");

    let mut replaces = Vec::new();
    let mut replaces_pos = Vec::new();
    if let Some(items) = yaml::list(problems, &fields, "replaces") {
        let at = fields.path_of("replaces");
        for (i, item) in items.iter().enumerate() {
            let item_path = index(&at, i);
            let Some(entry) = yaml::fields(problems, item, &item_path, &["name"], &yaml::no_hint)
            else {
                continue;
            };
            match yaml::text(problems, &entry, "name") {
                Some((replaced, node)) if !replaced.is_empty() => {
                    if name.as_deref() == Some(replaced.as_str()) {
                        problems.at(
                            node.pos,
                            &item_path,
                            "replaces should not contain name of same descriptor",
                        );
                    } else {
                        replaces_pos.push((node.pos, replaced.clone()));
                    }
                    replaces.push(replaced);
                }
                _ => problems.at(
                    item.pos,
                    &item_path,
                    "should not have an empty replaces entry",
                ),
            }
        }
    }

    if unlimited {
        if let Some((_, node)) = &unit {
            problems.at(
                node.pos,
                &fields.path_of("unit"),
                "should not specify rate limit unit when unlimited",
            );
        }
        if let Some((_, node)) = &rpu {
            problems.at(
                node.pos,
                &fields.path_of("requests_per_unit"),
                "should not specify requests_per_unit when unlimited",
            );
        }
        if let Some((_, node)) = &multiplier {
            problems.at(
                node.pos,
                &fields.path_of("unit_multiplier"),
                "should not specify unit_multiplier when unlimited",
            );
        }
        return Some(RateLimit {
            unlimited,
            quota: None,
            name,
            replaces,
            replaces_pos,
        });
    }

    let unit_seconds = match &unit {
        Some((text, node)) => match unit_seconds(text) {
            Some(seconds) => Some(seconds),
            None => {
                problems.at(
                    node.pos,
                    &fields.path_of("unit"),
                    format_args!(
                        "invalid rate limit unit '{text}' (expected second, minute, hour, day, \
                         week, month or year)"
                    ),
                );
                None
            }
        },
        None => {
            if fields.get("unit").is_none() {
                problems.at(
                    fields.pos,
                    path,
                    "invalid rate limit unit '' (rate_limit needs a unit, or unlimited: true)",
                );
            }
            None
        }
    };
    let requests = match rpu {
        Some((n, node)) if n > u64::from(u32::MAX) => {
            problems.at(
                node.pos,
                &fields.path_of("requests_per_unit"),
                format_args!("must be at most {}", u32::MAX),
            );
            None
        }
        Some((n, _)) => Some(n),
        None => {
            if fields.get("requests_per_unit").is_none() {
                problems.at(
                    fields.pos,
                    path,
                    "missing requests_per_unit (or unlimited: true)",
                );
            }
            None
        }
    };
    let multiplier = match multiplier {
        None => Some(1),
        Some((0, node)) => {
            problems.at(
                node.pos,
                &fields.path_of("unit_multiplier"),
                "must be at least 1",
            );
            None
        }
        Some((n, _)) => Some(n),
    };
    let window = match (unit_seconds, multiplier) {
        (Some(seconds), Some(multiplier)) => {
            let window = seconds
                .checked_mul(multiplier)
                .and_then(|s| s.checked_mul(MICROS_PER_SECOND))
                .filter(|w| *w <= MAX_WINDOW);
            if window.is_none() {
                let pos = fields.get("unit_multiplier").map_or(fields.pos, |n| n.pos);
                problems.at(
                    pos,
                    path,
                    format_args!(
                        "the window ({multiplier} × {}) is longer than {} days",
                        unit.as_ref().map_or("", |(u, _)| u.as_str()),
                        MAX_WINDOW / MICROS_PER_DAY
                    ),
                );
            }
            window
        }
        _ => None,
    };
    Some(RateLimit {
        unlimited,
        quota: requests.zip(window),
        name,
        replaces,
        replaces_pos,
    })
}

/// A unit's length in seconds; upstream reads units case-insensitively.
fn unit_seconds(unit: &str) -> Option<u64> {
    let upper = unit.to_ascii_uppercase();
    UNITS
        .iter()
        .find(|(name, _)| *name == upper)
        .map(|(_, seconds)| *seconds)
}
