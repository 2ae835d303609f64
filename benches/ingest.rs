//! Ingest throughput of each producer format, on one thread:
//! - `ingest_parse/*`: records → `events` batches, no storage;
//! - `ingest_durable/*`: records → batches → the store's WAL, fsynced (acknowledged) by the
//!   end, as `ktrail ingest` appends (`AppendPipeline`);
//! - `ingest_durable/grpc_arrow_ipc*`: the gRPC fast path's work (Arrow IPC decode, validation,
//!   append, two batches in flight as the service keeps them) without the network, with the
//!   Tetragon records in `raw` and without.
//!
//! Each durable bench also prints its events per CPU-second, every thread counted
//! (`CpuTally`): the per-core figure.
//!
//! `cargo bench --bench ingest`. Two kinds of input per format:
//! - `tetragon`, `k8s_audit`, `falco`: one real sample record (`../shared/samples`, and a Falco
//!   alert in the documented shape) repeated with distinct timestamps;
//! - `*_generated`: the files `ktrail gen` writes (seed 42, 120 000 records): records that
//!   differ as a cluster's do, so the WAL's compression works as hard as on real data (zstd
//!   compresses the repeated record five times faster).

use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

// The same allocator as the `ktrail` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ingest::{Format, Input};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/samples");
const LINES: usize = 50_000;

const FALCO: &str = r#"{"hostname":"node-1","output":"10:00:00.123456789: Notice Unexpected connection (command=curl -s http://198.51.100.23 container_id=3ad7b26ded6d)","priority":"Notice","rule":"Unexpected outbound connection destination","source":"syscall","tags":["network","mitre_exfiltration"],"time":"2026-11-26T10:00:00.123456789Z","output_fields":{"container.id":"3ad7b26ded6d","container.image.repository":"docker.io/library/alpine","evt.time":1795687200123456789,"fd.sip":"198.51.100.23","fd.sport":80,"k8s.ns.name":"billing","k8s.pod.name":"invoice-api-7d9f-abc12","proc.cmdline":"curl -s http://198.51.100.23","proc.exepath":"/usr/bin/curl","proc.pid":4250,"user.uid":0}}"#;

fn nth_line(path: &str, n: usize) -> String {
    let text = std::fs::read_to_string(Path::new(SAMPLES).join(path)).unwrap();
    text.lines().nth(n).unwrap().to_string()
}

/// Writes `LINES` copies of `line`, each with a distinct time of day in its first timestamp
/// (RFC 3339 after `ts_key`) and, when the producer has one (`id_key`), a distinct id: each
/// copy is a record of its own. Copies that differ in nothing, or only in time when the store
/// deduplicates by the producer's id (audit: `auditID` and stage), are one event to the store,
/// which keeps the first and drops the rest; the durable benches assert that every copy is
/// stored.
fn input_file(dir: &Path, name: &str, line: &str, ts_key: &str, id_key: Option<&str>) -> Input {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let start = line.find(ts_key).expect("timestamp key") + ts_key.len();
    let id = id_key.map(|k| line.find(k).expect("id key") + k.len());
    for i in 0..LINES {
        let mut l = line.to_string();
        let (hour, minute, second) = (i / 3600 % 24, i / 60 % 60, i % 60);
        l.replace_range(
            start + 11..start + 19,
            &format!("{hour:02}:{minute:02}:{second:02}"),
        );
        if let Some(id) = id {
            l.replace_range(id..id + 8, &format!("{i:08x}"));
        }
        writeln!(f, "{l}").unwrap();
    }
    Input::File(path)
}

