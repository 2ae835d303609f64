//! `ktrail archive` end to end: the demo store archived to a real S3 server (moto, on
//! loopback) and to a `file://` directory answers every investigation as before; other tools
//! (pyarrow over S3, DuckDB, Spark) read the layout with the same counts; an archive that goes away
//! mid-run loses nothing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{python, stderr, stdout};

/// moto's S3 server on a free loopback port, with one bucket.
struct S3Server {
    child: Child,
    addr: SocketAddr,
}

impl S3Server {
    fn start(bucket: &str) -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let moto = python().with_file_name("moto_server");
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", moto.display()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let server = S3Server { child, addr };
        let reply = http(
            addr,
            &format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        server
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// The standard AWS settings of an S3 endpoint at `addr` (plain HTTP, moto's test keys).
fn aws_env(addr: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://{addr}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]
}

fn ktrail_env(data: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ktrail"))
        .arg("--data")
        .arg(data)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run ktrail")
}

/// `ktrail archive --to URL --older-than 0s`: every sealed hour.
fn archive_all(data: &Path, env: &[(&str, String)], url: &str) -> Output {
    ktrail_env(data, env, &["archive", "--to", url, "--older-than", "0s"])
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// The demo's guided investigation: its output from the first question on.
fn investigation(demo_output: &str) -> String {
    let at = demo_output.find("\n1. ").expect("the first question");
    demo_output[at..].to_string()
}

/// Files under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

/// Events per kind and day as ktrail counts them, `kind,day,count` lines in order; with
/// `archived_by`, the output of the `ktrail archive` run, only those of the hours it archived.
fn counts_csv(data: &Path, env: &[(&str, String)], archived_by: Option<&str>) -> String {
    let filter = archived_by
        .map(|out| {
            let (_, cutoff) = out.split_once("hours ended before ").expect("the cutoff");
            format!("WHERE ts < TIMESTAMP '{}:00:00Z'", &cutoff[..13])
        })
        .unwrap_or_default();
    let sql = format!(
        "SELECT kind, to_char(ts, '%Y-%m-%d') AS day, count(*) AS n FROM events {filter} \
         GROUP BY kind, day ORDER BY kind, day"
    );
    ok(ktrail_env(data, env, &["sql", "--format", "csv", &sql]))
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a Python script run in the test virtualenv printed.
fn python_out(script: &str) -> String {
    let o = Command::new(python())
        .args(["-c", script])
        .output()
        .unwrap();
    ok(o).trim().to_string()
}

/// Ids of segments the manifest lists as local although their hour ended (the demo's last
/// inventory is of now: its hour is not over, so it stays).
fn sealed_locally(data: &Path) -> Vec<u64> {
    let hour_ns = 3_600_000_000_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    manifest(data)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("archived").is_none())
        .filter(|s| (s["max_ts"].as_i64().unwrap() / hour_ns + 1) * hour_ns < now - 60_000_000_000)
        .map(|s| s["id"].as_u64().unwrap())
        .collect()
}

fn archived_count(data: &Path) -> usize {
    manifest(data)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("archived").is_some())
        .count()
}

#[test]
fn a_demo_store_archived_to_s3_answers_every_investigation_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let s3 = S3Server::start("ktrail-archive");
    let env = aws_env(s3.addr);
    let before = ok(ktrail_env(&data, &env, &["demo", "--events", "20000"]));
    let counts_before = counts_csv(&data, &env, None);
    let exec_sessions_sql = "SELECT session_id, k8s_user, pod, command, processes FROM exec_sessions ORDER BY session_id";
    let sessions_before = ok(ktrail_env(
        &data,
        &env,
        &["sql", "--format", "csv", exec_sessions_sql],
    ));
    let local_segments = files_ending(&data.join("segments"), ".parquet").len();
    assert!(local_segments > 0);

    let out = ok(archive_all(&data, &env, "s3://ktrail-archive/prod"));
    let local = sealed_locally(&data);
    assert!(local.is_empty(), "sealed segments left local: {local:?}");
    let archived = archived_count(&data);
    assert_eq!(
        local_segments,
        archived + files_ending(&data.join("segments"), ".parquet").len()
    );
    assert!(
        out.contains(&format!(
            "{archived} segment(s) archived to s3://ktrail-archive/prod"
        )),
        "{out}"
    );

    // The same answers, read from the archive.
    let again = ok(ktrail_env(&data, &env, &["demo", "--events", "20000"]));
    assert!(again.contains("Ingested 0 new events"), "{again}");
    assert_eq!(investigation(&again), investigation(&before));
    assert_eq!(counts_csv(&data, &env, None), counts_before);
    assert_eq!(
        ok(ktrail_env(
            &data,
            &env,
            &["sql", "--format", "csv", exec_sessions_sql]
        )),
        sessions_before
    );
    let plan = ok(ktrail_env(
        &data,
        &env,
        &[
            "sql",
            "EXPLAIN ANALYZE SELECT count(*) FROM events WHERE raw LIKE '%payments%'",
        ],
    ));
    assert!(plan.contains("archived="), "{plan}");
    // The archive's copies check out, fetched in full.
    let verified = ok(ktrail_env(&data, &env, &["verify"]));
    assert!(
        verified.contains(&format!("{local_segments} segment(s) verified, 0 damaged")),
        "{verified}"
    );

    // pyarrow reads the archive on S3 as a Hive-partitioned dataset, with ktrail's counts.
    let script = format!(
        r#"
import pyarrow.dataset as ds, pyarrow.fs as fs, pyarrow.compute as pc
s3 = fs.S3FileSystem(endpoint_override="{addr}", scheme="http", region="us-east-1",
                     access_key="testing", secret_key="testing")
base = "ktrail-archive/prod/segments"
files = [f.path for f in s3.get_file_info(fs.FileSelector(base, recursive=True)) if f.path.endswith(".parquet")]
d = ds.dataset(files, filesystem=s3, format="parquet", partitioning="hive", partition_base_dir=base)
t = d.to_table(columns=["kind", "dt"]).group_by(["kind", "dt"]).aggregate([("kind", "count")])
rows = sorted(zip(t["kind"].to_pylist(), t["dt"].to_pylist(), t["kind_count"].to_pylist()))
print("\n".join(f"{{k}},{{d}},{{n}}" for k, d, n in rows))
"#,
        addr = s3.addr
    );
    assert_eq!(python_out(&script), counts_csv(&data, &env, Some(&out)));
}

#[test]
fn duckdb_and_spark_read_a_file_archive_with_ktrails_counts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let archive = dir.path().join("archive");
    ok(ktrail_env(&data, &[], &["demo", "--events", "5000"]));
    let counts = counts_csv(&data, &[], None);
    let url = format!("file://{}", archive.display());
    let out = ok(archive_all(&data, &[], &url));
    assert_eq!(counts_csv(&data, &[], None), counts);
    let script = format!(
        r#"
import duckdb
rows = duckdb.sql("""SELECT kind, CAST(dt AS VARCHAR), count(*) FROM read_parquet('{archive}/segments/**/*.parquet', hive_partitioning = true)
                     GROUP BY ALL ORDER BY ALL""").fetchall()
print("\n".join(f"{{k}},{{d}},{{n}}" for k, d, n in rows))
"#,
        archive = archive.display()
    );
    let expected = counts_csv(&data, &[], Some(&out));
    assert_eq!(python_out(&script), expected);

