//! Memory of the replay table at a given number of held requests: the process's resident
//! set before, at its peak while the table fills (a part of it holds both sizes while it
//! grows), and after, for an in-memory `ReplayCache` sized for
//! them; and the time per check. Then the longest checks of a journaled cache of the same
//! capacity, through one compaction of its journal, and of a full one, through the
//! evictions that make room in it.
//!
//!   cargo run --release --features bench-tools --bin load-replay [ENTRIES=1000000] [DIR]
//!
//! DIR: where the journal is written (a fresh directory in it, removed after), so that
//! it can be on the disk a deployment's state directory is on; default the temporary
//! directory.

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
    drop(cache);
    drop(keys);
    let parent = std::env::args()
        .nth(2)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = parent.join(format!("load-replay-{}", std::process::id()));
    journaled(entries, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    full(entries);
}

/// The journaled cache: `capacity` entries held at most, about half of them live at any
/// time (each key expires after half a capacity's worth of checks), and twice the
/// capacity checked and more, so the journal, grown past twice the capacity, is
/// compacted once. A check that had to wait for the compaction shows in the longest.
fn journaled(capacity: u32, dir: &std::path::Path) {
    let checks = 2 * capacity + capacity / 4;
    let cache = match ReplayCache::open(dir, capacity as usize, 1, 0) {
        Ok(cache) => cache,
        Err(e) => {
            eprintln!(
                "load-replay: cannot open a journal in {}: {e}",
                dir.display()
            );
            std::process::exit(1);
        }
    };
    let took = timed(checks, |i, k| {
        let _ = cache.check_and_insert(k, i, i + u64::from(capacity / 2));
    });
    println!(
        "journaled cache, capacity {capacity}, {checks} checks (one journal compaction): {took}"
    );
}

/// A full cache of unexpired keys (in memory): twice its capacity checked, so that each
/// sixteenth of the capacity checked past the first fill evicts the entries nearest their
/// expiry. A check that had to wait for an eviction shows in the longest. The expiries
/// lie within a day, each second's shared by as many keys as a day's share of the checks.
fn full(capacity: u32) {
    let checks = 2 * capacity;
    let cache = ReplayCache::in_memory(capacity as usize);
    let per_second = u64::from(checks).div_ceil(86_400);
    let took = timed(checks, |i, k| {
        let _ = cache.check_and_insert(k, 0, 86_401 - i / per_second);
    });
    println!("full cache, capacity {capacity}, {checks} checks (evictions): {took}");
}

/// Makes `checks` distinct keys (before timing), runs `check` on each with its number
/// (from 1), and describes how long the checks took: the longest, how many over 1 ms,
/// p99.9 and p99.99, and the mean.
fn timed(checks: u32, mut check: impl FnMut(u64, ReplayKey)) -> String {
    let keys: Vec<ReplayKey> = (0..checks)
        .map(|i| ReplayKey::new("bsk", "jti", &["/bsk/status", &i.to_string()]))
        .collect();
    let mut took: Vec<u64> = Vec::with_capacity(keys.len());
    let start = Instant::now();
    for (i, k) in (1u64..).zip(&keys) {
        let t = Instant::now();
        check(i, *k);
        took.push(t.elapsed().as_nanos() as u64);
    }
    let all = start.elapsed();
    let over_1ms = took.iter().filter(|&&t| t > 1_000_000).count();
    took.sort_unstable();
    let at = |q: f64| {
        took.get(((took.len() as f64) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "longest check {:.2} ms; {over_1ms} over 1 ms; p99.9 {:.1} µs, p99.99 {:.1} µs; \
         {:.0} ns per check",
        took.last().copied().unwrap_or(0) as f64 / 1e6,
        at(0.999) as f64 / 1e3,
        at(0.9999) as f64 / 1e3,
        all.as_nanos() as f64 / f64::from(checks.max(1)),
    )
}
