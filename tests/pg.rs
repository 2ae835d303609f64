//! `ktrail serve --pg` with real clients: psql (`-c`, `\dt`, `\d`), psycopg 3 and asyncpg
//! (tests/pg/clients.py), SCRAM passwords, TLS that is required once configured, read-only
//! sessions, and per-query time and memory limits that fail one query, not the server.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output};

use common::{Server, exec_scenario_store, ktrail, python, self_signed_cert};

const PASSWORD: &str = "correct horse battery staple";

fn start(dir: &Path, data: &Path, extra: &[&str]) -> Server {
    let password_file = dir.join("pg-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut args: Vec<OsString> = vec![
        "serve".into(),
        "--pg".into(),
        "127.0.0.1:0".into(),
        "--pg-password-file".into(),
        password_file.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    Server::start(data, &args, "pg")
}

/// `psql` with a connection string and `-c` commands; --csv output.
fn psql(server: &Server, conninfo_extra: &str, password: &str, commands: &[&str]) -> Output {
    let conninfo = format!(
        "host={} port={} user=ktrail dbname=ktrail {conninfo_extra}",
        server.addr.ip(),
        server.addr.port()
    );
    let mut c = Command::new("psql");
    c.arg("--no-psqlrc")
        .arg("--csv")
        .arg("-d")
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    c.output().expect("psql is on the machine")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn psql_and_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let server = start(dir.path(), &data, &[]);

    let o = psql(
        &server,
        "sslmode=disable",
        PASSWORD,
        &["SELECT namespace, pod, live FROM pods WHERE namespace = 'billing' ORDER BY pod"],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        out,
        "namespace,pod,live\n\
         billing,invoice-api-7d9f8b6c5-abc12,t\n\
         billing,ledger-0,t\n\
         billing,ledger-backup-29345760-x7k2p,t\n"
    );

    // psql's catalog queries.
    let o = psql(
        &server,
        "sslmode=disable",
        PASSWORD,
        &["\\dt", "\\d events"],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("public,events,table"), "{out}");
    assert!(out.contains("ts,timestamp with time zone"), "{out}");
    assert!(out.contains("source_ips,text[]"), "{out}");

    // Read-only: nothing that writes, reads the server's files, or changes the engine.
    for (statement, says) in [
        (
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd'",
            "",
        ),
        (
            "CREATE TABLE t AS SELECT 1",
            "remote sessions are read-only",
        ),
        (
            "COPY (SELECT 1) TO '/tmp/ktrail-pg-test.csv'",
            "remote sessions are read-only",
        ),
        ("DROP VIEW pods", "remote sessions are read-only"),
        (
            "SET datafusion.runtime.memory_limit = '100G'",
            "remote sessions are read-only",
        ),
    ] {
        let o = psql(&server, "sslmode=disable", PASSWORD, &[statement]);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{statement} ran: {out}");
        assert!(err.contains("ERROR:"), "{statement}: {err}");
        assert!(err.contains(says), "{statement}: {err}");
        assert!(!err.contains("root:") && !out.contains("root:"), "{err}");
    }
    assert!(!Path::new("/tmp/ktrail-pg-test.csv").exists());

    // Authentication: SCRAM for user ktrail only.
    let o = psql(&server, "sslmode=disable", "wrong", &["SELECT 1"]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("authentication failed"),
        "{}",
        text(&o).1
    );

    // Drivers: psycopg 3 (parameters, prepared statements) and asyncpg (binary, max_rows).
    let o = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg/clients.py"))
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .arg(PASSWORD)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.ends_with("all ok\n"), "{out}");
    server.stop();
}

/// A query past the memory limit fails while a concurrent one on another connection runs to
/// its correct answer.
#[test]
fn a_query_over_the_memory_limit_does_not_harm_a_concurrent_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let server = start(dir.path(), &data, &["--query-memory", "2M"]);
    let conninfo = format!(
        "host={} port={} user=ktrail dbname=ktrail sslmode=disable",
        server.addr.ip(),
        server.addr.port()
    );
    // Streams 30 M rows through a count: seconds of work in little memory.
    let concurrent = Command::new("psql")
        .args(["--no-psqlrc", "--csv", "-d", &conninfo, "-c"])
        .arg("SELECT count(*) AS n FROM generate_series(1, 30000000)")
        .env("PGPASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let hungry = "SELECT cardinality(array_agg(v)) AS n FROM generate_series(1, 2000000) t(v)";
    let o = psql(&server, "sslmode=disable", PASSWORD, &[hungry]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("allocat"), "{}", text(&o).1);
    let o = concurrent.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "n\n30000000\n");
    server.stop();
}

/// A query over its time or memory limit fails with the Postgres error code for it; the
/// server and the other queries go on.
#[test]
fn query_limits_fail_one_query() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let server = start(
        dir.path(),
        &data,
        &["--query-timeout", "1", "--query-memory", "2M"],
    );
    let slow = "SELECT count(*) FROM generate_series(1, 100000000000)";
    let o = psql(&server, "sslmode=disable", PASSWORD, &[slow]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("statement timeout"), "{err}");

    let hungry = "SELECT cardinality(array_agg(v)) AS n FROM generate_series(1, 2000000) t(v)";
    let o = psql(&server, "sslmode=disable", PASSWORD, &[hungry]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("allocat"), "{err}");

    let o = psql(
        &server,
        "sslmode=disable",
        PASSWORD,
        &["SELECT count(*) AS n FROM pods"],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, "n\n4\n");
    server.stop();
}

