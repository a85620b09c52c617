//! Memory of the per-address limiter table at a given number of tracked addresses: the
//! process's resident set before and after `check`ing that many distinct client addresses
//! (IPv4 and IPv6 alternating) against a `PerIpLimiter` sized for them, and the time per
//! check while the table fills and once it is full.
//!
//!   cargo run --release --features bench-tools --bin load-limiter [KEYS=100000]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Instant;

use bsk_sidecar::guard::rate::{PerIpLimiter, RateSpec};

#[path = "rss.rs"]
mod rss;
use rss::rss_kib;

fn address(i: u32) -> IpAddr {
    if i % 2 == 0 {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    }
}

fn main() {
    let keys: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let one = NonZeroU32::MIN;
    let spec = RateSpec::new(one.saturating_add(49), one.saturating_add(99));
    let before = rss_kib();
    let limiter = PerIpLimiter::new(spec, keys as usize);
    let start = Instant::now();
    for i in 0..keys {
        let _ = limiter.check(address(i));
    }
    let fill = start.elapsed();
    let after = rss_kib();
    // A full table: new addresses go to the overflow bucket, known ones to their own.
    let start = Instant::now();
    for i in 0..keys {
        let _ = limiter.check(address(i.wrapping_mul(7) % (2 * keys)));
    }
    let full = start.elapsed();
    println!(
        "per-address limiter: {} addresses tracked; resident set +{:.1} MiB ({:.0} bytes per address); \
         {:.0} ns per check while filling, {:.0} ns per check when full",
        limiter.tracked(),
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 * 1024.0 / f64::from(keys.max(1)),
        fill.as_nanos() as f64 / f64::from(keys.max(1)),
        full.as_nanos() as f64 / f64::from(keys.max(1)),
    );
}
