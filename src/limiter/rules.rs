//! The compiled configuration: one descriptor tree per domain, and the matching engine.
//!
//! Both config shapes end up here. envoyproxy/ratelimit files become trees as they are; the
//! service's own client table becomes the branch `api_key` of the default domain, whose
//! children are looked up by the SHA-256 of the presented key (so config files and memory
//! need not hold raw keys), and whose counters are named by that digest too (so the admin
//! API can find a client's counters from the configuration alone). There is one matching
//! engine, not two.
//!
//! Matching follows envoyproxy/ratelimit: walk the request's entries from the root; at each
//! level prefer an exact `key=value` child, then a wildcard value (`*` matches any run of
//! characters), then the key-only child. A descriptor is limited by the limits of the node its
//! last entry lands on; a descriptor that leaves the tree early has no limit.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::request::API_KEY;
use crate::algorithm::{Algorithm, Quota, gcra};
use crate::config::{
    ClientTable, Config, ConfigError, ConfigErrors, DescriptorDef, LimitDef, Settings, UnknownKey,
    parse_sha256,
};
use crate::store::{Backend, Store};

/// One configured limit, shared by every request that matches it.
#[derive(Debug)]
pub struct LimitRule {
    pub name: Arc<str>,
    pub algorithm: Algorithm,
    pub quota: Quota,
    pub shadow: bool,
    /// Names of limits this one replaces when both apply to one request.
    pub replaces: Box<[Box<str>]>,
    pub detailed_metric: bool,
    /// The descriptor records usage after the fact (`post_paid: true`): a request with a cost
    /// is charged whatever the verdict, into debt if need be.
    pub post_paid: bool,
    /// envoyproxy/ratelimit's `quota_mode` (see [`crate::config::DescriptorDef::quota_mode`]).
    pub quota_mode: bool,
    /// The descriptor's `metadata`, handed back to Envoy when it passes.
    pub metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Per entry of the descriptor, the name that stands for its value in the counter's name,
    /// so everything it stands for counts on one counter: envoyproxy/ratelimit's
    /// `share_threshold` wildcard, or a known API key's digest (`sha256:<hex>`). `None` when
    /// the request's own values name the counter (the usual case).
    pub shared_values: Option<SharedValues>,
    /// envoyproxy/ratelimit's `value_to_metric` on this descriptor or one above it: how each
    /// level is written in the per-value metric. `None` when no level sets it.
    pub metric_levels: Option<MetricLevels>,
    /// Identifies the limit inside a counter key: a hash of what gives its state meaning
    /// (name, algorithm, window), so a reload that changes the count keeps the counters and
    /// one that changes the window or algorithm starts afresh.
    pub id: u64,
}

/// Per descriptor entry, the name that stands for its value in the counter's name.
pub type SharedValues = Arc<[Option<Box<str>>]>;

/// How one level of a descriptor is written in the per-value metric's `descriptor` label
/// (envoyproxy/ratelimit's stats key under `value_to_metric`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricLevel {
    /// `key`: a key-only or wildcard level without `value_to_metric`.
    Key,
    /// `key_value`, the request's value: `value_to_metric`, or an exact configured value.
    KeyValue,
    /// `key_pattern`: a wildcard level, written as its pattern (`files*`), unless it sets
    /// `value_to_metric` without `share_threshold`.
    KeyPattern(Box<str>),
}

/// Per descriptor entry, how it is written in the per-value metric.
pub type MetricLevels = Arc<[MetricLevel]>;

/// What a descriptor's limits inherit from the levels above it.
#[derive(Clone, Default)]
struct Inherited {
    /// upstream's composite key, for messages.
    path: String,
    /// Per level, the wildcard its counters share (`share_threshold`), if any.
    shared: Vec<Option<Box<str>>>,
    /// Per level, how the per-value metric writes it.
    metric: Vec<MetricLevel>,
    /// Whether any level so far sets `value_to_metric`.
    value_to_metric: bool,
}

