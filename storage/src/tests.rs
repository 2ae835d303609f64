use std::collections::HashSet;
use std::fs;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, StringArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Int64Type, TimestampNanosecondType};
use model::{Event, batch_of};

use super::*;
use crate::append::memory_of;

pub(crate) fn event(i: u64, ns: &str, pod: &str) -> Event {
    Event {
        ts: 1_800_000_000_000_000_000 + (i as i64) * 1_000_000_000,
        kind: if i.is_multiple_of(3) {
            "network_connect"
        } else {
            "process_exec"
        }
        .into(),
        source: "test".into(),
        event_id: Some(i as i64),
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        container_id: Some(format!("c{}", i % 7)),
        exe: Some(["/bin/sh", "/usr/bin/curl", "/usr/sbin/tcpdump"][(i % 3) as usize].into()),
        dst_ip: i
            .is_multiple_of(3)
            .then(|| format!("10.0.{}.{}", i % 5, i % 11)),
        ..Default::default()
    }
}

fn opts() -> StoreOptions {
    StoreOptions {
        background: false,
        memtable_max_rows: usize::MAX / 4,
        ..Default::default()
    }
}

fn ids_in(snapshot: &Snapshot) -> Vec<i64> {
    let mut ids = Vec::new();
    for s in &snapshot.segments {
        ids.extend(segment::event_ids(s).unwrap());
    }
    for b in &snapshot.memtable {
        ids.extend_from_slice(b.column(3).as_primitive::<Int64Type>().values());
    }
    ids.sort();
    ids
}

#[test]
fn appended_events_are_visible_at_once_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    let events: Vec<Event> = (0..100).map(|i| event(i, "billing", "api-1")).collect();
    let out = store.append(batch_of(&events)).unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            accepted: 100,
            duplicates: 0
        }
    );
    assert_eq!(store.snapshot().rows(), 100);
    drop(store); // no close: the WAL must carry the events
    let (store, report) = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(report.wal.replayed, 1);
    assert_eq!(ids_in(&store.snapshot()), (0..100).collect::<Vec<_>>());
}

#[test]
fn a_pipeline_stops_at_its_first_failure_and_finish_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    let mut acks = Vec::new();
    let mut on_durable = |k: usize, out: AppendOutcome| acks.push((k, out.accepted));
    let mut pipeline = AppendPipeline::new(&store, &mut on_durable);
    let good = |first: u64| {
        batch_of(
            &(first..first + 10)
                .map(|i| event(i, "ns", "p"))
                .collect::<Vec<_>>(),
        )
    };
    let other_schema = RecordBatch::try_from_iter([(
        "x",
        std::sync::Arc::new(datafusion::arrow::array::Int32Array::from(vec![1]))
            as datafusion::arrow::array::ArrayRef,
    )])
    .unwrap();
    pipeline.push(0, good(0)).unwrap();
    assert!(matches!(
        pipeline.push(1, other_schema),
        Err(StorageError::SchemaMismatch(_))
    ));
    // Refused with the first failure, not submitted.
    assert!(matches!(
        pipeline.push(2, good(100)),
        Err(StorageError::SchemaMismatch(_))
    ));
    assert!(matches!(
        pipeline.finish(),
        Err(StorageError::SchemaMismatch(_))
    ));
    // What was in flight before the failure was still waited for.
    assert_eq!(acks, [(0, 10)]);
    assert_eq!(store.snapshot().rows(), 10);
}

#[test]
fn pipelined_appends_are_acknowledged_in_order_and_durable_at_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    let mut acks = Vec::new();
    let mut on_durable = |k: usize, out: AppendOutcome| acks.push((k, out));
    let mut pipeline = AppendPipeline::new(&store, &mut on_durable);
    for k in 0..5u64 {
        // Batch 3 repeats batch 1: its rows are duplicates.
        let first = if k == 3 { 10 } else { k * 10 };
        let events: Vec<Event> = (first..first + 10).map(|i| event(i, "ns", "p")).collect();
        pipeline.push(k as usize, batch_of(&events)).unwrap();
    }
    pipeline.finish().unwrap();
    let accepted = |n| AppendOutcome {
        accepted: n,
        duplicates: 10 - n,
    };
    assert_eq!(
        acks,
        vec![
            (0, accepted(10)),
            (1, accepted(10)),
            (2, accepted(10)),
            (3, accepted(0)),
            (4, accepted(10)),
        ]
    );
    let expected: Vec<i64> = (0..30).chain(40..50).collect();
    assert_eq!(ids_in(&store.snapshot()), expected);
    drop(store); // no close: the WAL must carry every batch acknowledged
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(ids_in(&store.snapshot()), expected);
}

