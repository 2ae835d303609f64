//! Criterion benches of the storage spine: durable WAL append, segment write,
//! and a one-pod lookup with and without the sidecar index.
//!
//! `cargo bench --bench store` (the lookup store holds `KTRAIL_BENCH_EVENTS` events, default
//! 1 000 000; the closing figures use 10 000 000). Setup prints bytes/event of the segments,
//! typed columns and `raw` separately.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use ktrail_storage_bench::{Generator, events};
use model::batch_of;
use query::IndexUse;
use storage::{SegmentOptions, Store, StoreOptions, segment, wal};

mod ktrail_storage_bench {
    //! A seeded synthetic cluster: Zipf-ish pod activity, process and network events with
    //! Tetragon-like identities and a `raw` record per event.
    use model::Event;

    pub struct Generator {
        state: u64,
        pub pods: Vec<(String, String, String)>,
    }

    const EXES: &[&str] = &[
        "/usr/local/bin/app",
        "/bin/sh",
        "/usr/bin/curl",
        "/usr/bin/python3",
        "/usr/sbin/nginx",
        "/usr/bin/java",
        "/bin/ls",
        "/usr/bin/cat",
        "/bin/bash",
        "/usr/bin/wget",
        "/usr/sbin/tcpdump",
        "/usr/bin/git",
        "/usr/bin/node",
        "/coredns",
        "/usr/bin/redis-server",
    ];
    const NAMESPACES: &[&str] = &[
        "billing",
        "payments",
        "frontend",
        "kube-system",
        "monitoring",
        "search",
        "auth",
        "data",
    ];

    impl Generator {
        pub fn new(seed: u64, pods: usize) -> Self {
            let mut g = Self {
                state: seed | 1,
                pods: Vec::new(),
            };
            for i in 0..pods {
                let ns = NAMESPACES[i % NAMESPACES.len()];
                let pod = format!("{ns}-svc{}-{:05x}", i % 37, g.next() % 0xfffff);
                let cid = format!(
                    "{:016x}{:016x}{:016x}{:016x}",
                    g.next(),
                    g.next(),
                    g.next(),
                    g.next()
                );
                g.pods.push((ns.to_string(), pod, cid));
            }
            g
        }

        fn next(&mut self) -> u64 {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Pod index with a skew: low indexes are much busier.
        fn pod(&mut self) -> usize {
            let n = self.pods.len() as f64;
            let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
            ((n.powf(u)) as usize - 1).min(self.pods.len() - 1)
        }

        pub fn event(&mut self, ts: i64) -> Event {
            let p = self.pod();
            let (ns, pod, cid) = self.pods[p].clone();
            let node = format!("node-{}", p % 16);
            let pid = (self.next() % 60_000) as i64;
            let exec_id = format!("{node}:{ts}:{pid}");
            let network = self.next().is_multiple_of(3);
            let exe = EXES[(self.next() % EXES.len() as u64) as usize];
            let mut ev = Event {
                ts,
                kind: if network {
                    "network_connect"
                } else {
                    "process_exec"
                }
                .into(),
                source: "tetragon".into(),
                node: Some(node.clone()),
                namespace: Some(ns.clone()),
                pod: Some(pod.clone()),
                container_id: Some(cid),
                workload_kind: Some("Deployment".into()),
                workload_name: Some(pod[..pod.rfind('-').unwrap()].to_string()),
                pid: Some(pid),
                exe: Some(exe.into()),
                exec_id: Some(exec_id),
                ..Default::default()
            };
            if network {
                let dst = if self.next().is_multiple_of(10) {
                    format!(
                        "{}.{}.{}.{}",
                        self.next() % 223 + 1,
                        self.next() % 256,
                        self.next() % 256,
                        self.next() % 256
                    )
                } else {
                    format!("10.96.{}.{}", self.next() % 4, self.next() % 64)
                };
                ev.protocol = Some("TCP".into());
                ev.src_ip = Some(format!("10.244.{}.{}", p % 16, p % 250));
                ev.dst_ip = Some(dst);
                ev.src_port = Some((32768 + self.next() % 28000) as i32);
                ev.dst_port = Some([443, 80, 53, 5432, 6379][(self.next() % 5) as usize]);
            } else {
                ev.args = Some(format!("--id {} --mode serve", self.next() % 1000));
                ev.parent_exe = Some("/bin/sh".into());
            }
            ev.raw = Some(format!(
                r#"{{"{}":{{"process":{{"exec_id":"{}","pid":{},"binary":"{}","pod":{{"namespace":"{}","name":"{}"}}}}}},"node_name":"{}","time":"{}"}}"#,
                ev.kind,
                ev.exec_id.as_deref().unwrap(),
                pid,
                exe,
                ns,
                pod,
                node,
                ts
            ));
            // As ingest derives it: a hash of the original record (8 incompressible bytes);
            ev.event_id = Some(model::event_id_of(
                "tetragon",
                ev.raw.as_deref().unwrap_or("").as_bytes(),
            ));
            ev
        }
    }

