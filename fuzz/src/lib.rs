//! What the record targets share: one record read as `ktrail ingest` and the HTTP endpoints
//! read it.

use ingest::{Format, parse_record};

/// Parses `record` as `format` (any events it yields, or leaves behind on failure, are
/// dropped, as the batcher drops them).
pub fn check_record(format: Format, record: &[u8]) {
    let mut events = Vec::new();
    let _ = parse_record(format, record, 0, &mut events);
}

/// For targets whose code catches a dependency's panic on purpose (arrow-ipc panics on some
/// damaged messages; ktrail refuses them): libfuzzer-sys's panic hook aborts at once, before
/// `catch_unwind` can act, so the default hook is put back. A panic nobody catches still
/// ends the run as a crash (libfuzzer-sys aborts on it after the target returns).
pub fn allow_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::panic::take_hook();
    });
}