#[test]
fn duplicates_are_dropped_in_memory_in_segments_and_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    let events: Vec<Event> = (0..50).map(|i| event(i, "ns", "p")).collect();
    store.append(batch_of(&events)).unwrap();
    let again = store.append(batch_of(&events[..10])).unwrap();
    assert_eq!(
        again,
        AppendOutcome {
            accepted: 0,
            duplicates: 10
        }
    );
    store.flush().unwrap();
    drop(store);
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    let more: Vec<Event> = (40..60).map(|i| event(i, "ns", "p")).collect();
    let out = store.append(batch_of(&more)).unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            accepted: 10,
            duplicates: 10
        }
    );
    assert_eq!(ids_in(&store.snapshot()), (0..60).collect::<Vec<_>>());
}

#[test]
fn duplicates_are_found_per_hour_in_batches_that_interleave_hours() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    // Hours 0, 1, 0 again: runs of one hour, a repeat within a run and one across runs.
    let ids = [0, 1, 1, 3600, 3601, 2, 0, 3601, 3];
    let events: Vec<Event> = ids.iter().map(|&i| event(i, "ns", "p")).collect();
    let out = store.append(batch_of(&events)).unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            accepted: 6,
            duplicates: 3
        }
    );
    assert_eq!(ids_in(&store.snapshot()), vec![0, 1, 2, 3, 3600, 3601]);
}

#[test]
fn a_batch_rejected_while_loading_an_hour_marks_none_of_its_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    let hour_1: Vec<Event> = (3600..3610).map(|i| event(i, "ns", "p")).collect();
    store.append(batch_of(&hour_1)).unwrap();
    store.flush().unwrap();
    let path = store.snapshot().segments[0].path.clone();
    drop(store);
    // Reopened, the store loads an hour's stored ids on its first append to that hour.
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    // Unreadable (a directory in its place: EISDIR, even for root): an I/O error, not damage.
    let bytes = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let batch: Vec<Event> = (0..5)
        .chain(3600..3605)
        .map(|i| event(i, "ns", "p"))
        .collect();
    let err = store.append(batch_of(&batch)).unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    fs::remove_dir(&path).unwrap();
    fs::write(&path, &bytes).unwrap();
    let out = store.append(batch_of(&batch)).unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            accepted: 5,
            duplicates: 5
        },
        "hour 0's ids were not stored by the rejected batch"
    );
}

#[test]
fn flush_writes_hive_partitioned_segments_and_trims_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    // 2 hours of events
    let events: Vec<Event> = (0..7200).step_by(10).map(|i| event(i, "ns", "p")).collect();
    store.append(batch_of(&events)).unwrap();
    store.flush().unwrap();
    let m = store.manifest();
    assert_eq!(m.segments.len(), 2);
    assert_eq!(m.rows(), 720);
    assert_eq!(
        m.segments[0].path,
        "segments/dt=2027-01-15/hour=08/0000000000000001.parquet"
    );
    assert!(m.segments.iter().all(|s| s.min_ts <= s.max_ts));
    // The columns no event filled, sorted: `session_id`, not `dst_ip` (every third event's).
    let empty = &m.segments[0].null_columns;
    assert!(
        empty.is_sorted() && empty.iter().any(|c| c == "session_id"),
        "{empty:?}"
    );
    assert!(
        !empty.iter().any(|c| c == "dst_ip" || c == "ts"),
        "{empty:?}"
    );
    assert!(store.snapshot().memtable.is_empty());
    let wal_files = fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert_eq!(wal_files, 1, "only the active WAL file remains");
    assert_eq!(store.verify().unwrap(), 2);
    store.close().unwrap();
    let (store, report) = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(report.wal.replayed, 0);
    assert_eq!(store.snapshot().rows(), 720);
}

