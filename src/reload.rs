//! Reloading the configuration without a restart: on `SIGHUP`, and when what `--config`
//! names changes on disk (a file edited or replaced, or a Kubernetes ConfigMap volume whose
//! `..data` symlink is swapped to a new directory).
//!
//! The watch polls: every interval it hashes the name and contents of each file the loader
//! reads there (`*.yaml`, `*.yml`, following symlinks; hidden entries such as `..data`
//! skipped, as the loader skips them) and reloads when the hash differs from the last one it acted on. Polling needs no
//! platform notification API and sees a symlink swap the same way as an edit. A load is
//! applied only if the files hashed the same before and after it, so a load that raced a
//! half-written update is retried on the next tick instead of being applied.
//!
//! A configuration that does not load is refused: every problem is logged, the old rules
//! stay in force, and `ratelimiter_config_reloads_total{result="failure"}` counts it. The
//! same contents are not tried again until they change (or a `SIGHUP` asks).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::api::admin::redacted_config;
use crate::app::load_rules;
use crate::config::ConfigErrors;

pub use crate::metrics::ReloadTrigger as Trigger;

/// A hash of everything the configuration path holds.
pub type Fingerprint = [u8; 32];

/// Loads the configuration at `path` into a running service, and counts the outcome in
/// `ratelimiter_config_reloads_total{trigger,result}`.
pub struct Reloader {
    state: Arc<AppState>,
    path: PathBuf,
}

impl Reloader {
    pub fn new(state: Arc<AppState>, path: PathBuf) -> Self {
        Reloader { state, path }
    }

    /// Loads the configuration and swaps it in; a configuration that does not load is
    /// logged and counted, and the old one stays. Blocking file I/O: call it off the runtime's
    /// worker threads for large configurations.
    pub fn reload(&self, trigger: Trigger) -> Result<(), ConfigErrors> {
        self.apply(trigger, load_rules(&self.path))
    }

    fn apply(
        &self,
        trigger: Trigger,
        loaded: Result<crate::limiter::Rules, ConfigErrors>,
    ) -> Result<(), ConfigErrors> {
        let shown = self.path.display();
        match loaded {
            Ok(rules) => {
                for w in rules.warnings() {
                    tracing::warn!(config = %shown, "{w}");
                }
                self.state.limiter.reload(rules);
                self.state.set_loaded_config(redacted_config(&self.path));
                let digest = digest(&self.path);
                self.state
                    .metrics
                    .config_loaded(&digest, unix_now(), Some(trigger));
                tracing::info!(config = %shown, trigger = trigger.as_str(), "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.state.metrics.reload_failed(trigger);
                tracing::error!(config = %shown, trigger = trigger.as_str(), "reload refused, keeping the old configuration:\n{e}");
                Err(e)
            }
        }
    }

    /// One tick of the watch: reloads when the files no longer match `seen`, and returns
    /// the fingerprint now acted on (`seen` again when the files changed during the load).
    pub fn reload_if_changed(&self, seen: Fingerprint) -> Fingerprint {
        let before = fingerprint(&self.path);
        if before == seen {
            return seen;
        }
        let loaded = load_rules(&self.path);
        if fingerprint(&self.path) != before {
            tracing::debug!(config = %self.path.display(), "changed while loading; next tick");
            return seen;
        }
        // A refusal is logged and counted by `apply`.
        let _ = self.apply(Trigger::Watch, loaded);
        before
    }
}

/// Starts the reloads a running service has: on `SIGHUP`, and, unless `watch_every` is
/// `None`, the watch of the configuration path. `loaded` is the [`fingerprint`] taken before
/// start-up loaded the configuration, so that no change after that load goes unseen.
pub fn start(
    state: Arc<AppState>,
    path: PathBuf,
    watch_every: Option<Duration>,
    loaded: Fingerprint,
) {
    let reloader = Arc::new(Reloader::new(state, path));
    #[cfg(unix)]
    {
        let r = reloader.clone();
        // A refused reload is logged and counted by `apply`; nothing more to do with it here.
        on_sighup("configuration", move || drop(r.reload(Trigger::Signal)));
    }
    if let Some(every) = watch_every {
        tracing::info!(config = %reloader.path.display(), every = ?every, "watching the configuration");
        tokio::spawn(watch(reloader, every, loaded));
    }
}

/// Runs `reload` on a blocking thread on every `SIGHUP`: the configuration's and the
/// certificates' reload on signal. `what` names it in logs. The handler is installed before
/// this returns, not in the task: a SIGHUP right after start-up must find it, or its default
/// action kills the process.
#[cfg(unix)]
pub fn on_sighup<F>(what: &'static str, reload: F)
where
    F: Fn() + Send + Sync + 'static,
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            return tracing::error!(error = %e, reload = what, "cannot listen for SIGHUP; reload on signal disabled");
        }
    };
    let reload = Arc::new(reload);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reload = reload.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || reload()).await {
                tracing::error!(error = %e, reload = what, "reload task failed");
            }
        }
    });
}

