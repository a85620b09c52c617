//! Live reload: SIGHUP re-reads and validates the whole config and swaps the runtime
//! atomically.
//!
//! Every request takes the runtime current when it starts and finishes on it, so a swap
//! never changes the rules under a request; open connections keep working and use the
//! new runtime from their next request. A config that fails validation (or whose
//! certificate, replay journal or DNS resolver cannot be set up) changes nothing: every
//! problem is logged and `bsk_sidecar_config_reloads_total{outcome="error"}` counts it.
//!
//! What outlives a swap is decided in `runtime` (its `carry` rules): the replay cache always (while
//! `state.dir` is the same), rate-limit buckets whose rate did not change, TLS
//! certificates whose files did not change (they are re-read), and the addresses of DNS
//! names already resolved. Listener addresses are bound once: a reload may not add,
//! remove or rename listeners, and a changed `listen` address is reported and ignored
//! until the next restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{self, ConfigError, Settings};
use crate::guard::dns;
use crate::runtime::Runtime;

/// The runtime in force, swapped whole on reload.
pub struct Live {
    current: ArcSwap<Runtime>,
    /// Counts the reloads applied: a connection keeps the runtime it loaded while this
    /// stays the same, and counts no reference to it per request ([`Live::current`]).
    generation: AtomicU64,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Live {
    pub fn new(rt: Arc<Runtime>) -> Arc<Live> {
        rt.metrics.ops.config_loaded.set(rt.clock.unix_secs_i64());
        Arc::new(Live {
            current: ArcSwap::new(rt),
            generation: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The runtime a new request or connection uses.
    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// The runtime a new request uses, `kept` if it still is: loaded again only after a
    /// reload. A request on a connection's kept runtime neither counts a reference to it
    /// up nor down — a count every worker's requests wrote, passing its line between the
    /// cores.
    pub fn current<'k>(&self, kept: &'k mut Option<(u64, Arc<Runtime>)>) -> &'k Arc<Runtime> {
        // Read before the runtime: a reload stores the runtime, then counts.
        let generation = self.generation.load(Ordering::Acquire);
        if kept.as_ref().is_some_and(|(g, _)| *g != generation) {
            *kept = None;
        }
        &kept.get_or_insert_with(|| (generation, self.load())).1
    }
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not validate.
    #[error("{} problem(s) in the config", .0.len())]
    Invalid(Vec<ConfigError>),
    /// Listeners were added, removed, renamed or reordered: that needs a restart.
    #[error("listeners changed ({0}); restart to apply")]
    Listeners(String),
    /// A certificate, the replay journal, the shared-state backend or the egress store
    /// could not be set up.
    #[error(transparent)]
    Setup(#[from] crate::runtime::BuildError),
    /// The resolver for `dns:` could not be set up.
    #[error(transparent)]
    Resolver(#[from] dns::DnsError),
}

/// Validates `settings` against the running config and swaps them in.
pub async fn apply(live: &Live, settings: Settings) -> Result<(), ReloadError> {
    let _one = live.reloading.lock().await;
    let old = live.load();
    let old_names: Vec<&str> = old
        .settings
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    let new_names: Vec<&str> = settings.listeners.iter().map(|l| l.name.as_str()).collect();
    if old_names != new_names {
        return Err(ReloadError::Listeners(format!(
            "running: [{}], new: [{}]",
            old_names.join(", "),
            new_names.join(", ")
        )));
    }
    for (o, n) in old.settings.listeners.iter().zip(&settings.listeners) {
        if o.addr != n.addr {
            tracing::warn!(
                listener = %n.name,
                running = %o.addr,
                configured = %n.addr,
                "listen address changed: still listening on the running address until restart"
            );
        }
    }
    if old.settings.admin != settings.admin {
        tracing::warn!(
            running = ?old.settings.admin,
            configured = ?settings.admin,
            "admin address changed: applies at the next restart"
        );
    }
    if old.settings.admin_access != settings.admin_access {
        tracing::warn!(
            "admin token, metrics access or max_connections changed: applies at the next restart"
        );
    }
    if old.settings.state_dir == settings.state_dir
        && old.settings.limits.max_replay_entries != settings.limits.max_replay_entries
        && old.replay.is_some()
    {
        tracing::warn!(
            "limits.max_replay_entries changed: the replay cache keeps its size until restart"
        );
    }
    let rt = Runtime::reloaded(settings, &old)?;
    // Names new in this config resolve before they are relied on.
    let resolver = dns::Resolver::new(&rt.settings.dns)?;
    let every = rt.settings.dns.refresh;
    dns::refresh(&rt.names, every, &resolver, &rt.metrics, &rt.clock, false).await;
    live.current.store(rt.clone());
    // After the store: whoever reads the new generation then loads the new runtime.
    live.generation.fetch_add(1, Ordering::Release);
    rt.metrics.ops.config_loaded.set(rt.clock.unix_secs_i64());
    Ok(())
}

/// Re-reads `path` and applies it; logs the outcome (every problem of a refused config)
/// and counts it. On failure, certificates of the running config are still re-read.
pub async fn reload_file(live: &Live, path: &Path) -> Result<(), ReloadError> {
    let metrics = live.load().metrics.clone();
    let result = match config::load(path) {
        Ok(settings) => apply(live, settings).await,
        Err(errs) => Err(ReloadError::Invalid(errs)),
    };
    match &result {
        Ok(()) => {
            metrics.ops.config_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(config = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            metrics
                .ops
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            if let ReloadError::Invalid(errs) = e {
                for err in errs {
                    tracing::error!(problem = %err, "config reload: problem");
                }
            }
            tracing::error!(
                config = %path.display(),
                error = %e,
                "configuration reload refused; the running configuration stays"
            );
            for l in &live.load().listeners {
                if let Some(tls) = &l.tls {
                    tls.reload("SIGHUP");
                }
            }
        }
    }
    result
}

/// Installs the SIGHUP handler now (before the service reports ready, so an early HUP is
/// not the default "terminate"); [`SighupHandler::start`] begins reloading on it.
pub fn on_sighup(path: PathBuf) -> io::Result<SighupHandler> {
    let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(SighupHandler { signal, path })
}

pub struct SighupHandler {
    signal: tokio::signal::unix::Signal,
    path: PathBuf,
}

impl SighupHandler {
    /// Reloads `path` into `live` on every SIGHUP, telling systemd while it does.
    pub fn start(mut self, live: Arc<Live>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while self.signal.recv().await.is_some() {
                crate::systemd::reloading();
                let status = match reload_file(&live, &self.path).await {
                    Ok(()) => "serving; configuration reloaded".to_string(),
                    Err(e) => format!("serving the previous configuration; reload refused: {e}"),
                };
                crate::systemd::reloaded(&status);
            }
        })
    }
}