/// One input file per producer format, named as the bench functions are.
fn inputs(dir: &Path) -> Vec<(&'static str, Input, u64)> {
    let records = LINES as u64;
    let mut inputs = vec![
        (
            "k8s_audit",
            input_file(
                dir,
                "audit.jsonl",
                &nth_line("k8s-audit/exec_pod.json", 0),
                "\"requestReceivedTimestamp\":\"",
                Some("\"auditID\":\""),
            ),
            records,
        ),
        (
            "falco",
            input_file(dir, "falco.jsonl", FALCO, "\"time\":\"", None),
            records,
        ),
        (
            "tetragon",
            input_file(
                dir,
                "tetragon.jsonl",
                &nth_line("tetragon/testdata_events.jsonl", 1),
                "\"time\":\"",
                None,
            ),
            records,
        ),
    ];
    let generated = dir.join("generated");
    generator::generate(&generated, &generator::Config::new(42, 120_000)).unwrap();
    for (name, file) in [
        ("k8s_audit_generated", "audit.log"),
        ("falco_generated", "falco.jsonl"),
        ("tetragon_generated", "tetragon.jsonl"),
    ] {
        let path = generated.join(file);
        let lines = std::fs::read(&path)
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        inputs.push((name, Input::File(path), lines as u64));
    }
    inputs
}

fn parse(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path());
    let mut group = c.benchmark_group("ingest_parse");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(10);
    for (name, input, records) in &inputs {
        group.throughput(Throughput::Elements(*records));
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut rows = 0usize;
                let summary = ingest::read_input(
                    input,
                    Format::Auto,
                    8192,
                    &mut |_, batch| {
                        rows += batch.num_rows();
                        black_box(batch);
                        Ok(())
                    },
                    &mut |r| panic!("{r}"),
                )
                .unwrap();
                assert_eq!(rows as u64, *records, "{summary:?}");
            });
        });
    }
    group.finish();
}

fn durable(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path());
    let mut group = c.benchmark_group("ingest_durable");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(10);
    let options = || storage::StoreOptions {
        background: false,
        ..Default::default()
    };
    for (name, input, records) in &inputs {
        group.throughput(Throughput::Elements(*records));
        let tally = CpuTally::default();
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store_dir = tempfile::tempdir_in(dir.path()).unwrap();
                    let (store, _) = storage::Store::open(store_dir.path(), options()).unwrap();
                    let start = tally.start();
                    // As `ktrail ingest` and the HTTP service append: the next batch is
                    // parsed while the WAL syncs the last one; all are durable at `finish`.
                    let mut accepted = 0;
                    let mut on_durable = |(), o: storage::AppendOutcome| accepted += o.accepted;
                    let mut pipeline = storage::AppendPipeline::new(&store, &mut on_durable);
                    ingest::read_input(
                        input,
                        Format::Auto,
                        8192,
                        &mut |_, batch| pipeline.push((), batch).map_err(|e| e.to_string()),
                        &mut |r| panic!("{r}"),
                    )
                    .unwrap();
                    pipeline.finish().unwrap();
                    total += tally.stop(start, *records);
                    // Every record stored: none was dropped as a duplicate of another.
                    assert_eq!(accepted as u64, *records);
                    drop(store);
                }
                total
            });
        });
        tally.report(name);
    }
    // The gRPC fast path: an Arrow IPC stream of 8192-event batches, with the Tetragon records
    // in `raw` (as ingest keeps them) and without (an agent sending the native shape only).
    // Built on the bench's first call, not here: criterion calls the closure only when the
    // filter selects the bench, so a run or a profile of the other benches does not include
    // this setup.
    group.throughput(Throughput::Elements(LINES as u64));
    for (name, keep_raw) in [("grpc_arrow_ipc", true), ("grpc_arrow_ipc_no_raw", false)] {
        let payloads = std::cell::OnceCell::new();
        let tally = CpuTally::default();
        group.bench_function(name, |b| {
            let payloads = payloads.get_or_init(|| ipc_payloads(&inputs[2].1, keep_raw));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store_dir = tempfile::tempdir_in(dir.path()).unwrap();
                    let (store, _) = storage::Store::open(store_dir.path(), options()).unwrap();
                    // The service owns each message's bytes as prost decoded them.
                    let owned = payloads.clone();
                    let start = tally.start();
                    // As the service appends a stream: the next message is decoded while
                    // the WAL syncs the last batch; all are durable at `finish`.
                    let mut accepted = 0;
                    let mut on_durable = |(), o: storage::AppendOutcome| accepted += o.accepted;
                    let mut pipeline = storage::AppendPipeline::new(&store, &mut on_durable);
                    for p in owned {
                        let batch = ingest::arrow_ipc::read_stream(p).unwrap().unwrap();
                        pipeline.push((), batch).unwrap();
                    }
                    pipeline.finish().unwrap();
                    total += tally.stop(start, LINES as u64);
                    assert_eq!(accepted, LINES);
                    drop(store);
                }
                total
            });
        });
        tally.report(name);
    }
    group.finish();
}

