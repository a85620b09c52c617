//! Fuzz target: how a client connection's bytes are read as HTTP/1.1 — request heads,
//! `Content-Length` and chunked bodies, pipelined requests — on arbitrary input.
#![no_main]

use bsk_sidecar::server::{read_requests, Read};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limit in [16 * 1024, 64] {
        let found = read_requests(data, limit);
        // Bodies are never longer than what was sent, and nothing is read past a refusal,
        // a malformed body or the input's end.
        let mut body_bytes = 0usize;
        for (i, r) in found.iter().enumerate() {
            match r {
                Read::Request(_, _, body) => body_bytes += body.len(),
                _ => assert_eq!(i + 1, found.len(), "read past {r:?}"),
            }
        }
        assert!(body_bytes <= data.len());
    }
});
