//! Configuration: one file or a directory, two file shapes, one validated [`Config`].
//!
//! A file with `domain:` is an envoyproxy/ratelimit file (`envoy_file.rs`); any other is in
//! the service's own format, `settings:` and `clients:` (`service_file.rs`). Each shape is
//! declared as serde structs with unknown keys denied, and each struct checks what it reads.
//! `yaml.rs` parses a file into a tree that knows every node's line and column, and
//! `deserialize.rs` reads the tree into the structs, listing every problem of a file rather
//! than the first. This module reads the files and merges them (one `settings`, domains,
//! tiers and keys from every file), then runs the checks that span files. The format itself,
//! for users, is described in `docs/configuration.md`.
//!
//! The raw value of an API key never leaves this module: keys are kept as SHA-256 digests,
//! labelled by tier or `name:`, and no message quotes one.

mod deserialize;
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
use std::str::FromStr;

use serde::Deserialize;

use crate::algorithm::{Algorithm, Quota};

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors, Pos, Source};
pub use service_file::parse_sha256;

use error::Problems;
use service_file::{KeyDef, KeyLimits, REJECT, ServiceFile};
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

/// Service-wide settings (`settings:` in an own-format file), read as written: each field
/// checks its own value.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The domain that API-key requests (`POST /check`, `AllowRequest`) are decided in.
    #[serde(deserialize_with = "deserialize::non_empty")]
    pub default_domain: String,
    /// Which rate-limit headers HTTP responses carry.
    #[serde(deserialize_with = "deserialize::from_text")]
    pub headers: HeaderStyle,
    /// What to decide when the store cannot be reached.
    #[serde(deserialize_with = "deserialize::from_text")]
    pub on_store_failure: FailurePolicy,
    /// The largest cost one request may ask for (at least 1).
    #[serde(deserialize_with = "deserialize::at_least_one")]
    pub max_cost: u64,
    /// The body Envoy's rate-limit filter returns on OVER_LIMIT (`raw_body`); none when empty.
    pub over_limit_body: String,
    /// How the ext_authz door builds descriptors from a `CheckRequest`
    /// (`ext_authz: { descriptors: [ [ { key, from }, … ], … ] }`).
    #[serde(deserialize_with = "service_file::ext_authz_descriptors")]
    pub ext_authz: Vec<ExtAuthzDescriptor>,
    /// The key under which an allowed ext_authz `CheckResponse` hands the client's limit to
    /// Envoy (`dynamic_metadata.<key> = {requests_per_unit, unit}`, the shape of the route's
    /// rate-limit `limit` override); empty: no metadata.
    pub ext_authz_budget_metadata_key: String,
    /// Global shadow mode (envoyproxy/ratelimit's `SHADOW_MODE`): every decision is taken and
    /// counted, and a refusal is answered as an admission.
    pub shadow_mode: bool,
    /// Global quota mode (envoyproxy/ratelimit's quota mode for every descriptor): see
    /// [`DescriptorDef::quota_mode`].
    pub quota_mode: bool,
    /// Envoy's rate-limit answers carry dynamic metadata (envoyproxy/ratelimit's
    /// `RESPONSE_DYNAMIC_METADATA`): the domain, the descriptors, and the `metadata` of the
    /// descriptors that passed, merged.
    pub response_dynamic_metadata: bool,
    /// The keys (first entry) of the descriptors an `AllowRequest` caller may add to its
    /// own; empty (the default): none.
    #[serde(deserialize_with = "service_file::descriptor_keys")]
    pub allow_request_descriptors: Vec<String>,
}

/// Settings forced on from the command line, over whatever the files say, at start-up and at
/// every reload (envoyproxy/ratelimit's `SHADOW_MODE`, `QUOTA_MODE` and
/// `RESPONSE_DYNAMIC_METADATA` are environment variables, not config keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForcedSettings {
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub response_dynamic_metadata: bool,
}