#[test]
fn sorted_chunks_are_one_sort_cut_in_pieces_and_index_as_one() {
    let pods = ["a", "b", "c", "d"];
    let batches: Vec<RecordBatch> = (0..3u64)
        .map(|k| {
            let events: Vec<Event> = (0..300)
                .map(|i| {
                    event(
                        k * 300 + i,
                        ["x", "y"][(i % 2) as usize],
                        pods[(i * 7 % 4) as usize],
                    )
                })
                .collect();
            batch_of(&events)
        })
        .collect();
    let one = segment::sort_rows_into(&batches, usize::MAX).unwrap();
    assert_eq!(one.len(), 1);
    // About 40 bytes of strings per row: dozens of chunks of 2 000 bytes.
    let chunks = segment::sort_rows_into(&batches, 2_000).unwrap();
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    let joined =
        datafusion::arrow::compute::concat_batches(&model::events_schema(), &chunks).unwrap();
    assert_eq!(joined, one[0]);
    assert_eq!(
        crate::index::SegmentIndex::build_chunks(&chunks),
        crate::index::SegmentIndex::build(&one[0])
    );
}

#[test]
fn sorted_chunks_hold_one_hour_each_in_hour_order() {
    // Three hours of events, each batch holding rows of every hour.
    let pods = ["a", "b", "c"];
    let batch = |k: u64| {
        let events: Vec<Event> = (0..10_800u64)
            .step_by(7)
            .filter(|i| i % 3 == k)
            .map(|i| event(i, "ns", pods[(i * 5 % 3) as usize]))
            .collect();
        batch_of(&events)
    };
    let batches: Vec<RecordBatch> = (0..3).map(batch).collect();
    let chunks = segment::sort_rows_into(&batches, usize::MAX).unwrap();
    let hours: Vec<Vec<i64>> = chunks
        .iter()
        .map(|c| {
            let ts = c.column(0).as_primitive::<TimestampNanosecondType>();
            let mut h: Vec<i64> = ts.values().iter().map(|t| segment::hour_of(*t)).collect();
            h.dedup();
            h
        })
        .collect();
    let first = segment::hour_of(event(0, "ns", "a").ts);
    assert_eq!(hours, vec![vec![first], vec![first + 1], vec![first + 2]]);
    // Each chunk is the sort of that hour's rows alone.
    for (chunk, hour) in chunks.iter().zip(first..) {
        let of_hour: Vec<RecordBatch> = batches
            .iter()
            .map(|b| {
                let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
                let mask: BooleanArray = ts
                    .values()
                    .iter()
                    .map(|t| Some(segment::hour_of(*t) == hour))
                    .collect();
                filter_record_batch(b, &mask).unwrap()
            })
            .collect();
        let alone = segment::sort_rows_into(&of_hour, usize::MAX).unwrap();
        assert_eq!(alone.len(), 1);
        assert_eq!(chunk, &alone[0]);
    }
}

#[test]
fn index_row_numbers_equal_parquet_row_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        segment: SegmentOptions {
            row_group_rows: 100,
            zstd_level: 1,
        },
        ..opts()
    };
    let (store, _) = Store::open(dir.path(), options).unwrap();
    let pods = ["a", "b", "c", "d"];
    let events: Vec<Event> = (0..1000)
        .map(|i| event(i, ["x", "y"][(i % 2) as usize], pods[(i * 7 % 4) as usize]))
        .collect();
    store.append(batch_of(&events)).unwrap();
    store.flush().unwrap();
    let snap = store.snapshot();
    let seg = &snap.segments[0];
    assert!(seg.meta.row_groups.len() >= 10);
    let rows = seg.read_all(None).unwrap();
    let all = datafusion::arrow::compute::concat_batches(&model::events_schema(), &rows).unwrap();
    let index = seg.index().unwrap();
    for &col in INDEXED_COLUMNS {
        let values = all.column_by_name(col).unwrap();
        let values = values.as_any().downcast_ref::<StringArray>().unwrap();
        let distinct: HashSet<&str> = values.iter().flatten().collect();
        for v in distinct {
            let expected: Vec<u32> = (0..values.len())
                .filter(|&i| values.is_valid(i) && values.value(i) == v)
                .map(|i| i as u32)
                .collect();
            let got: Vec<u32> = index.lookup(col, [v]).unwrap().iter().collect();
            assert_eq!(got, expected, "column {col} value {v}");
        }
    }
}

