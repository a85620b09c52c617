//! Fuzz target: the JSON bounds scan and every API's schema check on arbitrary bytes.
#![no_main]

use bsk_sidecar::guard::bounds::JsonBounds;
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
