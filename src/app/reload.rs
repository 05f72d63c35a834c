//! Reloading the rules while the service runs: on SIGHUP, on `POST /-/reload`, and when the
//! configuration file or a file of the rule directory changes on disk (an edit, or the
//! symlink swap by which Kubernetes updates a mounted ConfigMap).
//!
//! A reload re-reads and validates the configuration and the whole rule pack first; any
//! problem refuses it, is logged as `exfilwatch check` reports it, and leaves the running
//! rules in force. A valid pack is handed to the engine between two events
//! ([`pipeline::RuleUpdate`]), which keeps the alerts and detectors of unchanged rules.
//! Settings that cannot change while running (listen address, storage, sources, targets) are
//! named in the log when the file changed them: they apply at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::api::reload::{ReloadRequest, ReloadStatus};
use crate::config::Config;
use crate::detect::engine::Engine;
use crate::pipeline::RuleUpdate;
use crate::rules::{self, Rule};

/// What the reloader works with.
#[derive(Debug)]
pub struct Reloader {
    /// The configuration file, as given on the command line.
    pub path: PathBuf,
    /// The configuration in force.
    pub config: Config,
    pub status: Arc<ReloadStatus>,
    /// Where new packs go: the pipeline's engine.
    pub engine: mpsc::Sender<RuleUpdate>,
    /// The smallest spike factor of the pack, for the egress task.
    pub spike_factor: watch::Sender<f64>,
    /// The pack the console shows.
    pub shown: crate::api::SharedRules,
}

impl Reloader {
    /// Serves reload requests from `requests` (the API's), SIGHUP and the file watch until
    /// `cancel`.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        cancel: CancellationToken,
    ) {
        let mut hangup = hangup();
        let watching = !self.config.rules_watch.is_zero();
        let mut tick = tokio::time::interval(if watching {
            self.config.rules_watch
        } else {
            Duration::from_secs(3600)
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = Sources::read(&self.path, &self.config.rules_dir);
        loop {
            let request = tokio::select! {
                () = cancel.cancelled() => return,
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                () = next_hangup(&mut hangup) => ReloadRequest { trigger: "SIGHUP", reply: None },
                _ = tick.tick(), if watching => {
                    let now = Sources::read(&self.path, &self.config.rules_dir);
                    if now == seen {
                        continue;
                    }
                    ReloadRequest { trigger: "file change", reply: None }
                }
            };
            let result = self.reload(request.trigger).await;
            // Whatever the outcome, the files as they are now have been judged; a broken file
            // is not retried until it changes again.
            seen = Sources::read(&self.path, &self.config.rules_dir);
            if let Some(reply) = request.reply {
                let _ = reply.send(result);
            }
        }
    }

    /// Re-reads and validates everything, then puts the new rules in force; what changed,
    /// or every problem found.
    async fn reload(&mut self, trigger: &str) -> Result<String, String> {
        let loaded = Config::load(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|config| match rules::load_dir(&config.rules_dir) {
                Ok(rules) => Ok((config, rules)),
                Err(e) => Err(e.to_string()),
            });
        let (config, rules) = match loaded {
            Ok(l) => l,
            Err(problems) => {
                self.status.record(false);
                tracing::error!(
                    trigger,
                    "reload refused, the running rules stay in force: {problems}"
                );
                return Err(problems);
            }
        };
        for setting in restart_needed(&self.config, &config) {
            tracing::warn!(
                trigger,
                setting,
                "reload: {setting} changed in {}; it applies at the next start",
                self.path.display()
            );
        }
        let rules: Vec<Arc<Rule>> = rules.into_iter().map(Arc::new).collect();
        self.spike_factor
            .send_replace(Engine::smallest_spike_factor(&rules));
        let (applied, changes) = oneshot::channel();
        *self.shown.write().unwrap_or_else(|p| p.into_inner()) = rules.clone();
        let update = RuleUpdate { rules, applied };
        let changes = match self.engine.send(update).await {
            Ok(()) => changes
                .await
                .map_err(|_| "the pipeline has stopped".to_owned())?,
            Err(_) => return Err("the pipeline has stopped".into()),
        };
        // Only what takes effect live is kept; the rest stays as started.
        self.config.rules_dir = config.rules_dir;
        self.config.rules_watch = config.rules_watch;
        self.status.record(true);
        tracing::info!(trigger, %changes, "reload: rules in force");
        Ok(changes.to_string())
    }
}

/// The settings, by key, that differ between `running` and `loaded` but only apply at start.
fn restart_needed(running: &Config, loaded: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differs = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    differs("hubble", running.hubble != loaded.hubble);
    differs("prometheus", running.prometheus != loaded.prometheus);
    differs("alertmanager", running.alertmanager != loaded.alertmanager);
    differs("api.listen", running.api.listen != loaded.api.listen);
    differs(
        "api",
        running.api != loaded.api && running.api.listen == loaded.api.listen,
    );
    differs("storage.dir", running.storage_dir != loaded.storage_dir);
    differs("storage.flows", running.flows != loaded.flows);
    differs("log", running.log != loaded.log);
    keys
}

/// The contents of the configuration file and of every file in the rule directory, read
/// through symlinks: a ConfigMap's swap changes them even though no path changed.
#[derive(Debug, PartialEq, Eq)]
struct Sources(Vec<(PathBuf, Option<Vec<u8>>)>);

impl Sources {
    fn read(config: &Path, rules_dir: &Path) -> Sources {
        let mut paths = vec![config.to_path_buf()];
        if let Ok(entries) = std::fs::read_dir(rules_dir) {
            let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
            files.sort();
            paths.extend(files);
        }
        Sources(
            paths
                .into_iter()
                .map(|p| {
                    let bytes = if p.is_file() {
                        std::fs::read(&p).ok()
                    } else {
                        None
                    };
                    (p, bytes)
                })
                .collect(),
        )
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

/// SIGHUP, once installed; the process no longer dies of it.
fn hangup() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("reload: cannot listen for SIGHUP: {e}");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

async fn next_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    let _ = hangup;
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_apply_at_start_are_named_when_they_change() {
        let running = Config::default();
        let mut loaded = running.clone();
        assert!(restart_needed(&running, &loaded).is_empty());
        loaded.api.listen = "127.0.0.1:9999".parse().unwrap();
        loaded.storage_dir = "/elsewhere".into();
        loaded.rules_watch = Duration::from_secs(1);
        assert_eq!(
            restart_needed(&running, &loaded),
            ["api.listen", "storage.dir"]
        );
    }

    #[test]
    fn a_symlink_swap_changes_the_sources() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("exfilwatch.yaml");
        std::fs::write(&config, "").unwrap();
        for (version, text) in [("..v1", "a"), ("..v2", "b")] {
            std::fs::create_dir(dir.path().join(version)).unwrap();
            std::fs::write(dir.path().join(version).join("rules.yaml"), text).unwrap();
        }
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        std::os::unix::fs::symlink("../..v1/rules.yaml", rules.join("rules.yaml")).unwrap();
        let before = Sources::read(&config, &rules);
        assert_eq!(before, Sources::read(&config, &rules));
        std::fs::remove_file(rules.join("rules.yaml")).unwrap();
        std::os::unix::fs::symlink("../..v2/rules.yaml", rules.join("rules.yaml")).unwrap();
        assert_ne!(before, Sources::read(&config, &rules));
    }
}
