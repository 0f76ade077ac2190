//! envoyproxy/ratelimit files: `domain:` plus a tree of `descriptors:`, read with that
//! project's rules (and its wording, where it has one) so existing files load unchanged, plus
//! our opt-in extension keys (`algorithm`, `burst`, `limits`, `post_paid`).
//! `docs/configuration.md` lists the rules kept, where we are stricter on purpose, and the
//! extensions; each check below says which rule it is.
//!
//! A limit's window is its unit times `unit_multiplier`, with upstream's fixed lengths for the
//! long units (week 7 days, month 30, year 365). Wildcard values are kept as written; matching
//! them is the limiter's job.

use serde::Deserialize;

use crate::algorithm::{Algorithm, Micros, Quota};

use super::deserialize::{At, AtLeastOne, Parsed, read};
use super::duration::{MAX_WINDOW, MICROS_PER_DAY, MICROS_PER_SECOND};
use super::error::{Pos, Problems};
use super::limits::{LimitEntry, check_limits, check_sliding_window_cap, default_name};
use super::yaml::Node;
use super::{DescriptorDef, LimitDef};

/// How deep descriptors may nest (upstream has no limit; a real config uses a handful).
pub(crate) const MAX_DESCRIPTOR_DEPTH: usize = 16;

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

/// An envoyproxy/ratelimit file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EnvoyFileEntry {
    domain: Option<At<String>>,
    descriptors: Option<At<Vec<At<DescriptorEntry>>>>,
}

/// One descriptor as written: upstream's keys, then our extensions.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DescriptorEntry {
    key: Option<At<String>>,
    value: Option<String>,
    rate_limit: Option<At<RateLimitEntry>>,
    descriptors: Option<At<Vec<At<DescriptorEntry>>>>,
    shadow_mode: Option<bool>,
    detailed_metric: Option<bool>,
    algorithm: Option<At<Parsed<Algorithm>>>,
    burst: Option<At<AtLeastOne>>,
    limits: Option<At<Vec<At<LimitEntry>>>>,
    post_paid: Option<At<bool>>,
    quota_mode: Option<bool>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    share_threshold: Option<At<bool>>,
    value_to_metric: Option<bool>,
}

/// A descriptor's `rate_limit` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RateLimitEntry {
    unit: Option<At<String>>,
    requests_per_unit: Option<At<u64>>,
    unlimited: Option<bool>,
    name: Option<String>,
    replaces: Option<Vec<At<ReplacesEntry>>>,
    unit_multiplier: Option<At<AtLeastOne>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReplacesEntry {
    name: Option<At<String>>,
}

/// One envoyproxy/ratelimit file, read.
pub(crate) struct EnvoyFile {
    /// `None` when the domain was missing or empty (already reported).
    pub domain: Option<String>,
    pub domain_pos: Pos,
    pub descriptors: Vec<DescriptorDef>,
}

/// Reads a file whose top level is a mapping with `domain:`.
pub(crate) fn parse(problems: &mut Problems<'_>, root: &Node, text: &str) -> Option<EnvoyFile> {
    let file: EnvoyFileEntry = read(problems, root, text)?;
    let domain = file.domain.as_ref().filter(|d| !d.value.is_empty());
    let domain_pos = file.domain.as_ref().map_or(root.pos, |d| d.pos);
    if domain.is_none() && !problems.any_under("domain") {
        problems.at(domain_pos, "domain", "config file cannot have empty domain");
    }
    let domain = domain.map(|d| d.value.clone());
    let parent = format!("{}.", domain.as_deref().unwrap_or(""));
    let descriptors = match &file.descriptors {
        Some(list) => check_descriptors(problems, list, &parent, 1),
        None => Vec::new(),
    };
    Some(EnvoyFile {
        domain,
        domain_pos,
        descriptors,
    })
}

/// Checks one level of descriptors. `parent` is upstream's composite key of the level above,
/// ending in a dot (`domain.` at the top), used in duplicate-key messages.
fn check_descriptors(
    problems: &mut Problems<'_>,
    list: &At<Vec<At<DescriptorEntry>>>,
    parent: &str,
    depth: usize,
) -> Vec<DescriptorDef> {
    if depth > MAX_DESCRIPTOR_DEPTH {
        let pos = list.value.first().map_or(list.pos, |d| d.pos);
        let message = format!("descriptors nested deeper than {MAX_DESCRIPTOR_DEPTH} levels");
        problems.at(pos, &list.path, message);
        return Vec::new();
    }
    let mut out: Vec<DescriptorDef> = Vec::with_capacity(list.value.len());
    for entry in &list.value {
        let descriptor = check_descriptor(problems, entry, parent, depth);
        let duplicate = out
            .iter()
            .any(|d| d.key == descriptor.key && d.value == descriptor.value);
        if descriptor.key.is_empty() {
            continue;
        }
        if duplicate {
            let blamed = entry.value.key.as_ref().map_or(entry.pos, |k| k.pos);
            let composite = composite_key(parent, &descriptor);
            let message = format!("duplicate descriptor composite key '{composite}'");
            problems.at(blamed, &entry.path, message);
            continue;
        }
        out.push(descriptor);
    }
    out
}

