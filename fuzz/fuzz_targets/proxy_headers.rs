//! Fuzz target: the PROXY protocol v1/v2 parser and the `X-Forwarded-For` walk.
//!
//! Input layout: byte 0 even → the rest is a PROXY header stream; odd → the rest is
//! `X-Forwarded-For` header lines separated by `\n`, with byte 1 choosing the peer.
#![no_main]

use std::net::IpAddr;

use bsk_sidecar::guard::ip::AllowList;
use bsk_sidecar::guard::proxy::{self, client_from_forwarded};
use libfuzzer_sys::fuzz_target;

const PEERS: [&str; 4] = ["10.0.0.2", "203.0.113.9", "::ffff:10.0.0.3", "2001:db8::1"];

fn proxy_stream(buf: &[u8]) {
    match proxy::parse(buf) {
        Ok(Some((header, n))) => {
            assert!(
                n > 0 && n <= buf.len(),
                "header length {n} outside the input"
            );
            // The header alone parses the same; nothing after it is read.
            let alone = buf.get(..n).map(proxy::parse);
            assert_eq!(alone, Some(Ok(Some((header, n)))));
        }
        Ok(None) => {
            // "Need more bytes" must hold for every shorter prefix too.
            for i in 0..buf.len() {
                let prefix = buf.get(..i).map(proxy::parse);
                assert!(
                    matches!(prefix, Some(Ok(None))),
                    "prefix of {i} bytes decided early"
                );
            }
        }
        Err(_) => {}
    }
}

fn forwarded(which: u8, lines: &[u8]) {
    let mut trusted = AllowList::default();
    for entry in ["10.0.0.0/8", "2001:db8::/64"] {
        if trusted.push_str(entry).is_err() {
            return;
        }
    }
    let Some(peer) = PEERS
        .get(usize::from(which) % PEERS.len())
        .and_then(|p| p.parse::<IpAddr>().ok())
    else {
        return;
    };
    // Each line one field's value, whatever its bytes.
    let values = lines.split(|&b| b == b'\n');
    let client = client_from_forwarded(peer, values, &trusted);
    if !trusted.contains_address(bsk_sidecar::guard::ip::canonical(peer)) {
        assert_eq!(client, peer, "an untrusted hop changed the client");
    }
}

fuzz_target!(|data: &[u8]| {
    match data {
        [mode, rest @ ..] if mode % 2 == 0 => proxy_stream(rest),
        [_, which, rest @ ..] => forwarded(*which, rest),
        _ => {}
    }
});
