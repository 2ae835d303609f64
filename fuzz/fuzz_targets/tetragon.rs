//! One record read as `Format::Tetragon`, as `ktrail ingest` and the HTTP endpoints read it.
#![no_main]

use ingest::{Format, parse_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|record: &[u8]| {
    let mut events = Vec::new();
    let (_, result) = parse_record(Format::Tetragon, record, 0, &mut events);
    if result.is_err() {
        // A record that fails adds nothing: the dead letter holds it whole.
        assert!(events.is_empty(), "a failed record left {} events", events.len());
    }
});