/// Upstream's name for a descriptor in messages: `domain.key_value`.
fn composite_key(parent: &str, descriptor: &DescriptorDef) -> String {
    match &descriptor.value {
        Some(value) => format!("{parent}{}_{value}", descriptor.key),
        None => format!("{parent}{}", descriptor.key),
    }
}

/// Checks one descriptor and the levels below it. A descriptor without a usable key comes
/// back with an empty key (reported) and is left out by the caller.
fn check_descriptor(
    problems: &mut Problems<'_>,
    entry: &At<DescriptorEntry>,
    parent: &str,
    depth: usize,
) -> DescriptorDef {
    let e = &entry.value;
    let key = check_key(problems, entry);
    let shadow_mode = e.shadow_mode.unwrap_or(false);
    let rate_limit = e
        .rate_limit
        .as_ref()
        .and_then(|rl| check_rate_limit(problems, rl));
    let unlimited = rate_limit.as_ref().is_some_and(|rl| rl.unlimited);
    let algorithm = check_algorithm(problems, e, unlimited);
    let burst = check_burst(problems, e, algorithm, rate_limit.as_ref());
    let mut limits: Vec<LimitDef> = Vec::new();
    if let (Some(written), Some(rl)) = (&e.rate_limit, &rate_limit) {
        limits.extend(rate_limit_def(
            problems,
            written,
            rl,
            algorithm,
            burst,
            shadow_mode,
        ));
    }
    limits.extend(check_extra_limits(problems, e, unlimited, &limits));
    check_post_paid(problems, e, unlimited);
    let (own_name, replaces) = rate_limit.map_or((None, Vec::new()), |rl| (rl.name, rl.replaces));
    check_replaces_own(problems, &replaces, own_name.as_deref(), &limits);
    let mut descriptor = DescriptorDef {
        key,
        value: e.value.clone().filter(|v| !v.is_empty()),
        limits,
        unlimited,
        shadow_mode,
        replaces: replaces.into_iter().map(|r| r.value).collect(),
        detailed_metric: e.detailed_metric.unwrap_or(false),
        post_paid: e.post_paid.as_ref().is_some_and(|p| p.value),
        quota_mode: e.quota_mode.unwrap_or(false),
        metadata: e.metadata.clone(),
        share_threshold: check_share_threshold(problems, e),
        value_to_metric: e.value_to_metric.unwrap_or(false),
        descriptors: Vec::new(),
    };
    if let Some(children) = &e.descriptors {
        let parent = format!("{}.", composite_key(parent, &descriptor));
        descriptor.descriptors = check_descriptors(problems, children, &parent, depth + 1);
    }
    descriptor
}

/// The limit a `rate_limit` block makes, when it is limited and valid.
fn rate_limit_def(
    problems: &mut Problems<'_>,
    written: &At<RateLimitEntry>,
    rate_limit: &RateLimit,
    algorithm: Algorithm,
    burst: Option<u64>,
    shadow_mode: bool,
) -> Option<LimitDef> {
    let (rpu, window) = rate_limit.quota?;
    let name = rate_limit
        .name
        .clone()
        .unwrap_or_else(|| default_name(rpu, window));
    if let Some(requests) = &written.value.requests_per_unit {
        check_sliding_window_cap(problems, requests, requests.value, algorithm, &name);
    }
    Some(LimitDef {
        name,
        algorithm,
        quota: Quota {
            limit: rpu,
            window,
            burst: burst.unwrap_or(rpu),
        },
        shadow_mode,
        source: problems.source(written),
    })
}

/// The descriptor's key: required, not empty, no `*`.
fn check_key(problems: &mut Problems<'_>, entry: &At<DescriptorEntry>) -> String {
    match &entry.value.key {
        Some(key) if !key.value.is_empty() => {
            if key.value.contains('*') {
                let message = "a descriptor key cannot contain '*' (wildcards belong in value)";
                problems.about(key, message);
            }
            key.value.clone()
        }
        other => {
            let pos = other.as_ref().map_or(entry.pos, |k| k.pos);
            problems.at(pos, &entry.path, "descriptor has empty key");
            String::new()
        }
    }
}

