//! The `known_networks` allow-list (`cidr`, `label`): a small JSON file in the store directory,
//! replaced atomically. It is configuration, not history, so it lives beside the segments
//! rather than in them, and it can be edited while a server holds the store's `LOCK` (readers
//! load it when they open a session).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Result;

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

/// The allow-list of the store at `dir` (empty when none was saved). A file that does not
/// parse is reported as corruption, never read as empty.
pub fn load(dir: &Path) -> Result<Vec<KnownNetwork>> {
    super::load(dir, FILE, "known networks")
}

/// Replaces the allow-list of the store at `dir`, durably.
pub fn save(dir: &Path, networks: &[KnownNetwork]) -> Result<()> {
    super::save(dir, FILE, networks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueryError;

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
            Err(QueryError::Corruption { offset, .. }) => assert_eq!(offset, 10),
            other => panic!("{other:?}"),
        }
    }
}