    // Spark, local mode: the Parquet files by name, the partitions from the directories.
    // ktrail's timestamps are nanoseconds, which Spark reads as numbers when told to.
    let script = format!(
        r#"
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]")
         .config("spark.ui.enabled", "false").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.sql.legacy.parquet.nanosAsLong", "true").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.option("pathGlobFilter", "*.parquet").parquet("file://{archive}/segments")
rows = sorted((r["kind"], str(r["dt"]), r["count"]) for r in df.groupBy("kind", "dt").count().collect())
print("\n".join(f"{{k}},{{d}},{{n}}" for k, d, n in rows))
"#,
        archive = archive.display()
    );
    assert_eq!(python_out(&script), expected);
}

/// A loopback TCP relay to `to` that stops relaying, for good, after `limit` bytes went
/// towards the server: an archive that becomes unreachable in the middle of a run.
fn relay_cut_after(to: SocketAddr, limit: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if cut.load(Ordering::SeqCst) {
                continue; // dropped: the connection is refused from now on
            }
            let server = TcpStream::connect(to).unwrap();
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (sent, cut2) = (sent.clone(), cut.clone());
            std::thread::spawn(move || pipe(client, server, Some((sent, cut2, limit))));
            std::thread::spawn(move || pipe(s2, c2, None));
        }
    });
    addr
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    count: Option<(Arc<AtomicUsize>, Arc<AtomicBool>, usize)>,
) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((sent, cut, limit)) = &count
            && (cut.load(Ordering::SeqCst) || sent.fetch_add(n, Ordering::SeqCst) + n > *limit)
        {
            cut.store(true, Ordering::SeqCst);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// The manifest's JSON (after its header line).
fn manifest(data: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(data.join("MANIFEST")).unwrap();
    serde_json::from_str(text.split_once('\n').unwrap().1).unwrap()
}

#[test]
fn an_archive_lost_mid_run_or_unreachable_deletes_nothing_it_did_not_archive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ok(ktrail_env(&data, &[], &["demo", "--events", "20000"]));
    let total: u64 = manifest(&data)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .sum();

    // Unreachable from the start: a clear error naming the archive, nothing changed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = archive_all(&data, &aws_env(closed), "s3://ktrail-archive/x");
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("archive s3://ktrail-archive/x"),
        "{}",
        stderr(&o)
    );
    assert!(
        manifest(&data)["segments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("archived").is_none())
    );

    // Lost after some segments went: those are recorded as archived, the rest stays local.
    let s3 = S3Server::start("ktrail-archive");
    let relay = relay_cut_after(s3.addr, 400 << 10);
    let env = aws_env(relay);
    let o = archive_all(&data, &env, "s3://ktrail-archive/x");
    assert_eq!(
        o.status.code(),
        Some(1),
        "the relay never cut: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("archive s3://ktrail-archive/x"),
        "{}",
        stderr(&o)
    );
    let m = manifest(&data);
    let segments = m["segments"].as_array().unwrap();
    let archived = segments
        .iter()
        .filter(|s| s.get("archived").is_some())
        .count();
    assert!(
        archived > 0 && archived < segments.len(),
        "{archived} of {}",
        segments.len()
    );
    let mut rows = 0;
    for s in segments {
        rows += s["rows"].as_u64().unwrap();
        let local = data.join(s["path"].as_str().unwrap()).exists();
        assert_eq!(local, s.get("archived").is_none(), "{s}");
    }
    assert_eq!(rows, total, "every event is listed, local or archived");

    // Through the server itself, the run finishes what it began.
    let env = aws_env(s3.addr);
    ok(archive_all(&data, &env, "s3://ktrail-archive/x"));
    let local = sealed_locally(&data);
    assert!(local.is_empty(), "sealed segments left local: {local:?}");
    let n = ok(ktrail_env(
        &data,
        &env,
        &["sql", "--format", "csv", "SELECT count(*) FROM events"],
    ));
    assert_eq!(n.lines().nth(1), Some(total.to_string().as_str()));
}

