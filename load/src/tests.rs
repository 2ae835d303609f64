use std::sync::Arc;

use ingest::{Format, Input};
use parking_lot::Mutex;
use storage::{Store, StoreOptions};

use crate::{DeadLetter, load_body, load_inputs};

fn native(range: std::ops::Range<u32>) -> String {
    range
        .map(|i| format!(r#"{{"ts":{i},"kind":"other","source":"test","raw":"record {i}"}}"#))
        .collect::<Vec<_>>()
        .join("\n")
}

fn store(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap().0
}

#[test]
fn a_body_is_stored_once_and_its_bad_records_are_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("data"));
    let dead_path = dir.path().join("dead.jsonl");
    let dead = Mutex::new(DeadLetter::new(&dead_path));
    let body: Arc<[u8]> = format!("{}\nnot json\n", native(0..3)).into_bytes().into();
    let first = load_body(
        &store,
        "http:native".into(),
        Format::Native,
        body.clone(),
        2,
        &dead,
    )
    .unwrap();
    assert_eq!((first.accepted, first.duplicates, first.records), (3, 0, 4));
    assert_eq!(first.rejections.len(), 1);
    assert_eq!(first.rejections[0].line, 4);
    let again = load_body(&store, "http:native".into(), Format::Native, body, 2, &dead).unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    let kept = std::fs::read_to_string(&dead_path).unwrap();
    assert_eq!(kept.lines().count(), 2, "{kept}");
    assert!(kept.contains("not json"), "{kept}");
}

#[test]
fn a_file_loaded_completely_is_skipped_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("data"));
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, native(0..100)).unwrap();
    let inputs = [Input::File(file)];
    let mut dead = DeadLetter::new(&dir.path().join("dead.jsonl"));
    let first = load_inputs(&store, &inputs, Format::Native, 16, &mut dead, &mut ()).unwrap();
    assert_eq!(first.counts["native"].accepted, 100);
    assert_eq!(first.skipped_inputs, 0);
    let second = load_inputs(&store, &inputs, Format::Native, 16, &mut dead, &mut ()).unwrap();
    assert_eq!(second.skipped_inputs, 1);
    assert!(second.counts.values().all(|c| c.accepted == 0));
    assert_eq!(store.snapshot().event_ids().unwrap().len(), 100);
}

#[test]
fn an_input_that_cannot_be_read_is_named_and_the_next_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("data"));
    let good = dir.path().join("good.ndjson");
    std::fs::write(&good, native(0..5)).unwrap();
    let inputs = [
        Input::File(dir.path().join("missing.ndjson")),
        Input::File(good),
    ];
    let mut dead = DeadLetter::new(&dir.path().join("dead.jsonl"));
    let loaded = load_inputs(&store, &inputs, Format::Native, 16, &mut dead, &mut ()).unwrap();
    assert_eq!(loaded.failed_inputs.len(), 1);
    assert!(
        loaded.failed_inputs[0]
            .to_string()
            .contains("missing.ndjson")
    );
    assert_eq!(loaded.counts["native"].accepted, 5);
}
