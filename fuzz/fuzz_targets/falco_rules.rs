//! A Falco rules file, loaded and compiled as `ktrail falco` loads the cluster's rules.
#![no_main]

use std::path::Path;

use falco::rules::Ruleset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut set = Ruleset::default();
    if set.add_file(Path::new("rules.yaml"), text).is_ok() {
        let _ = set.compile();
    }
});