    /// `n` events, one second of history per 1000 events.
    pub fn events(g: &mut Generator, start_id: i64, n: usize) -> Vec<Event> {
        (0..n as i64)
            .map(|i| {
                let id = start_id + i;
                g.event(1_800_000_000_000_000_000 + id * 1_000_000)
            })
            .collect()
    }
}

fn open_wal(dir: &std::path::Path) -> wal::Wal<()> {
    let sink: wal::DurableSink<()> = Arc::new(|_, ()| {});
    let (log, _) = wal::Wal::open(
        dir,
        0,
        wal::WalOptions::default(),
        sink,
        Arc::new(|()| {}),
        |_, _| Ok(()),
    )
    .unwrap();
    log
}

fn wal_append(c: &mut Criterion) {
    // The durable path of `Store::append` minus deduplication: encode the batch (Arrow IPC,
    // zstd at the given level, 0 = none), frame it, write, fdatasync. One appender: every batch
    // pays a whole sync.
    let mut group = c.benchmark_group("wal_append");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(20);
    let mut g = Generator::new(1, 2_000);
    for (rows, level) in [
        (1_024usize, 1),
        (8_192, 1),
        (65_536, 1),
        (8_192, 0),
        (8_192, -3),
    ] {
        let batch = batch_of(&events(&mut g, 0, rows));
        group.throughput(Throughput::Elements(rows as u64));
        let id = BenchmarkId::new(format!("durable_batch_zstd{level}"), rows);
        group.bench_with_input(id, &batch, |b, batch| {
            let dir = tempfile::tempdir().unwrap();
            let log = open_wal(dir.path());
            b.iter(|| {
                let payload = wal::encode_batch(batch, level).unwrap();
                black_box(log.append(payload, ()).unwrap());
            });
        });
    }
    // Group commit: 8 appenders at once share fdatasyncs.
    let batch = batch_of(&events(&mut g, 0, 1_024));
    group.throughput(Throughput::Elements(8 * 1_024));
    group.bench_function("group_commit_8_writers_x_1024", |b| {
        let dir = tempfile::tempdir().unwrap();
        let log = open_wal(dir.path());
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        let payload = wal::encode_batch(&batch, 1).unwrap();
                        log.append(payload, ()).unwrap();
                    });
                }
            });
        });
    });
    group.finish();
}

fn segment_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("segment_write");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(10);
    let mut g = Generator::new(2, 2_000);
    let rows = 128 * 1024;
    let sorted = segment::sort_rows(&[batch_of(&events(&mut g, 0, rows))]).unwrap();
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("128Ki_rows", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut id = 1;
        b.iter(|| {
            let meta = segment::write_segment(
                dir.path(),
                id,
                500_000,
                0,
                &sorted,
                &SegmentOptions::default(),
            )
            .unwrap();
            id += 1;
            black_box(meta)
        });
    });
    group.finish();
}

