//! One limit as written in either file shape: `{name, algorithm, limit, window, burst,
//! shadow_mode}`, and the checks every group of limits shares.
//!
//! Only the default algorithm differs between the shapes: token bucket in the service's own
//! files, fixed window in envoyproxy/ratelimit files (their `limits:` extension key), so a
//! limit added next to a `rate_limit` behaves like it unless it says otherwise.

use serde::Deserialize;

use crate::algorithm::{Algorithm, Micros, Quota, sliding_window};

use super::LimitDef;
use super::deserialize::{At, AtLeastOne, NotBlank, Parsed};
use super::duration::{format_duration, parse_duration};
use super::error::Problems;

/// One limit entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitEntry {
    name: Option<At<NotBlank>>,
    algorithm: Option<At<Parsed<Algorithm>>>,
    limit: Option<At<AtLeastOne>>,
    window: Option<At<String>>,
    burst: Option<At<AtLeastOne>>,
    shadow_mode: Option<bool>,
}

/// The name a limit gets when the config gives none: `<limit>-per-<window>`.
pub(crate) fn default_name(limit: u64, window: Micros) -> String {
    format!("{limit}-per-{}", format_duration(window))
}

/// Checks a list of limit entries; entries with problems are reported and left out. Names
/// must be unique within the `group` ("tier", "key", "descriptor"); `taken` holds names the
/// group already has from elsewhere (a descriptor's `rate_limit`).
pub(crate) fn check_limits(
    problems: &mut Problems<'_>,
    entries: &[At<LimitEntry>],
    default_algorithm: Algorithm,
    taken: &[String],
    group: &str,
) -> Vec<LimitDef> {
    let mut limits: Vec<LimitDef> = Vec::with_capacity(entries.len());
    let mut names: Vec<String> = taken.to_vec();
    for entry in entries {
        let Some(limit) = check_limit(problems, entry, default_algorithm) else {
            continue;
        };
        if names.contains(&limit.name) {
            let blamed = entry.value.name.as_ref().map_or(entry.pos, |n| n.pos);
            problems.at(
                blamed,
                &entry.path,
                format_args!(
                    "duplicate limit name '{}' (names must be unique within one {group})",
                    limit.name
                ),
            );
            continue;
        }
        names.push(limit.name.clone());
        limits.push(limit);
    }
    limits
}

/// Checks one limit entry; `None` when it has any problem (reported), including those found
/// while reading it.
fn check_limit(
    problems: &mut Problems<'_>,
    entry: &At<LimitEntry>,
    default_algorithm: Algorithm,
) -> Option<LimitDef> {
    let e = &entry.value;
    let algorithm = e
        .algorithm
        .as_ref()
        .map_or(default_algorithm, |a| a.value.0);
    let limit = e.limit.as_ref().map(|l| l.value.0);
    if limit.is_none() {
        problems.missing(entry, "limit", "missing 'limit' (how many per window)");
    }
    let window = match &e.window {
        Some(w) => parse_duration(&w.value)
            .map_err(|message| problems.about(w, message))
            .ok(),
        None => {
            problems.missing(entry, "window", "missing 'window' (a duration such as 1s)");
            None
        }
    };
    if let Some(burst) = e
        .burst
        .as_ref()
        .filter(|_| algorithm != Algorithm::TokenBucket)
    {
        let message = format!(
            "burst applies to token_bucket only (this limit is {})",
            algorithm.as_str()
        );
        problems.about(burst, message);
    }
    if let Some(written) = &e.limit {
        let name = name_of(e, written.value.0, window);
        check_sliding_window_cap(problems, written, written.value.0, algorithm, &name);
    }
    if problems.any_under(&entry.path) {
        return None;
    }
    let (limit, window) = (limit?, window?);
    let mut quota = Quota::new(limit, window);
    if let Some(burst) = &e.burst {
        quota.burst = burst.value.0;
    }
    Some(LimitDef {
        name: name_of(e, limit, Some(window)),
        algorithm,
        quota,
        shadow_mode: e.shadow_mode.unwrap_or(false),
        source: problems.source(entry),
    })
}

/// The entry's name, or the default one.
fn name_of(e: &LimitEntry, limit: u64, window: Option<Micros>) -> String {
    match (&e.name, window) {
        (Some(name), _) => name.value.0.clone(),
        (None, Some(window)) => default_name(limit, window),
        (None, None) => format!("{limit}-per-?"),
    }
}

/// A sliding window keeps one entry per admitted request, which every decision reads: its
/// limit is capped at [`sliding_window::MAX_LIMIT`], which bounds what a decision costs.
/// `written` is where `limit` was written.
pub(crate) fn check_sliding_window_cap<T>(
    problems: &mut Problems<'_>,
    written: &At<T>,
    limit: u64,
    algorithm: Algorithm,
    name: &str,
) {
    if algorithm == Algorithm::SlidingWindow && limit > sliding_window::MAX_LIMIT {
        let message = format!(
            "limit `{name}`: a sliding_window limit is at most {} (its log holds one entry per \
             admitted request, which every decision reads); for larger limits use \
             token_bucket or fixed_window",
            sliding_window::MAX_LIMIT
        );
        problems.about(written, message);
    }
}
