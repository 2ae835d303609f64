use std::io::Write;
use std::path::Path;

use model::RecordBatch;
use model::arrow::array::AsArray;
use model::arrow::datatypes::TimestampNanosecondType;

use super::*;

fn read(content: &[u8], name: &str) -> (Vec<RecordBatch>, Vec<Rejection>, Summary) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    read_path(&path, Format::Auto)
}

fn read_path(path: &Path, format: Format) -> (Vec<RecordBatch>, Vec<Rejection>, Summary) {
    let mut batches = Vec::new();
    let mut rejections = Vec::new();
    let summary = read_input(
        &Input::File(path.to_path_buf()),
        format,
        2,
        &mut |_, b| {
            batches.push(b);
            Ok(())
        },
        &mut |r| rejections.push(r),
    )
    .unwrap();
    (batches, rejections, summary)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[test]
fn good_lines_become_batches_and_bad_lines_are_named() {
    let mut content = Vec::new();
    for i in 0..5 {
        writeln!(
            content,
            r#"{{"ts":{i},"kind":"process_exec","source":"grpc","pod":"p"}}"#
        )
        .unwrap();
    }
    content.extend_from_slice(b"{broken\n\n{\"kind\": 0}\n\xff\xfe\n");
    let (batches, rejections, summary) = read(&content, "events.ndjson");
    assert_eq!(rows(&batches), 5);
    assert_eq!(batches.len(), 3, "batches of at most 2 rows");
    assert_eq!(
        summary["native"],
        Counts {
            records: 5,
            events: 5,
            rejected: 0
        }
    );
    assert_eq!(summary["auto"].rejected, 3);
    let lines: Vec<u64> = rejections.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![6, 8, 9]);
    assert!(
        rejections[0]
            .to_string()
            .contains("events.ndjson:6: invalid JSON"),
        "{}",
        rejections[0]
    );
    assert!(
        rejections[1].reason.contains("unrecognised record"),
        "{}",
        rejections[1]
    );
}

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/samples");

#[test]
fn every_audit_sample_ingests_and_the_malformed_one_is_refused() {
    let dir = Path::new(SAMPLES).join("k8s-audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.extend(
        std::fs::read_dir(dir.join("psp-traces"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    assert!(files.len() >= 70, "{} sample files", files.len());
    let mut events = 0;
    for f in &files {
        let (batches, rejections, summary) = read_path(f, Format::Auto);
        if f.ends_with("fal_01_003.json") {
            assert_eq!(rejections.len(), 1);
            assert!(
                rejections[0].reason.contains("unrecognised record"),
                "{}",
                rejections[0]
            );
            let (_, rejections, _) = read_path(f, Format::K8sAudit);
            assert_eq!(
                rejections[0].reason,
                "`kind` is 0, expected \"Event\" or \"EventList\""
            );
            continue;
        }
        assert!(rejections.is_empty(), "{}: {rejections:?}", f.display());
        assert_eq!(summary["k8s-audit"].rejected, 0);
        events += rows(&batches);
    }
    assert!(events >= 70);
}

#[test]
fn audit_exec_lands_in_its_columns() {
    let path = Path::new(SAMPLES).join("k8s-audit/exec_pod.json");
    let (batches, _, _) = read_path(&path, Format::Auto);
    let b = &batches[0];
    let col = |c: &str| datafusion_display(b, c);
    assert_eq!(col("kind"), "k8s_audit");
    assert_eq!(col("k8s_user"), "minikube-user");
    assert_eq!(col("k8s_groups"), "[system:masters, system:authenticated]");
    assert_eq!(col("source_ip"), "192.168.99.1");
    assert_eq!(col("verb"), "create");
    assert_eq!(col("resource"), "pods");
    assert_eq!(col("subresource"), "exec");
    assert_eq!(col("namespace"), "default");
    assert_eq!(col("pod"), "nginx-deployment-7998647bdf-phvq7");
    assert_eq!(col("response_code"), "101");
    assert_eq!(col("stage"), "ResponseStarted");
    assert_eq!(col("ts"), "2018-10-26T13:38:34.867116Z");
    let uri = col("request_uri");
    assert_eq!(k8s_audit::query_values(&uri, "command"), vec!["bash"]);
    assert_eq!(
        k8s_audit::query_values(&uri, "container"),
        vec!["nginx1", "nginx1"]
    );
}

fn datafusion_display(b: &RecordBatch, column: &str) -> String {
    model::arrow::util::display::array_value_to_string(b.column_by_name(column).unwrap(), 0)
        .unwrap()
}

#[test]
fn webhook_event_lists_and_log_lines_are_the_same_events() {
    let line = std::fs::read(Path::new(SAMPLES).join("k8s-audit/exec_pod.json")).unwrap();
    let item = std::str::from_utf8(&line).unwrap().trim();
    let list = format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{item},{item}]}}"
    );
    let (from_list, rejections, summary) = read(list.as_bytes(), "list.json");
    assert!(rejections.is_empty());
    assert_eq!(
        summary["k8s-audit"],
        Counts {
            records: 1,
            events: 2,
            rejected: 0
        }
    );
    let (from_line, _, _) = read(&line, "line.json");
    assert_eq!(
        datafusion_display(&from_list[0], "event_id"),
        datafusion_display(&from_line[0], "event_id")
    );
}