#[test]
fn compaction_merges_small_segments_of_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        compaction_min_segments: 3,
        ..opts()
    };
    let (store, _) = Store::open(dir.path(), options.clone()).unwrap();
    for chunk in 0..4u64 {
        let events: Vec<Event> = (chunk * 100..chunk * 100 + 100)
            .map(|i| event(i, "ns", "p"))
            .collect();
        store.append(batch_of(&events)).unwrap();
        store.flush().unwrap();
    }
    let before = store.snapshot(); // holds the old files open
    assert_eq!(before.segments.len(), 4);
    for s in &before.segments {
        fs::create_dir_all(&s.cache_dir).unwrap();
        fs::write(s.cache_dir.join("partial.arrow"), b"states").unwrap();
    }
    assert_eq!(store.compact().unwrap(), 4);
    let m = store.manifest();
    assert_eq!(m.segments.len(), 1);
    assert_eq!(m.segments[0].level, 1);
    assert!(
        before.segments.iter().all(|s| s.path.exists()),
        "readers keep their files"
    );
    let old_paths: Vec<PathBuf> = before
        .segments
        .iter()
        .flat_map(|s| [s.path.clone(), s.cache_dir.clone()])
        .collect();
    drop(before);
    assert!(
        old_paths.iter().all(|p| !p.exists()),
        "retired files and caches go with the last reader"
    );
    assert_eq!(ids_in(&store.snapshot()), (0..400).collect::<Vec<_>>());
    drop(store);
    let (store, _) = Store::open(dir.path(), options).unwrap();
    assert_eq!(store.snapshot().rows(), 400);
}

/// Events of one hour across pods of two namespaces, some without a pod (nulls sort first).
fn mixed_events(ids: std::ops::Range<u64>) -> Vec<Event> {
    ids.map(|i| {
        let mut e = event(
            i,
            ["x", "y"][(i % 2) as usize],
            ["a", "b", "c"][(i * 7 % 3) as usize],
        );
        if i.is_multiple_of(13) {
            e.pod = None;
        }
        e
    })
    .collect()
}

#[test]
fn compaction_streams_a_merge_equal_to_sorting_every_row_again() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        compaction_min_segments: 3,
        segment: SegmentOptions {
            row_group_rows: 100,
            zstd_level: 1,
        },
        ..opts()
    };
    let (store, _) = Store::open(dir.path(), options).unwrap();
    // Interleaved ids: every segment holds rows of every pod, so the merge interleaves them.
    for k in 0..3u64 {
        let events: Vec<Event> = mixed_events(0..3000)
            .into_iter()
            .filter(|e| e.event_id.unwrap() as u64 % 3 == k)
            .collect();
        store.append(batch_of(&events)).unwrap();
        store.flush().unwrap();
    }
    let mut inputs = Vec::new();
    for s in &store.snapshot().segments {
        inputs.extend(s.read_all(None).unwrap());
    }
    let expected = segment::sort_rows(&inputs).unwrap();
    assert_eq!(store.compact().unwrap(), 3);
    let snap = store.snapshot();
    assert_eq!(snap.segments.len(), 1);
    let seg = &snap.segments[0];
    let schema = model::events_schema();
    let merged =
        datafusion::arrow::compute::concat_batches(&schema, &seg.read_all(None).unwrap()).unwrap();
    assert_eq!(
        merged,
        datafusion::arrow::compute::concat_batches(&schema, &expected).unwrap()
    );
    assert_eq!(*seg.index().unwrap(), SegmentIndex::build(&merged));
    assert_eq!(seg.meta.rows, 3000);
    assert!(seg.meta.row_groups.len() >= 30);
    let ts = merged.column(0).as_primitive::<TimestampNanosecondType>();
    assert_eq!(
        (seg.meta.min_ts, seg.meta.max_ts),
        (
            *ts.values().iter().min().unwrap(),
            *ts.values().iter().max().unwrap()
        )
    );
    seg.verify().unwrap();
}

