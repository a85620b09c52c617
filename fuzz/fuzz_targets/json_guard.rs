//! Fuzz target: the JSON bounds scan, the payload check against its `serde_json`
//! reference, and every API's schema check on arbitrary bytes.
#![no_main]

#[path = "../../tests/support/json_oracle.rs"]
mod json_oracle;

use bsk_sidecar::guard::bounds::JsonBounds;
use bsk_sidecar::guard::fields::Object;
use bsk_sidecar::guard::payload::{self, Invalid};
use bsk_sidecar::guard::schema::{self, Api};
use libfuzzer_sys::fuzz_target;

const APIS: [Api; 8] = [
    Api::Api1,
    Api::Api2,
    Api::Api3,
    Api::Api4,
    Api::Api5a,
    Api::Api5b,
    Api::Api6,
    Api::Api7,
];

fuzz_target!(|data: &[u8]| {
    let tight = JsonBounds {
        max_depth: 4,
        max_values: 64,
        max_string: 32,
    };
    let _ = tight.check(data);
    let _ = JsonBounds::default().check(data);
    // The payload check judges every text as its reference does, and keeps a top-level
    // object's entries as serde_json reads them.
    if let Ok(text) = std::str::from_utf8(data) {
        let expected = match json_oracle::verdict(text) {
            Ok(()) => Ok(()),
            Err(json_oracle::Refusal::DuplicateKey) => Err(Invalid::DuplicateKey),
            Err(json_oracle::Refusal::NotJson) => Err(Invalid::NotJson),
        };
        assert_eq!(payload::validate_any(data), expected, "{text:?}");
        let read = payload::read(data, None);
        assert_eq!(read.as_ref().map(|_| ()).map_err(|e| *e), expected, "{text:?}");
        if let Ok(mine) = read {
            let reference = Object::parse(data);
            assert_eq!(format!("{mine:?}"), format!("{reference:?}"), "{text:?}");
        }
    }
    // The schema check runs on everything, not only what the bounds let through: it must
    // hold on its own.
    for api in APIS {
        let verdict = schema::check(api, data);
        if verdict.is_ok() {
            assert!(
                serde_json::from_slice::<serde_json::Value>(data).is_ok(),
                "{} accepted bytes that are not JSON",
                api.name()
            );
        }
    }
});
