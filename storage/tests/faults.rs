//! Fault injection: a real full file system (a small tmpfs mounted for each test; CI runs as
//! root, and a test that cannot mount fails rather than skips) and bit flips in every file a
//! store keeps. For each: what was acknowledged is there exactly once, nothing damaged is
//! served, and the store recovers by itself where it can.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use ktrail_storage::fsutil::{self, Fault};
use ktrail_storage::{self as storage, StorageError, Store, StoreOptions};
use model::{Event, batch_of};
use rand::{Rng, SeedableRng};

/// A tmpfs of `bytes` mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(bytes: u64) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs a small file system: `mount -t tmpfs` failed (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system up with one file; returns it (delete it to free the space).
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn events(from: u64, n: u64, raw_bytes: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| Event {
            ts: 1_800_000_000_000_000_000 + i as i64 * 1_000_000,
            kind: "process_exec".into(),
            source: "test".into(),
            event_id: Some(i as i64),
            namespace: Some("billing".into()),
            pod: Some(format!("api-{}", i % 3)),
            raw: Some(format!(
                "{{\"i\":{i},\"pad\":\"{}\"}}",
                "x".repeat(raw_bytes)
            )),
            ..Default::default()
        })
        .collect()
}

fn options() -> StoreOptions {
    StoreOptions {
        background: false,
        wal_zstd_level: 0,
        ..Default::default()
    }
}

/// Every event id the store serves, sorted.
fn stored_ids(store: &Store) -> Vec<i64> {
    let mut ids = store.snapshot().event_ids().unwrap();
    ids.sort();
    ids
}

#[test]
fn a_full_disk_refuses_the_batch_and_its_retry_stores_it_once_space_is_back() {
    let fs_ = SmallFs::mount(4 << 20);
    let data = fs_.path().join("data");
    let (store, _) = Store::open(&data, options()).unwrap();
    store.append(batch_of(&events(0, 10, 100))).unwrap();
    let filler = fs_.fill();

    let batch = batch_of(&events(10, 50, 2000));
    let err = store.append(batch.clone()).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
    assert!(store.write_refusal().is_some());
    // The producer's retry, still without space: refused again, not counted as duplicates.
    let err = store.append(batch.clone()).unwrap_err();
    assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
    assert_eq!(
        err.to_string().matches("no space left").count(),
        1,
        "the reason once, not once per failed batch: {err}"
    );

    // Space is back: the same store takes the retry, every row new.
    fs::remove_file(&filler).unwrap();
    let out = store.append(batch.clone()).unwrap();
    assert_eq!((out.accepted, out.duplicates), (50, 0));
    assert!(store.write_refusal().is_none());
    assert_eq!(store.append(batch).unwrap().duplicates, 50);
    let expected: Vec<i64> = (0..60).collect();
    assert_eq!(stored_ids(&store), expected);
    drop(store);
    let (store, report) = Store::open(&data, options()).unwrap();
    assert!(report.wal.torn_tail.is_none(), "{:?}", report.wal.torn_tail);
    assert_eq!(
        stored_ids(&store),
        expected,
        "every acknowledged event once"
    );
}

#[test]
fn a_flush_that_finds_no_space_bounds_the_memtable_and_resumes_by_itself() {
    let fs_ = SmallFs::mount(16 << 20);
    let data = fs_.path().join("data");
    let opts = StoreOptions {
        memtable_max_rows: 100,
        ..options()
    };
    let (store, _) = Store::open(&data, opts.clone()).unwrap();
    store.append(batch_of(&events(0, 100, 100))).unwrap();
    store.flush().unwrap();
    // Room for the WAL records but not for segments: leave a little space.
    let filler = fs_.fill();
    let f = fs::OpenOptions::new().write(true).open(&filler).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - (256 << 10)).unwrap();
    drop(f);

    let mut acked = (0..100).collect::<Vec<i64>>();
    let mut refused = None;
    for round in 0..40u64 {
        let from = 100 + round * 100;
        match store.append(batch_of(&events(from, 100, 10))) {
            Ok(out) => {
                assert_eq!(out.accepted, 100);
                acked.extend(from as i64..from as i64 + 100);
            }
            Err(e) => {
                assert!(e.is_no_space(), "round {round}: {e}");
                refused = Some(round);
                break;
            }
        }
    }
    let refused = refused.expect("a full disk must refuse appends at some point");
    assert!(
        store
            .snapshot()
            .memtable
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
            <= 2 * 100 + 100,
        "the memtable stays bounded"
    );
    assert!(refused > 0);

    fs::remove_file(&filler).unwrap();
    let out = store.append(batch_of(&events(10_000, 100, 10))).unwrap();
    assert_eq!(out.accepted, 100);
    acked.extend(10_000..10_100);
    store.flush().unwrap();
    acked.sort();
    assert_eq!(stored_ids(&store), acked);
    drop(store);
    let (store, report) = Store::open(&data, opts).unwrap();
    assert!(report.quarantined.is_empty(), "{:?}", report.quarantined);
    assert_eq!(stored_ids(&store), acked);
    store.verify().unwrap();
}

