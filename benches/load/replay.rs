//! Memory of the replay table at a given number of held requests: the process's resident
//! set before, at its peak while the table fills (the table grows by doubling, and both
//! sizes are held during the move), and after, for an in-memory `ReplayCache` sized for
//! them; and the time per check.
//!
//!   cargo run --release --features bench-tools --bin load-replay [ENTRIES=1000000]

#[path = "rss.rs"]
mod rss;

use std::time::Instant;

use bsk_sidecar::guard::replay::{ReplayCache, ReplayKey};

/// The sidecar's own allocator (the library leaves installing it to each binary).
#[global_allocator]
static GLOBAL: bsk_sidecar::allocator::Chosen = bsk_sidecar::allocator::CHOSEN;

fn main() {
    let entries: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // The keys first, so their memory is not counted as the table's.
    let keys: Vec<ReplayKey> = (0..entries)
        .map(|i| ReplayKey::new("bsk", "ticket", &["9054233544", &i.to_string()]))
        .collect();
    let cache = ReplayCache::in_memory(entries as usize);
    rss::reset_peak();
    let before = rss::rss_kib();
    let start = Instant::now();
    for k in &keys {
        let _ = cache.check_and_insert(*k, 0, 600);
    }
    let fill = start.elapsed();
    let (after, peak) = (rss::rss_kib(), rss::peak_kib());
    let mib = |kib: u64| kib.saturating_sub(before) as f64 / 1024.0;
    println!(
        "replay table: {} requests held; resident set +{:.1} MiB ({:.1} bytes per request), \
         +{:.1} MiB at the peak; {:.0} ns per check",
        cache.len(),
        mib(after),
        after.saturating_sub(before) as f64 * 1024.0 / f64::from(entries.max(1)),
        mib(peak),
        fill.as_nanos() as f64 / f64::from(entries.max(1)),
    );
}
