//! `ktrail evidence export` and `evidence verify`: a bundle of an exec session checks out
//! offline, and every edit of it is named.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use common::{ktrail, stderr, stdout};

struct Exported {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

fn exported() -> Exported {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let key = root.join("signing.pem");
    let o = ktrail(&root, &["keygen", "-o", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = common::exec_scenario_store(&root);
    let sessions = common::sql_json(
        &data,
        "SELECT session_id, processes FROM exec_sessions ORDER BY ts LIMIT 1",
    );
    let session = sessions[0]["session_id"].as_str().unwrap().to_string();
    let bundle = root.join("session.tar");
    let o = ktrail(
        &data,
        &[
            "--signing-key",
            key.to_str().unwrap(),
            "evidence",
            "export",
            "--session",
            &session,
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("proven up to chain entry"),
        "{}",
        stdout(&o)
    );
    Exported {
        _tmp: tmp,
        root,
        data,
        key,
        bundle,
    }
}

fn verify(e: &Exported, bundle: &Path, key: Option<&Path>) -> (i32, String) {
    let mut args: Vec<String> = Vec::new();
    if let Some(k) = key {
        args.extend(["--signing-key".into(), k.display().to_string()]);
    }
    args.extend([
        "evidence".into(),
        "verify".into(),
        bundle.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = ktrail(&e.root.join("no-store"), &args);
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

fn members(bundle: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.insert(name, bytes);
    }
    out
}

/// A copy of the bundle with member `name` changed by `edit`.
fn edited(e: &Exported, name: &str, edit: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let mut m = members(&e.bundle);
    let before = m[name].clone();
    edit(m.get_mut(name).unwrap());
    assert_ne!(before, m[name], "the edit changed {name}");
    let out = e.root.join(format!("edited-{name}.tar"));
    let mut builder = tar::Builder::new(std::fs::File::create(&out).unwrap());
    for (n, bytes) in &m {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, n, bytes.as_slice()).unwrap();
    }
    builder.finish().unwrap();
    out
}

fn replace_first(bytes: &mut Vec<u8>, from: &str, to: &str) {
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains(from), "{from} in {text}");
    *bytes = text.replacen(from, to, 1).into_bytes();
}

#[test]
fn a_session_bundle_verifies_offline_and_says_what_it_proves() {
    let e = exported();
    let pub_key = PathBuf::from(format!("{}.pub", e.key.display()));
    let (code, out) = verify(&e, &e.bundle, Some(&pub_key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid: these"), "{out}");
    assert!(out.contains("signed by the key given"), "{out}");
    assert!(
        out.contains("not proven: that these are all the events"),
        "{out}"
    );
    // Without a key the bundle's own key is named, for the reader to compare.
    let (code, out) = verify(&e, &e.bundle, None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("compare it with the store operator's"),
        "{out}"
    );

    // The bundle's rows are the session's: the original records, with their raw text.
    let m = members(&e.bundle);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&m["rows.ndjson"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["raw"].is_string()), "{rows:?}");
    assert!(
        rows.iter().any(|r| r["kind"] == "process_exec"),
        "{:?}",
        rows.iter().map(|r| &r["kind"]).collect::<Vec<_>>()
    );
    assert!(String::from_utf8_lossy(&m["query.sql"]).contains("session_events"));
}

#[test]
fn every_edit_of_a_bundle_is_named() {
    let e = exported();
    let pub_key = PathBuf::from(format!("{}.pub", e.key.display()));

    // A row's text edited.
    let b = edited(&e, "rows.ndjson", |bytes| {
        replace_first(
            bytes,
            "\"namespace\":\"billing\"",
            "\"namespace\":\"default\"",
        )
    });
    let (code, out) = verify(&e, &b, Some(&pub_key));
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("rows.ndjson line") && out.contains("the row was edited"),
        "{out}"
    );
    assert!(out.contains("rows.parquet does not hold the rows"), "{out}");

    // A chain entry edited (its rows count).
    let b = edited(&e, "chain.ndjson", |bytes| {
        replace_first(bytes, "\"rows\":", "\"rows\":1")
    });
    let (code, out) = verify(&e, &b, Some(&pub_key));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("the chain was edited"), "{out}");

    // The digest re-signed by another key, with that key put in the bundle.
    let other = e.root.join("other.pem");
    assert!(
        ktrail(&e.root, &["keygen", "-o", other.to_str().unwrap()])
            .status
            .success()
    );
    let other_pub = std::fs::read(format!("{}.pub", other.display())).unwrap();
    let b = edited(&e, "public_key.pem", |bytes| *bytes = other_pub.clone());
    let (code, out) = verify(&e, &b, Some(&pub_key));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("is not the signer's key given"), "{out}");
    let (code, out) = verify(&e, &b, None);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("digest.json: the signature does not match"),
        "{out}"
    );

    // A row dropped from both copies: the proofs no longer line up.
    let b = edited(&e, "rows.ndjson", |bytes| {
        let text = String::from_utf8(bytes.clone()).unwrap();
        *bytes = text
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes();
    });
    let (code, out) = verify(&e, &b, Some(&pub_key));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("has proofs for"), "{out}");
}

/// `ktrail --signing-key KEY evidence export SELECTION... -o OUT` on the scenario's store.
fn export(e: &Exported, selection: &[&str], out: &Path) -> std::process::Output {
    let mut args = vec![
        "--signing-key",
        e.key.to_str().unwrap(),
        "evidence",
        "export",
    ];
    args.extend_from_slice(selection);
    args.extend(["-o", out.to_str().unwrap()]);
    ktrail(&e.data, &args)
}

#[test]
fn pod_and_sql_selections_export_and_a_bad_selection_is_one_error() {
    let e = exported();
    let out = e.root.join("pod.tar");
    let o = export(&e, &["--pod", "billing/invoice-api-7d9f8b6c5-abc12"], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let n = common::sql_json(
        &e.data,
        "SELECT count(*) AS n FROM events WHERE namespace = 'billing' AND pod = 'invoice-api-7d9f8b6c5-abc12'",
    )[0]["n"]
        .as_i64()
        .unwrap();
    assert!(n >= 17);
    assert!(
        stdout(&o).contains(&format!(": {n} event(s)")),
        "{}",
        stdout(&o)
    );
    let (code, text) = verify(&e, &out, None);
    assert_eq!(code, 0, "{text}");

    let out = e.root.join("sql.tar");
    let sql = "SELECT event_id FROM events WHERE kind = 'k8s_audit'";
    let o = export(&e, &["--sql", sql], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(verify(&e, &out, None).0, 0);

    let o = export(&e, &["--sql", "SELECT pod FROM events"], &out);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("selection:") && stderr(&o).contains("event_id"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn a_store_whose_history_does_not_verify_exports_nothing() {
    let e = exported();
    let mut m = storage::Manifest::load(&e.data).unwrap().unwrap();
    let seg = m.segments.iter().max_by_key(|s| s.rows).unwrap().clone();
    m.segments.iter_mut().find(|s| s.id == seg.id).unwrap().rows += 1;
    std::fs::write(e.data.join("MANIFEST"), m.to_bytes()).unwrap();
    let out = e.root.join("refused.tar");
    let o = export(&e, &["--pod", "billing/x"], &out);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("the store's history does not verify"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
