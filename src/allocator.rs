//! The global allocator the features choose, chosen by measurement (BENCHMARKS.md,
//! "Allocator"): jemalloc by default (the `jemalloc` feature), mimalloc with `--features
//! mimalloc`, the system's with `--no-default-features`.
//!
//! The library installs none, so that no feature can swap it out from under a binary:
//! `bsk-sidecar` and the benches install this one,
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: bsk_sidecar::allocator::Chosen = bsk_sidecar::allocator::CHOSEN;
//! # fn main() {
//! #     assert_eq!(*Box::new(7), 7);
//! # }
//! ```
//!
//! and `load-allocs` counts allocations around it.

#[cfg(feature = "mimalloc")]
pub type Chosen = mimalloc::MiMalloc;
#[cfg(feature = "mimalloc")]
pub const CHOSEN: Chosen = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
pub type Chosen = tikv_jemallocator::Jemalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
pub const CHOSEN: Chosen = tikv_jemallocator::Jemalloc;

#[cfg(not(any(feature = "jemalloc", feature = "mimalloc")))]
pub type Chosen = std::alloc::System;
#[cfg(not(any(feature = "jemalloc", feature = "mimalloc")))]
pub const CHOSEN: Chosen = std::alloc::System;
