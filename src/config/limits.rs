//! One limit as written in either file shape: `{name, algorithm, limit, window, burst,
//! shadow_mode}`, and the checks every group of limits shares.
//!
//! Only the default algorithm differs between the shapes: token bucket in the service's own
//! files, fixed window in envoyproxy/ratelimit files (their `limits:` extension key), so a
//! limit added next to a `rate_limit` behaves like it unless it says otherwise.

use crate::algorithm::{Algorithm, Micros, Quota};

use super::LimitDef;
use super::duration::{format_duration, parse_duration};
use super::error::{Pos, Problems};
use super::yaml::{self, Node, index, no_hint};

/// Keys of one limit entry.
const LIMIT_KEYS: [&str; 6] = [
    "name",
    "algorithm",
    "limit",
    "window",
    "burst",
    "shadow_mode",
];

/// The name a limit gets when the config gives none: `<limit>-per-<window>`.
pub(crate) fn default_name(limit: u64, window: Micros) -> String {
    format!("{limit}-per-{}", format_duration(window))
}

/// Reads a list of limit entries at `path`; entries with problems are reported and left out.
/// Names must be unique within the `group` ("tier", "key", "descriptor"); `taken` holds names
/// the group already has from elsewhere (a descriptor's `rate_limit`).
pub(crate) fn parse_limit_list(
    problems: &mut Problems<'_>,
    items: &[Node],
    path: &str,
    default_algorithm: Algorithm,
    taken: &[String],
    group: &str,
) -> Vec<LimitDef> {
    let mut limits: Vec<LimitDef> = Vec::with_capacity(items.len());
    let mut names: Vec<String> = taken.to_vec();
    for (i, item) in items.iter().enumerate() {
        let item_path = index(path, i);
        if let Some((limit, name_pos)) = parse_limit(problems, item, &item_path, default_algorithm)
        {
            if names.contains(&limit.name) {
                problems.at(
                    name_pos,
                    &item_path,
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
    }
    limits
}

/// Reads one limit entry. Returns it with the position to blame for a duplicate name.
fn parse_limit(
    problems: &mut Problems<'_>,
    node: &Node,
    path: &str,
    default_algorithm: Algorithm,
) -> Option<(LimitDef, Pos)> {
    let fields = yaml::fields(problems, node, path, &LIMIT_KEYS, &|key| match key {
        "requests_per_unit" | "unit" => {
            Some("a limit here is written as limit: N, window: 1s".to_owned())
        }
        _ => no_hint(key),
    })?;
    let before = problems.errors.len();

    let name = yaml::text(problems, &fields, "name");
    if let Some((name, node)) = &name
        && name.trim().is_empty()
    {
        problems.at(node.pos, &fields.path_of("name"), "must not be empty");
    }

    let algorithm = match yaml::text(problems, &fields, "algorithm") {
        None => default_algorithm,
        Some((text, node)) => match text.parse::<Algorithm>() {
            Ok(algorithm) => algorithm,
            Err(e) => {
                problems.at(node.pos, &fields.path_of("algorithm"), e);
                default_algorithm
            }
        },
    };

    let limit = match yaml::uint(problems, &fields, "limit") {
        Some((0, node)) => {
            problems.at(node.pos, &fields.path_of("limit"), "must be at least 1");
            None
        }
        Some((n, _)) => Some(n),
        None => {
            if fields.get("limit").is_none() {
                problems.at(fields.pos, path, "missing 'limit' (how many per window)");
            }
            None
        }
    };

    let window = match yaml::text(problems, &fields, "window") {
        Some((text, node)) => match parse_duration(&text) {
            Ok(window) => Some(window),
            Err(message) => {
                problems.at(node.pos, &fields.path_of("window"), message);
                None
            }
        },
        None => {
            if fields.get("window").is_none() {
                problems.at(fields.pos, path, "missing 'window' (a duration such as 1s)");
            }
            None
        }
    };

    let burst = match yaml::uint(problems, &fields, "burst") {
        Some((0, node)) => {
            problems.at(node.pos, &fields.path_of("burst"), "must be at least 1");
            None
        }
        Some((n, node)) if algorithm != Algorithm::TokenBucket => {
            problems.at(
                node.pos,
                &fields.path_of("burst"),
                format_args!(
                    "burst applies to token_bucket only (this limit is {})",
                    algorithm.as_str()
                ),
            );
            Some(n)
        }
        other => other.map(|(n, _)| n),
    };

    let shadow_mode = yaml::boolean(problems, &fields, "shadow_mode").unwrap_or(false);

    if problems.errors.len() > before {
        return None;
    }
    let (limit, window) = (limit?, window?);
    let mut quota = Quota::new(limit, window);
    if let Some(burst) = burst {
        quota.burst = burst;
    }
    let (name, name_pos) = match name {
        Some((name, node)) => (name, node.pos),
        None => (default_name(limit, window), fields.pos),
    };
    Some((
        LimitDef {
            name,
            algorithm,
            quota,
            shadow_mode,
        },
        name_pos,
    ))
}
