//! Configuration: one directory (or one file), two file shapes, one validated [`Config`].
//!
//! [`load`] reads a file, or every `*.yaml` / `*.yml` file directly in a directory (sorted by
//! name, hidden files ignored, not recursive). Each file is one of two shapes, told apart by
//! its top level:
//!
//! - **A file with `domain:` is an envoyproxy/ratelimit file**, loaded unchanged with that
//!   project's rules (see `envoy_file.rs` for the rules and the few places we are stricter).
//!   Its limits are fixed windows aligned to the unit, as upstream. Opt-in extension keys on a
//!   descriptor: `algorithm:`, `burst:`, `limits:` and `post_paid:` (usage reported after the
//!   fact, e.g. a stream-done charge of the tokens a response used: recorded whatever the
//!   verdict, into debt if need be, so later requests are refused until it is paid off).
//!
//!   ```yaml
//!   domain: edge
//!   descriptors:
//!     - key: remote_address
//!       rate_limit: { unit: second, requests_per_unit: 10 }
//!       algorithm: token_bucket        # extension
//!       burst: 20                      # extension, token bucket only
//!       limits:                        # extension: more limits on the same descriptor
//!         - { name: per-day, limit: 10000, window: 1d }
//!     - key: tenant
//!       post_paid: true                # extension: charges recorded whatever the verdict
//!       limits: [ { name: tokens, limit: 1000, window: 1m } ]
//!   ```
//!
//! - **Any other file is in the service's own format**: `settings:` (in at most one file) and
//!   the `clients:` table of API keys (tables from several files merge). Limits here are token
//!   buckets unless they say otherwise.
//!
//!   ```yaml
//!   settings: { default_domain: ratelimiter, headers: ietf, on_store_failure: fail_closed, max_cost: 1000 }
//!   # also: over_limit_body, ext_authz (descriptors), ext_authz_budget_metadata_key
//!   # (default ratelimit_budget; "" turns the budget metadata off)
//!   clients:
//!     unknown_key: reject              # or the name of a tier
//!     tiers:
//!       demo: [ { name: demo, limit: 5, window: 10s } ]
//!     keys:
//!       - { key: my-key, tier: demo }                          # plain key, for demos
//!       - { sha256: "<64 hex>", tier: demo, name: acme }       # how production holds keys
//!       - { key: special, limits: [ { limit: 100, window: 1m } ] }
//!   ```
//!
//! A limit is `{name, algorithm, limit, window, burst, shadow_mode}`; `window` is a duration
//! such as `500ms`, `10s`, `1h30m`, `1d` (see [`parse_duration`]); a limit without a name is
//! called `<limit>-per-<window>` (`10-per-1s`). Names are unique within one tier, key or
//! descriptor.
//!
//! Loading never stops at the first problem: every file is read and every problem is
//! reported ([`ConfigErrors`]), with `file:line:column` wherever the location is known. A YAML
//! syntax error ends only the file it is in. Unknown keys are errors everywhere. Inputs are
//! bounded: files over 4 MiB, YAML nested deeper than 48 levels and descriptors nested deeper
//! than 16 levels are rejected.
//!
//! The raw value of an API key never leaves this module: keys are kept as SHA-256 digests,
//! labelled by tier or `name:`, and no message quotes one.

mod duration;
mod envoy_file;
mod error;
mod limits;
mod service_file;
#[cfg(test)]
mod tests;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::algorithm::{Algorithm, Quota};

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};

use error::{Pos, Problems};
use service_file::{KeyLimits, REJECT, ServiceFile};
use yaml::Value;

/// Files larger than this are refused before they are parsed.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Everything the service is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub settings: Settings,
    /// envoyproxy/ratelimit domains, in file order.
    pub domains: Vec<DomainConfig>,
    pub clients: ClientTable,
}

/// Service-wide settings (`settings:` in an own-format file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The domain that API-key requests (`POST /check`, `AllowRequest`) are decided in.
    pub default_domain: String,
    /// Which rate-limit headers HTTP responses carry.
    pub headers: HeaderStyle,
    /// What to decide when the store cannot be reached.
    pub on_store_failure: FailurePolicy,
    /// The largest cost one request may ask for (at least 1).
    pub max_cost: u64,
    /// The body Envoy's rate-limit filter returns on OVER_LIMIT (`raw_body`); none when empty.
    pub over_limit_body: String,
    /// How the ext_authz door builds descriptors from a `CheckRequest`.
    pub ext_authz: Vec<ExtAuthzDescriptor>,
    /// The key under which an allowed ext_authz `CheckResponse` hands the client's limit to
    /// Envoy (`dynamic_metadata.<key> = {requests_per_unit, unit}`, the shape of the route's
    /// rate-limit `limit` override); empty: no metadata.
    pub ext_authz_budget_metadata_key: String,
    /// The keys (first entry) of the descriptors an `AllowRequest` caller may add to its
    /// own; empty (the default): none.
    pub allow_request_descriptors: Vec<String>,
}

