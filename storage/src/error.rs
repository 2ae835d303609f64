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
    /// A listed segment was found damaged (now or earlier): it is kept out of every read and
    /// compaction, its files in `quarantine/`. A query that needs its rows fails with this.
    #[error(
        "segment {id} ({rows} events, {from} to {to}) is damaged: {reason}; it is kept out of queries \
         and compactions, its files in quarantine/; put a good copy of {path} back and run `ktrail repair`, \
         or query with `--allow-damaged` (`SET ktrail.allow_damaged = true`) to skip it"
    )]
    Damaged {
        id: u64,
        path: PathBuf,
        rows: u64,
        from: String,
        to: String,
        reason: String,
    },
    /// An operating-system I/O failure on a named file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The archive could not be reached, refused a request, or gave back other bytes than
    /// were put there. Nothing local was deleted for it.
    #[error("archive {url}: {key}: {reason}")]
    Archive {
        url: String,
        key: String,
        reason: String,
    },
    /// A signing key file could not be made or read as one.
    #[error("key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// Another process holds the store's directory lock.
    #[error("store {path} is in use by another ktrail process")]
    Locked { path: PathBuf },
    /// A previous durable write failed (e.g. fdatasync returned an error). After that the state
    /// on disk is unknown, so the store refuses further writes until it is reopened.
    #[error("store is read-only after an earlier write failure: {0}")]
    Poisoned(String),
    /// The file system holding `path` is full (or the quota is used up). Nothing of the write
    /// was kept; the store takes writes again as soon as one fits.
    #[error("no space left for {path}: {reason}; writes resume when space is freed")]
    NoSpace { path: PathBuf, reason: String },
    /// A batch submitted before this one failed, and this one's duplicates may have been
    /// counted against its events: nothing of this batch was stored; send it again.
    #[error("an earlier batch was not stored, so this one was not either; send it again")]
    EarlierWriteFailed,
    /// The store has never been this far behind flushing: the memtable is at twice its limit
    /// because flushes fail (the reason); appends resume once a flush succeeds.
    #[error("the memtable is full because flushes fail: {0}")]
    FlushFailing(Box<StorageError>),
    /// `MANIFEST` is missing or unreadable while segment files exist: the store does not open
    /// rather than take the segments for leftovers. `ktrail repair` rebuilds it.
    #[error(
        "{path}: {reason}; the segments are kept; run `ktrail repair` to rebuild the manifest from them"
    )]
    ManifestLost { path: PathBuf, reason: String },
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

impl StorageError {
    /// True when the failure is the file system being full or a quota used up: the caller
    /// may retry later (HTTP 507, gRPC `RESOURCE_EXHAUSTED`).
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::NoSpace { .. } => true,
            StorageError::Io { source, .. } => is_no_space(source),
            StorageError::Parquet(datafusion::parquet::errors::ParquetError::External(e)) => {
                e.downcast_ref::<std::io::Error>().is_some_and(is_no_space)
            }
            StorageError::FlushFailing(e) => e.is_no_space(),
            _ => false,
        }
    }

    /// True when retrying the same write later can succeed without a restart.
    pub fn is_transient(&self) -> bool {
        self.is_no_space()
            || matches!(
                self,
                StorageError::EarlierWriteFailed | StorageError::FlushFailing(_)
            )
    }

    /// An I/O failure for want of space as [`StorageError::NoSpace`]; others unchanged.
    pub(crate) fn into_no_space(self) -> StorageError {
        match self {
            StorageError::Io { path, source } if is_no_space(&source) => StorageError::NoSpace {
                path,
                reason: source.to_string(),
            },
            e => e,
        }
    }

    /// The same failure once more, for each of several waiters (an `io::Error` is not
    /// `Clone`: its kind and text are kept).
    pub(crate) fn duplicate(&self) -> StorageError {
        match self {
            StorageError::Io { path, source } => StorageError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StorageError::NoSpace { path, reason } => StorageError::NoSpace {
                path: path.clone(),
                reason: reason.clone(),
            },
            StorageError::Poisoned(m) => StorageError::Poisoned(m.clone()),
            StorageError::EarlierWriteFailed => StorageError::EarlierWriteFailed,
            StorageError::Closed => StorageError::Closed,
            other => StorageError::Poisoned(other.to_string()),
        }
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
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
