//! `ktrail shell` sessions against golden files (`tests/shell/NAME.sql` → `NAME.out`), the
//! file commands, and Ctrl-C cancelling a running statement without ending the shell.
//! `UPDATE_GOLDEN=1 cargo nextest run --test shell` rewrites the golden files after a
//! deliberate change; review the diff.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::exec_scenario_store;

fn shell_command(data: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ktrail"));
    c.arg("--data")
        .arg(data)
        .arg("shell")
        .current_dir(cwd)
        .env("KTRAIL_HISTORY", cwd.join("history"));
    c
}

/// Runs a script through the shell's stdin.
fn shell(data: &Path, cwd: &Path, script: &str) -> Output {
    let mut child = shell_command(data, cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// What a person reads, with the parts that vary between runs masked.
fn transcript(o: &Output) -> String {
    let mask = |text: &str| -> String {
        text.lines()
            .map(|l| {
                if l.starts_with("Time: ") && l.ends_with(" ms") {
                    "Time: [elapsed] ms".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "{}\n--- stderr ---\n{}\n--- exit: {:?} ---\n",
        mask(&String::from_utf8_lossy(&o.stdout)),
        mask(&String::from_utf8_lossy(&o.stderr)),
        o.status.code()
    )
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/shell/{name}.out"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the golden file at line {}:\n--- actual ---\n{actual}",
            path.display(),
            first + 1
        );
    }
}

#[test]
fn golden_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shell");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&script_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty());
    for script in scripts {
        let name = script.file_stem().unwrap().to_str().unwrap();
        let o = shell(
            &data,
            dir.path(),
            &std::fs::read_to_string(&script).unwrap(),
        );
        golden(name, &transcript(&o));
    }
}

#[test]
fn output_files_copy_and_include() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    std::fs::write(
        dir.path().join("count.sql"),
        "SELECT count(*) AS sessions\nFROM exec_sessions",
    )
    .unwrap();
    let o = shell(
        &data,
        dir.path(),
        "\\o results.txt\n\
         SELECT pod FROM pods WHERE namespace = 'billing' ORDER BY pod LIMIT 1;\n\
         \\o\n\
         \\copy (SELECT ts, kind, what FROM exec_trace('9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c')) TO 'trace.parquet'\n\
         \\copy (SELECT dst_ip, dst_port FROM egress_unknown('billing') ORDER BY ts) TO 'unknown.csv'\n\
         \\copy (SELECT k8s_user, k8s_groups FROM events WHERE source = 'k8s_audit' ORDER BY ts LIMIT 1) TO 'groups.csv'\n\
         \\copy (SELECT 1) TO 'x.xlsx'\n\
         CREATE EXTERNAL TABLE trace STORED AS PARQUET LOCATION 'trace.parquet';\n\
         SELECT count(*) AS n FROM trace;\n\
         \\i count.sql\n\
         \\i missing.sql\n",
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("results.txt")).unwrap(),
        "             pod\n-----------------------------\n invoice-api-7d9f8b6c5-abc12\n(1 row)\n"
    );
    assert!(out.contains("COPY 8\n"), "{out}");
    assert!(out.contains("COPY 2\n"), "{out}");
    assert!(out.contains(" n\n---\n 8\n(1 row)"), "{out}");
    assert!(
        out.contains(" sessions\n----------\n        2\n(1 row)"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("unknown.csv")).unwrap(),
        "dst_ip,dst_port\n198.51.100.23,80\n203.0.113.9,4444\n"
    );
    // A list column goes out as its JSON text (DataFusion's CSV sink refused it).
    assert!(out.contains("COPY 1\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("groups.csv")).unwrap(),
        "k8s_user,k8s_groups\nmallory@example.com,\"[\"\"developers\"\",\"\"system:authenticated\"\"]\"\n"
    );
    let errors: Vec<&str> = err.lines().collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(errors[0].contains("x.xlsx: unknown format"), "{err}");
    assert!(errors[1].contains("missing.sql: No such file"), "{err}");
    assert_eq!(o.status.code(), Some(1));
}

/// SIGINT while a statement runs cancels it; the shell goes on with the next one.
#[test]
fn ctrl_c_cancels_the_running_statement_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = exec_scenario_store(dir.path());
    let mut child = shell_command(&data, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"SELECT 'ready' AS state;\n\
              SELECT count(*) FROM generate_series(1, 1000000000000) a CROSS JOIN generate_series(1, 1000) b;\n\
              SELECT 'after' AS state;\n",
        )
        .unwrap();
    drop(stdin);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("(1 row)") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "shell ended: {seen}"
        );
        seen.push_str(&line);
    }
    // The long statement is now running (or about to).
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ERROR:  canceling statement due to user request"),
        "{err}"
    );
    assert!(rest.contains(" after\n(1 row)"), "{rest}");
    assert_eq!(o.status.code(), Some(1));
}
