//! Fuzz target: `envelope::open` on every layer stack the spec uses, with a fixed key set.
//!
//! Input layout: byte 0 picks the stack, byte 1 holds flags (content type, passcode
//! header), then `AUTHORIZATION \0 BODY` (no `\0`: everything is the body).
#![no_main]

use bsk_sidecar::envelope::{self, aes::AesKey, jwt::JwtKey, Incoming, Layer, PeerKeys};
use bsk_sidecar::secret::Secret;
use libfuzzer_sys::fuzz_target;

const STACKS: [&[Layer]; 7] = [
    &[Layer::Form, Layer::Aes],
    &[Layer::Token, Layer::Jwt],
    &[Layer::Bearer, Layer::Jwt],
    &[Layer::Token, Layer::Jwt, Layer::Aes],
    &[Layer::Form, Layer::Aes, Layer::Jwt],
    &[Layer::Aes],
    &[Layer::Jwt],
];

const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("application/x-www-form-urlencoded"),
    Some("application/json"),
    Some("text/plain; charset=utf-8"),
];

/// Same instant as the seeds' tokens, so signed seeds get past the clock checks.
const NOW: u64 = 1_700_000_000;

fn keys() -> PeerKeys {
    let mut jwt = JwtKey::new(Secret::new("bsk-shared-hs256-secret-0123456789"));
    jwt.require_exp = false;
    PeerKeys {
        agid: "BSK".to_owned(),
        passcode: Some(Secret::new("376423")),
        jwt: Some(jwt),
        aes: AesKey::new(b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", b"V0ZMZO6WZ45KY2PL")
            .into_iter()
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, flags, rest @ ..] = data else {
        return;
    };
    let Some(stack) = STACKS.get(usize::from(*which) % STACKS.len()) else {
        return;
    };
    let Ok(stack) = envelope::Stack::new(stack) else {
        return;
    };
    let content_type = CONTENT_TYPES.get(usize::from(flags & 3)).copied().flatten();
    let passcode_header = (flags & 4 != 0).then_some("376423");
    let (authorization, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => {
            let (head, tail) = rest.split_at(i);
            (
                std::str::from_utf8(head).ok(),
                tail.get(1..).unwrap_or_default(),
            )
        }
        None => (None, rest),
    };
    let keys = keys();
    let req = Incoming {
        content_type,
        authorization,
        passcode_header,
        body,
    };
    if let Ok(opened) = envelope::open(&stack, &keys, &req, NOW) {
        // What opens must re-seal and open to the same bytes.
        let sealed = envelope::seal(&stack, &keys, &opened.plain, opened.shape);
        if let Ok(sealed) = sealed {
            let again = Incoming {
                content_type: Some(sealed.content_type),
                authorization: sealed.authorization.as_deref(),
                passcode_header,
                body: &sealed.body,
            };
            let reopened = envelope::open(&stack, &keys, &again, NOW).map(|o| o.plain);
            assert_eq!(reopened.ok().as_deref(), Some(opened.plain.as_slice()));
        }
    }
});
