//! Helpers the end-to-end test binaries share: run `ktrail` on a data directory.
#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/samples");

/// A store under `dir` holding the exec scenario (two `kubectl exec` sessions into a billing
/// pod: audit log + Tetragon export) and the `kubectl get` inventory.
pub fn exec_scenario_store(dir: &Path) -> PathBuf {
    let data = dir.join("store");
    let root = env!("CARGO_MANIFEST_DIR");
    let o = ktrail(
        &data,
        &[
            "ingest",
            &format!("{root}/tests/data/exec_scenario/audit.jsonl"),
            &format!("{root}/tests/data/exec_scenario/tetragon.jsonl"),
            &format!("{root}/ingest/tests/data/kubectl_get_pods_services_nodes.json"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    data
}

/// Runs `ktrail --data DATA ARGS...` to completion.
pub fn ktrail(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ktrail"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run ktrail")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ktrail sql --format FORMAT SQL`, which must succeed; its stdout.
pub fn sql(data: &Path, format: &str, sql: &str) -> String {
    let o = ktrail(data, &["sql", "--format", format, sql]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// `ktrail sql --format json SQL` as JSON rows.
pub fn sql_json(data: &Path, query: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&sql(data, "json", query)).expect("json array")
}

/// A running `ktrail serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// `ktrail --data DATA ARGS...`, once it prints `listening PROTO ADDR`.
    pub fn start(data: &Path, args: &[OsString], proto: &str) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_ktrail"))
            .arg("--data")
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ktrail serve");
        // Owned by a Server from here: Drop reaps it if we panic.
        let mut server = Server {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut out = BufReader::new(server.child.stdout.take().unwrap());
        let prefix = format!("listening {proto} ");
        loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "serve ended before listening on {proto}"
            );
            if let Some(addr) = line.trim().strip_prefix(&prefix) {
                server.addr = addr.parse().unwrap();
                // Keep the pipe open: the server may print more.
                server.child.stdout = Some(out.into_inner());
                return server;
            }
        }
    }

    /// SIGTERM, then wait: a graceful shutdown exits 0.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A test that failed before `stop` must not leave the server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python with the Postgres drivers the tests use (psycopg 3, asyncpg), in a virtualenv
/// under `target/` made on first use (`.ci/run` makes it up front). Concurrent test processes
/// wait for the one that creates it.
pub fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".ktrail-ready");
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv.lock");
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    // The marker holds the requirements it was made from: a changed list reinstalls.
    let current = || std::fs::read_to_string(&ready).is_ok_and(|r| r == wanted);
    loop {
        if current() {
            return python;
        }
        match std::fs::create_dir(&lock) {
            Ok(()) => break,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "python3 -m venv {v} && {v}/bin/pip install -q -r {req}",
            v = venv.display(),
            req = requirements.display()
        ))
        .status();
    let ok = status.is_ok_and(|s| s.success());
    if ok {
        std::fs::write(&ready, &wanted).unwrap();
    }
    let _ = std::fs::remove_dir(&lock);
    assert!(
        ok,
        "could not create the test virtualenv (python3 -m venv, pip from PyPI)"
    );
    python
}

/// A self-signed certificate for `localhost` (PEM certificate, PEM key) under `dir`, made by
/// openssl (on the machine).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let o = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is on the machine");
    assert!(o.status.success(), "{}", stderr(&o));
    (cert, key)
}

/// Sends `head` (request line and headers) and then `body`, and reads the answer for up to
/// 10 s: (status, headers and body as text). A server may answer (401, 413) before reading
/// the body: a reset while sending is not an error.
pub fn raw_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no answer within 10 s: {text:?}"));
    (status, text)
}