#[test]
fn falco_alerts_map_output_fields_and_keep_nanoseconds() {
    let alert = r#"{"hostname":"node-1","output":"10:00:00.123456789: Notice Unexpected connection (command=curl -s http://198.51.100.23 container_id=3ad7b26ded6d)","priority":"Notice","rule":"Unexpected outbound connection destination","source":"syscall","tags":["network","mitre_exfiltration"],"time":"2026-11-26T10:00:00.123456789Z","output_fields":{"container.id":"3ad7b26ded6d","container.image.repository":"docker.io/library/alpine","container.image.tag":"3.20","evt.time":1795687200123456789,"fd.sip":"198.51.100.23","fd.sport":80,"fd.cip":"10.244.1.33","fd.cport":41822,"fd.l4proto":"tcp","k8s.ns.name":"billing","k8s.pod.name":"invoice-api-7d9f-abc12","proc.cmdline":"curl -s http://198.51.100.23","proc.exepath":"/usr/bin/curl","proc.pid":4250,"user.uid":0}}"#;
    let old = r#"{"output":"old","priority":"Warning","rule":"Terminal shell in container","time":"2019-01-01T00:00:00.000000001Z","output_fields":{"proc.cmdline":"bash","container.id":"host"}}"#;
    let (batches, rejections, summary) =
        read(format!("{alert}\n{old}\n").as_bytes(), "falco.jsonl");
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(summary["falco"].events, 2);
    let b = &batches[0];
    assert_eq!(
        datafusion_display(b, "ts"),
        "2026-11-26T10:00:00.123456789Z"
    );
    assert_eq!(datafusion_display(b, "exe"), "/usr/bin/curl");
    assert_eq!(datafusion_display(b, "binary_name"), "curl");
    assert_eq!(datafusion_display(b, "args"), "-s http://198.51.100.23");
    assert_eq!(datafusion_display(b, "dst_ip"), "198.51.100.23");
    assert_eq!(datafusion_display(b, "dst_port"), "80");
    assert_eq!(
        datafusion_display(b, "image"),
        "docker.io/library/alpine:3.20"
    );
    assert_eq!(datafusion_display(b, "namespace"), "billing");
    assert_eq!(
        datafusion_display(b, "tags"),
        "[network, mitre_exfiltration]"
    );
    assert_eq!(datafusion_display(&batches[0], "node"), "node-1");
    assert_eq!(datafusion_display(&batches[0], "uid"), "0");
    assert_eq!(
        datafusion_display(&batches[0], "rule"),
        "Unexpected outbound connection destination"
    );
    // Old envelope: no hostname/source/tags; a host event has no container id.
    assert_eq!(datafusion_display(&batches[0], "kind"), "falco_alert");
}

#[test]
fn tetragon_samples_ingest_with_lineage_and_pod_identity() {
    let (batches, rejections, summary) = read_path(
        &Path::new(SAMPLES).join("tetragon/testdata_events.jsonl"),
        Format::Auto,
    );
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(summary["tetragon"].events, 3);
    let b = &batches[0];
    assert_eq!(datafusion_display(b, "kind"), "process_exec");
    assert_eq!(datafusion_display(b, "exe"), "/usr/bin/netserver");
    assert_eq!(datafusion_display(b, "args"), "-D");
    assert_eq!(datafusion_display(b, "namespace"), "default");
    assert_eq!(datafusion_display(b, "pod"), "tiefighter");
    assert_eq!(
        datafusion_display(b, "container_id"),
        "19a02291e106ce6227b684197be232ea57c4e1a5ab2604a12608c325d701c7f4"
    );
    assert_eq!(
        datafusion_display(b, "parent_exe"),
        "/usr/bin/containerd-shim-runc-v2"
    );
    // This line has no top-level `time`: the process start time stands in.
    assert_eq!(
        datafusion_display(b, "ts"),
        "2022-10-18T03:16:18.273546829Z"
    );
    assert!(!datafusion_display(b, "exec_id").is_empty());
    assert!(!datafusion_display(b, "parent_exec_id").is_empty());

    // The docs' kprobe sample is a pretty-printed document.
    let (batches, rejections, _) = read_path(
        &Path::new(SAMPLES).join("tetragon/docs_filename-access_process_kprobe.json"),
        Format::Auto,
    );
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(datafusion_display(&batches[0], "kind"), "file_access");
    assert_eq!(datafusion_display(&batches[0], "exe"), "/bin/vi");
    assert_eq!(
        datafusion_display(&batches[0], "workload_name"),
        "file-access"
    );
}

