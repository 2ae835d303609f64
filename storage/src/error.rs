use std::path::PathBuf;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file's bytes are not what ktrail wrote: bad checksum, impossible length, unparsable
    /// content. Never skipped: the store refuses to open or the read fails.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An operating-system I/O failure on a named file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the store's directory lock.
    #[error("store {path} is in use by another ktrail process")]
    Locked { path: PathBuf },
    /// A previous durable write failed (e.g. fdatasync returned an error). After that the state
    /// on disk is unknown, so the store refuses further writes until it is reopened.
    #[error("store is read-only after an earlier write failure: {0}")]
    Poisoned(String),
    /// The batch does not have the `events` schema.
    #[error("batch schema does not match the events schema: {0}")]
    SchemaMismatch(String),
    /// The manifest or a segment was written by a newer ktrail.
    #[error("{path} has format version {found}; this ktrail reads up to {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Arrow failed to encode or decode a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Parquet failed to write or read a segment.
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// DataFusion's merge of sorted segments failed for a reason that is none of the above.
    #[error("merge: {0}")]
    Merge(datafusion::error::DataFusionError),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

/// Result with [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            path: path.into(),
            source,
        })
    }
}