/// Flips one random bit of `path`; returns the offset.
fn flip(path: &Path, rng: &mut impl Rng) -> u64 {
    let mut bytes = fs::read(path).unwrap();
    let at = rng.random_range(0..bytes.len());
    bytes[at] ^= 1 << rng.random_range(0..8);
    fs::write(path, &bytes).unwrap();
    at as u64
}

#[test]
fn bit_flips_in_every_file_are_detected_and_never_served() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b747261696c);
    let original: Vec<i64> = (0..300).collect();
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), options()).unwrap();
            store.append(batch_of(&events(0, 200, 50))).unwrap();
            store.flush().unwrap();
            store.append(batch_of(&events(200, 100, 50))).unwrap();
        }
        let seg = Store::open(dir.path(), options())
            .unwrap()
            .0
            .manifest()
            .segments[0]
            .clone();
        let wal = fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| fs::metadata(p).unwrap().len() > 16)
            .expect("a WAL file with records");
        let targets = [
            dir.path().join(&seg.path),
            dir.path().join(&seg.index_path),
            wal,
            dir.path().join("MANIFEST"),
        ];
        let target = &targets[round % targets.len()];
        let offset = flip(target, &mut rng);
        let what = format!(
            "round {round}: bit flipped in {} at {offset}",
            target.display()
        );
        match Store::open(dir.path(), options()) {
            Err(e) => assert!(
                matches!(
                    e,
                    StorageError::Corruption { .. }
                        | StorageError::ManifestLost { .. }
                        | StorageError::UnsupportedVersion { .. }
                ),
                "{what}: {e}"
            ),
            Ok((store, report)) => {
                let verified = store.verify();
                let torn = report.wal.torn_tail.is_some();
                assert!(verified.is_err() || torn, "{what}: not detected");
                if verified.is_ok() {
                    // A flip in the WAL's last record reads as a torn tail: reported and
                    // cut, and the rest are the events as written.
                    let ids = stored_ids(&store);
                    assert!(
                        ids.iter().all(|i| original.binary_search(i).is_ok()),
                        "{what}"
                    );
                    assert!(ids.len() >= 200, "{what}: only the last record may go");
                }
            }
        }
    }
}

#[test]
fn repair_rebuilds_a_lost_manifest_from_checked_segments_and_quarantines_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let segments = {
        let (store, _) = Store::open(data, options()).unwrap();
        store.append(batch_of(&events(0, 100, 10))).unwrap();
        store.flush().unwrap();
        store.append(batch_of(&events(100, 100, 10))).unwrap();
        store.flush().unwrap();
        store.append(batch_of(&events(200, 100, 10))).unwrap();
        store.flush().unwrap();
        // In the WAL only.
        store.append(batch_of(&events(300, 50, 10))).unwrap();
        store.manifest().segments
    };
    assert_eq!(segments.len(), 3);
    fs::remove_file(data.join("MANIFEST")).unwrap();
    let damaged = data.join(&segments[1].path);
    let bytes = fs::read(&damaged).unwrap();
    fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();

    let err = Store::open(data, options()).err().unwrap();
    assert!(matches!(err, StorageError::ManifestLost { .. }), "{err}");

    let report = storage::repair(data, options(), &[]).unwrap();
    assert!(report.rebuilt);
    assert_eq!(report.segments, 3, "two checked, one of the WAL's events");
    assert_eq!(report.rows, 250);
    assert_eq!(report.wal_records, 1);
    assert_eq!(report.wal_events_stored, 50);
    let quarantined: Vec<&PathBuf> = report.quarantined.iter().map(|(p, _)| p).collect();
    assert_eq!(
        quarantined,
        vec![&damaged, &data.join(&segments[1].index_path)],
        "{:?}",
        report.quarantined
    );
    let moved = data.join("quarantine").join(&segments[1].path);
    assert_eq!(
        fs::read(&moved).unwrap(),
        &bytes[..bytes.len() / 2],
        "kept, not deleted"
    );

    let (store, _) = Store::open(data, options()).unwrap();
    let mut expected: Vec<i64> = (0..100).chain(200..350).collect();
    expected.sort();
    assert_eq!(stored_ids(&store), expected);
    store.verify().unwrap();
    drop(store);
    // A readable manifest is left alone.
    let again = storage::repair(data, options(), &[]).unwrap();
    assert!(!again.rebuilt);
}