#[test]
fn a_merged_segment_is_not_rewritten_with_each_new_small_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        compaction_min_segments: 3,
        compaction_small_rows: 0,
        ..opts()
    };
    let (store, _) = Store::open(dir.path(), options).unwrap();
    let flush_100 = |k: u64| {
        let events: Vec<Event> = (k * 100..k * 100 + 100)
            .map(|i| event(i, "ns", "p"))
            .collect();
        store.append(batch_of(&events)).unwrap();
        store.flush().unwrap();
        store.compact().unwrap()
    };
    assert_eq!((0..3).map(flush_100).sum::<usize>(), 3);
    let first_merge = store.manifest().segments[0].id;
    // Two more small segments beside the merged one: three segments, but not of one tier.
    assert_eq!(flush_100(3) + flush_100(4), 0);
    assert_eq!(store.manifest().segments.len(), 3);
    // The third small one completes their tier; the first merge is left as it is.
    assert_eq!(flush_100(5), 3);
    let m = store.manifest();
    let mut levels: Vec<(u32, u64)> = m.segments.iter().map(|s| (s.level, s.rows)).collect();
    levels.sort();
    assert_eq!(levels, vec![(1, 300), (1, 300)]);
    assert!(m.segments.iter().any(|s| s.id == first_merge));
    assert_eq!(ids_in(&store.snapshot()), (0..600).collect::<Vec<_>>());
}

#[test]
fn major_compaction_merges_each_hours_segments_whatever_their_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    // Three hours with segments of 100 and 1 000 rows, one hour with a single segment: three
    // groups for the merge threads.
    let mut expected = Vec::new();
    for hour in 0..4u64 {
        let first = hour * 3600;
        let sizes: &[u64] = if hour == 3 { &[100] } else { &[100, 1000] };
        let mut start = first;
        for n in sizes {
            let events: Vec<Event> = (start..start + n).map(|i| event(i, "ns", "p")).collect();
            store.append(batch_of(&events)).unwrap();
            store.flush().unwrap();
            expected.extend((start..start + n).map(|i| i as i64));
            start += n;
        }
    }
    assert_eq!(store.manifest().segments.len(), 7);
    assert_eq!(
        store.compact().unwrap(),
        0,
        "two tiers, neither of four segments"
    );
    assert_eq!(store.compact_major().unwrap(), 6);
    let m = store.manifest();
    let mut rows: Vec<(u64, u32)> = m.segments.iter().map(|s| (s.rows, s.level)).collect();
    rows.sort();
    assert_eq!(rows, vec![(100, 0), (1100, 1), (1100, 1), (1100, 1)]);
    let ids: HashSet<u64> = m.segments.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|id| *id < m.next_segment_id));
    assert_eq!(store.compact_major().unwrap(), 0);
    assert_eq!(ids_in(&store.snapshot()), expected);
    drop(store);
    let (store, report) = Store::open(dir.path(), opts()).unwrap();
    assert!(report.removed_orphans.is_empty());
    assert_eq!(ids_in(&store.snapshot()), expected);
}

#[test]
fn crash_leftovers_are_removed_and_missing_segments_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    store.append(batch_of(&[event(1, "ns", "p")])).unwrap();
    store.flush().unwrap();
    let seg = store.manifest().segments[0].clone();
    drop(store);
    let part = dir.path().join(seg.path.rsplit_once('/').unwrap().0);
    fs::write(part.join("00000000000000ff.parquet"), b"half written").unwrap();
    fs::write(part.join(".0000000000000100.parquet.tmp"), b"temp").unwrap();
    // The caches of a listed segment stay; those of an unlisted one go.
    let listed_cache = segment::cache_dir(dir.path(), seg.id);
    let orphan_cache = segment::cache_dir(dir.path(), 0xff);
    for d in [&listed_cache, &orphan_cache] {
        fs::create_dir_all(d).unwrap();
        fs::write(d.join("partial.arrow"), b"states").unwrap();
    }
    let (store, report) = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(
        report.removed_orphans.len(),
        3,
        "{:?}",
        report.removed_orphans
    );
    assert!(report.removed_orphans.contains(&orphan_cache));
    assert!(listed_cache.join("partial.arrow").exists());
    assert!(!orphan_cache.exists());
    assert!(report.quarantined.is_empty());
    drop(store);
    // An unlisted segment with an id the manifest handed out is no leftover of an unfinished
    // write: it is moved to quarantine/, not deleted.
    let unknown = part.join("0000000000000000.parquet");
    fs::write(&unknown, b"someone's segment").unwrap();
    let (store, report) = Store::open(dir.path(), opts()).unwrap();
    let moved_to = dir
        .path()
        .join(QUARANTINE_DIR)
        .join(unknown.strip_prefix(dir.path()).unwrap());
    assert_eq!(
        report.quarantined,
        vec![(unknown.clone(), moved_to.clone())]
    );
    assert!(!unknown.exists());
    assert_eq!(fs::read(&moved_to).unwrap(), b"someone's segment");
    drop(store);
    // A stray file among the caches goes too; the store opens.
    let stray = dir.path().join(segment::CACHE_DIR).join("stray");
    fs::write(&stray, b"?").unwrap();
    let (store, report) = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(report.removed_orphans, vec![stray.clone()]);
    drop(store);
    fs::remove_file(dir.path().join(&seg.path)).unwrap();
    let err = Store::open(dir.path(), opts()).err().unwrap();
    assert!(matches!(err, StorageError::Corruption { .. }), "{err}");
    assert!(err.to_string().contains(&seg.path), "{err}");
}