impl ForcedSettings {
    /// Turns on in `settings` what is forced on.
    pub fn apply(&self, settings: &mut Settings) {
        settings.shadow_mode |= self.shadow_mode;
        settings.quota_mode |= self.quota_mode;
        settings.response_dynamic_metadata |= self.response_dynamic_metadata;
    }
}

/// One descriptor the ext_authz door builds, entry by entry (at least one).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<ExtAuthzEntry>")]
pub struct ExtAuthzDescriptor {
    pub entries: Vec<ExtAuthzEntry>,
}

/// One entry: a descriptor key and where its value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "service_file::ExtAuthzEntryAsWritten")]
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

impl FromStr for ValueSource {
    type Err = String;

    fn from_str(s: &str) -> Result<ValueSource, String> {
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
            shadow_mode: false,
            quota_mode: false,
            response_dynamic_metadata: false,
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

impl FromStr for HeaderStyle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ietf" => Ok(HeaderStyle::Ietf),
            "x-ratelimit" => Ok(HeaderStyle::XRateLimit),
            "both" => Ok(HeaderStyle::Both),
            "none" => Ok(HeaderStyle::None),
            _ => Err(format!(
                "unknown header style '{s}' (expected ietf, x-ratelimit, both or none)"
            )),
        }
    }
}

impl FromStr for FailurePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail_open" => Ok(FailurePolicy::FailOpen),
            "fail_closed" => Ok(FailurePolicy::FailClosed),
            "local" => Ok(FailurePolicy::Local),
            _ => Err(format!(
                "unknown policy '{s}' (expected fail_open, fail_closed or local)"
            )),
        }
    }
}

/// What to add to "unknown key 'x'" where a user is likely to have meant something else:
/// (a field that tells which struct the key is in, the keys, the hint; `{key}` is replaced
/// by the key, `*` matches any key). The first match wins.
#[rustfmt::skip]
const UNKNOWN_KEY_HINTS: &[(&str, &[&str], &str)] = &[
    ("domain", &["settings", "clients"], "a file with domain: is an envoyproxy/ratelimit file; \
        settings and clients go in a file of their own"),
    ("post_paid", &["replaces", "unit", "requests_per_unit", "unlimited", "name",
        "unit_multiplier"], "{key} goes inside rate_limit"),
    ("post_paid", &["limit", "window"], "{key} goes in an entry of limits:"),
    ("post_paid", &["ratelimit", "rate_limits", "ratelimits"], "did you mean rate_limit?"),
    ("unit_multiplier", &["shadow_mode", "detailed_metric", "algorithm", "burst", "limits",
        "post_paid"], "{key} goes on the descriptor, next to rate_limit"),
    ("unit_multiplier", &["requestsperunit", "requests", "limit"],
        "did you mean requests_per_unit?"),
    ("unit_multiplier", &["soft_requests_per_unit"], UNSUPPORTED),
    ("clients", &["descriptors"], "descriptors belong in an envoyproxy/ratelimit file, which \
        has a domain:"),
    ("clients", &["*"], "this file has no domain:, so it is in the service's own format: \
        settings, clients"),
    ("sha256", &["api_key", "value", "secret"], "the key itself goes under key: (or its \
        SHA-256 under sha256:)"),
    ("sha256", &["limit", "window", "algorithm", "burst"], "a key's own limits go in a list \
        under limits:"),
    ("window", &["requests_per_unit", "unit"], "a limit here is written as limit: N, window: 1s"),
];

const UNSUPPORTED: &str = "an envoyproxy/ratelimit key that this service does not support";

