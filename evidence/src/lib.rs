//! Evidence bundles: the rows a responder selected, with what proves they were in the store,
//! unchanged, when a signed digest was made; checked offline, with no store.
//!
//! A bundle (a tar file) holds, beside the rows (`rows.ndjson`, `rows.parquet`) and the SQL
//! that selected them (`query.sql`):
//! - `proofs.json`: per row, its segment and the RFC 9162 inclusion proof of its NDJSON line
//!   up to the segment's Merkle root; per segment, the chain entry that added it;
//! - `chain.ndjson`: the hash chain's entries from the first of those entries up to the entry
//!   the digest signs, exactly as the store holds them;
//! - `digest.json` (the signed digest) and `public_key.pem`.
//!
//! Invariants:
//! - A bundle is written only from a store whose history verifies (`storage::check_history`),
//!   and only with rows in segments whose Merkle root was recomputed from their files.
//! - [`verify_bundle`] trusts nothing in the bundle but the key it is given (or, without one,
//!   reports the bundle's key for the reader to compare).

mod check;
mod export;

pub use check::{BundleReport, verify_bundle};
pub use export::{ExportReport, Selection, export};

use serde::{Deserialize, Serialize};

/// `format` of `bundle.json`.
pub const BUNDLE_FORMAT: &str = "ktrail-evidence-1";

/// Everything that can go wrong making or reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// An operating-system I/O failure on a named file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The selection cannot make a bundle (no `event_id` column, no rows, …).
    #[error("selection: {0}")]
    Selection(String),
    /// The store cannot prove the selected rows (its history does not verify, no signed digest
    /// covers them, a segment predates row proofs).
    #[error("cannot prove the selected rows: {0}")]
    Unprovable(String),
    /// The file is not a readable bundle (a member missing or malformed).
    #[error("{path}: not a readable evidence bundle: {reason}")]
    Unreadable {
        path: std::path::PathBuf,
        reason: String,
    },
}

pub type Result<T, E = EvidenceError> = std::result::Result<T, E>;

/// `bundle.json`: what the bundle is, for a reader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BundleInfo {
    pub format: String,
    /// When it was written (RFC 3339, UTC).
    pub created_at: String,
    /// What was selected (`--session …`, `--pod …`, `--sql …`, with the time bounds).
    pub selection: String,
    pub rows: u64,
    pub segments: u64,
    /// The chain entries carried, and the one the digest signs.
    pub chain_from: u64,
    pub chain_to: u64,
    /// The signer's public key, hex.
    pub public_key: String,
}

/// `proofs.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Proofs {
    pub segments: Vec<SegmentProof>,
    /// One per line of `rows.ndjson`, in its order.
    pub rows: Vec<RowProof>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentProof {
    pub id: u64,
    /// The chain entry that added the segment (its rows, SHA-256 and Merkle root are there).
    pub chain_entry: u64,
    pub rows: u64,
    pub merkle_root: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowProof {
    pub event_id: i64,
    pub segment: u64,
    /// The row's position in its segment (its leaf).
    pub index: u64,
    /// Sibling hashes from the leaf up, hex (RFC 9162 inclusion proof).
    pub path: Vec<String>,
}

/// Member names.
pub(crate) mod member {
    pub const INFO: &str = "bundle.json";
    pub const README: &str = "README.txt";
    pub const QUERY: &str = "query.sql";
    pub const ROWS: &str = "rows.ndjson";
    pub const PARQUET: &str = "rows.parquet";
    pub const PROOFS: &str = "proofs.json";
    pub const CHAIN: &str = "chain.ndjson";
    pub const DIGEST: &str = "digest.json";
    pub const PUBLIC_KEY: &str = "public_key.pem";
}