/// Polls the configuration path every `every` and reloads when its files change.
async fn watch(reloader: Arc<Reloader>, every: Duration, seen: Fingerprint) {
    poll_for_changes("configuration", every, seen, move |seen| {
        reloader.reload_if_changed(seen)
    })
    .await
}

/// Runs `check(seen)` on a blocking thread every `every`, the first time one interval from
/// now, each time with the fingerprint the last one returned: the loop behind the
/// configuration's and the certificates' watches. `what` names it in logs.
pub async fn poll_for_changes<T, F>(what: &'static str, every: Duration, mut seen: T, check: F)
where
    T: Copy + Send + 'static,
    F: Fn(T) -> T + Send + Sync + 'static,
{
    let check = Arc::new(check);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let check = check.clone();
        match tokio::task::spawn_blocking(move || check(seen)).await {
            Ok(now) => seen = now,
            Err(e) => tracing::error!(error = %e, watch = what, "watch tick failed"),
        }
    }
}

/// The configuration's digest as `ratelimiter_config_info` shows it: the first 16 hex digits
/// of its [`fingerprint`].
pub fn digest(path: &Path) -> String {
    hex::encode(&fingerprint(path)[..8])
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A hash of the path's contents: a file's bytes, or for a directory the name and bytes of
/// every file the loader reads directly in it, in name order (symlinks followed). What cannot be
/// read is hashed as its error, so a vanished file is a change too (and its load says why).
pub fn fingerprint(path: &Path) -> Fingerprint {
    let mut hash = Sha256::new();
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => hash_dir(&mut hash, path),
        Ok(_) => hash_file(&mut hash, path),
        Err(e) => hash_error(&mut hash, &e),
    }
    hash.finalize().into()
}

fn hash_dir(hash: &mut Sha256, dir: &Path) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return hash_error(hash, &e),
    };
    let mut names: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| crate::config::is_config_file_name(&n.to_string_lossy()))
        .collect();
    names.sort();
    for name in names {
        let file = dir.join(&name);
        if fs::metadata(&file).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let name = name.to_string_lossy();
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash_file(hash, &file);
    }
}

fn hash_file(hash: &mut Sha256, file: &Path) {
    match fs::read(file) {
        Ok(bytes) => {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(&bytes);
        }
        Err(e) => hash_error(hash, &e),
    }
}

fn hash_error(hash: &mut Sha256, e: &std::io::Error) {
    hash.update(b"\xffunreadable:");
    hash.update(e.kind().to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("reload-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Kubernetes' layout: `..<ts>/file`, `..data -> ..<ts>`, `file -> ..data/file`.
    #[test]
    fn a_configmap_style_symlink_swap_changes_the_fingerprint() {
        let d = dir("swap");
        fs::create_dir(d.join("..v1")).unwrap();
        fs::write(d.join("..v1/a.yaml"), "one").unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/a.yaml", d.join("a.yaml")).unwrap();
        let first = fingerprint(&d);
        assert_eq!(first, fingerprint(&d), "stable while nothing changes");
        fs::create_dir(d.join("..v2")).unwrap();
        fs::write(d.join("..v2/a.yaml"), "two").unwrap();
        symlink("..v2", d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_ne!(first, fingerprint(&d));
    }

    #[test]
    fn files_the_loader_skips_do_not_count_and_a_vanished_path_does() {
        let d = dir("hidden");
        fs::write(d.join("a.yaml"), "one").unwrap();
        let first = fingerprint(&d);
        fs::write(d.join(".a.yaml.swp"), "editor noise").unwrap();
        fs::write(d.join("server.log"), "a log beside the config").unwrap();
        assert_eq!(first, fingerprint(&d));
        fs::write(d.join("a.yaml"), "onf").unwrap();
        assert_ne!(first, fingerprint(&d), "same length, other bytes");
        assert_ne!(
            fingerprint(&d.join("missing")),
            fingerprint(&d.join("a.yaml"))
        );
    }
}