/// The hint for an unknown `key` of the struct whose fields are `fields`, if any.
fn unknown_key_hint(key: &str, fields: &[&str]) -> Option<String> {
    UNKNOWN_KEY_HINTS
        .iter()
        .find(|(field, keys, _)| fields.contains(field) && (keys.contains(&key) || keys == &["*"]))
        .map(|(_, _, hint)| hint.replace("{key}", key))
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
    /// Where it was written.
    pub source: Source,
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
    /// envoyproxy/ratelimit's `quota_mode`: an exceeded limit of this descriptor does not
    /// refuse the request on its own (its status still says OVER_LIMIT); the request is
    /// refused only when every quota-mode descriptor it matched is over, or a limit not in
    /// quota mode refuses it.
    pub quota_mode: bool,
    /// envoyproxy/ratelimit's `metadata`: handed back in Envoy's dynamic metadata when the
    /// descriptor passes and `settings.response_dynamic_metadata` is on. A mapping.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// envoyproxy/ratelimit's `share_threshold` (a wildcard `value` only): every value the
    /// wildcard matches counts on one counter, instead of one counter per value.
    pub share_threshold: bool,
    /// envoyproxy/ratelimit's `value_to_metric`: this level's runtime value goes in the
    /// per-value metric's `descriptor` label (capped per limit).
    pub value_to_metric: bool,
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
        if !is_config_file_name(&entry.file_name().to_string_lossy()) {
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

/// Whether a file of this name in a config directory is read: `*.yaml` / `*.yml`, not hidden
/// (so a Kubernetes ConfigMap's `..data` entries, an editor's swap file or a log beside the
/// config are not).
pub fn is_config_file_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.') && (lower.ends_with(".yaml") || lower.ends_with(".yml"))
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
    match (&root.value, root.entries()) {
        // An empty file (or only comments) configures nothing.
        (Value::Null, _) => Some(FileContents::Service(ServiceFile::default())),
        (_, Some(entries)) => {
            let is_envoy = entries
                .iter()
                .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == "domain"));
            Some(if is_envoy {
                FileContents::Envoy(envoy_file::parse(&mut problems, &root, text)?)
            } else {
                FileContents::Service(service_file::parse(&mut problems, &root, text))
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
    let mut merged = Merged::default();
    for (file, contents) in files {
        let mut problems = Problems {
            file: &file,
            errors: &mut errors,
        };
        match contents {
            FileContents::Envoy(envoy) => merged.add_domain(&mut problems, envoy),
            FileContents::Service(service) => merged.add_service(&mut problems, service),
        }
    }
    let clients = merged.clients(&mut errors);
    if !errors.is_empty() {
        errors.sort_by_key(|e| {
            let file = order.iter().position(|f| *f == e.file);
            (
                file.unwrap_or(usize::MAX),
                e.line.unwrap_or(0),
                e.column.unwrap_or(0),
            )
        });
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        settings: merged.settings.map(|(s, _)| s).unwrap_or_default(),
        domains: merged.domains,
        clients,
    })
}

/// What the files say together, before the checks across files.
#[derive(Default)]
struct Merged {
    /// The settings, and the file they came from.
    settings: Option<(Settings, String)>,
    domains: Vec<DomainConfig>,
    /// `unknown_key:` as written, where, and in which file.
    unknown_key: Option<(String, Pos, String)>,
    /// Tiers by name, with the file each came from.
    tiers: BTreeMap<String, (Vec<LimitDef>, String)>,
    /// Tiers with problems (reported): keys naming them are not reported again.
    broken_tiers: Vec<String>,
    /// Keys with their file, not yet resolved against the tiers.
    keys: Vec<(String, KeyDef)>,
}

impl Merged {
    fn add_domain(&mut self, problems: &mut Problems<'_>, envoy: envoy_file::EnvoyFile) {
        let Some(domain) = envoy.domain else { return };
        if let Some(first) = self.domains.iter().find(|d| d.domain == domain) {
            let message = format!(
                "duplicate domain '{domain}' in config file (first in {})",
                first.file
            );
            return problems.at(envoy.domain_pos, "domain", message);
        }
        self.domains.push(DomainConfig {
            domain,
            file: problems.file.to_owned(),
            descriptors: envoy.descriptors,
        });
    }

    fn add_service(&mut self, problems: &mut Problems<'_>, service: ServiceFile) {
        let file = problems.file.to_owned();
        if let Some((settings, pos)) = service.settings {
            match &self.settings {
                Some((_, first)) => problems.at(
                    pos,
                    "settings",
                    format_args!("settings may appear in one file only (first in {first})"),
                ),
                None => self.settings = Some((settings, file.clone())),
            }
        }
        if let Some((name, pos)) = service.unknown_key {
            match &self.unknown_key {
                Some((_, _, first)) => problems.at(
                    pos,
                    "clients.unknown_key",
                    format_args!("unknown_key may be set in one file only (first in {first})"),
                ),
                None => self.unknown_key = Some((name, pos, file.clone())),
            }
        }
        for tier in service.tiers {
            if let Some((_, first)) = self.tiers.get(&tier.name) {
                let message = format!("tier '{}' is already defined in {first}", tier.name);
                problems.at(tier.pos, "clients.tiers", message);
                continue;
            }
            self.tiers.insert(tier.name, (tier.limits, file.clone()));
        }
        self.broken_tiers.extend(service.broken_tiers);
        self.keys
            .extend(service.keys.into_iter().map(|k| (file.clone(), k)));
    }

    /// Whether a tier of that name was written (well or not).
    fn has_tier(&self, name: &str) -> bool {
        self.tiers.contains_key(name) || self.broken_tiers.iter().any(|b| b == name)
    }

    /// The client table: `unknown_key` and every key resolved against the tiers.
    fn clients(&mut self, errors: &mut Vec<ConfigError>) -> ClientTable {
        let unknown_key = match self.unknown_key.take() {
            None => UnknownKey::Reject,
            Some((name, _, _)) if name == REJECT => UnknownKey::Reject,
            Some((name, pos, file)) => {
                if !self.has_tier(&name) {
                    let message =
                        format!("names tier '{name}', which does not exist (or use reject)");
                    let mut problems = Problems {
                        file: &file,
                        errors,
                    };
                    problems.at(pos, "clients.unknown_key", message);
                }
                UnknownKey::Tier(name)
            }
        };
        let keys = self.resolve_keys(errors);
        ClientTable {
            unknown_key,
            tiers: std::mem::take(&mut self.tiers)
                .into_iter()
                .map(|(name, (limits, _))| (name, limits))
                .collect(),
            keys,
        }
    }

    /// Each key with its limits (its tier's or its own); duplicates and unknown tiers reported.
    fn resolve_keys(&mut self, errors: &mut Vec<ConfigError>) -> Vec<ClientKey> {
        let mut keys = Vec::with_capacity(self.keys.len());
        let mut seen: HashMap<[u8; 32], (String, String)> = HashMap::new();
        for (file, key) in std::mem::take(&mut self.keys) {
            let mut problems = Problems {
                file: &file,
                errors,
            };
            if let Some((first_file, first_path)) = seen.get(&key.digest) {
                let message =
                    format!("duplicate key: the same key as {first_path} in {first_file}");
                problems.at(key.pos, &key.path, message);
                continue;
            }
            seen.insert(key.digest, (file.clone(), key.path.clone()));
            let (limits, tier_name) = match key.limits {
                KeyLimits::Own(limits) => (limits, None),
                KeyLimits::Tier(name, pos) => match self.tiers.get(&name) {
                    Some((limits, _)) => (limits.clone(), Some(name)),
                    None => {
                        if !self.has_tier(&name) {
                            let message = format!("unknown tier '{name}'");
                            problems.at(pos, &yaml::join(&key.path, "tier"), message);
                        }
                        continue;
                    }
                },
            };
            let label = key
                .name
                .or(tier_name)
                .unwrap_or_else(|| "custom".to_owned());
            keys.push(ClientKey {
                digest: key.digest,
                label,
                limits,
            });
        }
        keys
    }
}
