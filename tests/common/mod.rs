//! Helpers the end-to-end test binaries share: run `ktrail` on a data directory.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::process::{Command, Output};

pub const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/samples");

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
