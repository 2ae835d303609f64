use std::path::PathBuf;

/// Failures of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A segment or index the query needed is damaged.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A settings file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value given for a setting is not one (a known network that is not a CIDR).
    #[error("{0}")]
    InvalidSetting(String),
    /// The storage layer failed.
    #[error(transparent)]
    Storage(storage::StorageError),
    /// DataFusion refused or failed the statement (bad SQL, planning or execution error).
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

impl From<storage::StorageError> for QueryError {
    fn from(e: storage::StorageError) -> Self {
        match e {
            storage::StorageError::Corruption {
                path,
                offset,
                reason,
            } => QueryError::Corruption {
                path,
                offset,
                reason,
            },
            other => QueryError::Storage(other),
        }
    }
}
