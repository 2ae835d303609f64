//! Signed digests of the hash chain's head: what makes rewriting the chain and the manifest
//! together detectable, as CloudTrail's digest files do for its logs.
//!
//! A digest file (`digests/<entry>-<time>.json`, beside the data and in each copy location) is
//! `{"body": "<JSON text>", "signature": "<hex>"}`: the Ed25519 signature is over the body's
//! bytes exactly, so anyone can check it without ktrail (`openssl pkeyutl -verify -rawin`).
//! The body names the chain entry it covers, that entry's hash, and the previous digest's
//! signature, so a digest removed from the middle is noticed. Removing the newest digests and
//! chain entries together is noticed only against a copy the writer cannot delete (the
//! witness).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::archive::Archive;
use crate::chain::short;
use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;
use crate::manifest::Manifest;

/// The digests' directory in the store directory, and their prefix in copy locations.
pub const DIGESTS_DIR: &str = "digests";
/// `format` of a digest body.
pub const DIGEST_FORMAT: &str = "ktrail-digest-1";

/// Writes a new Ed25519 signing key to `path` (PKCS#8 PEM, readable by its owner only) and
/// its public key to `path.pub` (SubjectPublicKeyInfo PEM). Refuses to replace either.
pub fn keygen(path: &Path) -> Result<VerifyingKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| StorageError::Key {
        path: path.to_path_buf(),
        reason: format!("no randomness for a key: {e}"),
    })?;
    let key = SigningKey::from_bytes(&seed);
    // PKCS#8 v1, without the public key: what OpenSSL 3.0 reads (it refuses v2).
    let private = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .expect("an Ed25519 key encodes");
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 public key encodes");
    let pub_path = public_key_path(path);
    for p in [path, pub_path.as_path()] {
        if p.exists() {
            return Err(StorageError::Key {
                path: p.to_path_buf(),
                reason: "exists already; a key is never replaced".into(),
            });
        }
    }
    write_new(path, private.as_bytes(), 0o600)?;
    write_new(&pub_path, public.as_bytes(), 0o644)?;
    Ok(key.verifying_key())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .at(path)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).at(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// `FILE.pub` of key file `FILE`.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// The signing key in `path` (as [`keygen`] writes it).
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).at(path)?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| StorageError::Key {
        path: path.to_path_buf(),
        reason: format!("not an Ed25519 private key in PKCS#8 PEM: {e}"),
    })
}

/// The public key to check digests with, from a private key file or a public key file.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path).at(path)?;
    if let Ok(key) = SigningKey::from_pkcs8_pem(&text) {
        return Ok(key.verifying_key());
    }
    VerifyingKey::from_public_key_pem(&text).map_err(|e| StorageError::Key {
        path: path.to_path_buf(),
        reason: format!("not an Ed25519 key in PEM (PKCS#8 or SubjectPublicKeyInfo): {e}"),
    })
}

/// A public key from its PEM text (SubjectPublicKeyInfo), as [`public_key_pem`] writes it.
pub fn public_key_from_pem(text: &str) -> std::result::Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(text).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// The public key as PEM (what bundles carry).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 public key encodes")
}

/// What a digest signs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DigestBody {
    pub format: String,
    /// The chain entry covered, and its hash.
    pub chain_seq: u64,
    pub chain_hash: String,
    /// When it was signed (RFC 3339, UTC).
    pub at: String,
    /// Listed segments and their rows at that entry.
    pub segments: u64,
    pub rows: u64,
    /// The signature of the digest before this one (`None` for the first).
    pub previous_signature: Option<String>,
    /// The signer's public key, hex (which key to check it with is the verifier's choice).
    pub public_key: String,
}

/// A digest file's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SignedDigest {
    /// The body's JSON text, exactly as signed.
    pub body: String,
    /// Ed25519 signature over `body`'s bytes, hex.
    pub signature: String,
}

impl SignedDigest {
    pub fn sign(body: &DigestBody, key: &SigningKey) -> Self {
        let text = serde_json::to_string(body).expect("a digest serialises");
        let signature = hex::encode(key.sign(text.as_bytes()).to_bytes());
        Self {
            body: text,
            signature,
        }
    }

    /// The file's name: the entry it covers, then when it was signed.
    pub fn file_name(body: &DigestBody) -> String {
        let at: String = body
            .at
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("{:012}-{at}.json", body.chain_seq)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a digest serialises");
        out.push(b'\n');
        out
    }

    /// The body, once the signature checks out with `key` (and the body names that key).
    pub fn check(&self, key: &VerifyingKey) -> std::result::Result<DigestBody, String> {
        let body: DigestBody =
            serde_json::from_str(&self.body).map_err(|e| format!("unreadable body: {e}"))?;
        let bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of hex")?;
        key.verify(self.body.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| {
                "the signature does not match its body: signed by another key, or edited"
                    .to_string()
            })?;
        if body.public_key != hex::encode(key.as_bytes()) {
            return Err("names another public key than the one it checks with".into());
        }
        if body.format != DIGEST_FORMAT {
            return Err(format!("format {:?} is not {DIGEST_FORMAT}", body.format));
        }
        Ok(body)
    }

