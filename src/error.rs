//! The one error a command ends with.

/// A failure that ends the command: one line on stderr, exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Query(#[from] query::QueryError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Falco(#[from] falco::FalcoError),
    #[error(transparent)]
    Evidence(#[from] evidence::EvidenceError),
    #[error("{0}")]
    Other(String),
}
