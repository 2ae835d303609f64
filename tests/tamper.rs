//! Tampering with a store's history, and `ktrail verify` naming what was changed.
//!
//! Each test builds a store signed with a fresh key (two ingests: a generated history, then
//! the exec scenario), with a witness directory beside it, changes it the way an intruder
//! who can write the data directory would, and checks the finding.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ktrail, stderr, stdout};
use storage::chain::{self, ChainEntry, ChainHead};
use storage::{Manifest, SegmentMeta};

struct Signed {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    key: PathBuf,
    witness: PathBuf,
    /// A copy of the data directory after the first ingest (an old backup).
    backup: PathBuf,
}

fn run(s: &Signed, data: &Path, args: &[&str]) -> Output {
    let key = s.key.to_str().unwrap().to_string();
    let mut all = vec!["--signing-key", key.as_str()];
    all.extend_from_slice(args);
    ktrail(data, &all)
}

fn signed_store() -> Signed {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let key = root.join("signing.pem");
    let o = ktrail(
        &root.join("unused"),
        &["keygen", "-o", key.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let generated = root.join("gen");
    let o = ktrail(
        &root.join("unused"),
        &["gen", "--events", "3000", "-o", generated.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = Signed {
        data: root.join("data"),
        witness: root.join("witness"),
        backup: root.join("backup"),
        key,
        root,
        _tmp: tmp,
    };
    let witness = s.witness.to_str().unwrap().to_string();
    let o = run(
        &s,
        &s.data,
        &["--witness", &witness, "ingest", generated.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    copy_dir(&s.data, &s.backup);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/exec_scenario");
    let o = run(&s, &s.data, &["--witness", &witness, "ingest", scenario]);
    assert!(o.status.success(), "{}", stderr(&o));
    s
}

fn copy_dir(from: &Path, to: &Path) {
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(o.status.success());
    // The copy is not locked by anyone.
    let _ = fs::remove_file(to.join("LOCK"));
}

fn verify(s: &Signed, data: &Path, witness: bool) -> (i32, String) {
    let pub_key = format!("{}.pub", s.key.display());
    let w = s.witness.to_str().unwrap().to_string();
    let mut args = vec!["--signing-key", pub_key.as_str()];
    if witness {
        args.extend(["--witness", w.as_str()]);
    }
    args.push("verify");
    let o = ktrail(data, &args);
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

fn manifest(data: &Path) -> Manifest {
    Manifest::load(data).unwrap().unwrap()
}

/// Writes `m` as the manifest, as an intruder would: no chain entry.
fn write_manifest(data: &Path, m: &Manifest) {
    fs::write(data.join("MANIFEST"), m.to_bytes()).unwrap();
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn chain_entries(data: &Path) -> Vec<ChainEntry> {
    chain::read_lines(data)
        .unwrap()
        .into_iter()
        .map(|l| l.entry.unwrap())
        .collect()
}

/// Writes `entries` as the chain with fresh links, and points the manifest at its head: a
/// rewrite that is consistent in every file the intruder can write.
fn rewrite_chain(data: &Path, entries: &[ChainEntry], m: &mut Manifest) {
    let mut out = Vec::new();
    let mut prev = chain::GENESIS_PREV.to_string();
    let mut head = None;
    for (i, e) in entries.iter().enumerate() {
        let e = ChainEntry {
            seq: i as u64 + 1,
            prev: prev.clone(),
            ..e.clone()
        };
        let line = serde_json::to_string(&e).unwrap();
        prev = chain::entry_hash(line.as_bytes());
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        head = Some(ChainHead {
            seq: e.seq,
            hash: prev.clone(),
            len: out.len() as u64,
        });
    }
    fs::write(data.join(chain::CHAIN_FILE), out).unwrap();
    m.chain = head;
}

fn largest_segment(m: &Manifest) -> SegmentMeta {
    m.segments.iter().max_by_key(|s| s.rows).unwrap().clone()
}

#[test]
fn an_untampered_store_verifies_clean_with_its_witness() {
    let s = signed_store();
    let (code, out) = verify(&s, &s.data, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("digests: 2 of 2 valid"), "{out}");
    assert!(out.contains("witness file://"), "{out}");
    // Each digest is checkable without ktrail: openssl verifies the signature over its body.
    for entry in fs::read_dir(s.data.join("digests")).unwrap() {
        let digest: serde_json::Value =
            serde_json::from_slice(&fs::read(entry.unwrap().path()).unwrap()).unwrap();
        let msg = s.root.join("msg");
        let sig = s.root.join("sig");
        fs::write(&msg, digest["body"].as_str().unwrap()).unwrap();
        fs::write(
            &sig,
            hex::decode(digest["signature"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let o = std::process::Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(format!("{}.pub", s.key.display()))
            .arg("-in")
            .arg(&msg)
            .arg("-sigfile")
            .arg(&sig)
            .output()
            .expect("openssl");
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

#[test]
fn a_flipped_byte_in_a_segment_is_found() {
    let s = signed_store();
    let seg = largest_segment(&manifest(&s.data));
    let path = s.data.join(&seg.path);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&path, bytes).unwrap();
    let (code, out) = verify(&s, &s.data, false);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(&format!("segment {}", seg.id)), "{out}");
    assert!(out.contains("damaged"), "{out}");
}

#[test]
fn a_row_deleted_and_the_segment_rehashed_in_the_manifest_is_found() {
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let s = signed_store();
    let mut m = manifest(&s.data);
    let seg = largest_segment(&m);
    let path = s.data.join(&seg.path);
    let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batches[0].schema(), None).unwrap();
    let mut rows = 0;
    for (i, b) in batches.iter().enumerate() {
        // The first row of the first batch goes.
        let b = if i == 0 {
            b.slice(1, b.num_rows() - 1)
        } else {
            b.clone()
        };
        rows += b.num_rows() as u64;
        writer.write(&b).unwrap();
    }
    writer.close().unwrap();
    fs::write(&path, &out).unwrap();
    let entry = m.segments.iter_mut().find(|x| x.id == seg.id).unwrap();
    entry.sha256 = sha256(&out);
    entry.bytes = out.len() as u64;
    entry.rows = rows;
    entry.row_groups = vec![rows];
    write_manifest(&s.data, &m);

    let (code, out) = verify(&s, &s.data, false);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!("segment {} (dt=", seg.id)) && out.contains("modified"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "rows {} in the chain, {rows} in the manifest",
            seg.rows
        )),
        "{out}"
    );
}

#[test]
fn a_segment_removed_with_the_manifest_edited_to_match_is_found() {
    let s = signed_store();
    let mut m = manifest(&s.data);
    let seg = largest_segment(&m);
    m.segments.retain(|x| x.id != seg.id);
    write_manifest(&s.data, &m);
    fs::remove_file(s.data.join(&seg.path)).unwrap();
    fs::remove_file(s.data.join(&seg.index_path)).unwrap();
    let (code, out) = verify(&s, &s.data, false);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!(
            "segment {} ({}, {} events, added by chain entry",
            seg.id,
            chain::hour_of_path(&seg.path),
            seg.rows
        )) && out.contains("missing from the manifest: deleted"),
        "{out}"
    );
}

#[test]
fn a_segment_inserted_into_the_manifest_is_found() {
    let s = signed_store();
    let mut m = manifest(&s.data);
    let mut forged = largest_segment(&m);
    forged.id = m.next_segment_id;
    m.next_segment_id += 1;
    for (from, to) in [
        (&mut forged.path, "parquet"),
        (&mut forged.index_path, "idx"),
    ] {
        let new = format!(
            "{}/{:016x}.{to}",
            Path::new(from.as_str()).parent().unwrap().display(),
            forged.id
        );
        fs::copy(s.data.join(&*from), s.data.join(&new)).unwrap();
        *from = new;
    }
    let id = forged.id;
    m.segments.push(forged);
    write_manifest(&s.data, &m);
    let (code, out) = verify(&s, &s.data, false);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!("segment {id} (dt="))
            && out.contains("no chain entry added it: inserted"),
        "{out}"
    );
}

#[test]
fn a_chain_entry_removed_is_found() {
    let s = signed_store();
    let text = fs::read_to_string(s.data.join(chain::CHAIN_FILE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    let kept: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    fs::write(s.data.join(chain::CHAIN_FILE), &kept).unwrap();
    // The head moves to the file's new end, as an intruder would move it.
    let mut m = manifest(&s.data);
    let head = m.chain.as_mut().unwrap();
    head.len = kept.len() as u64;
    write_manifest(&s.data, &m);
    let (code, out) = verify(&s, &s.data, false);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("chain entries 2..2 are missing"), "{out}");
}

#[test]
fn a_chain_rewritten_to_match_the_edited_manifest_is_caught_by_the_signed_digests() {
    let s = signed_store();
    let mut m = manifest(&s.data);
    let seg = largest_segment(&m);
    m.segments.retain(|x| x.id != seg.id);
    fs::remove_file(s.data.join(&seg.path)).unwrap();
    fs::remove_file(s.data.join(&seg.index_path)).unwrap();
    // The chain told again without the segment: every link checks.
    let mut entries = chain_entries(&s.data);
    for e in &mut entries {
        e.added.retain(|a| a.id != seg.id);
        e.removed.retain(|id| *id != seg.id);
    }
    rewrite_chain(&s.data, &entries, &mut m);
    write_manifest(&s.data, &m);
    let (code, out) = verify(&s, &s.data, false);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("the chain was rewritten"), "{out}");
    assert!(!out.contains("missing from the manifest"), "{out}");
}

#[test]
fn the_newest_history_truncated_is_caught_only_by_the_witness() {
    let s = signed_store();
    // The intruder puts back the backup from before the second ingest: an older history whose
    // chain, digests and manifest all agree.
    let truncated = s.root.join("truncated");
    copy_dir(&s.backup, &truncated);
    let (code, out) = verify(&s, &truncated, false);
    assert_eq!(code, 0, "CloudTrail's gap: nothing local tells: {out}");
    let (code, out) = verify(&s, &truncated, true);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("its newest entries were removed"), "{out}");
    assert!(out.contains("newer than any digest here"), "{out}");
}

#[test]
fn a_digest_removed_or_edited_or_signed_by_another_key_is_found() {
    let s = signed_store();
    let mut digests: Vec<PathBuf> = fs::read_dir(s.data.join("digests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    digests.sort();
    assert_eq!(digests.len(), 2);

    let removed = s.root.join("removed");
    copy_dir(&s.data, &removed);
    fs::remove_file(
        removed
            .join("digests")
            .join(digests[0].file_name().unwrap()),
    )
    .unwrap();
    let (code, out) = verify(&s, &removed, false);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("the digest before it") && out.contains("is missing"),
        "{out}"
    );

    let edited = s.root.join("edited");
    copy_dir(&s.data, &edited);
    let path = edited.join("digests").join(digests[1].file_name().unwrap());
    let text = fs::read_to_string(&path).unwrap();
    let rows = manifest(&s.data).rows();
    fs::write(
        &path,
        text.replace(&format!("\\\"rows\\\":{rows}"), "\\\"rows\\\":1"),
    )
    .unwrap();
    assert_ne!(fs::read_to_string(&path).unwrap(), text);
    let (code, out) = verify(&s, &edited, false);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("the signature does not match its body"),
        "{out}"
    );

    let other = s.root.join("other.pem");
    let o = ktrail(&s.root, &["keygen", "-o", other.to_str().unwrap()]);
    assert!(o.status.success());
    let o = ktrail(
        &s.data,
        &[
            "--signing-key",
            &format!("{}.pub", other.display()),
            "verify",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("no valid signed digest covers the chain"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn serve_signs_on_its_schedule_and_on_shutdown_with_copies_at_the_witness() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("signing.pem");
    assert!(
        ktrail(tmp.path(), &["keygen", "-o", key.to_str().unwrap()])
            .status
            .success()
    );
    let data = tmp.path().join("data");
    let witness = tmp.path().join("witness");
    let args: Vec<std::ffi::OsString> = vec![
        "--signing-key".into(),
        key.clone().into(),
        "--witness".into(),
        witness.clone().into(),
        "serve".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--digest-interval".into(),
        "1s".into(),
    ];
    let server = common::Server::start(&data, &args, "http");
    let digests =
        |dir: &Path| -> usize { fs::read_dir(dir.join("digests")).map_or(0, |d| d.count()) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while digests(&data) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no digest within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let audit =
        fs::read_to_string(Path::new(common::SAMPLES).join("k8s-audit/exec_pod.json")).unwrap();
    let head = format!(
        "POST /v1/ingest/k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        audit.len()
    );
    let (status, text) = common::raw_exchange(server.addr, &head, audit.as_bytes());
    assert_eq!(status, 200, "{text}");
    server.stop();
    // The shutdown's flush is a chain entry, signed on close; the witness has every digest.
    let m = manifest(&data);
    assert_eq!(m.rows(), 1);
    assert!(digests(&data) >= 2);
    assert_eq!(digests(&witness), digests(&data));
    let o = ktrail(
        &data,
        &[
            "--signing-key",
            &format!("{}.pub", key.display()),
            "--witness",
            witness.to_str().unwrap(),
            "verify",
        ],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    let head_seq = m.chain.unwrap().seq;
    assert!(
        stdout(&o).contains(&format!("the newest signs entry {head_seq}")),
        "{}",
        stdout(&o)
    );
}