/// Extension: the algorithm of the descriptor's `rate_limit`.
fn check_algorithm(problems: &mut Problems<'_>, e: &DescriptorEntry, unlimited: bool) -> Algorithm {
    let Some(algorithm) = &e.algorithm else {
        return Algorithm::FixedWindow;
    };
    if e.rate_limit.is_none() {
        let message = "algorithm applies to this descriptor's rate_limit, and it has none \
                       (entries of limits: take their own algorithm)";
        problems.about(algorithm, message);
    } else if unlimited {
        problems.about(
            algorithm,
            "algorithm does not apply to an unlimited rate_limit",
        );
    }
    algorithm.value.0
}

/// Extension: the burst of the descriptor's `rate_limit`, for a token bucket.
fn check_burst(
    problems: &mut Problems<'_>,
    e: &DescriptorEntry,
    algorithm: Algorithm,
    rate_limit: Option<&RateLimit>,
) -> Option<u64> {
    let burst = e.burst.as_ref()?;
    let message = if e.rate_limit.is_none() {
        "burst applies to this descriptor's rate_limit, and it has none".to_owned()
    } else if rate_limit.is_some_and(|rl| rl.unlimited) {
        "burst does not apply to an unlimited rate_limit".to_owned()
    } else if algorithm != Algorithm::TokenBucket {
        format!(
            "burst applies to token_bucket only (this rate_limit is {}; add algorithm: \
             token_bucket)",
            algorithm.as_str()
        )
    } else if rate_limit
        .and_then(|rl| rl.quota)
        .is_some_and(|(rpu, _)| rpu == 0)
    {
        "burst cannot be used with requests_per_unit: 0 (which blocks everything)".to_owned()
    } else {
        return Some(burst.value.0);
    };
    problems.about(burst, message);
    None
}

/// Extension: more limits on the same descriptor, inheriting its `shadow_mode`.
fn check_extra_limits(
    problems: &mut Problems<'_>,
    e: &DescriptorEntry,
    unlimited: bool,
    taken: &[LimitDef],
) -> Vec<LimitDef> {
    let Some(list) = &e.limits else {
        return Vec::new();
    };
    if unlimited {
        problems.about(list, "an unlimited descriptor cannot have limits");
    } else if list.value.is_empty() {
        problems.about_unless_reported(list, "must not be empty (leave it out instead)");
    }
    let taken: Vec<String> = taken.iter().map(|l| l.name.clone()).collect();
    let mut extra = check_limits(
        problems,
        &list.value,
        Algorithm::FixedWindow,
        &taken,
        "descriptor",
    );
    let shadow_mode = e.shadow_mode.unwrap_or(false);
    extra.iter_mut().for_each(|l| l.shadow_mode |= shadow_mode);
    extra
}

/// Extension: post-paid usage needs something to charge (an invalid limit is reported on its
/// own, so only a descriptor with no limit written at all is a post_paid problem).
fn check_post_paid(problems: &mut Problems<'_>, e: &DescriptorEntry, unlimited: bool) {
    let nothing_to_charge = unlimited || (e.rate_limit.is_none() && e.limits.is_none());
    if let Some(post_paid) = e
        .post_paid
        .as_ref()
        .filter(|p| p.value && nothing_to_charge)
    {
        let message = "post_paid applies to this descriptor's limits, and it has none";
        problems.about(post_paid, message);
    }
}

/// Upstream's `share_threshold` applies to a wildcard value only (upstream's message).
fn check_share_threshold(problems: &mut Problems<'_>, e: &DescriptorEntry) -> bool {
    let Some(share) = e.share_threshold.as_ref().filter(|s| s.value) else {
        return false;
    };
    let value = e.value.as_deref().unwrap_or("");
    if !value.contains('*') {
        let key = e.key.as_ref().map_or("", |k| k.value.as_str());
        let written = if value.is_empty() {
            key.to_owned()
        } else {
            format!("{key}_{value}")
        };
        let message = format!(
            "share_threshold can only be used with wildcard values (containing '*'), but found \
             key '{written}'"
        );
        problems.about(share, message);
    }
    true
}

