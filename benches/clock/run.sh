#!/usr/bin/env bash
# What one read of each clock costs on this machine: the precise clocks a request reads for
# its latencies (CLOCK_MONOTONIC, CLOCK_REALTIME) and the coarse ones it reads for what is
# judged in seconds (src/clock.rs, `coarse`), each read ten million times in a loop, through
# the C library's vDSO call as the sidecar reads them. Needs a C compiler (cc).
#
#   benches/clock/run.sh
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/clock.c" <<'C'
#include <stdio.h>
#include <time.h>
static double per_read(clockid_t id) {
    struct timespec a, b, t;
    const int n = 10000000;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) clock_gettime(id, &t);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}
int main(void) {
    printf("CLOCK_MONOTONIC         %5.1f ns a read\n", per_read(CLOCK_MONOTONIC));
    printf("CLOCK_MONOTONIC_COARSE  %5.1f ns a read\n", per_read(CLOCK_MONOTONIC_COARSE));
    printf("CLOCK_REALTIME          %5.1f ns a read\n", per_read(CLOCK_REALTIME));
    printf("CLOCK_REALTIME_COARSE   %5.1f ns a read\n", per_read(CLOCK_REALTIME_COARSE));
    return 0;
}
C
cc -O2 -o "$work/clock" "$work/clock.c"
"$work/clock"