impl Inherited {
    /// The same with descriptor `def` as the next level.
    fn below(&self, def: &DescriptorDef) -> Inherited {
        let mut next = self.clone();
        next.path = match &def.value {
            Some(v) => format!("{}.{}_{v}", self.path, def.key),
            None => format!("{}.{}", self.path, def.key),
        };
        let wildcard = def.value.as_deref().filter(|v| v.contains('*'));
        next.shared
            .push(wildcard.filter(|_| def.share_threshold).map(Into::into));
        // As upstream writes its stats key: a wildcard level by its pattern (the runtime value
        // under `value_to_metric` alone), an exact level by its value, a key-only level by
        // its key (and value under `value_to_metric`).
        next.metric.push(match (def.value.as_deref(), wildcard) {
            (_, Some(w)) if def.share_threshold || !def.value_to_metric => {
                MetricLevel::KeyPattern(w.into())
            }
            (Some(_), _) => MetricLevel::KeyValue,
            (None, _) if def.value_to_metric => MetricLevel::KeyValue,
            (None, _) => MetricLevel::Key,
        });
        next.value_to_metric |= def.value_to_metric;
        next
    }
}

/// A node of a descriptor tree.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub limits: Box<[Arc<LimitRule>]>,
    children: HashMap<Box<str>, Branch>,
}

/// The children of a node under one key.
#[derive(Clone, Debug, Default)]
struct Branch {
    exact: HashMap<Box<str>, Node>,
    wildcards: Vec<(Box<str>, Node)>,
    any: Option<Box<Node>>,
    clients: Option<ClientIndex>,
}

/// The client table: API keys by digest.
#[derive(Clone, Debug)]
struct ClientIndex {
    by_digest: HashMap<[u8; 32], Node>,
    /// Each known key's label (`name:`, else its tier) and digest, in configuration order.
    labels: Vec<(Box<str>, [u8; 32])>,
    /// Where unknown keys go; `None` rejects them.
    unknown: Option<Node>,
}

/// What matching one descriptor found.
#[derive(Debug)]
pub enum Match<'r> {
    /// The descriptor lands on this node (which may have no limits).
    Node(&'r Node),
    /// The descriptor is not limited by the configuration.
    None,
    /// An API key the client table does not know, and unknown keys are rejected.
    UnknownClient,
}

/// A key of the client table, as the admin API shows it.
#[derive(Debug)]
pub struct KnownClient<'r> {
    pub label: &'r str,
    /// The key's SHA-256.
    pub digest: [u8; 32],
    pub limits: &'r [Arc<LimitRule>],
}

/// The whole compiled configuration. Immutable: a reload compiles a new one and swaps it in.
#[derive(Clone, Debug)]
pub struct Rules {
    pub settings: Settings,
    domains: HashMap<Box<str>, Node>,
}