#[test]
fn a_store_whose_manifest_is_missing_or_damaged_refuses_to_open_and_keeps_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    store.append(batch_of(&[event(1, "ns", "p")])).unwrap();
    store.flush().unwrap();
    let seg = store.manifest().segments[0].clone();
    drop(store);
    let manifest = dir.path().join(manifest::MANIFEST_FILE);
    let saved = fs::read(&manifest).unwrap();
    fs::remove_file(&manifest).unwrap();
    let err = Store::open(dir.path(), opts()).err().unwrap();
    assert!(matches!(err, StorageError::ManifestLost { .. }), "{err}");
    assert!(err.to_string().contains("ktrail repair"), "{err}");
    assert!(dir.path().join(&seg.path).exists(), "the segment is kept");
    assert!(dir.path().join(&seg.index_path).exists());
    // Damaged: the same.
    let mut damaged = saved.clone();
    let last = damaged.len() - 5;
    damaged[last] ^= 0x20;
    fs::write(&manifest, &damaged).unwrap();
    let err = Store::open(dir.path(), opts()).err().unwrap();
    assert!(matches!(err, StorageError::ManifestLost { .. }), "{err}");
    assert!(dir.path().join(&seg.path).exists());
    fs::write(&manifest, &saved).unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(store.snapshot().rows(), 1);
}

/// Three one-event segments of one hour; the middle one's Parquet file gets a flipped bit.
/// Returns the store, the damaged segment's manifest entry and its damaged bytes.
fn store_with_a_damaged_segment(dir: &Path) -> (Store, SegmentMeta, Vec<u8>) {
    let (store, _) = Store::open(dir, opts()).unwrap();
    for i in 0..3 {
        store.append(batch_of(&[event(i, "ns", "p")])).unwrap();
        store.flush().unwrap();
    }
    let victim = store.manifest().segments[1].clone();
    let path = dir.join(&victim.path);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    (store, victim, bytes)
}

#[test]
fn compaction_quarantines_a_damaged_segment_and_merges_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, victim, bytes) = store_with_a_damaged_segment(dir.path());
    assert_eq!(
        store.compact_major().unwrap(),
        2,
        "the two whole segments merged"
    );
    let manifest = store.manifest();
    assert_eq!(manifest.segments.len(), 2);
    let listed = manifest
        .segments
        .iter()
        .find(|s| s.id == victim.id)
        .unwrap();
    let damage = listed.damaged.as_ref().expect("recorded as damaged");
    assert!(damage.reason.contains("SHA-256"), "{}", damage.reason);
    assert!(
        !dir.path().join(&victim.path).exists(),
        "moved out of segments/"
    );
    let kept = dir.path().join(&damage.quarantined[0]);
    assert!(
        kept.starts_with(dir.path().join(QUARANTINE_DIR)),
        "{}",
        kept.display()
    );
    assert_eq!(
        fs::read(&kept).unwrap(),
        bytes,
        "the damaged bytes are kept as found"
    );
    assert!(
        dir.path().join(&damage.quarantined[1]).exists(),
        "and its index"
    );
    let err = store.verify().unwrap_err();
    assert!(
        matches!(err, StorageError::Damaged { id, .. } if id == victim.id),
        "{err}"
    );
    assert!(err.to_string().contains("ktrail repair"), "{err}");
    // Recorded durably: a reopen knows it, without the files it no longer looks for.
    drop(store);
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(store.damaged().len(), 1);
    assert_eq!(store.compact_major().unwrap(), 0, "nothing left to merge");
}