/// One descriptor the ext_authz door builds, entry by entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtAuthzDescriptor {
    pub entries: Vec<ExtAuthzEntry>,
}

/// One entry: a descriptor key and where its value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtAuthzEntry {
    pub key: String,
    pub from: ValueSource,
}

/// Where an ext_authz descriptor value comes from. In YAML: `header:<name>`, `path`,
/// `method`, `host`, `context:<name>` (Envoy's `context_extensions`) or `value:<literal>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// A request header, by lower-case name.
    Header(String),
    Path,
    Method,
    Host,
    ContextExtension(String),
    Literal(String),
}

impl ValueSource {
    pub fn parse(s: &str) -> Result<ValueSource, String> {
        let nonempty = |v: &str, what: &str| {
            if v.is_empty() {
                Err(format!("`{what}:` needs a name after the colon"))
            } else {
                Ok(v.to_owned())
            }
        };
        match s.split_once(':') {
            Some(("header", name)) => Ok(ValueSource::Header(
                nonempty(name, "header")?.to_ascii_lowercase(),
            )),
            Some(("context", name)) => {
                Ok(ValueSource::ContextExtension(nonempty(name, "context")?))
            }
            Some(("value", v)) => Ok(ValueSource::Literal(v.to_owned())),
            None if s == "path" => Ok(ValueSource::Path),
            None if s == "method" => Ok(ValueSource::Method),
            None if s == "host" => Ok(ValueSource::Host),
            _ => Err(format!(
                "unknown value source '{s}' (expected header:<name>, path, method, host, context:<name> or value:<literal>)"
            )),
        }
    }
}

/// Where ext_authz puts the client's limit unless `settings.ext_authz_budget_metadata_key`
/// says otherwise.
pub const DEFAULT_BUDGET_METADATA_KEY: &str = "ratelimit_budget";

/// The ext_authz default: the API key from the `x-api-key` header, as `POST /check` does.
pub fn default_ext_authz() -> Vec<ExtAuthzDescriptor> {
    vec![ExtAuthzDescriptor {
        entries: vec![ExtAuthzEntry {
            key: "api_key".to_owned(),
            from: ValueSource::Header("x-api-key".to_owned()),
        }],
    }]
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_domain: "ratelimiter".to_owned(),
            headers: HeaderStyle::Ietf,
            on_store_failure: FailurePolicy::FailClosed,
            max_cost: 1000,
            over_limit_body: String::new(),
            ext_authz: default_ext_authz(),
            ext_authz_budget_metadata_key: DEFAULT_BUDGET_METADATA_KEY.to_owned(),
            allow_request_descriptors: Vec::new(),
        }
    }
}

/// `headers:` — `ietf` (`RateLimit`, `RateLimit-Policy`), `x-ratelimit`, `both` or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderStyle {
    Ietf,
    XRateLimit,
    Both,
    None,
}

/// `on_store_failure:` — `fail_open`, `fail_closed` or `local` (decide from memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    FailOpen,
    FailClosed,
    Local,
}

/// One limit: an algorithm and a quota, with a name unique among its siblings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitDef {
    pub name: String,
    pub algorithm: Algorithm,
    /// `limit >= 1`, except an envoyproxy/ratelimit `requests_per_unit: 0`, which upstream
    /// uses to block everything (`limit == 0`, `burst == 0`: every cost is refused).
    pub quota: Quota,
    /// Decide and count, but always allow.
    pub shadow_mode: bool,
}

/// One envoyproxy/ratelimit domain, from one file.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainConfig {
    pub domain: String,
    /// The file it came from, for messages.
    pub file: String,
    pub descriptors: Vec<DescriptorDef>,
}

/// One node of a descriptor tree.
#[derive(Clone, Debug, PartialEq)]
pub struct DescriptorDef {
    pub key: String,
    /// `None` matches any value. A value ending in or containing `*` is a wildcard (`*`
    /// matches any run of characters), kept as written.
    pub value: Option<String>,
    /// The `rate_limit` (first, when present) and the extension `limits:`. Empty for a
    /// descriptor without limits (a parent, or a whitelist entry) and for an unlimited one.
    pub limits: Vec<LimitDef>,
    /// `rate_limit: { unlimited: true }`: matched, counted in metrics, never limited.
    pub unlimited: bool,
    pub shadow_mode: bool,
    /// Names of limits this descriptor's limits replace (`rate_limit.replaces`).
    pub replaces: Vec<String>,
    pub detailed_metric: bool,
    /// Extension `post_paid: true`: a request with a cost (a stream-done charge of tokens
    /// used) is recorded whatever the verdict, into debt if need be.
    pub post_paid: bool,
    pub descriptors: Vec<DescriptorDef>,
}