impl Rules {
    /// Compiles a loaded configuration, reporting every conflict between its files.
    pub fn compile(config: &Config) -> Result<Rules, ConfigErrors> {
        let mut errors = Vec::new();
        let mut domains: HashMap<Box<str>, Node> = HashMap::new();
        for domain in &config.domains {
            let mut root = Node::default();
            for def in &domain.descriptors {
                let top = Inherited {
                    path: domain.domain.clone(),
                    ..Inherited::default()
                };
                add_descriptor(&mut root, def, &top, &domain.file, &mut errors);
            }
            domains.insert(domain.domain.as_str().into(), root);
        }
        let default_domain = config.settings.default_domain.as_str();
        if !config.clients.keys.is_empty()
            || matches!(config.clients.unknown_key, UnknownKey::Tier(_))
        {
            let root = domains.entry(default_domain.into()).or_default();
            let branch = root.children.entry(API_KEY.into()).or_default();
            if !branch.exact.is_empty() || !branch.wildcards.is_empty() || branch.any.is_some() {
                errors.push(ConfigError {
                    file: String::from("(all files)"),
                    line: None,
                    column: None,
                    message: format!(
                        "domain `{default_domain}` has descriptors with key `{API_KEY}` and a client table too; \
                         the client table owns that key in the default domain"
                    ),
                });
            }
            branch.clients = Some(compile_clients(&config.clients));
        }
        for domain in &config.domains {
            check_ranges(&domain.descriptors, &mut errors);
        }
        let client_limits = config.clients.tiers.values().flatten();
        for l in client_limits.chain(config.clients.keys.iter().flat_map(|k| &k.limits)) {
            check_range(l, &mut errors);
        }
        if errors.is_empty() {
            Ok(Rules {
                settings: config.settings.clone(),
                domains,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// What is legal but probably not meant: printed by `ratelimiter validate` and logged at
    /// start-up and on reload.
    pub fn warnings(&self) -> Vec<String> {
        let domain = self.settings.default_domain.as_str();
        let has_clients = self
            .domains
            .get(domain)
            .is_some_and(|root| root.children.contains_key(API_KEY));
        let mut warnings = Vec::new();
        if !has_clients {
            warnings.push(format!(
                "no client table (`clients:`) and no `{API_KEY}` descriptors in the default \
                 domain `{domain}`: POST /check and AllowRequest answer 401 (unknown API key) \
                 to every key"
            ));
        }
        warnings
    }

    /// Whether the configuration knows `domain` (has descriptors or a client table in it).
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The known API keys `name` selects, each with its limits: the keys labelled `name`
    /// (`name:`, else the tier), or the one key whose SHA-256 `name` is (64 hex digits,
    /// optionally after `sha256:`).
    pub fn clients_named(&self, name: &str) -> Vec<KnownClient<'_>> {
        let domain = self.settings.default_domain.as_str();
        let index = self.domains.get(domain).and_then(|root| {
            let branch = root.children.get(API_KEY)?;
            branch.clients.as_ref()
        });
        let Some(index) = index else {
            return Vec::new();
        };
        let digest = parse_sha256(name.strip_prefix("sha256:").unwrap_or(name));
        index
            .labels
            .iter()
            .filter(|(label, d)| digest.map_or(**label == *name, |digest| digest == *d))
            .filter_map(|(label, d)| {
                Some(KnownClient {
                    label,
                    digest: *d,
                    limits: &index.by_digest.get(d)?.limits,
                })
            })
            .collect()
    }

    /// Finds the node a descriptor's entries land on.
    pub fn lookup<'r, 'e>(
        &'r self,
        domain: &str,
        entries: impl IntoIterator<Item = (&'e str, &'e str)>,
    ) -> Match<'r> {
        let Some(mut node) = self.domains.get(domain) else {
            return Match::None;
        };
        let mut any_entry = false;
        for (key, value) in entries {
            any_entry = true;
            let Some(branch) = node.children.get(key) else {
                return Match::None;
            };
            node = match branch.find(value) {
                Ok(Some(next)) => next,
                Ok(None) => return Match::None,
                Err(()) => return Match::UnknownClient,
            };
        }
        if any_entry {
            Match::Node(node)
        } else {
            Match::None
        }
    }
}

impl Branch {
    /// The child for `value`: `Err` when it is an unknown API key that must be rejected.
    fn find(&self, value: &str) -> Result<Option<&Node>, ()> {
        if let Some(clients) = &self.clients {
            let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            return match clients.by_digest.get(&digest) {
                Some(node) => Ok(Some(node)),
                None => clients.unknown.as_ref().map(Some).ok_or(()),
            };
        }
        if let Some(node) = self.exact.get(value) {
            return Ok(Some(node));
        }
        if let Some((_, node)) = self.wildcards.iter().find(|(p, _)| glob_match(p, value)) {
            return Ok(Some(node));
        }
        Ok(self.any.as_deref())
    }
}

/// Whether `value` matches `pattern`, where `*` matches any run of characters (even none).
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        // No `*` at all: an exact comparison.
        return rest.is_empty();
    };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Adds descriptor `def` under `parent`, one level below `above`.
fn add_descriptor(
    parent: &mut Node,
    def: &DescriptorDef,
    above: &Inherited,
    file: &str,
    errors: &mut Vec<ConfigError>,
) {
    let here = above.below(def);
    let shares = here
        .shared
        .iter()
        .any(Option::is_some)
        .then(|| here.shared.clone().into());
    let metric = here.value_to_metric.then(|| here.metric.clone().into());
    let branch = parent.children.entry(def.key.as_str().into()).or_default();
    let mut node = Node {
        limits: if def.unlimited {
            Box::default()
        } else {
            def.limits
                .iter()
                .map(|l| rule(l, def, shares.clone(), metric.clone()))
                .collect()
        },
        children: HashMap::new(),
    };
    for child in &def.descriptors {
        add_descriptor(&mut node, child, &here, file, errors);
    }
    let path = &here.path;
    let slot = match def.value.as_deref() {
        None => {
            let had = branch.any.is_some();
            branch.any = Some(Box::new(node));
            had
        }
        Some(v) if v.contains('*') => {
            let had = branch.wildcards.iter().any(|(p, _)| &**p == v);
            branch.wildcards.push((v.into(), node));
            had
        }
        Some(v) => branch.exact.insert(v.into(), node).is_some(),
    };
    if slot {
        errors.push(ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            message: format!("duplicate descriptor {path}"),
        });
    }
}

