//! A load that a store failure stops, with storage's fault injection (process-wide: this
//! binary holds only tests that arm faults).

use ingest::{Format, Input};
use storage::fsutil::{self, Fault};
use storage::{Store, StoreOptions};

fn native(range: std::ops::Range<u32>) -> String {
    range
        .map(|i| format!(r#"{{"ts":{i},"kind":"other","source":"test","raw":"record {i}"}}"#))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first input loads (one bad line among its records); the WAL write of the second
/// finds the disk full. The load stops with the store's error, and the first input's
/// rejection is in the dead-letter file already, before the caller does anything more.
#[test]
fn a_store_failure_stops_the_load_and_the_dead_letters_before_it_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("data"), StoreOptions::default())
        .unwrap()
        .0;
    let (first, second) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
    std::fs::write(&first, format!("{}\nnot json\n", native(0..3))).unwrap();
    std::fs::write(&second, native(10..13)).unwrap();
    let dead_path = dir.path().join("dead.jsonl");
    let mut dead = ktrail_load::DeadLetter::new(&dead_path);
    // The first input's one batch passes; the second's WAL write fails.
    fsutil::inject_fault("wal.write", Fault::NoSpace, 1);
    let e = ktrail_load::load_inputs(
        &store,
        &[Input::File(first), Input::File(second)],
        Format::Native,
        16,
        &mut dead,
        &mut (),
    )
    .unwrap_err();
    assert!(matches!(e, ktrail_load::LoadError::Store(_)), "{e}");
    assert!(!fsutil::fault_pending());
    let kept = std::fs::read_to_string(&dead_path).unwrap();
    assert_eq!(kept.lines().count(), 1, "{kept}");
    assert!(kept.contains("not json"), "{kept}");
    assert_eq!(store.snapshot().rows(), 3);
    drop(dead);
}
