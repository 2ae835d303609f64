//! What the record targets share: one record read as `ktrail ingest` and the HTTP endpoints
//! read it.

use ingest::{Format, parse_record};

/// Parses `record` as `format`; a record that fails adds nothing (the dead letter holds it
/// whole).
pub fn check_record(format: Format, record: &[u8]) {
    let mut events = Vec::new();
    let (_, result) = parse_record(format, record, 0, &mut events);
    if result.is_err() {
        assert!(events.is_empty(), "a failed record left {} events", events.len());
    }
}
