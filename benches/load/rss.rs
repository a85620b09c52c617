//! The resident set of the measuring process, for the table benchmarks.

/// A field of `/proc/self/status` in KiB: `VmRSS` (resident now) or `VmHWM` (the peak).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident set (VmRSS) of this process, KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Peak resident set (VmHWM) of this process, KiB.
#[allow(dead_code)]
pub fn peak_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Starts the peak (VmHWM) over from the resident set now.
#[allow(dead_code)]
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
