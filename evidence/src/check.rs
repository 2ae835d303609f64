//! Checking a bundle offline.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ed25519_dalek::VerifyingKey;
use storage::chain::{self, ChainEntry};
use storage::digest::{self, SignedDigest};
use storage::merkle::{self, Hash};

use crate::{BundleInfo, EvidenceError, Proofs, Result, member};

/// What checking a bundle found.
#[derive(Debug, Default)]
pub struct BundleReport {
    pub info: Option<BundleInfo>,
    /// Rows whose proofs check out.
    pub rows_proven: u64,
    /// The signed digest's chain entry and time, once its signature checked out.
    pub signed_entry: Option<u64>,
    pub signed_at: Option<String>,
    /// The key the digest was checked with, hex; and whether it was the one the verifier gave.
    pub key: String,
    pub key_given: bool,
    /// One line per failed check; empty for a valid bundle.
    pub findings: Vec<String>,
}

/// Checks the bundle at `path` with nothing but its members and, when given, the signer's
/// public key (else the bundle's own key is used and reported, to be compared by the reader).
pub fn verify_bundle(path: &Path, key: Option<&VerifyingKey>) -> Result<BundleReport> {
    let members = read_tar(path)?;
    let get = |name: &str| {
        members.get(name).ok_or_else(|| EvidenceError::Unreadable {
            path: path.to_path_buf(),
            reason: format!("no {name}"),
        })
    };
    let unreadable = |reason: String| EvidenceError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let info: BundleInfo = serde_json::from_slice(get(member::INFO)?)
        .map_err(|e| unreadable(format!("{}: {e}", member::INFO)))?;
    let proofs: Proofs = serde_json::from_slice(get(member::PROOFS)?)
        .map_err(|e| unreadable(format!("{}: {e}", member::PROOFS)))?;
    let signed: SignedDigest = serde_json::from_slice(get(member::DIGEST)?)
        .map_err(|e| unreadable(format!("{}: {e}", member::DIGEST)))?;
    let bundled_key = digest::public_key_from_pem(
        std::str::from_utf8(get(member::PUBLIC_KEY)?).unwrap_or_default(),
    )
    .map_err(|e| unreadable(format!("{}: {e}", member::PUBLIC_KEY)))?;

    let mut report = BundleReport {
        key_given: key.is_some(),
        ..Default::default()
    };
    let key = match key {
        Some(k) => {
            if *k != bundled_key {
                report.findings.push(format!(
                    "the bundle's public key {} is not the signer's key given ({})",
                    hex::encode(bundled_key.as_bytes()),
                    hex::encode(k.as_bytes())
                ));
            }
            *k
        }
        None => bundled_key,
    };
    report.key = hex::encode(key.as_bytes());

    // The digest, then the chain up to the entry it signs.
    let body = match signed.check(&key) {
        Ok(b) => b,
        Err(reason) => {
            report
                .findings
                .push(format!("{}: {reason}", member::DIGEST));
            report.info = Some(info);
            return Ok(report);
        }
    };
    report.signed_entry = Some(body.chain_seq);
    report.signed_at = Some(body.at.clone());
    let chain_text = String::from_utf8_lossy(get(member::CHAIN)?).into_owned();
    let mut entries: BTreeMap<u64, ChainEntry> = BTreeMap::new();
    let mut prev: Option<String> = None;
    let mut last: Option<(u64, String)> = None;
    for (n, line) in chain_text.lines().enumerate() {
        let entry: ChainEntry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                report
                    .findings
                    .push(format!("{} line {}: unreadable: {e}", member::CHAIN, n + 1));
                continue;
            }
        };
        if let Some(p) = &prev
            && *p != entry.prev
        {
            report.findings.push(format!(
                "{}: entry {} does not follow the entry before it: the chain was edited",
                member::CHAIN,
                entry.seq
            ));
        }
        let hash = chain::entry_hash(line.as_bytes());
        prev = Some(hash.clone());
        last = Some((entry.seq, hash));
        entries.insert(entry.seq, entry);
    }
    match &last {
        Some((seq, hash)) if *seq == body.chain_seq && *hash == body.chain_hash => {}
        _ => report.findings.push(format!(
            "{}: does not end in chain entry {} as the digest signed it: the chain was edited",
            member::CHAIN,
            body.chain_seq
        )),
    }

    // Each segment: added by an entry of the chain with its row count and Merkle root, and
    // not removed before the digest.
    let mut roots: BTreeMap<u64, (Hash, u64)> = BTreeMap::new();
    for s in &proofs.segments {
        let added = entries
            .get(&s.chain_entry)
            .and_then(|e| e.added.iter().find(|a| a.id == s.id));
        match added {
            Some(a)
                if a.rows == s.rows && a.merkle_root.as_deref() == Some(s.merkle_root.as_str()) => {
            }
            Some(_) => {
                report.findings.push(format!(
                    "segment {}: its rows or Merkle root differ from chain entry {}",
                    s.id, s.chain_entry
                ));
                continue;
            }
            None => {
                report.findings.push(format!(
                    "segment {}: chain entry {} in the bundle does not add it",
                    s.id, s.chain_entry
                ));
                continue;
            }
        }
        if let Some(e) = entries.values().find(|e| {
            e.seq > s.chain_entry
                && (e.removed.contains(&s.id) || e.expired.iter().any(|x| x.id == s.id))
        }) {
            report.findings.push(format!(
                "segment {}: removed by chain entry {}, before the digest",
                s.id, e.seq
            ));
        }
        let root: Option<Hash> = hex::decode(&s.merkle_root)
            .ok()
            .and_then(|b| b.try_into().ok());
        match root {
            Some(r) => {
                roots.insert(s.id, (r, s.rows));
            }
            None => report
                .findings
                .push(format!("segment {}: unreadable Merkle root", s.id)),
        }
    }

    // Each row: its line, proven into its segment's root.
    let rows_text = get(member::ROWS)?;
    let lines: Vec<&[u8]> = rows_text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() != proofs.rows.len() {
        report.findings.push(format!(
            "{} has {} rows, {} has proofs for {}",
            member::ROWS,
            lines.len(),
            member::PROOFS,
            proofs.rows.len()
        ));
    }
    for (n, (line, proof)) in lines.iter().zip(&proofs.rows).enumerate() {
        let Some((root, size)) = roots.get(&proof.segment) else {
            report.findings.push(format!(
                "{} line {}: its segment {} is not proven",
                member::ROWS,
                n + 1,
                proof.segment
            ));
            continue;
        };
        let path: Option<Vec<Hash>> = proof
            .path
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
            .collect();
        let ok = path.is_some_and(|p| {
            merkle::verify_inclusion(&merkle::leaf_hash(line), proof.index, *size, &p, root)
        });
        if ok {
            report.rows_proven += 1;
        } else {
            report.findings.push(format!(
                "{} line {} (event {}): not row {} of segment {} as the chain recorded it: the row was edited",
                member::ROWS,
                n + 1,
                proof.event_id,
                proof.index,
                proof.segment
            ));
        }
    }

    // The Parquet copy: the same rows, line for line.
    match parquet_lines(get(member::PARQUET)?) {
        Ok(parquet)
            if parquet.len() == lines.len()
                && parquet.iter().zip(&lines).all(|(a, b)| a.as_slice() == *b) => {}
        Ok(_) => report.findings.push(format!(
            "{} does not hold the rows of {}",
            member::PARQUET,
            member::ROWS
        )),
        Err(e) => report
            .findings
            .push(format!("{}: unreadable: {e}", member::PARQUET)),
    }
    if info.rows != lines.len() as u64 {
        report.findings.push(format!(
            "{} says {} rows, the bundle holds {}",
            member::INFO,
            info.rows,
            lines.len()
        ));
    }
    report.info = Some(info);
    Ok(report)
}

fn parquet_lines(bytes: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            model::events_schema(),
            batch.columns().to_vec(),
        )
        .map_err(|e| e.to_string())?;
        out.extend(merkle::row_lines(&batch).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn read_tar(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let io = |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(file);
    let mut members = BTreeMap::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io)?;
        if members.insert(name.clone(), bytes).is_some() {
            return Err(EvidenceError::Unreadable {
                path: path.to_path_buf(),
                reason: format!("{name} is in it twice"),
            });
        }
    }
    Ok(members)
}
