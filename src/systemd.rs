//! systemd service notifications (`Type=notify`): READY once the listeners are bound
//! and allowlisted names resolved, RELOADING/READY around a SIGHUP reload, STOPPING when
//! draining, and the watchdog keep-alive when the unit sets `WatchdogSec=`.
//!
//! Outside systemd (`$NOTIFY_SOCKET` unset) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "systemd notification not sent");
    }
}

/// The service is up: listeners bound, names resolved.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Ready again after a reload, with its outcome for `systemctl status`.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload is starting; `ready()` ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Draining before exit.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// When the unit sets `WatchdogSec=`, a task that pings at half the interval. It runs on
/// the same runtime as the listeners, so a wedged runtime stops the pings and systemd
/// restarts the service.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
    tracing::info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}