    /// The body, unchecked (to report what a digest claims when its signature fails).
    pub fn body(&self) -> Option<DigestBody> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Where digests go besides the store directory, and how often they are signed.
#[derive(Debug, Clone)]
pub struct DigestOptions {
    pub key: Arc<SigningKey>,
    /// How often a running store signs the chain's head (when it changed); a closing store
    /// always does.
    pub interval: std::time::Duration,
    /// Further copies: the archive, a witness only an auditor can write.
    pub copies: Vec<Arc<Archive>>,
}

/// The digests in the store directory, by file name (which orders them by chain entry).
pub fn local_digests(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let digests = dir.join(DIGESTS_DIR);
    let entries = match std::fs::read_dir(&digests) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&digests),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.at(&digests)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).at(entry.path())?;
        out.push((name, bytes));
    }
    out.sort();
    Ok(out)
}

/// Signs the head of `manifest`'s chain, unless the newest digest in `dir` covers it already;
/// writes the digest to `dir/digests/` and to every copy. Returns its file name.
pub(crate) fn write(
    dir: &Path,
    manifest: &Manifest,
    options: &DigestOptions,
) -> Result<Option<String>> {
    let Some(head) = &manifest.chain else {
        return Ok(None);
    };
    let newest = local_digests(dir)?
        .pop()
        .and_then(|(_, bytes)| serde_json::from_slice::<SignedDigest>(&bytes).ok());
    let previous = newest
        .as_ref()
        .and_then(|d| d.body().map(|b| (b, d.signature.clone())));
    if let Some((b, _)) = &previous
        && b.chain_seq == head.seq
        && b.chain_hash == head.hash
    {
        return Ok(None);
    }
    let body = DigestBody {
        format: DIGEST_FORMAT.into(),
        chain_seq: head.seq,
        chain_hash: head.hash.clone(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        segments: manifest.segments.len() as u64,
        rows: manifest.rows(),
        previous_signature: previous.map(|(_, s)| s),
        public_key: hex::encode(options.key.verifying_key().as_bytes()),
    };
    let signed = SignedDigest::sign(&body, &options.key);
    let name = SignedDigest::file_name(&body);
    let bytes = signed.to_bytes();
    fsutil::create_dir_durable(&dir.join(DIGESTS_DIR))?;
    fsutil::write_atomic(&dir.join(DIGESTS_DIR).join(&name), &bytes)?;
    for copy in &options.copies {
        copy.put(&format!("{DIGESTS_DIR}/{name}"), bytes.clone())?;
    }
    Ok(Some(name))
}

/// What checking digests found.
#[derive(Debug, Default)]
pub struct DigestReport {
    /// Digests whose signature checked out.
    pub valid: u64,
    /// Digests found, checked or not.
    pub found: u64,
    pub findings: Vec<String>,
    /// The newest valid digest.
    pub newest: Option<DigestBody>,
}

/// Checks `digests` (name, bytes; in entry order) with `key` against the chain's entry
/// hashes: each signature, each digest's link to the one before, each covered entry. `place`
/// names where they are in findings (`digest` or `witness digest`); `complete` says the first
/// of them must be the first ever signed (a witness may start later).
pub fn check(
    digests: &[(String, Vec<u8>)],
    key: &VerifyingKey,
    chain_hashes: &BTreeMap<u64, String>,
    place: &str,
    complete: bool,
) -> DigestReport {
    let mut report = DigestReport {
        found: digests.len() as u64,
        ..Default::default()
    };
    let last_entry = chain_hashes.keys().next_back().copied().unwrap_or(0);
    let mut previous_signature: Option<String> = None;
    for (name, bytes) in digests {
        let signed: SignedDigest = match serde_json::from_slice(bytes) {
            Ok(s) => s,
            Err(e) => {
                report
                    .findings
                    .push(format!("{place} {name}: unreadable: {e}"));
                continue;
            }
        };
        let body = match signed.check(key) {
            Ok(b) => b,
            Err(reason) => {
                report.findings.push(format!("{place} {name}: {reason}"));
                previous_signature = Some(signed.signature.clone());
                continue;
            }
        };
        report.valid += 1;
        let first = report.valid == 1 && previous_signature.is_none();
        if body.previous_signature != previous_signature && (complete || !first) {
            report.findings.push(match &previous_signature {
                None if first => format!(
                    "{place} {name}: the digest before it (signature {}) is missing",
                    body.previous_signature.as_deref().map(short).unwrap_or_default()
                ),
                _ => format!(
                    "{place} {name}: does not follow the digest before it: a digest between was removed or replaced"
                ),
            });
        }
        match chain_hashes.get(&body.chain_seq) {
            Some(h) if *h == body.chain_hash => {}
            Some(_) => report.findings.push(format!(
                "{place} {name}: chain entry {} is not the entry signed at {}: the chain was rewritten",
                body.chain_seq, body.at
            )),
            None if body.chain_seq > last_entry => report.findings.push(format!(
                "{place} {name}: signed chain entry {} at {}, but the chain ends at entry {last_entry}: its newest entries were removed",
                body.chain_seq, body.at
            )),
            None => report.findings.push(format!(
                "{place} {name}: signed chain entry {}, which the chain lacks",
                body.chain_seq
            )),
        }
        previous_signature = Some(signed.signature.clone());
        report.newest = Some(body);
    }
    report
}

/// The first digest signing chain entry `entry` or a later one: what covers that entry
/// (`None`: nothing signed covers it yet).
pub fn covering(digests: &[(String, Vec<u8>)], entry: u64) -> Option<(String, SignedDigest)> {
    digests.iter().find_map(|(name, bytes)| {
        let signed: SignedDigest = serde_json::from_slice(bytes).ok()?;
        let body = signed.body()?;
        (body.chain_seq >= entry).then(|| (name.clone(), signed))
    })
}
