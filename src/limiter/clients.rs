//! A known client's counters, for the admin API: its usage now, and a reset.
//!
//! A client is a key of the client table, selected by its label (`name:`, else its tier) or
//! its digest ([`Rules::clients_named`]). Its counters are named by the key's digest (see
//! `rules.rs`), so they are found from the configuration alone, which may hold only digests.
//! Usage is read with a check of cost 0 on every limit of the client, decided by the store
//! like any other (so it is what the next request would see) and consuming nothing. The
//! failure policy does not apply: the admin API reports a store outage as one.

use std::borrow::Cow;
use std::time::Duration;

use super::{API_KEY, KnownClient, fold};
use super::{Applied, Descriptor, Entry, LimitError, LimitRequest, Limiter, Rules, plan};
use crate::algorithm::Algorithm;
use crate::store::{CounterKey, Plan, Store};

/// One client's usage of each of its limits.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientUsage {
    #[serde(flatten)]
    pub client: KnownClientId,
    pub limits: Vec<LimitUsage>,
}

/// One limit's state as the next request would find it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LimitUsage {
    pub name: String,
    pub algorithm: &'static str,
    pub limit: u64,
    pub window_seconds: f64,
    /// The most `remaining` can be: the token bucket's burst, a window's limit.
    pub capacity: u64,
    /// Units a request could spend now.
    pub remaining: u64,
    /// `capacity - remaining`.
    pub used: u64,
    /// Seconds until the whole quota is available again.
    pub reset_after_seconds: f64,
}

impl Limiter {
    /// The usage of every client `name` selects (empty when none).
    pub async fn client_usage(&self, name: &str) -> Result<Vec<ClientUsage>, LimitError> {
        let rules = self.rules.load_full();
        let mut usage = Vec::new();
        for client in rules.clients_named(name) {
            let (request, applied) = usage_request(&rules, &client);
            let (plan, check_of) = plan(&self.tags, &request, &applied, &rules.settings);
            let mut batch = [plan];
            self.store.apply(&mut batch).await?;
            let [plan] = batch;
            let decision = fold(&request, &applied, &check_of, plan, None, &rules.settings)?;
            usage.push(ClientUsage {
                client: KnownClientId::of(&client),
                limits: decision.limits.iter().map(LimitUsage::of).collect(),
            });
        }
        Ok(usage)
    }

    /// Forgets the counters of every client `name` selects, in the store and in the local
    /// fallback's, as if the client had never been seen. Returns the clients reset.
    pub async fn reset_client(&self, name: &str) -> Result<Vec<KnownClientId>, LimitError> {
        let rules = self.rules.load_full();
        let mut reset = Vec::new();
        for client in rules.clients_named(name) {
            let keys = counter_keys(self, &rules, &client);
            self.store.reset(&keys).await?;
            if let Some(local) = &self.fallback {
                local.store.reset(&keys).await?;
            }
            reset.push(KnownClientId::of(&client));
        }
        Ok(reset)
    }
}

/// A client as the admin API names it back.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KnownClientId {
    pub label: String,
    /// The key's SHA-256, hex: the key itself is never shown.
    pub key_sha256: String,
}

impl KnownClientId {
    pub fn of(client: &KnownClient<'_>) -> Self {
        KnownClientId {
            label: client.label.to_owned(),
            key_sha256: hex::encode(client.digest),
        }
    }
}

/// The request a client's counters are found with: its one `api_key` descriptor at cost 0.
/// The entry's value is a placeholder: the client's limits name the counter by its digest.
fn usage_request<'r>(
    rules: &'r Rules,
    client: &KnownClient<'r>,
) -> (LimitRequest<'r>, Applied<'r>) {
    let request = LimitRequest {
        domain: rules.settings.default_domain.as_str(),
        descriptors: vec![Descriptor {
            entries: vec![Entry::new(API_KEY, "")],
            hits: Some(0),
            limit_override: None,
        }],
        hits: 0,
        client_required: false,
        post_paid: false,
    };
    let applied = client
        .limits
        .iter()
        .map(|l| (0, Cow::Borrowed(l)))
        .collect();
    (request, applied)
}

fn counter_keys(limiter: &Limiter, rules: &Rules, client: &KnownClient<'_>) -> Vec<CounterKey> {
    let (request, applied) = usage_request(rules, client);
    let (Plan { checks, .. }, _) = plan(&limiter.tags, &request, &applied, &rules.settings);
    checks.into_iter().map(|c| c.key).collect()
}

impl LimitUsage {
    fn of(status: &super::LimitStatus) -> Self {
        let seconds = |us: u64| Duration::from_micros(us).as_secs_f64();
        let capacity = match status.algorithm {
            Algorithm::TokenBucket => status.quota.burst,
            Algorithm::FixedWindow | Algorithm::SlidingWindow => status.quota.limit,
        };
        LimitUsage {
            name: status.name.to_string(),
            algorithm: status.algorithm.as_str(),
            limit: status.quota.limit,
            window_seconds: seconds(status.quota.window),
            capacity,
            remaining: status.verdict.remaining,
            used: capacity.saturating_sub(status.verdict.remaining),
            reset_after_seconds: seconds(status.verdict.reset_after),
        }
    }
}
