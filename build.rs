//! Lays out the release binary's code: the functions a running sidecar executes come
//! first in `.text`, together (`packaging/hot-code.ld`, written by
//! `benches/load/layout.sh`). The kernel maps a binary's code into a process 64 KiB
//! around each page the process first runs, so 1.6 MB of executed code spread over
//! 12 MB mapped 6–10 MiB of it; laid out together it maps about what it is
//! (BENCHMARKS.md, "the twenty-first round").
//!
//! Only the `bsk-sidecar` binary of an x86_64 Linux release build is laid out: the
//! script names that build's functions. It describes only the start of `.text`
//! (`INSERT AFTER .eh_frame`): LLD, Rust's linker on this target since 1.90 and the one
//! `zig cc` runs for the packages, keeps its default layout for everything else; GNU ld
//! links it too, with the listed functions in a second `.text` section. A name that no
//! longer exists matches nothing; the build never fails for a stale script.

use std::env;
use std::path::Path;

fn main() {
    const SCRIPT: &str = "packaging/hot-code.ld";
    println!("cargo:rerun-if-changed={SCRIPT}");
    let var = |name| env::var(name).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu" || var("PROFILE") != "release" {
        return;
    }
    let script = Path::new(&var("CARGO_MANIFEST_DIR")).join(SCRIPT);
    if script.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=bsk-sidecar=-Wl,-T,{}",
            script.display()
        );
    }
}