fn pod_lookup(c: &mut Criterion) {
    let n: usize = std::env::var("KTRAIL_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(
        dir.path(),
        StoreOptions {
            background: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut g = Generator::new(3, 5_000);
    let chunk = 100_000;
    let mut start = 0;
    let mut appending = Duration::ZERO;
    while start < n {
        let k = chunk.min(n - start);
        let batch = batch_of(&events(&mut g, start as i64, k));
        let t = std::time::Instant::now();
        store.append(batch).unwrap();
        appending += t.elapsed();
        start += k;
    }
    let t = std::time::Instant::now();
    store.flush().unwrap();
    appending += t.elapsed();
    eprintln!(
        "durable ingest of {n} built events (dedup + WAL + flushes into segments): {:.2} s, {:.0} events/s",
        appending.as_secs_f64(),
        n as f64 / appending.as_secs_f64()
    );
    // What the background thread does after flushes: merge each hour's segments.
    let t = std::time::Instant::now();
    let merged = store.compact().unwrap();
    eprintln!(
        "compaction merged {merged} segments in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    report_bytes(&store, n);
    // A pod of middling activity.
    let target = g.pods[g.pods.len() / 50].1.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sql =
        format!("SELECT ts, kind, exe, dst_ip FROM events WHERE pod = '{target}' ORDER BY ts");
    let mut group = c.benchmark_group("pod_lookup");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(20);
    for (name, index) in [("indexed", IndexUse::On), ("no_index", IndexUse::Off)] {
        let ctx = rt.block_on(query::session(&store, index)).unwrap();
        let rows: usize = rt
            .block_on(async { ctx.sql(&sql).await.unwrap().collect().await.unwrap() })
            .iter()
            .map(|b| b.num_rows())
            .sum();
        eprintln!("pod_lookup/{name}: {rows} rows for pod {target} over {n} events");
        if std::env::var_os("KTRAIL_BENCH_EXPLAIN").is_some() {
            let explain = rt.block_on(async {
                // Warm once, then show where the time of a warm run goes.
                ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                let plan = ctx.sql(&format!("EXPLAIN ANALYZE {sql}")).await.unwrap();
                plan.collect().await.unwrap()
            });
            eprintln!(
                "{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&explain).unwrap()
            );
        }
        group.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| {
                rt.block_on(async {
                    black_box(ctx.sql(&sql).await.unwrap().collect().await.unwrap())
                })
            });
        });
    }
    group.finish();
}

/// Prints on-disk bytes/event: whole segments, typed columns (all but `raw`), and `raw`.
fn report_bytes(store: &Store, n: usize) {
    let snap = store.snapshot();
    let (mut total, mut raw, mut event_id) = (0u64, 0u64, 0u64);
    let mut per_column: std::collections::BTreeMap<String, u64> = Default::default();
    for s in &snap.segments {
        total += s.meta.bytes;
        let reader = SerializedFileReader::new(std::fs::File::open(&s.path).unwrap()).unwrap();
        for rg in reader.metadata().row_groups() {
            for col in rg.columns() {
                let size = col.compressed_size() as u64;
                *per_column.entry(col.column_path().string()).or_default() += size;
                match col.column_path().string().as_str() {
                    "raw" => raw += size,
                    "event_id" => event_id += size,
                    _ => {}
                }
            }
        }
    }
    let per = |b: u64| b as f64 / n as f64;
    eprintln!(
        "bytes/event over {n} events in {} segments: total {:.2}, typed columns {:.2} (of which event_id {:.2}), raw {:.2}; index files {:.2}",
        snap.segments.len(),
        per(total),
        per(total - raw),
        per(event_id),
        per(raw),
        per(snap.segments.iter().map(|s| s.meta.index_bytes).sum()),
    );
    let mut columns: Vec<(String, u64)> = per_column.into_iter().collect();
    columns.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    let top: Vec<String> = columns
        .iter()
        .take(12)
        .map(|(c, b)| format!("{c} {:.2}", per(*b)))
        .collect();
    eprintln!("bytes/event by column: {}", top.join(", "));
}

criterion_group!(benches, wal_append, segment_write, pod_lookup);
criterion_main!(benches);
