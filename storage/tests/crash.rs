//! Fault injection: a child process appends events while the parent SIGKILLs it at random
//! points (mid-append, mid-flush, mid-compaction); after every kill the store must reopen and
//! hold every event whose append had returned.
//!
//! Every fifth kill the manifest is deleted too and a repair is killed half-way, then run
//! again. After each: every acknowledged event present exactly once, every segment verified.
//!
//! `crash_kills_short` runs in the normal suite; `crash_kills_1000` is the long run:
//! `cargo nextest run -p ktrail-storage --run-ignored only crash_kills_1000 --no-capture`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use ktrail_storage::{self as storage, Store, StoreOptions};
use model::{Event, batch_of};
use rand::{Rng, SeedableRng};

const DIR_ENV: &str = "KTRAIL_CRASH_CHILD_DIR";
const BASE_ENV: &str = "KTRAIL_CRASH_ID_BASE";
const REPAIR_ENV: &str = "KTRAIL_CRASH_REPAIR";

fn child_options() -> StoreOptions {
    StoreOptions {
        memtable_max_rows: 3_000,
        memtable_max_age: Duration::from_millis(200),
        compaction_min_segments: 3,
        ..Default::default()
    }
}

/// The child: appends from two threads forever (one with `Store::append`, one through an
/// `AppendPipeline`), printing each acknowledged id range.
#[test]
#[ignore = "runs only as the child of the crash tests"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    if std::env::var(REPAIR_ENV).is_ok() {
        // Killed while it rebuilds the manifest.
        storage::repair(std::path::Path::new(&dir), child_options(), &[]).unwrap();
        return;
    }
    let base: i64 = std::env::var(BASE_ENV).unwrap().parse().unwrap();
    let (store, _) = Store::open(&dir, child_options()).unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..2i64)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64((base + t) as u64);
                let mut next = base + t * 500_000_000;
                // Thread 1 appends through the pipeline: its acks are the batches it reports
                // durable, while later ones are still in flight.
                let ack = |first: i64, end: i64| {
                    let mut o = out.lock().unwrap();
                    writeln!(o, "acked {first} {end}").unwrap();
                    o.flush().unwrap();
                };
                let mut on_durable = |(first, end): (i64, i64), _| ack(first, end);
                let mut pipeline = storage::AppendPipeline::new(&store, &mut on_durable);
                loop {
                    let n = rng.random_range(1..400);
                    let events: Vec<Event> = (next..next + n)
                        .map(|id| Event {
                            // Spread over a few hours so flushes write several partitions.
                            ts: 1_800_000_000_000_000_000 + (id % 10_000) * 1_000_000_000,
                            kind: "process_exec".into(),
                            source: "crash".into(),
                            event_id: Some(id),
                            pod: Some(format!("pod-{}", id % 13)),
                            namespace: Some("ns".into()),
                            exe: Some("/bin/true".into()),
                            ..Default::default()
                        })
                        .collect();
                    if t == 1 {
                        pipeline.push((next, next + n), batch_of(&events)).unwrap();
                    } else {
                        store.append(batch_of(&events)).unwrap();
                        ack(next, next + n);
                    }
                    next += n;
                }
            })
        })
        .collect();
    // The appenders loop until the parent kills the process.
    for t in threads {
        let _ = t.join();
    }
}

fn stored_ids(dir: &std::path::Path) -> Vec<i64> {
    let (store, _) = Store::open(
        dir,
        StoreOptions {
            background: false,
            ..Default::default()
        },
    )
    .expect("store must reopen after a crash");
    // No damaged segment is served: every listed segment is as the manifest says.
    store.verify().expect("no damaged segment after a crash");
    store.snapshot().event_ids().unwrap()
}

/// Deletes the manifest, lets a child rebuild it and SIGKILLs the child at a random point;
/// then runs the repair again here (it must finish what was killed).
fn kill_a_repair(dir: &std::path::Path, exe: &std::path::Path, rng: &mut impl Rng) {
    std::fs::remove_file(dir.join("MANIFEST")).unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--ignored", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(REPAIR_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
    child.kill().unwrap();
    child.wait().unwrap();
    storage::repair(
        dir,
        StoreOptions {
            background: false,
            ..Default::default()
        },
        &[],
    )
    .expect("a repair killed half-way can be run again");
}

/// Checks the store after a kill: every acknowledged event once, nothing twice.
fn check(dir: &std::path::Path, acked: &[(i64, i64)], k: u32) {
    let ids = stored_ids(dir);
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "kill {k}: an event is stored twice"
    );
    for &(a, b) in acked {
        for id in a..b {
            assert!(
                unique.contains(&id),
                "kill {k}: acknowledged event {id} lost"
            );
        }
    }
}

fn run_kills(kills: u32, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acked: Vec<(i64, i64)> = Vec::new();
    let mut repairs = 0;
    for k in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(BASE_ENV, (i64::from(k) * 1_000_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut ranges = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("acked ") {
                    let (a, b) = rest.split_once(' ').unwrap();
                    ranges.push((a.parse::<i64>().unwrap(), b.parse::<i64>().unwrap()));
                }
            }
            ranges
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(30..700)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked.extend(reader.join().unwrap());
        check(dir.path(), &acked, k);
        // Every fifth kill, the manifest is lost too and a repair is killed half-way.
        if k % 5 == 4 {
            kill_a_repair(dir.path(), &exe, &mut rng);
            check(dir.path(), &acked, k);
            repairs += 1;
        }
    }
    let total: i64 = acked.iter().map(|(a, b)| b - a).sum();
    assert!(total > 0, "the child never acknowledged anything");
    let manifest = storage::Manifest::load(dir.path()).unwrap().unwrap();
    let compacted = manifest.segments.iter().filter(|s| s.level > 0).count();
    assert!(!manifest.segments.is_empty(), "the children never flushed");
    eprintln!(
        "{kills} kills (and {repairs} killed repairs), {total} acknowledged events, all present once, every segment verified; {} segments ({compacted} compacted), {} flushed WAL records",
        manifest.segments.len(),
        manifest.flushed_seq
    );
}

#[test]
fn crash_kills_short() {
    run_kills(10, 7);
}

#[test]
#[ignore = "long: 1 000 kills"]
fn crash_kills_1000() {
    run_kills(1000, 42);
}