/// The API keys the service knows, from every own-format file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientTable {
    pub unknown_key: UnknownKey,
    pub tiers: BTreeMap<String, Vec<LimitDef>>,
    pub keys: Vec<ClientKey>,
}

/// What happens to a request whose API key is not in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum UnknownKey {
    /// Refuse it (401).
    #[default]
    Reject,
    /// Limit it with this tier's limits (the tier exists).
    Tier(String),
}

/// One known API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKey {
    /// SHA-256 of the raw key.
    pub digest: [u8; 32],
    /// For metrics and logs: `name:` if given, else the tier's name, else `custom`. Never
    /// the key.
    pub label: String,
    /// The tier's limits, or the key's own.
    pub limits: Vec<LimitDef>,
}

/// Loads a config file, or every `*.yaml` / `*.yml` file in a directory (not recursive,
/// sorted by name, hidden files ignored).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let shown = path.display().to_string();
    let metadata = fs::metadata(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::file_level(
            &shown,
            format!("cannot read: {e}"),
        )])
    })?;
    let files = if metadata.is_dir() {
        config_files(path, &shown)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut errors = Vec::new();
    let mut parsed = Vec::with_capacity(files.len());
    let order: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    for file in files {
        let name = file.display().to_string();
        match read_bounded(&file) {
            Ok(text) => {
                if let Some(contents) = parse_file(&name, &text, &mut errors) {
                    parsed.push((name, contents));
                }
            }
            Err(message) => errors.push(ConfigError::file_level(&name, message)),
        }
    }
    assemble(parsed, errors, &order)
}

/// Parses one file's text as if it were the whole config (for tests and tools).
pub fn parse_str(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let parsed = parse_file(name, text, &mut errors)
        .map(|contents| vec![(name.to_owned(), contents)])
        .unwrap_or_default();
    assemble(parsed, errors, &[name.to_owned()])
}

/// The config files directly in `dir`, sorted by name.
fn config_files(dir: &Path, shown: &str) -> Result<Vec<PathBuf>, ConfigErrors> {
    let fail = |message: String| ConfigErrors(vec![ConfigError::file_level(shown, message)]);
    let entries = fs::read_dir(dir).map_err(|e| fail(format!("cannot read directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot read directory: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let lower = name.to_ascii_lowercase();
        if name.starts_with('.') || !(lower.ends_with(".yaml") || lower.ends_with(".yml")) {
            continue;
        }
        // Follows symlinks (a Kubernetes ConfigMap mount is symlinks); a broken one is
        // kept so that reading it reports the problem.
        let path = entry.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        files.push(path);
    }
    if files.is_empty() {
        return Err(fail(format!(
            "no config files in {shown} (expected *.yaml or *.yml files)"
        )));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8.
fn read_bounded(path: &Path) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let too_big = || format!("file is larger than {} MiB", MAX_FILE_BYTES / (1024 * 1024));
    if file.metadata().is_ok_and(|m| m.len() > MAX_FILE_BYTES) {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
}

/// One file, read.
enum FileContents {
    Envoy(envoy_file::EnvoyFile),
    Service(ServiceFile),
}

/// Parses one file, reporting its problems; `None` when nothing of it could be read.
fn parse_file(name: &str, text: &str, errors: &mut Vec<ConfigError>) -> Option<FileContents> {
    if text.len() as u64 > MAX_FILE_BYTES {
        errors.push(ConfigError::file_level(
            name,
            format!("file is larger than {} MiB", MAX_FILE_BYTES / (1024 * 1024)),
        ));
        return None;
    }
    let mut problems = Problems { file: name, errors };
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            problems.at(e.pos, "", format_args!("invalid YAML: {}", e.message));
            return None;
        }
    };
    match &root.value {
        // An empty file (or only comments) configures nothing.
        Value::Null => Some(FileContents::Service(ServiceFile::default())),
        Value::Map(entries) => {
            let is_envoy = entries
                .iter()
                .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == "domain"));
            Some(if is_envoy {
                FileContents::Envoy(envoy_file::parse(&mut problems, &root)?)
            } else {
                FileContents::Service(service_file::parse(&mut problems, &root))
            })
        }
        _ => {
            problems.at(
                root.pos,
                "",
                format_args!("the top level must be a mapping, found {}", root.kind()),
            );
            None
        }
    }
}