#[test]
fn the_scrub_finds_damage_in_a_segment_read_before() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    store.append(batch_of(&[event(1, "ns", "p")])).unwrap();
    store.flush().unwrap();
    let segment = store.snapshot().segments[0].clone();
    segment.verify_once().unwrap();
    let index = dir.path().join(&segment.meta.index_path);
    let mut bytes = fs::read(&index).unwrap();
    bytes[3] ^= 0x80;
    fs::write(&index, &bytes).unwrap();
    assert!(segment.verify_once().is_ok(), "checked once per process");
    let found = store.scrub().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].1.contains(&segment.meta.index_path),
        "{}",
        found[0].1
    );
    assert_eq!(store.damaged().len(), 1);
    assert!(
        store.scrub().unwrap().is_empty(),
        "recorded damage is not found twice"
    );
    // Events of the damaged hour are still taken (the damaged segment's ids are unknown).
    let out = store.append(batch_of(&[event(2, "ns", "p")])).unwrap();
    assert_eq!(out.accepted, 1);
}

#[test]
fn an_open_finishes_a_quarantine_a_crash_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, victim, _) = store_with_a_damaged_segment(dir.path());
    drop(store);
    // As if killed after the manifest recording the damage was saved, before the moves.
    let mut manifest = Manifest::load(dir.path()).unwrap().unwrap();
    let quarantined: Vec<String> = [&victim.path, &victim.index_path]
        .iter()
        .map(|p| format!("{QUARANTINE_DIR}/{p}"))
        .collect();
    manifest.segments[1].damaged = Some(Damage {
        reason: "test".into(),
        found_at: "2026-12-07T00:00:00Z".into(),
        quarantined: quarantined.clone(),
    });
    manifest.save(dir.path()).unwrap();
    let (store, report) = Store::open(dir.path(), opts()).unwrap();
    assert!(report.quarantined.is_empty(), "{:?}", report.quarantined);
    for q in &quarantined {
        assert!(dir.path().join(q).exists(), "{q}");
    }
    assert!(!dir.path().join(&victim.path).exists());
    assert_eq!(store.damaged().len(), 1);
}

#[test]
fn repair_takes_back_a_damaged_segment_once_a_good_copy_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, victim, _) = store_with_a_damaged_segment(dir.path());
    let good = {
        let path = dir.path().join(&victim.path);
        let mut b = fs::read(&path).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
        b
    };
    assert_eq!(store.scrub().unwrap().len(), 1);
    drop(store);
    let report = repair(dir.path(), opts(), &[]).unwrap();
    assert!(report.restored.is_empty());
    assert_eq!(
        report.still_damaged,
        vec![(
            victim.id,
            dir.path().canonicalize().unwrap().join(&victim.path)
        )]
    );
    // A good copy (from a backup) at the listed path; the index too.
    let damage = Manifest::load(dir.path()).unwrap().unwrap().segments[1]
        .damaged
        .clone()
        .unwrap();
    fs::write(dir.path().join(&victim.path), &good).unwrap();
    fs::copy(
        dir.path().join(&damage.quarantined[1]),
        dir.path().join(&victim.index_path),
    )
    .unwrap();
    let report = repair(dir.path(), opts(), &[]).unwrap();
    assert_eq!(report.restored, vec![victim.id]);
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    assert!(store.damaged().is_empty());
    assert_eq!(store.verify().unwrap(), 3);
    assert!(
        dir.path().join(&damage.quarantined[0]).exists(),
        "quarantined files stay"
    );
}

#[test]
fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _) = Store::open(dir.path(), opts()).unwrap();
    let err = Store::open(dir.path(), opts()).err().unwrap();
    assert!(matches!(err, StorageError::Locked { .. }));
}

#[test]
fn damaged_segment_bytes_fail_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    store
        .append(batch_of(
            &(0..10).map(|i| event(i, "n", "p")).collect::<Vec<_>>(),
        ))
        .unwrap();
    store.flush().unwrap();
    let path = store.snapshot().segments[0].path.clone();
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let err = store.verify().unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
}

