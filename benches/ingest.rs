//! Parse throughput of each producer format: records → `events` batches, no storage.
//! `cargo bench --bench ingest`. Inputs are real sample records (`../shared/samples`, and a
//! Falco alert in the documented shape), repeated with distinct timestamps.

use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ingest::{Format, Input};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/samples");
const LINES: usize = 50_000;

const FALCO: &str = r#"{"hostname":"node-1","output":"10:00:00.123456789: Notice Unexpected connection (command=curl -s http://198.51.100.23 container_id=3ad7b26ded6d)","priority":"Notice","rule":"Unexpected outbound connection destination","source":"syscall","tags":["network","mitre_exfiltration"],"time":"2026-11-26T10:00:00.123456789Z","output_fields":{"container.id":"3ad7b26ded6d","container.image.repository":"docker.io/library/alpine","evt.time":1795687200123456789,"fd.sip":"198.51.100.23","fd.sport":80,"k8s.ns.name":"billing","k8s.pod.name":"invoice-api-7d9f-abc12","proc.cmdline":"curl -s http://198.51.100.23","proc.exepath":"/usr/bin/curl","proc.pid":4250,"user.uid":0}}"#;

fn nth_line(path: &str, n: usize) -> String {
    let text = std::fs::read_to_string(Path::new(SAMPLES).join(path)).unwrap();
    text.lines().nth(n).unwrap().to_string()
}

/// Writes `LINES` copies of `line`, each with a distinct timestamp second.
fn input_file(dir: &Path, name: &str, line: &str, ts_key: &str) -> Input {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let start = line.find(ts_key).expect("timestamp key") + ts_key.len();
    for i in 0..LINES {
        // Replace the seconds of the first timestamp so records differ.
        let mut l = line.to_string();
        let sec = start + 17;
        l.replace_range(sec..sec + 2, &format!("{:02}", i % 60));
        writeln!(f, "{l}").unwrap();
    }
    Input::File(path)
}

fn parse(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [
        (
            "k8s_audit",
            input_file(
                dir.path(),
                "audit.jsonl",
                &nth_line("k8s-audit/exec_pod.json", 0),
                "\"requestReceivedTimestamp\":\"",
            ),
        ),
        (
            "falco",
            input_file(dir.path(), "falco.jsonl", FALCO, "\"time\":\""),
        ),
        (
            "tetragon",
            input_file(
                dir.path(),
                "tetragon.jsonl",
                &nth_line("tetragon/testdata_events.jsonl", 1),
                "\"time\":\"",
            ),
        ),
    ];
    let mut group = c.benchmark_group("ingest_parse");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(10);
    group.throughput(Throughput::Elements(LINES as u64));
    for (name, input) in &inputs {
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
                assert_eq!(rows, LINES, "{summary:?}");
            });
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