/// A descriptor may not replace its own limits: its `rate_limit` (by the name written, or the
/// default one) or an entry of `limits:`.
fn check_replaces_own(
    problems: &mut Problems<'_>,
    replaces: &[At<String>],
    own_name: Option<&str>,
    limits: &[LimitDef],
) {
    for replaced in replaces {
        let own = Some(replaced.value.as_str()) == own_name;
        if own || limits.iter().any(|l| l.name == replaced.value) {
            problems.about(
                replaced,
                "replaces should not contain name of same descriptor",
            );
        }
    }
}

/// What a `rate_limit` block says, checked.
struct RateLimit {
    unlimited: bool,
    /// `(requests_per_unit, window)`, when the block is valid and limited.
    quota: Option<(u64, Micros)>,
    name: Option<String>,
    /// The names it replaces, with where each is.
    replaces: Vec<At<String>>,
}

fn check_rate_limit(problems: &mut Problems<'_>, entry: &At<RateLimitEntry>) -> Option<RateLimit> {
    let e = &entry.value;
    let name = e.name.clone().filter(|n| !n.is_empty());
    let replaces = check_replaces(problems, e);
    let unlimited = e.unlimited.unwrap_or(false);
    if unlimited {
        check_unlimited(problems, e);
        return Some(RateLimit {
            unlimited,
            quota: None,
            name,
            replaces,
        });
    }
    let window = check_window(problems, entry);
    let requests = match &e.requests_per_unit {
        Some(rpu) if rpu.value > u64::from(u32::MAX) => {
            problems.about(rpu, format_args!("must be at most {}", u32::MAX));
            None
        }
        Some(rpu) => Some(rpu.value),
        None => {
            let message = "missing requests_per_unit (or unlimited: true)";
            problems.missing(entry, "requests_per_unit", message);
            None
        }
    };
    Some(RateLimit {
        unlimited,
        quota: requests.zip(window),
        name,
        replaces,
    })
}

/// `replaces: [{name}]`: each entry names a limit.
fn check_replaces(problems: &mut Problems<'_>, e: &RateLimitEntry) -> Vec<At<String>> {
    let mut replaces = Vec::new();
    for entry in e.replaces.iter().flatten() {
        match entry.value.name.as_ref().filter(|n| !n.value.is_empty()) {
            Some(name) => replaces.push(name.clone()),
            None => problems.about(entry, "should not have an empty replaces entry"),
        }
    }
    replaces
}

/// `unlimited: true` takes no unit, requests_per_unit or unit_multiplier.
fn check_unlimited(problems: &mut Problems<'_>, e: &RateLimitEntry) {
    if let Some(unit) = &e.unit {
        problems.about(unit, "should not specify rate limit unit when unlimited");
    }
    if let Some(rpu) = &e.requests_per_unit {
        problems.about(rpu, "should not specify requests_per_unit when unlimited");
    }
    if let Some(multiplier) = &e.unit_multiplier {
        problems.about(
            multiplier,
            "should not specify unit_multiplier when unlimited",
        );
    }
}

/// The window: the unit's length times `unit_multiplier`, at most [`MAX_WINDOW`].
fn check_window(problems: &mut Problems<'_>, entry: &At<RateLimitEntry>) -> Option<Micros> {
    let e = &entry.value;
    let seconds = match &e.unit {
        Some(unit) => unit_seconds(&unit.value).or_else(|| {
            let message = format!(
                "invalid rate limit unit '{}' (expected second, minute, hour, day, week, \
                 month or year)",
                unit.value
            );
            problems.about(unit, message);
            None
        }),
        None => {
            let message =
                "invalid rate limit unit '' (rate_limit needs a unit, or unlimited: true)";
            problems.missing(entry, "unit", message);
            None
        }
    };
    let multiplier = e.unit_multiplier.as_ref().map_or(1, |m| m.value.0);
    let seconds = seconds?;
    let window = seconds
        .checked_mul(multiplier)
        .and_then(|s| s.checked_mul(MICROS_PER_SECOND))
        .filter(|w| *w <= MAX_WINDOW);
    if window.is_none() {
        let pos = e.unit_multiplier.as_ref().map_or(entry.pos, |m| m.pos);
        let unit = e.unit.as_ref().map_or("", |u| u.value.as_str());
        let days = MAX_WINDOW / MICROS_PER_DAY;
        let message = format!("the window ({multiplier} × {unit}) is longer than {days} days");
        problems.at(pos, &entry.path, message);
    }
    window
}

/// A unit's length in seconds; upstream reads units case-insensitively.
fn unit_seconds(unit: &str) -> Option<u64> {
    let upper = unit.to_ascii_uppercase();
    UNITS
        .iter()
        .find(|(name, _)| *name == upper)
        .map(|(_, seconds)| *seconds)
}