#[test]
fn serve_moves_the_hours_past_retain_local_to_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ok(ktrail_env(&data, &[], &["demo", "--events", "5000"]));
    let counts = counts_csv(&data, &[], None);
    let archive = dir.path().join("archive");
    let url = format!("file://{}", archive.display());
    let args: Vec<std::ffi::OsString> = [
        "serve",
        "--http",
        "127.0.0.1:0",
        "--retain-local",
        "0s",
        "--archive-to",
        &url,
    ]
    .iter()
    .map(Into::into)
    .collect();
    let server = common::Server::start(&data, &args, "http");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sealed_locally(&data).is_empty() {
        assert!(Instant::now() < deadline, "serve did not archive the store");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
    assert!(
        manifest(&data)["segments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s.get("archived").is_some())
            .all(|s| s["archived"]["url"] == url.as_str())
    );
    assert!(archived_count(&data) > 0);
    assert_eq!(counts_csv(&data, &[], None), counts);
}

#[test]
fn expiry_deletes_archived_hours_and_records_each_in_the_manifest_and_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let archive = dir.path().join("archive");
    ok(ktrail_env(&data, &[], &["demo", "--events", "5000"]));
    let url = format!("file://{}", archive.display());
    ok(archive_all(&data, &[], &url));
    let archived = archived_count(&data);
    let out = ok(ktrail_env(&data, &[], &["expire", "--older-than", "0s"]));
    let m = manifest(&data);
    let expired = m["expired"].as_array().unwrap();
    assert!(expired.len() >= archived, "{out}");
    assert!(
        out.contains(&format!("{} segment(s) expired", expired.len())),
        "{out}"
    );
    for e in expired {
        assert_eq!(e["policy"], "ktrail expire --older-than 0s");
        assert_eq!(e["files_deleted"], true);
    }
    // The archive says what it no longer holds; what is left answers alone.
    assert!(files_ending(&archive.join("segments"), ".parquet").is_empty());
    assert_eq!(
        files_ending(&archive.join("expired"), ".json").len(),
        archived
    );
    let left: u64 = m["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .sum();
    let n = ok(ktrail_env(
        &data,
        &[],
        &["sql", "--format", "csv", "SELECT count(*) FROM events"],
    ));
    assert_eq!(n.lines().nth(1), Some(left.to_string().as_str()));
}