/// Both Tracee samples are recognised by `auto` (the v1beta1 one is a pretty-printed
/// document) and keep their record as `raw`.
#[test]
fn tracee_samples_ingest_by_auto() {
    for (file, exe) in [
        (
            "tracee/docs_output-options_sched_process_exec.legacy.json",
            "/usr/bin/exa",
        ),
        (
            "tracee/docs_event-structure_sched_process_exec.v1beta1.json",
            "/usr/bin/ls",
        ),
    ] {
        let path = Path::new(SAMPLES).join(file);
        let (batches, rejections, summary) = read_path(&path, Format::Auto);
        assert!(rejections.is_empty(), "{file}: {rejections:?}");
        assert_eq!(summary["tracee"].events, 1, "{file}");
        assert_eq!(datafusion_display(&batches[0], "source"), "tracee");
        assert_eq!(datafusion_display(&batches[0], "kind"), "process_exec");
        assert_eq!(datafusion_display(&batches[0], "exe"), exe);
        let raw = datafusion_display(&batches[0], "raw");
        let record = std::fs::read_to_string(&path).unwrap();
        assert_eq!(raw, record.trim(), "{file}");
    }
}

#[test]
fn tetragon_network_kprobes_and_unknown_events() {
    let lines = [
        r#"{"process_kprobe":{"process":{"exec_id":"a","pid":7,"binary":"/usr/bin/curl","pod":{"namespace":"billing","name":"api","container":{"id":"containerd://c1"}}},"parent":{"exec_id":"p","pid":6,"binary":"/bin/sh"},"function_name":"tcp_connect","args":[{"sock_arg":{"family":"AF_INET","type":"SOCK_STREAM","protocol":"IPPROTO_TCP","saddr":"10.244.1.33","daddr":"198.51.100.23","sport":41822,"dport":80}}],"action":"KPROBE_ACTION_POST"},"node_name":"node-a","time":"2026-11-26T10:00:00.000000001Z"}"#,
        r#"{"process_kprobe":{"process":{"exec_id":"b","pid":9,"binary":"/usr/sbin/nginx"},"function_name":"inet_csk_accept","args":[{"sock_arg":{"protocol":"IPPROTO_TCP","saddr":"10.244.1.5","daddr":"10.244.2.9","sport":80,"dport":51000}}]},"node_name":"node-a","time":"2026-11-26T10:00:01Z"}"#,
        r#"{"process_connect":{"process":{"exec_id":"c","binary":"/bin/nc"},"source_ip":"10.0.0.1","source_port":1234,"destination_ip":"10.0.0.2","destination_port":443},"node_name":"n","time":"2026-11-26T10:00:02Z"}"#,
        r#"{"process_loader":{"process":{"exec_id":"d"}},"node_name":"n","time":"2026-11-26T10:00:03Z"}"#,
    ];
    let (batches, rejections, _) = read(lines.join("\n").as_bytes(), "tetragon.jsonl");
    assert!(rejections.is_empty(), "{rejections:?}");
    let all = model::arrow::compute::concat_batches(&model::events_schema(), &batches).unwrap();
    let col = |c: &str, row: usize| {
        model::arrow::util::display::array_value_to_string(all.column_by_name(c).unwrap(), row)
            .unwrap()
    };
    assert_eq!(
        (col("kind", 0), col("dst_ip", 0), col("dst_port", 0)),
        (
            "network_connect".into(),
            "198.51.100.23".into(),
            "80".into()
        )
    );
    assert_eq!(
        (
            col("protocol", 0),
            col("container_id", 0),
            col("parent_exe", 0)
        ),
        ("TCP".into(), "c1".into(), "/bin/sh".into())
    );
    assert_eq!(
        (
            col("kind", 1),
            col("src_ip", 1),
            col("dst_ip", 1),
            col("dst_port", 1)
        ),
        (
            "network_accept".into(),
            "10.244.2.9".into(),
            "10.244.1.5".into(),
            "80".into()
        )
    );
    assert_eq!(
        (col("kind", 2), col("dst_ip", 2)),
        ("network_connect".into(), "10.0.0.2".into())
    );
    assert_eq!(col("kind", 3), "other");
    assert!(col("raw", 3).contains("process_loader"));
}

