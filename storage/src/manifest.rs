//! The manifest: the single truth of which segments exist. A segment file that is not listed is
//! garbage from a crash and is deleted on open; a listed file that is missing or of the wrong
//! size is corruption.
//!
//! File `MANIFEST`: a first line `KTMANIFEST <format> <crc32c hex of the rest>`, then JSON.
//! Replaced atomically (temp, fsync, rename, fsync dir) on every change, so a crash at any
//! point leaves the old or the new manifest.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chain::{self, ChainHead};
use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;

/// Format version of the manifest file.
pub const MANIFEST_FORMAT: u32 = 1;
/// The manifest's file name in the store directory.
pub const MANIFEST_FILE: &str = "MANIFEST";

/// Everything the store knows about its durable state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Version of the `events` schema the segments were written with.
    pub schema_version: u32,
    /// Id the next segment gets.
    pub next_segment_id: u64,
    /// Every WAL record with a sequence number ≤ this is in a listed segment.
    pub flushed_seq: u64,
    /// Live segments, in the order they were published.
    pub segments: Vec<SegmentMeta>,
    /// Fingerprints of inputs ingested completely (see `Store::record_fingerprint`).
    pub fingerprints: BTreeSet<String>,
    /// Segments deleted by a retention policy, in the order they were: what a gap in the
    /// history is, so none is silent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<Expired>,
    /// The last entry of the hash chain over the segments' history ([`crate::chain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainHead>,
}

/// A segment a retention policy deleted: its summary stays in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Expired {
    pub id: u64,
    /// Where its files were (relative to the store directory or the archive's prefix).
    pub path: String,
    pub index_path: String,
    pub rows: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub sha256: String,
    pub index_sha256: String,
    /// Where its files were: the archive's URL, or `None` for the store directory.
    pub archive: Option<String>,
    /// The policy that deleted it (`retain_archive=365d`), and when (RFC 3339, UTC).
    pub policy: String,
    pub at: String,
    /// False until nothing of it is left to delete by an expiry run: an archived segment's
    /// objects were deleted (a run that failed between leaves it to the next); a local
    /// segment's files go with its last reader, or at the next open.
    pub files_deleted: bool,
}

/// One immutable Parquet segment and its sidecar index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentMeta {
    pub id: u64,
    /// Parquet file, relative to the store directory
    /// (`segments/dt=YYYY-MM-DD/hour=HH/<id>.parquet`).
    pub path: String,
    /// Sidecar index file, relative to the store directory.
    pub index_path: String,
    pub rows: u64,
    pub bytes: u64,
    pub index_bytes: u64,
    /// SHA-256 of the Parquet file and of the index file, hex.
    pub sha256: String,
    pub index_sha256: String,
    /// Smallest and largest `ts` (ns since the epoch, UTC).
    pub min_ts: i64,
    pub max_ts: i64,
    /// Rows per Parquet row group, in file order (lets the query plan row selections without
    /// reading the footer).
    pub row_groups: Vec<u64>,
    /// Distinct namespaces in the segment.
    pub namespaces: Vec<String>,
    /// Distinct pod names; `None` when there were too many to list (no skipping by pod then).
    pub pods: Option<Vec<String>>,
    /// Columns without a value in any row, sorted: no `col = v` test can match in the
    /// segment, so such a lookup skips it unopened. Empty in manifests written before it was
    /// recorded (nothing is known then).
    #[serde(default)]
    pub null_columns: Vec<String>,
    /// 0 for a flushed memtable, n+1 for a compaction of level-n segments.
    pub level: u32,
    /// Root of the Merkle tree over the segment's rows in file order, hex (see [`crate::merkle`]);
    /// `None` for segments written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
    /// Set once the segment's files were found not to be what the manifest says: the segment
    /// stays listed (its rows, time range and pods say what is missing), is never read,
    /// compacted or deleted, and its files are kept in `quarantine/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<Damage>,
    /// Set once the segment's files live in an archive and no longer in the store directory
    /// (`path` and `index_path` are then their keys below the archive's prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<Archived>,
}

/// Where and when a segment was archived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Archived {
    /// The archive's URL (`file:///…`, `s3://bucket/prefix`).
    pub url: String,
    /// When its copy there was read back and found equal (RFC 3339, UTC).
    pub at: String,
}

/// What was found wrong with a listed segment, and where its files were put.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Damage {
    /// The check's finding (the corruption's text).
    pub reason: String,
    /// When it was found (RFC 3339, UTC).
    pub found_at: String,
    /// Where the Parquet file and the index file were moved, relative to the store directory
    /// (the same path under `quarantine/`, numbered when that name was taken). A file that
    /// was missing when the damage was found is not listed.
    pub quarantined: Vec<String>,
}

impl Manifest {
    /// Reads the manifest of `dir`; `None` for a new store.
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&path),
        };
        Manifest::from_bytes(&path, &bytes).map(Some)
    }

    /// Parses a manifest file's bytes; damage is [`StorageError::Corruption`] naming `path`, a
    /// newer format [`StorageError::UnsupportedVersion`].
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Manifest> {
        let corrupt = |offset: usize, reason: String| StorageError::Corruption {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt(0, "no manifest header line".into()))?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|e| corrupt(0, e.to_string()))?;
        let parts: Vec<&str> = header.split(' ').collect();
        let [magic, format, crc] = parts[..] else {
            return Err(corrupt(0, format!("bad manifest header {header:?}")));
        };
        if magic != "KTMANIFEST" {
            return Err(corrupt(0, format!("bad manifest header {header:?}")));
        }
        let format: u32 = format
            .parse()
            .map_err(|_| corrupt(0, format!("bad format version {format:?}")))?;
        if format > MANIFEST_FORMAT {
            return Err(StorageError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: format,
                supported: MANIFEST_FORMAT,
            });
        }
        let body = &bytes[nl + 1..];
        if format!("{:08x}", crc32c::crc32c(body)) != crc {
            return Err(corrupt(nl + 1, "manifest checksum mismatch".into()));
        }
        let m: Manifest = serde_json::from_slice(body).map_err(|e| {
            corrupt(
                nl + 1,
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })?;
        Ok(m)
    }

    /// Replaces the manifest of `dir` atomically and durably, after appending the chain entry
    /// of the change from the manifest it replaces (which sets [`Manifest::chain`]).
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        chain::record(dir, self)?;
        fsutil::write_atomic(&dir.join(MANIFEST_FILE), &self.to_bytes())
    }

    /// The manifest file's bytes (header line, then JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).expect("manifest serialises");
        let mut out = format!(
            "KTMANIFEST {MANIFEST_FORMAT} {:08x}\n",
            crc32c::crc32c(&body)
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Rows in all listed segments.
    pub fn rows(&self) -> u64 {
        self.segments.iter().map(|s| s.rows).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Manifest::load(dir.path()).unwrap().is_none());
        let mut m = Manifest {
            schema_version: 1,
            next_segment_id: 3,
            flushed_seq: 42,
            ..Default::default()
        };
        m.fingerprints.insert("abc".into());
        m.save(dir.path()).unwrap();
        assert_eq!(m.chain.as_ref().map(|h| h.seq), Some(1));
        assert_eq!(Manifest::load(dir.path()).unwrap().unwrap(), m);

        let path = dir.path().join(MANIFEST_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corruption { .. }), "{err}");
        assert!(err.to_string().contains("MANIFEST"));
    }
}