enum Step {
    Append(u64),
    Flush,
    Compact,
}

/// One fault at the pass through `point` after `skip` others: the step that meets it fails,
/// is retried (after a restart when `restart` is set or the store is poisoned) and succeeds;
/// after a restart every acknowledged event is there once. False when the steps pass `point`
/// `skip` times or fewer.
fn survive_fault(point: &'static str, fault: Fault, skip: u32, restart: bool) -> bool {
    let what = format!("{point} ({fault:?}, after {skip} passes, restart {restart})");
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<i64> = Vec::new();
    let mut store = Store::open(dir.path(), options()).unwrap().0;
    store.append(batch_of(&events(0, 100, 10))).unwrap();
    acked.extend(0..100);
    store.flush().unwrap();
    fsutil::inject_fault(point, fault, skip);
    let mut failures = 0;
    for step in [
        Step::Append(100),
        Step::Flush,
        Step::Append(200),
        Step::Flush,
        Step::Compact,
    ] {
        let run = |store: &Store| match &step {
            Step::Append(from) => store
                .append(batch_of(&events(*from, 100, 10)))
                .map(|out| assert_eq!(out.accepted, 100, "{what}")),
            Step::Flush => store.flush(),
            Step::Compact => store.compact_major().map(|_| ()),
        };
        if let Err(e) = run(&store) {
            failures += 1;
            if restart || matches!(e, StorageError::Poisoned(_)) {
                drop(store);
                store = Store::open(dir.path(), options())
                    .unwrap_or_else(|e| panic!("{what}: the store does not reopen: {e}"))
                    .0;
            }
            run(&store).unwrap_or_else(|e| panic!("{what}: the retry failed: {e}"));
        }
        if let Step::Append(from) = step {
            acked.extend(from as i64..from as i64 + 100);
        }
    }
    let reached = !fsutil::fault_pending();
    fsutil::clear_faults();
    assert_eq!(failures, u32::from(reached), "{what}");
    drop(store);
    let (store, report) = Store::open(dir.path(), options())
        .unwrap_or_else(|e| panic!("{what}: the store does not reopen: {e}"));
    assert!(
        report.quarantined.is_empty(),
        "{what}: {:?}",
        report.quarantined
    );
    assert_eq!(
        stored_ids(&store),
        acked,
        "{what}: every acknowledged event, once"
    );
    store.verify().unwrap_or_else(|e| panic!("{what}: {e}"));
    // The hash chain tells the same history as the manifest: a failed step left no entry
    // that a later one did not replace.
    let history = storage::check_history(dir.path(), &store.manifest(), None, None).unwrap();
    assert!(
        history.findings.is_empty(),
        "{what}: {:?}",
        history.findings
    );
    reached
}

/// Every pass of every fault point through appends, two flushes and a compaction.
#[test]
fn every_durable_step_can_fail_and_nothing_acknowledged_is_lost() {
    let mut injected = 0;
    for point in fsutil::FAULT_POINTS {
        let mut passes = 0;
        for fault in [Fault::Io, Fault::NoSpace] {
            for restart in [false, true] {
                passes = (0..)
                    .take_while(|skip| survive_fault(point, fault, *skip, restart))
                    .count();
                injected += passes;
            }
        }
        assert!(passes > 0, "{point} is never reached");
    }
    eprintln!("{injected} faults injected, each survived");
}
