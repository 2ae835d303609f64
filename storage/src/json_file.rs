//! Small JSON settings files beside the segments (`known_networks.json`, `falco_labels.json`):
//! configuration and judgements, not history. Replaced atomically; one that does not parse
//! is corruption, never read as empty.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;

/// The list in `dir/file` (empty when none was saved); `what` names it in errors.
pub fn load<T: DeserializeOwned>(dir: &Path, file: &str, what: &str) -> Result<Vec<T>> {
    let p = dir.join(file);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&p),
    };
    serde_json::from_slice(&bytes).map_err(|e| StorageError::Corruption {
        path: p.clone(),
        offset: byte_offset(&bytes, e.line(), e.column()),
        reason: format!("{what}: {e}"),
    })
}

/// Replaces the list in `dir/file`, durably.
pub fn save<T: Serialize>(dir: &Path, file: &str, items: &[T]) -> Result<()> {
    let json = serde_json::to_vec_pretty(items).expect("settings serialise as JSON");
    fsutil::write_atomic(&dir.join(file), &json)
}

fn byte_offset(bytes: &[u8], line: usize, column: usize) -> u64 {
    let start: usize = bytes
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (start + column.saturating_sub(1)) as u64
}
