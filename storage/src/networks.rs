//! The `known_networks` allow-list (`cidr`, `label`): a small JSON file in the store directory,
//! replaced atomically. It is configuration, not history, so it lives beside the segments
//! rather than in them, and it can be edited while a server holds the store's `LOCK` (readers
//! load it when they open a session).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;

/// File name of the allow-list inside the store directory.
pub const FILE: &str = "known_networks.json";

/// One allow-listed network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownNetwork {
    /// An IPv4/IPv6 CIDR (`203.0.113.0/24`) or a single address.
    pub cidr: String,
    /// What it is (`corporate VPN`, `payments provider`).
    pub label: String,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The allow-list of the store at `dir` (empty when none was saved). A file that does not
/// parse is reported as corruption, never read as empty.
pub fn load(dir: &Path) -> Result<Vec<KnownNetwork>> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&p),
    };
    serde_json::from_slice(&bytes).map_err(|e| StorageError::Corruption {
        path: p.clone(),
        offset: byte_offset(&bytes, e.line(), e.column()),
        reason: format!("known networks: {e}"),
    })
}

/// Replaces the allow-list of the store at `dir`, durably.
pub fn save(dir: &Path, networks: &[KnownNetwork]) -> Result<()> {
    let json = serde_json::to_vec_pretty(networks).expect("plain strings serialize");
    fsutil::write_atomic(&path(dir), &json)
}

fn byte_offset(bytes: &[u8], line: usize, column: usize) -> u64 {
    let start: usize = bytes
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (start + column.saturating_sub(1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let nets = vec![KnownNetwork {
            cidr: "203.0.113.0/24".into(),
            label: "payments provider".into(),
        }];
        save(dir.path(), &nets).unwrap();
        assert_eq!(load(dir.path()).unwrap(), nets);
        std::fs::write(dir.path().join(FILE), b"[{\"cidr\": 1}]").unwrap();
        match load(dir.path()) {
            Err(StorageError::Corruption { offset, .. }) => assert_eq!(offset, 10),
            other => panic!("{other:?}"),
        }
    }
}
