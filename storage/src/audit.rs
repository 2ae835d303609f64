//! Checking the store's history: the hash chain against the manifest, the signed digests
//! against the chain, and the chain's head against a witness's copy of the digests.
//! (The segments' files are checked against the manifest by [`crate::Segment::verify`].)

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;

use crate::archive::Archive;
use crate::digest::{self, DIGESTS_DIR};
use crate::error::Result;
use crate::{Manifest, chain};

/// What [`check_history`] found.
#[derive(Debug, Default)]
pub struct HistoryReport {
    /// Chain entries read up to the manifest's head.
    pub chain_entries: u64,
    /// Digests in the store directory: found, and with a valid signature.
    pub digests_found: u64,
    pub digests_valid: u64,
    /// The chain entry the newest valid digest signs.
    pub signed_entry: Option<u64>,
    /// Digests the witness holds, and the newest entry one of them signs.
    pub witness_digests: Option<u64>,
    pub witness_entry: Option<u64>,
    /// One line per finding (each a sign of tampering or loss).
    pub findings: Vec<String>,
    /// What could not be checked, and why (not findings).
    pub notes: Vec<String>,
}

/// Checks the chain of `dir` against `manifest`; with `key`, every digest's signature and
/// what it signs; with a `witness` (the location digests are copied to), that the chain still
/// holds the newest entry the witness has a digest of.
pub fn check_history(
    dir: &Path,
    manifest: &Manifest,
    key: Option<&VerifyingKey>,
    witness: Option<&Arc<Archive>>,
) -> Result<HistoryReport> {
    let chain = chain::check(dir, manifest)?;
    let mut report = HistoryReport {
        chain_entries: chain.entries,
        findings: chain.findings,
        ..Default::default()
    };
    let local = digest::local_digests(dir)?;
    report.digests_found = local.len() as u64;
    let Some(key) = key else {
        if !local.is_empty() {
            report.notes.push(format!(
                "{} signed digest(s) not checked: give the public key (--signing-key FILE or FILE.pub)",
                local.len()
            ));
        }
        return Ok(report);
    };
    let checked = digest::check(&local, key, &chain.hashes, "digest", true);
    report.digests_valid = checked.valid;
    report.findings.extend(checked.findings);
    report.signed_entry = checked.newest.as_ref().map(|b| b.chain_seq);
    match (&checked.newest, manifest.chain.as_ref()) {
        (None, Some(head)) => report.findings.push(format!(
            "no valid signed digest covers the chain (entries 1..{}): digests were never written with this key, or were removed",
            head.seq
        )),
        (Some(newest), Some(head)) if newest.chain_seq < head.seq => report.notes.push(format!(
            "chain entries {}..{} are newer than the newest digest ({}); the next digest signs them",
            newest.chain_seq + 1,
            head.seq,
            newest.at
        )),
        _ => {}
    }
    if let Some(witness) = witness {
        let copies: Vec<(String, Vec<u8>)> = witness
            .get_all(DIGESTS_DIR)?
            .into_iter()
            .filter(|(name, _)| name.ends_with(".json"))
            .map(|(name, bytes)| (name, bytes.to_vec()))
            .collect();
        let at_witness = digest::check(&copies, key, &chain.hashes, "witness digest", false);
        report.witness_digests = Some(at_witness.valid);
        report.witness_entry = at_witness.newest.as_ref().map(|b| b.chain_seq);
        report.findings.extend(at_witness.findings);
        match (&at_witness.newest, &checked.newest) {
            (None, _) => report.findings.push(format!(
                "the witness {} holds no valid digest",
                witness.url()
            )),
            (Some(w), local) if local.as_ref().is_none_or(|l| l.chain_seq < w.chain_seq) => {
                report.findings.push(format!(
                    "the witness holds a digest of chain entry {} (signed {}), newer than any digest here: digests here were removed",
                    w.chain_seq, w.at
                ))
            }
            _ => {}
        }
    }
    Ok(report)
}