/// Every limit must be decidable exactly by every store ([`Store::CAPACITY`]): the Redis
/// scripts compute in Lua's doubles, exact up to 2^53, so limits, windows and token-bucket
/// spans are bounded well below.
fn check_range(def: &LimitDef, errors: &mut Vec<ConfigError>) {
    let max = Backend::CAPACITY;
    let q = &def.quota;
    let too_big = q.limit > max.quota
        || q.window > max.quota
        || q.burst > max.quota
        || (def.algorithm == Algorithm::TokenBucket && gcra::tolerance(q) > max.span);
    if too_big {
        errors.push(def.source.problem(format_args!(
            "limit `{}`: limit, burst or burst × (window ÷ limit) is too large to count exactly \
             (at most 2^{} units and a token-bucket span of 2^{} µs, about {} years)",
            def.name,
            max.quota.ilog2(),
            max.span.ilog2(),
            max.span / (365 * 86_400 * 1_000_000),
        )));
    }
}

fn check_ranges(descriptors: &[DescriptorDef], errors: &mut Vec<ConfigError>) {
    for d in descriptors {
        for l in &d.limits {
            check_range(l, errors);
        }
        check_ranges(&d.descriptors, errors);
    }
}

fn compile_clients(table: &ClientTable) -> ClientIndex {
    let node = |limits: &[LimitDef], named: Option<SharedValues>| Node {
        limits: limits
            .iter()
            .map(|l| {
                let shared_values = named.clone();
                Arc::new(LimitRule {
                    shared_values,
                    ..client_rule(l)
                })
            })
            .collect(),
        children: HashMap::new(),
    };
    let by_digest = table
        .keys
        .iter()
        .map(|k| (k.digest, node(&k.limits, Some(named_by_digest(&k.digest)))))
        .collect();
    let labels = table
        .keys
        .iter()
        .map(|k| (k.label.as_str().into(), k.digest))
        .collect();
    let unknown = match &table.unknown_key {
        UnknownKey::Reject => None,
        UnknownKey::Tier(t) => Some(node(
            table.tiers.get(t).map(Vec::as_slice).unwrap_or_default(),
            None,
        )),
    };
    ClientIndex {
        by_digest,
        labels,
        unknown,
    }
}

/// A known key's counters are named by its digest, not by the key: the configuration may
/// hold only the digest, and the admin API finds the counters from it.
fn named_by_digest(digest: &[u8; 32]) -> SharedValues {
    Arc::from([Some(
        format!("sha256:{}", hex::encode(digest)).into_boxed_str(),
    )])
}

/// The rule one configured limit of descriptor `d` becomes.
fn rule(
    def: &LimitDef,
    d: &DescriptorDef,
    shared: Option<SharedValues>,
    metric: Option<MetricLevels>,
) -> Arc<LimitRule> {
    let mut rule = client_rule(def);
    rule.shadow |= d.shadow_mode;
    rule.replaces = d.replaces.iter().map(|r| r.as_str().into()).collect();
    rule.detailed_metric = d.detailed_metric;
    rule.post_paid = d.post_paid;
    rule.quota_mode = d.quota_mode;
    rule.metadata = d.metadata.clone().map(Arc::new);
    rule.shared_values = shared;
    rule.metric_levels = metric;
    Arc::new(rule)
}

/// The rule a limit becomes on its own (a tier's or a key's limit, with nothing from a
/// descriptor).
fn client_rule(def: &LimitDef) -> LimitRule {
    let mut h = Sha256::new();
    h.update(def.name.as_bytes());
    h.update([0]);
    h.update(def.algorithm.as_str().as_bytes());
    h.update(def.quota.window.to_be_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    LimitRule {
        name: def.name.as_str().into(),
        algorithm: def.algorithm,
        quota: def.quota,
        shadow: def.shadow_mode,
        replaces: Box::default(),
        detailed_metric: false,
        post_paid: false,
        quota_mode: false,
        metadata: None,
        shared_values: None,
        metric_levels: None,
        id: u64::from_be_bytes(id),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob() {
        assert!(glob_match("foo*", "foobar"));
        assert!(glob_match("foo*", "foo"));
        assert!(!glob_match("foo*", "fo"));
        assert!(glob_match("*bar", "foobar"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abcd"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("ab*ba", "abba"));
    }
}