#[test]
fn tls_is_required_once_configured() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let (cert, key) = self_signed_cert(dir.path());
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());

    let server = start(
        dir.path(),
        &data,
        &["--pg-tls-cert", cert_s, "--pg-tls-key", key_s],
    );
    let o = psql(
        &server,
        "sslmode=require",
        PASSWORD,
        &["SELECT ssl FROM (SELECT true AS ssl)"],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let o = psql(&server, "sslmode=disable", PASSWORD, &["SELECT 1"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("requires TLS"), "{}", text(&o).1);
    server.stop();

    // A certificate that cannot be loaded stops the server from starting: no plaintext
    // fallback.
    let password_file = dir.path().join("pg-password");
    for (args, says) in [
        (
            vec!["--pg-tls-cert", "/nonexistent.crt", "--pg-tls-key", key_s],
            "--pg-tls-cert /nonexistent.crt",
        ),
        (
            vec!["--pg-tls-cert", key_s, "--pg-tls-key", key_s],
            "--pg-tls-cert",
        ),
    ] {
        let mut all = vec!["serve", "--pg", "127.0.0.1:0", "--pg-password-file"];
        all.push(password_file.to_str().unwrap());
        all.extend(args);
        let o = ktrail(&data, &all);
        assert_eq!(o.status.code(), Some(1), "{all:?}");
        assert!(text(&o).1.contains(says), "{}", text(&o).1);
        assert!(!text(&o).0.contains("listening"), "{}", text(&o).0);
    }
    // Credentials are not optional, and beyond loopback TLS is not either.
    let o = ktrail(&data, &["serve", "--pg", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("--pg needs --pg-password-file"),
        "{}",
        text(&o).1
    );
    let o = ktrail(
        &data,
        &[
            "serve",
            "--pg",
            "0.0.0.0:0",
            "--pg-password-file",
            password_file.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("without TLS"), "{}", text(&o).1);
}

#[test]
fn session_settings_belong_to_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let server = start(dir.path(), &data, &[]);
    let run = |commands: &[&str]| {
        let o = psql(&server, "sslmode=disable", PASSWORD, commands);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{commands:?}: {err}");
        out
    };
    let now_type = "SELECT arrow_typeof(now()) AS t";
    let before = run(&[now_type]);
    // One connection sets its time zone and sees it...
    let own = run(&[
        "SET TIME ZONE 'America/New_York'",
        now_type,
        "SHOW timezone",
    ]);
    assert!(own.contains("America/New_York"), "{own}");
    assert!(own.ends_with("TimeZone\nAmerica/New_York\n"), "{own}");
    let own = run(&["SET timezone = 'Asia/Tokyo'", now_type]);
    assert!(own.contains("Asia/Tokyo"), "{own}");
    // ...and no other connection does.
    assert_eq!(run(&[now_type]), before);
    assert_eq!(run(&["SHOW TIME ZONE"]), "TimeZone\nUTC\n");
    let o = psql(
        &server,
        "sslmode=disable",
        PASSWORD,
        &["SET TIME ZONE 'Nowhere/Atlantis'"],
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("invalid value"), "{}", text(&o).1);

    // statement_timeout cancels the statement (57014) and leaves the next connection alone.
    let o = psql(
        &server,
        "sslmode=disable",
        PASSWORD,
        &[
            "SET statement_timeout = '200ms'",
            "SHOW statement_timeout",
            "SELECT count(*) FROM generate_series(1, 100000000000)",
        ],
    );
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("200ms"), "{out}");
    assert!(err.contains("statement timeout"), "{err}");
    assert_eq!(run(&["SHOW statement_timeout"]), "statement_timeout\n0\n");
    server.stop();
}

#[test]
fn connections_past_the_cap_are_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let server = start(dir.path(), &data, &["--max-connections", "1"]);
    let held = std::net::TcpStream::connect(server.addr).unwrap();
    let o = psql(&server, "sslmode=disable", PASSWORD, &["SELECT 1 AS one"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("too many clients"), "{err}");
    drop(held);
    // Once the held connection is gone, its place is free again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let o = psql(&server, "sslmode=disable", PASSWORD, &["SELECT 1 AS one"]);
        if o.status.success() {
            assert_eq!(text(&o).0, "one\n1\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", text(&o).1);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.stop();
}

#[test]
fn a_connection_may_leave_damaged_segments_out_of_its_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let segment = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .flat_map(|h| std::fs::read_dir(h.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();
    let server = start(dir.path(), &data, &[]);
    let count = "SELECT count(*) AS n FROM events";
    let o = psql(&server, "sslmode=disable", PASSWORD, &[count]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("is damaged"), "{}", text(&o).1);
    let o = psql(
        &server,
        "sslmode=disable",
        PASSWORD,
        &["SET ktrail.allow_damaged = on", count],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.ends_with("n\n27\n"), "{}", text(&o).0);
    // The setting was that connection's alone.
    let o = psql(&server, "sslmode=disable", PASSWORD, &[count]);
    assert!(!o.status.success(), "{}", text(&o).0);
    let o = psql(
        &server,
        "sslmode=disable",
        PASSWORD,
        &["SET ktrail.allow_damaged = maybe"],
    );
    assert!(
        text(&o).1.contains("requires a Boolean value"),
        "{}",
        text(&o).1
    );
    server.stop();
}
