//! End-to-end tests of the `ktrail` binary: ingest and sql as the contract describes them.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{SAMPLES, ktrail, sql, stderr, stdout};

const QUICKSTART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.ndjson");

#[test]
fn ingest_then_query_the_bundled_incident() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let o = ktrail(&data, &["ingest", QUICKSTART]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("native: accepted 605, rejected 0, duplicates 0"),
        "{}",
        stderr(&o)
    );

    let text = sql(
        &data,
        "csv",
        "SELECT ts, pod, binary_name, args FROM process_events WHERE binary_name IN ('curl', 'tcpdump') ORDER BY ts",
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "ts,pod,binary_name,args");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].contains("invoice-api-7d9f-abc12,curl,"), "{text}");
    assert!(
        lines[2].contains(",tcpdump,-i any -w /tmp/cap.pcap port 5432"),
        "{text}"
    );

    assert_eq!(
        sql(
            &data,
            "json",
            "SELECT k8s_user, source_ip FROM k8s_audit WHERE subresource = 'exec'"
        )
        .trim(),
        r#"[{"k8s_user":"mallory@example.com","source_ip":"203.0.113.7"}]"#
    );

    let o = ktrail(
        &data,
        &["sql", "SELECT count(*) AS n FROM events; SELECT 1 AS one"],
    );
    let text = stdout(&o);
    assert!(
        text.contains("| 605 |") && text.contains("| 1   |"),
        "{text}"
    );
    assert!(text.contains("(1 row)"), "{text}");

    let o = ktrail(
        &data,
        &[
            "sql",
            "--format",
            "ndjson",
            "SELECT dst_ip FROM network_events WHERE dst_ip = '198.51.100.23'",
        ],
    );
    assert_eq!(stdout(&o), "{\"dst_ip\":\"198.51.100.23\"}\n");
}

