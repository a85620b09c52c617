//! Fuzz target: the YAML config loader (`config::from_yaml`) on arbitrary text; a config
//! it accepts must also describe itself (`bsk-sidecar check`'s summary).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A base that does not exist: relative secret-file paths resolve to nothing readable.
    let base = Path::new("/nonexistent/bsk-sidecar-fuzz");
    match bsk_sidecar::config::from_yaml(text, "fuzz.yaml", base) {
        Ok(settings) => {
            let _ = settings.describe();
        }
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "a refused config names at least one problem"
            );
            for e in &errors {
                let _ = e.to_string();
            }
        }
    }
});
