//! Falco Tuning. [`rules`] loads real Falco rules files as Falco does (lists, macros, rules,
//! overrides in load order) and [`condition`] parses their conditions; [`eval`] evaluates
//! comparisons and exceptions on an alert's fields as Falco does; [`tune`] finds recurring
//! noise in stored alerts and proposes the narrowest exceptions, proven by replay;
//! [`overrides`] writes them as a Falco rules file that loads after the originals;
//! [`digest`] is the repeated-alert digest (the `falco_alert_groups` table).
//!
//! Pure: alerts come in as values (the binary queries the store), files go out as text.

pub mod condition;
pub mod digest;
pub mod eval;
pub mod overrides;
pub mod recorded;
pub mod rules;
pub mod tune;

use std::path::PathBuf;

/// What can go wrong in Falco Tuning.
#[derive(Debug, thiserror::Error)]
pub enum FalcoError {
    /// A rules file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A time that is not RFC 3339 (`--from`, `--to`, a label's bounds).
    #[error("{0:?} is not an RFC 3339 time")]
    Time(String),
    /// A query over the recorded alerts failed.
    #[error(transparent)]
    Query(#[from] query::QueryError),
    /// A rules file is not valid: names the file, the item (`rule X`, `macro Y`, `list Z`),
    /// the line where it is defined (0 when unknown) and the reason (a condition error
    /// carries its offset in the condition).
    #[error("{path}:{line}: {item}: {reason}")]
    Rules {
        path: PathBuf,
        item: String,
        line: usize,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, FalcoError>;