#[test]
fn segments_are_sorted_by_namespace_pod_container_ts_nulls_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts()).unwrap();
    let mut events: Vec<Event> = (0..500)
        .map(|i| {
            event(
                i * 7 % 500,
                ["b", "a", "c"][(i % 3) as usize],
                ["p2", "p1"][(i % 2) as usize],
            )
        })
        .collect();
    for e in events.iter_mut().step_by(11) {
        e.pod = None;
    }
    store.append(batch_of(&events)).unwrap();
    store.flush().unwrap();
    let batches = store.snapshot().segments[0].read_all(None).unwrap();
    let all =
        datafusion::arrow::compute::concat_batches(&model::events_schema(), &batches).unwrap();
    let text = |c: &str, i: usize| {
        let a = all.column_by_name(c).unwrap().as_string::<i32>();
        a.is_valid(i).then(|| a.value(i).to_string())
    };
    let ts = all.column(0).as_primitive::<TimestampNanosecondType>();
    let key = |i: usize| {
        (
            text("namespace", i),
            text("pod", i),
            text("container_id", i),
            ts.value(i),
        )
    };
    for i in 1..all.num_rows() {
        assert!(
            key(i - 1) <= key(i),
            "row {i}: {:?} > {:?}",
            key(i - 1),
            key(i)
        );
    }
}

#[test]
fn batches_read_from_arrow_ipc_count_their_memory_once() {
    // A WAL record or a gRPC message decodes into buffers sliced from one allocation; each
    // must not count it whole, or the memtable looks full after a few batches.
    let events: Vec<Event> = (0..5000).map(|i| event(i, "billing", "api-1")).collect();
    let built = batch_of(&events);
    let payload = wal::encode_batch(&built, 0).unwrap();
    let decoded = wal::decode_batch(&payload).unwrap();
    assert!(
        memory_of(&decoded) <= 2 * payload.len(),
        "{} bytes counted for a {}-byte record",
        memory_of(&decoded),
        payload.len()
    );
    assert!(memory_of(&decoded) >= payload.len() / 2);
    assert!(memory_of(&built) <= built.get_array_memory_size());

    // Twenty such batches (~20 MB) stay in a 64 MiB memtable: no flush.
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        memtable_max_bytes: 64 << 20,
        ..opts()
    };
    let (store, _) = Store::open(dir.path(), options).unwrap();
    for k in 0..20u64 {
        let events: Vec<Event> = (k * 5000..(k + 1) * 5000)
            .map(|i| event(i, "billing", "api-1"))
            .collect();
        let batch = wal::decode_batch(&wal::encode_batch(&batch_of(&events), 0).unwrap()).unwrap();
        store.append(batch).unwrap();
    }
    assert_eq!(store.snapshot().rows(), 100_000);
    assert!(
        store.manifest().segments.is_empty(),
        "the memtable was flushed"
    );
}

#[test]
fn deduplication_memory_is_bounded_and_evicted_hours_still_find_their_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        dedup_max_ids: 100,
        ..opts()
    };
    let hour_batch = |hour: i64| {
        let events: Vec<Event> = (0..50)
            .map(|i| {
                let mut e = event(hour as u64 * 1000 + i, "ns", "p");
                e.ts += hour * 3_600_000_000_000;
                e
            })
            .collect();
        batch_of(&events)
    };
    let (store, _) = Store::open(dir.path(), options.clone()).unwrap();
    for hour in 0..6 {
        assert_eq!(store.append(hour_batch(hour)).unwrap().accepted, 50);
        if hour == 2 {
            store.flush().unwrap(); // some hours in segments, some in the memtable
        }
        let held = store.inner.dedup.lock().ids;
        assert!(held <= 100, "hour {hour}: {held} ids held");
    }
    assert!(store.inner.dedup.lock().hours.len() <= 2);
    // Every hour again: the evicted ones are read again, and nothing is stored twice.
    for hour in 0..6 {
        let out = store.append(hour_batch(hour)).unwrap();
        assert_eq!((out.accepted, out.duplicates), (0, 50), "hour {hour}");
    }
    assert_eq!(store.snapshot().rows(), 300);
}
