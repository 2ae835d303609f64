//! A manifest file, read as Policy Advisor reads workloads and policies.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let loaded = policy::load_str(Path::new("manifest.yaml"), text);
    let _ = loaded.errors();
});