#[test]
fn reingest_adds_nothing_and_rejections_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let input = dir.path().join("in.ndjson");
    std::fs::write(
        &input,
        "{\"ts\":1,\"kind\":\"other\",\"source\":\"t\",\"pod\":\"a\"}\n{broken\n{\"ts\":2,\"kind\":\"other\",\"source\":\"t\"}\n",
    )
    .unwrap();
    let o = ktrail(&data, &["ingest", input.to_str().unwrap()]);
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:2: ", input.display())), "{err}");
    assert!(
        err.contains("native: accepted 2, rejected 0, duplicates 0"),
        "{err}"
    );
    assert!(
        err.contains("auto: accepted 0, rejected 1, duplicates 0"),
        "{err}"
    );

    assert!(err.contains("1 rejected record(s) kept in"), "{err}");
    let dead = std::fs::read_to_string(data.join("dead-letter.jsonl")).unwrap();
    let kept: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
    assert_eq!(kept["line"], 2);
    assert_eq!(kept["record"], "{broken");
    assert_eq!(kept["path"], input.display().to_string());

    // Same bytes again: skipped by fingerprint. The file is hashed while it is parsed; what
    // the parse found before the hash was known is not reported again.
    let o = ktrail(&data, &["ingest", input.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        err.contains("1 input(s) already ingested, skipped"),
        "{err}"
    );
    assert!(!err.contains(":2: "), "{err}");
    assert!(
        err.contains("auto: accepted 0, rejected 0, duplicates 0"),
        "nothing counted: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("dead-letter.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    // Same records in a different file: dropped by event id.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ktrail"))
        .arg("--data")
        .arg(&data)
        .args(["ingest", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"ts\":2,\"kind\":\"other\",\"source\":\"t\"}\n{\"ts\":3,\"kind\":\"other\",\"source\":\"t\"}\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        stderr(&o).contains("accepted 1, rejected 0, duplicates 1"),
        "{}",
        stderr(&o)
    );
    let o = ktrail(
        &data,
        &["sql", "--format", "csv", "SELECT count(*) AS n FROM events"],
    );
    assert_eq!(stdout(&o), "n\n3\n");
}

#[test]
fn errors_are_one_line_with_the_contract_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let o = ktrail(&data, &["sql", "SELEC 1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: "));

    let o = ktrail(&data, &["sql", "SELECT nope FROM events"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    let o = ktrail(&data, &["sql"]);
    assert_eq!(o.status.code(), Some(2));
    let o = ktrail(&data, &["ingest", "--format", "nonsense", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = ktrail(&data, &["ingest", "/does/not/exist"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn explain_analyze_reports_skipped_segments_and_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    assert!(ktrail(&data, &["ingest", QUICKSTART]).status.success());
    let o = ktrail(
        &data,
        &[
            "sql",
            "EXPLAIN ANALYZE SELECT * FROM events WHERE pod = 'ledger-0'",
        ],
    );
    let text = stdout(&o);
    assert!(text.contains("KtrailScanExec: segments="), "{text}");
    assert!(text.contains("segments_pruned="), "{text}");
    let o = ktrail(&data, &["verify"]);
    assert!(stdout(&o).contains("segment(s) verified"), "{}", stdout(&o));
}

#[test]
fn a_damaged_segment_fails_the_queries_needing_it_is_quarantined_and_taken_back_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    assert!(ktrail(&data, &["ingest", QUICKSTART]).status.success());
    let count = "SELECT count(*) AS n FROM events";
    let whole = sql(&data, "csv", count);
    let idx = walk(&data.join("segments"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .expect("an index file");
    let good = std::fs::read(&idx).unwrap();
    let mut bytes = good.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&idx, &bytes).unwrap();

    let o = ktrail(&data, &["sql", count]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("is damaged") && err.contains(&idx.display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("--allow-damaged") && err.contains("recorded in the manifest"),
        "{err}"
    );
    // Quarantined as found, out of segments/.
    let rel = idx.strip_prefix(&data).unwrap();
    assert_eq!(
        std::fs::read(data.join("quarantine").join(rel)).unwrap(),
        bytes
    );
    assert!(!idx.exists());

    let o = ktrail(&data, &["sql", "--allow-damaged", "--format", "csv", count]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipped a damaged segment"),
        "{}",
        stderr(&o)
    );
    let partial: u64 = stdout(&o).lines().nth(1).unwrap().parse().unwrap();
    assert!(
        partial < whole.lines().nth(1).unwrap().parse().unwrap(),
        "{partial}"
    );

    let o = ktrail(&data, &["verify"]);
    assert_eq!(o.status.code(), Some(3), "a finding exits 3");
    let out = stdout(&o);
    assert!(
        out.contains("SHA-256") && out.contains(&idx.display().to_string()),
        "{out}"
    );

    let o = ktrail(&data, &["repair"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("is still damaged"), "{}", stdout(&o));
    // A good copy back (from a backup): repair lists the segment as whole again.
    std::fs::copy(
        data.join("quarantine").join(rel.with_extension("parquet")),
        idx.with_extension("parquet"),
    )
    .unwrap();
    std::fs::write(&idx, &good).unwrap();
    let o = ktrail(&data, &["repair"]);
    assert!(stdout(&o).contains("listed as whole"), "{}", stdout(&o));
    assert!(ktrail(&data, &["verify"]).status.success());
    assert_eq!(sql(&data, "csv", count), whole);
}

/// Two ingests of interleaved halves of the quickstart: each flush leaves a segment in every
/// hour it covers, so every hour has two.
fn ingest_in_halves(dir: &Path, data: &Path) {
    let lines: Vec<String> = std::fs::read_to_string(QUICKSTART)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for half in 0..2 {
        let path = dir.join(format!("half{half}.ndjson"));
        let text: Vec<&str> = lines
            .iter()
            .skip(half)
            .step_by(2)
            .map(String::as_str)
            .collect();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        let o = ktrail(data, &["ingest", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

#[test]
fn a_missing_manifest_keeps_every_segment_and_repair_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ingest_in_halves(dir.path(), &data);
    let count = "SELECT count(*) AS n FROM events";
    let before = sql(&data, "csv", count);
    assert_eq!(before, "n\n605\n");
    let mut files = walk(&data.join("segments"));
    files.sort();
    std::fs::remove_file(data.join("MANIFEST")).unwrap();

    let o = ktrail(&data, &["sql", count]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("ktrail repair"), "{}", stderr(&o));
    let mut after = walk(&data.join("segments"));
    after.sort();
    assert_eq!(after, files, "no segment deleted");

    let o = ktrail(&data, &["repair"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("manifest rebuilt"), "{}", stdout(&o));
    assert_eq!(sql(&data, "csv", count), before);
    assert!(ktrail(&data, &["verify"]).status.success());
}

#[test]
fn a_damaged_segment_fails_every_query_that_reads_it_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    assert!(ktrail(&data, &["ingest", QUICKSTART]).status.success());
    let segment = walk(&data.join("segments"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    // The last byte before the footer's length: inside the footer's metadata, which a
    // reader would otherwise decode as it is.
    let at = bytes.len() - 9;
    bytes[at] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    for query in [
        "SELECT sum(pid) AS s FROM events",
        "SELECT ts, exe FROM events WHERE kind = 'process_exec' ORDER BY ts LIMIT 3",
    ] {
        let o = ktrail(&data, &["sql", query]);
        assert_eq!(o.status.code(), Some(1), "{query}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("SHA-256") && err.contains(&segment.display().to_string()),
            "{query}: {err}"
        );
    }
}

#[test]
fn compaction_does_not_launder_a_damaged_segment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ingest_in_halves(dir.path(), &data);
    let segment = walk(&data.join("segments"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let o = ktrail(&data, &["compact"]);
    // The others are merged; the damaged one is a finding, kept as it is in quarantine/.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&segment.display().to_string()) && stdout(&o).contains("is damaged"),
        "{}",
        stdout(&o)
    );
    let rel = segment.strip_prefix(&data).unwrap();
    assert_eq!(
        std::fs::read(data.join("quarantine").join(rel)).unwrap(),
        bytes
    );
    let o = ktrail(&data, &["verify"]);
    assert_eq!(o.status.code(), Some(3), "the damage is still found");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn real_audit_logs_ingest_with_only_the_malformed_record_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let audit = format!("{SAMPLES}/k8s-audit");
    let o = ktrail(&data, &["ingest", &audit]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let rejections: Vec<&str> = err.lines().filter(|l| l.contains(".json:")).collect();
    assert_eq!(rejections.len(), 1, "{err}");
    assert!(
        rejections[0].contains("fal_01_003.json:1: unrecognised record"),
        "{err}"
    );
    assert!(err.contains("k8s-audit: accepted "), "{err}");

    assert_eq!(
        sql(
            &data,
            "csv",
            "SELECT k8s_user, verb, namespace, pod, request_uri FROM k8s_audit WHERE subresource = 'exec'"
        ),
        "k8s_user,verb,namespace,pod,request_uri\nminikube-user,create,default,nginx-deployment-7998647bdf-phvq7,/api/v1/namespaces/default/pods/nginx-deployment-7998647bdf-phvq7/exec?command=bash&container=nginx1&container=nginx1&stdin=true&stdout=true&tty=true\n"
    );
    // The same event again, posted as a webhook EventList would carry it: nothing is added.
    let copy = dir.path().join("again.json");
    let event = std::fs::read_to_string(format!("{audit}/exec_pod.json")).unwrap();
    std::fs::write(
        &copy,
        format!("{{\"kind\":\"EventList\",\"items\":[{}]}}", event.trim()),
    )
    .unwrap();
    let o = ktrail(&data, &["ingest", copy.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("k8s-audit: accepted 0, rejected 0, duplicates 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn tetragon_exports_are_answered_by_sql() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let lines = format!("{SAMPLES}/tetragon/testdata_events.jsonl");
    let doc = format!("{SAMPLES}/tetragon/docs_filename-access_process_kprobe.json");
    let o = ktrail(&data, &["ingest", "--format", "tetragon", &lines, &doc]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("tetragon: accepted 4, rejected 0, duplicates 0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        sql(
            &data,
            "csv",
            "SELECT kind, pod, binary_name FROM events ORDER BY ts"
        ),
        "kind,pod,binary_name\nprocess_exec,tiefighter,netserver\nprocess_exec,deathstar-6f87496b94-qdlh8,starwars-docker\nprocess_exec,deathstar-6f87496b94-gjf74,starwars-docker\nfile_access,file-access,vi\n"
    );
}

/// Local queries run under the same limits as remote ones: over its time or memory limit a
/// statement fails with one line, exit 1.
#[test]
fn local_queries_have_limits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    for (args, says) in [
        (
            [
                "--query-timeout",
                "1",
                "SELECT count(*) FROM generate_series(1, 100000000000)",
            ],
            "statement timeout",
        ),
        (
            [
                "--query-memory",
                "1M",
                "SELECT cardinality(array_agg(v)) AS n FROM generate_series(1, 2000000) t(v)",
            ],
            "Resources exhausted",
        ),
    ] {
        let mut all = vec!["sql"];
        all.extend(args);
        let o = common::ktrail(&data, &all);
        assert_eq!(o.status.code(), Some(1));
        let err = common::stderr(&o);
        assert!(err.contains(says), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn compact_merges_an_hours_segments_and_answers_stay_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ingest_in_halves(dir.path(), &data);
    let answers = |data: &Path| {
        sql(
            data,
            "csv",
            "SELECT ts, kind, namespace, pod, exe, args, dst_ip, event_id FROM events \
             ORDER BY ts, event_id",
        )
    };
    let before = answers(&data);
    assert_eq!(before.lines().count(), 606, "header and 605 events");

    let o = ktrail(&data, &["compact"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let merged: usize = out
        .strip_suffix(" segment(s) compacted\n")
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert!(merged >= 2, "{out}");
    assert_eq!(answers(&data), before);
    let o = ktrail(&data, &["verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Nothing is left to merge.
    assert_eq!(
        stdout(&ktrail(&data, &["compact"])),
        "0 segment(s) compacted\n"
    );
}
