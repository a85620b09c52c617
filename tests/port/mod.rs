//! Ports a test names before anything listens on them: the admin listener the `outbox`
//! command finds in the config, a redis or PostgreSQL server's port, a port left closed.
//!
//! A port found by binding `127.0.0.1:0` and letting go lies in the kernel's ephemeral
//! range, so any socket's `connect` or `:0` bind in the meantime may be given it, and the
//! server then fails with "Address already in use" (seen once in CI, on the admin
//! listener). The kernel hands out no port below that range on its own; only a bind that
//! names it takes one. So these ports come from below it, each checked free by a bind.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port of those searched; below it are well-known services' ports.
const FLOOR: u32 = 10_000;

/// A port on 127.0.0.1 that nothing listens on now, the kernel will not hand to another
/// socket by itself, and this process has not handed out before.
pub fn unclaimed() -> u16 {
    // Handed out, perhaps not bound yet: another test's search may pass over them.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ceiling = ephemeral_low().max(FLOOR + 1_000);
    let span = ceiling - FLOOR;
    // Test processes that run side by side start their searches far apart.
    let start = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for step in 0..span {
        let Ok(port) = u16::try_from(FLOOR + start.wrapping_add(step) % span) else {
            continue;
        };
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {FLOOR} and {ceiling}");
}

/// The first port of the kernel's ephemeral range (32768 by default).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
