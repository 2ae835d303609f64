//! The one path from producers' bytes to durable events.
//!
//! Every way in — files and directories (`ktrail ingest`, the demo), an HTTP request body
//! (`serve --http`), a gRPC batch stream (`serve --grpc`) — goes through here: `ingest` parses,
//! [`storage::AppendPipeline`] appends (the next batch is parsed while the last is synced), and
//! the caller hears back only once the events are durable. Rejected records go to the
//! [`DeadLetter`] file; a file read to its end records its fingerprint, so the same file is not
//! read twice.
//!
//! The contract of every function here: **when it returns `Ok`, every accepted event is
//! durable**; on `Err(LoadError::Store)` nothing read after the failed batch is acknowledged, and
//! the producer sends it again (what was stored before counts as duplicates then).

mod body;
mod dead_letter;
mod files;
mod stream;

use std::path::PathBuf;

pub use body::{BodyLoaded, load_body};
pub use dead_letter::DeadLetter;
pub use files::{FilesLoaded, Progress, load_inputs};
pub use stream::{Message, StreamError, StreamLoaded, load_stream};

/// Why a load stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store refused a batch (full disk, a failed write, memory pressure): nothing after it
    /// is acknowledged. [`storage::StorageError::is_no_space`] and `is_transient` say whether
    /// a retry can succeed.
    #[error(transparent)]
    Store(#[from] storage::StorageError),
    /// An input could not be opened or read to its end (what was read before is stored).
    #[error(transparent)]
    Input(#[from] ingest::IngestError),
    /// The dead-letter file could not be written or synced: rejected records may be lost.
    #[error("dead-letter file {path}: {source}")]
    DeadLetter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Events of one format (or one stream) a load counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Stored now.
    pub accepted: u64,
    /// Records or events rejected (each is in the dead-letter file or the reply).
    pub rejected: u64,
    /// Already stored (same event id): a resent batch.
    pub duplicates: u64,
}

#[cfg(test)]
mod tests;