/// Merges the files into one config and runs the checks that span files. Problems come out
/// sorted by file (in `order`), then line and column.
fn assemble(
    files: Vec<(String, FileContents)>,
    mut errors: Vec<ConfigError>,
    order: &[String],
) -> Result<Config, ConfigErrors> {
    let mut settings: Option<(Settings, String)> = None;
    let mut domains: Vec<DomainConfig> = Vec::new();
    let mut unknown_key: Option<(String, Pos, String)> = None;
    let mut tiers: BTreeMap<String, (Vec<LimitDef>, String)> = BTreeMap::new();
    let mut broken_tiers: Vec<String> = Vec::new();
    let mut pending_keys = Vec::new();

    for (file, contents) in files {
        let mut problems = Problems {
            file: &file,
            errors: &mut errors,
        };
        match contents {
            FileContents::Envoy(envoy) => {
                let Some(domain) = envoy.domain else { continue };
                if let Some(first) = domains.iter().find(|d| d.domain == domain) {
                    problems.at(
                        envoy.domain_pos,
                        "domain",
                        format_args!(
                            "duplicate domain '{domain}' in config file (first in {})",
                            first.file
                        ),
                    );
                    continue;
                }
                domains.push(DomainConfig {
                    domain,
                    file: file.clone(),
                    descriptors: envoy.descriptors,
                });
            }
            FileContents::Service(service) => {
                if let Some((new, pos)) = service.settings {
                    match &settings {
                        Some((_, first)) => problems.at(
                            pos,
                            "settings",
                            format_args!("settings may appear in one file only (first in {first})"),
                        ),
                        None => settings = Some((new, file.clone())),
                    }
                }
                if let Some((name, pos)) = service.unknown_key {
                    match &unknown_key {
                        Some((_, _, first)) => problems.at(
                            pos,
                            "clients.unknown_key",
                            format_args!(
                                "unknown_key may be set in one file only (first in {first})"
                            ),
                        ),
                        None => unknown_key = Some((name, pos, file.clone())),
                    }
                }
                for tier in service.tiers {
                    if let Some((_, first)) = tiers.get(&tier.name) {
                        problems.at(
                            tier.pos,
                            "clients.tiers",
                            format_args!("tier '{}' is already defined in {first}", tier.name),
                        );
                        continue;
                    }
                    tiers.insert(tier.name, (tier.limits, file.clone()));
                }
                broken_tiers.extend(service.broken_tiers);
                pending_keys.extend(service.keys.into_iter().map(|k| (file.clone(), k)));
            }
        }
    }

    let known = |name: &str| tiers.contains_key(name) || broken_tiers.iter().any(|b| b == name);

    let unknown_key = match unknown_key {
        None => UnknownKey::Reject,
        Some((name, _, _)) if name == REJECT => UnknownKey::Reject,
        Some((name, pos, file)) => {
            if !known(&name) {
                Problems {
                    file: &file,
                    errors: &mut errors,
                }
                .at(
                    pos,
                    "clients.unknown_key",
                    format_args!("names tier '{name}', which does not exist (or use reject)"),
                );
            }
            UnknownKey::Tier(name)
        }
    };

    let mut keys = Vec::with_capacity(pending_keys.len());
    let mut seen: HashMap<[u8; 32], (String, String)> = HashMap::new();
    for (file, key) in pending_keys {
        let mut problems = Problems {
            file: &file,
            errors: &mut errors,
        };
        if let Some((first_file, first_path)) = seen.get(&key.digest) {
            problems.at(
                key.pos,
                &key.path,
                format_args!("duplicate key: the same key as {first_path} in {first_file}"),
            );
            continue;
        }
        seen.insert(key.digest, (file.clone(), key.path.clone()));
        let (limits, tier_name) = match key.limits {
            KeyLimits::Own(limits) => (limits, None),
            KeyLimits::Tier(name, pos) => match tiers.get(&name) {
                Some((limits, _)) => (limits.clone(), Some(name)),
                None => {
                    if !known(&name) {
                        problems.at(
                            pos,
                            &yaml::join(&key.path, "tier"),
                            format_args!("unknown tier '{name}'"),
                        );
                    }
                    continue;
                }
            },
        };
        keys.push(ClientKey {
            digest: key.digest,
            label: key
                .name
                .or(tier_name)
                .unwrap_or_else(|| "custom".to_owned()),
            limits,
        });
    }

    if !errors.is_empty() {
        errors.sort_by_key(|e| {
            let file = order
                .iter()
                .position(|f| *f == e.file)
                .unwrap_or(usize::MAX);
            (file, e.line.unwrap_or(0), e.column.unwrap_or(0))
        });
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        settings: settings.map(|(s, _)| s).unwrap_or_default(),
        domains,
        clients: ClientTable {
            unknown_key,
            tiers: tiers
                .into_iter()
                .map(|(name, (limits, _))| (name, limits))
                .collect(),
            keys,
        },
    })
}
