//! Background tasks beside the server, for the life of the process: they read the
//! runtime in force on every turn (so a reload changes what they watch) and call
//! methods on the leaf modules that own the state — [`crate::guard::dns`] for
//! allowlisted names, [`crate::tls`] for certificate files, [`crate::guard::rate`] for
//! the per-address buckets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::guard::dns::{self, DnsSettings, Resolver};
use crate::reload::Live;

/// Keeps the current runtime's allowlisted names resolved: each is looked up again when
/// due. A runtime whose `dns:` block changed gets a new resolver.
pub async fn resolve_names(live: Arc<Live>) {
    let mut resolver: Option<(DnsSettings, Resolver)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = live.load();
        let settings = &rt.settings.dns;
        if resolver.as_ref().map(|(s, _)| s) != Some(settings) {
            match Resolver::new(settings) {
                Ok(r) => resolver = Some((settings.clone(), r)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up the DNS resolver");
                    continue;
                }
            }
        }
        if let Some((_, r)) = &resolver {
            dns::refresh(
                &rt.names,
                settings.refresh,
                r,
                &rt.metrics,
                &rt.clock,
                false,
            )
            .await;
        }
    }
}

/// Re-reads a listener's certificate files when they change, every `tls.watch`.
pub async fn watch_certificates(live: Arc<Live>) {
    let mut checked: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = live.load();
        for l in &rt.listeners {
            let Some(st) = &l.tls else { continue };
            let Some(every) = st.settings().watch else {
                continue;
            };
            let due = checked.get(&l.name).map_or(true, |t| t.elapsed() >= every);
            if due {
                checked.insert(l.name.clone(), Instant::now());
                st.reload_if_changed();
            }
        }
    }
}

/// Forgets per-address buckets that have refilled, every 30 s, so the table holds only
/// addresses seen recently (`limits.max_tracked_ips` bounds it in between).
pub async fn prune_address_buckets(live: Arc<Live>) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    loop {
        every.tick().await;
        if let Some(l) = &live.load().per_ip {
            l.prune();
        }
    }
}