/// The CPU time behind a durable bench's throughput. Criterion times the wall clock, and a
/// durable append keeps more than the calling thread busy (the WAL's writer writes and syncs
/// while the caller parses the next batch), so each durable bench also sums the process's CPU
/// time, all threads, over its timed runs and prints events per CPU-second: the figure a
/// "per core" target is held against. Linux only (`/proc/self/stat`); elsewhere it prints
/// nothing.
#[derive(Default)]
struct CpuTally {
    events: std::cell::Cell<u64>,
    wall: std::cell::Cell<Duration>,
    cpu_seconds: std::cell::Cell<Option<f64>>,
}

impl CpuTally {
    fn start(&self) -> (std::time::Instant, Option<f64>) {
        (std::time::Instant::now(), process_cpu_seconds())
    }

    /// The wall time since `start`, tallied with its CPU time and `events`.
    fn stop(&self, (wall, cpu): (std::time::Instant, Option<f64>), events: u64) -> Duration {
        let elapsed = wall.elapsed();
        let cpu = cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a);
        self.events.set(self.events.get() + events);
        self.wall.set(self.wall.get() + elapsed);
        self.cpu_seconds
            .set(cpu.map(|c| c + self.cpu_seconds.get().unwrap_or(0.0)));
        elapsed
    }

    fn report(&self, name: &str) {
        let (events, wall) = (self.events.get() as f64, self.wall.get().as_secs_f64());
        if let Some(cpu) = self.cpu_seconds.get().filter(|&c| c > 0.0 && events > 0.0) {
            println!(
                "ingest_durable/{name}: {:.0} K events/CPU-s ({:.0} K events/s on {:.2} cores)",
                events / cpu / 1e3,
                events / wall / 1e3,
                cpu / wall
            );
        }
    }
}

/// User + system CPU time of this process (every thread), in seconds.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are the 12th and 13th, in clock ticks of 1/100 s (USER_HZ on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `input` read into 8192-event batches, each as the Arrow IPC stream a gRPC client sends;
/// `raw` all null unless `keep_raw`.
fn ipc_payloads(input: &Input, keep_raw: bool) -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    ingest::read_input(
        input,
        Format::Auto,
        8192,
        &mut |_, batch| {
            batches.push(batch);
            Ok(())
        },
        &mut |r| panic!("{r}"),
    )
    .unwrap();
    if !keep_raw {
        use datafusion::arrow::array::new_null_array;
        for b in &mut batches {
            let raw = b.schema().index_of("raw").unwrap();
            let mut columns = b.columns().to_vec();
            columns[raw] = new_null_array(columns[raw].data_type(), b.num_rows());
            *b = datafusion::arrow::array::RecordBatch::try_new(b.schema(), columns).unwrap();
        }
    }
    batches
        .iter()
        .map(|b| {
            let mut ipc = Vec::new();
            let mut w =
                datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &b.schema())
                    .unwrap();
            w.write(b).unwrap();
            w.finish().unwrap();
            drop(w);
            ipc
        })
        .collect()
}

criterion_group!(benches, parse, durable);
criterion_main!(benches);
