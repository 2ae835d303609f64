//! Settings the analyst keeps beside the segments: the `known_networks` allow-list and the
//! Falco labels. Configuration and judgements, not history: small JSON files, replaced
//! atomically and durably, editable while a server holds the store (a session reads them
//! when it opens, as the `known_networks` and `falco_labels` tables). One that does not parse
//! is corruption, never read as empty.

pub mod falco_labels;
pub mod networks;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use storage::fsutil;

use crate::QueryError;

type Result<T> = std::result::Result<T, QueryError>;

/// The list in `dir/file` (empty when none was saved); `what` names it in errors.
fn load<T: DeserializeOwned>(dir: &Path, file: &str, what: &str) -> Result<Vec<T>> {
    let p = dir.join(file);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(QueryError::Io { path: p, source }),
    };
    serde_json::from_slice(&bytes).map_err(|e| QueryError::Corruption {
        path: p.clone(),
        offset: byte_offset(&bytes, e.line(), e.column()),
        reason: format!("{what}: {e}"),
    })
}

/// Replaces the list in `dir/file`, durably.
fn save<T: Serialize>(dir: &Path, file: &str, items: &[T]) -> Result<()> {
    let json = serde_json::to_vec_pretty(items).expect("settings serialise as JSON");
    Ok(fsutil::write_atomic(&dir.join(file), &json)?)
}

fn byte_offset(bytes: &[u8], line: usize, column: usize) -> u64 {
    let start: usize = bytes
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (start + column.saturating_sub(1)) as u64
}
