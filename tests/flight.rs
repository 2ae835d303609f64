//! Arrow Flight SQL on `ktrail serve --grpc`, driven by ADBC's Flight SQL driver
//! (tests/flight/clients.py): statements, prepared statements with parameters, catalog
//! metadata, bearer token, read-only refusals; over plaintext on loopback and over TLS; and
//! each query under its own memory and time limits (tests/flight/limits.py).

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use common::{Server, exec_scenario_store, ktrail, python, self_signed_cert};

const TOKEN: &str = "flight-test-token";

fn start(dir: &Path, data: &Path, extra: &[&str]) -> Server {
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut args: Vec<OsString> = vec![
        "serve".into(),
        "--grpc".into(),
        "127.0.0.1:0".into(),
        "--token-file".into(),
        token_file.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    Server::start(data, &args, "grpc")
}

fn adbc(uri: &str, ca: Option<&Path>) {
    let ca = ca.map(|p| p.to_str().expect("UTF-8 path"));
    adbc_script("clients.py", uri, ca.as_slice());
}

/// Runs `tests/flight/SCRIPT URI TOKEN ARGS..`, which prints `all ok` last when every check
/// passed.
fn adbc_script(script: &str, uri: &str, args: &[&str]) {
    let mut c = Command::new(python());
    c.arg("-W")
        .arg("ignore")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/flight")
                .join(script),
        )
        .arg(uri)
        .arg(TOKEN);
    c.args(args);
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.ends_with("all ok\n"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn adbc_flight_sql() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let server = start(dir.path(), &data, &[]);
    adbc(&format!("grpc://{}", server.addr), None);
    server.stop();
}

/// Each Flight SQL query runs under the server's limits with a memory pool of its own: one
/// over its memory or time limit fails with the reason, a concurrent one is unharmed.
#[test]
fn flight_queries_run_under_their_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    for (limit, flags) in [
        ("memory", ["--query-memory", "2M"]),
        ("time", ["--query-timeout", "1"]),
    ] {
        let server = start(dir.path(), &data, &flags);
        adbc_script("limits.py", &format!("grpc://{}", server.addr), &[limit]);
        server.stop();
    }
}

#[test]
fn adbc_flight_sql_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let (cert, key) = self_signed_cert(dir.path());
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = start(
        dir.path(),
        &data,
        &["--grpc-tls-cert", cert_s, "--grpc-tls-key", key_s],
    );
    adbc(
        &format!("grpc+tls://localhost:{}", server.addr.port()),
        Some(&cert),
    );
    server.stop();

    // A key that is not a key stops the server from starting.
    let token_file = dir.path().join("token");
    let o = ktrail(
        &data,
        &[
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
            "--grpc-tls-cert",
            cert_s,
            "--grpc-tls-key",
            cert_s,
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--grpc TLS"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("listening"));
}
