//! A Falco condition, as a rule's `condition:` or an exception's; an error names an offset
//! inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match falco::condition::parse(text) {
        Ok(expr) => {
            let mut names = Vec::new();
            expr.macros(&mut names);
            expr.bare_items(&mut names);
        }
        Err(e) => assert!(e.offset <= text.len(), "offset {} past the end", e.offset),
    }
});