#[test]
fn pretty_printed_documents_are_read_whole() {
    let doc = "{\n  \"ts\": 1,\n  \"kind\": \"other\",\n  \"source\": \"x\"\n}\n{\n  \"ts\": 2,\n  \"kind\": \"other\",\n  \"source\": \"x\"\n}\n{\n  \"ts\": 3,\n";
    let (batches, rejections, _) = read(doc.as_bytes(), "doc.json");
    assert_eq!(rows(&batches), 2);
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].line, 11);
}

#[test]
fn compressed_inputs_are_read_by_extension() {
    let line = b"{\"ts\":1,\"kind\":\"other\",\"source\":\"x\"}\n";
    let zst = zstd::encode_all(&line[..], 3).unwrap();
    let (b, r, _) = read(&zst, "a.ndjson.zst");
    assert_eq!((b.len(), r.len()), (1, 0));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(line).unwrap();
    let (b, r, _) = read(&gz.finish().unwrap(), "a.ndjson.gz");
    assert_eq!((b.len(), r.len()), (1, 0));
}

#[test]
fn oversized_lines_are_rejected_without_stopping() {
    let mut content = vec![b'x'; MAX_LINE_BYTES + 10];
    content.push(b'\n');
    content.extend_from_slice(b"{\"ts\":1,\"kind\":\"other\",\"source\":\"x\"}\n");
    let (b, r, _) = read(&content, "big.ndjson");
    assert_eq!(b.len(), 1);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].line, 1);
    assert!(r[0].reason.contains("longer than"));
}

/// Many chunks on several parsing threads: batches, rejections and counts come out in the
/// input's order, as one thread would give them.
#[test]
fn chunks_parsed_on_threads_come_out_in_order() {
    let mut content = Vec::new();
    let mut bad_lines = Vec::new();
    for i in 0..20_000u64 {
        if i % 997 == 0 {
            content.extend_from_slice(b"{\"kind\": 0}\n");
            bad_lines.push(i + 1);
        } else {
            writeln!(content, r#"{{"ts":{i},"kind":"other","source":"x"}}"#).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.ndjson.zst");
    std::fs::write(&path, zstd::encode_all(&content[..], 1).unwrap()).unwrap();
    let (mut batches, mut rejections) = (Vec::new(), Vec::new());
    let summary = read_input(
        &Input::File(path.clone()),
        Format::Native,
        64,
        &mut |_, b| {
            batches.push(b);
            Ok(())
        },
        &mut |r| rejections.push(r),
    )
    .unwrap();
    let ts: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_primitive::<TimestampNanosecondType>();
            c.values().to_vec()
        })
        .collect();
    let expected: Vec<i64> = (0..20_000i64).filter(|i| i % 997 != 0).collect();
    assert_eq!(ts, expected);
    assert!(batches.iter().all(|b| b.num_rows() <= 64));
    let lines: Vec<u64> = rejections.iter().map(|r| r.line).collect();
    assert_eq!(lines, bad_lines);
    let n = bad_lines.len() as u64;
    assert_eq!(
        summary["native"],
        Counts {
            records: 20_000,
            events: 20_000 - n,
            rejected: n,
        }
    );

    // A sink that fails stops the input with its reason; the threads wind down.
    let mut handed = 0;
    let e = read_input(
        &Input::File(path),
        Format::Native,
        64,
        &mut |_, _| {
            handed += 1;
            if handed == 5 {
                Err("store full".into())
            } else {
                Ok(())
            }
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("store full"), "{e}");
    assert_eq!(handed, 5);
}

/// A compressed input damaged past its first chunks: what was read before is handed on,
/// then the error.
#[test]
fn a_read_error_ends_the_input_after_what_was_read() {
    let mut content = Vec::new();
    for i in 0..50_000u64 {
        writeln!(
            content,
            r#"{{"ts":{i},"kind":"other","source":"x","raw":"{i:0>64}"}}"#
        )
        .unwrap();
    }
    let mut zst = zstd::encode_all(&content[..], 1).unwrap();
    let cut = zst.len() * 3 / 4;
    zst.truncate(cut);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.ndjson.zst");
    std::fs::write(&path, &zst).unwrap();
    let mut rows = 0;
    let e = read_input(
        &Input::File(path),
        Format::Native,
        64,
        &mut |_, b| {
            rows += b.num_rows();
            Ok(())
        },
        &mut |r| panic!("no record is bad: {r}"),
    )
    .unwrap_err();
    assert!(matches!(e, IngestError::Io { .. }), "{e}");
    assert!(rows > 1000 && rows < 50_000, "{rows} rows handed on");
}
