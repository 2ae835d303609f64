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

/// `cidr` (or a single address) as the list stores it: the network's own address
/// (`10.1.2.3/8` → `10.0.0.0/8`, `10.1.2.3` → `10.1.2.3/32`), so a later remove finds it.
/// `None` when it is neither a CIDR nor an address.
pub fn normalise(cidr: &str) -> Option<String> {
    let net: ipnet::IpNet = cidr
        .parse()
        .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()?;
    Some(net.trunc().to_string())
}

/// Adds `cidr` (normalised) with `label` to `list`, replacing an entry of the same network;
/// [`QueryError::InvalidSetting`](crate::QueryError::InvalidSetting) names what is not a CIDR.
pub fn add(list: &mut Vec<KnownNetwork>, cidr: &str, label: String) -> Result<()> {
    let cidr = normalise(cidr).ok_or_else(|| {
        crate::QueryError::InvalidSetting(format!("{cidr:?} is not a CIDR or an IP address"))
    })?;
    list.retain(|n| n.cidr != cidr);
    list.push(KnownNetwork { cidr, label });
    Ok(())
}

/// Removes `cidr` from `list`, as written or normalised (entries saved before normalisation
/// are found as written); false when it was not there.
pub fn remove(list: &mut Vec<KnownNetwork>, cidr: &str) -> bool {
    let normalised = normalise(cidr);
    let before = list.len();
    list.retain(|n| n.cidr != cidr && Some(&n.cidr) != normalised.as_ref());
    list.len() != before
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

    #[test]
    fn networks_are_added_normalised_and_removed_either_way() {
        let mut list = Vec::new();
        add(&mut list, "10.1.2.3/8", "corp".into()).unwrap();
        add(&mut list, "2001:db8::1", "v6 host".into()).unwrap();
        assert_eq!(
            list.iter().map(|n| n.cidr.as_str()).collect::<Vec<_>>(),
            ["10.0.0.0/8", "2001:db8::1/128"]
        );
        add(&mut list, "10.0.0.0/8", "corporate".into()).unwrap();
        assert_eq!((list.len(), list[1].label.as_str()), (2, "corporate"));
        assert!(
            add(&mut list, "not-a-net", "x".into())
                .unwrap_err()
                .to_string()
                .contains("not-a-net")
        );
        assert!(remove(&mut list, "10.9.9.9/8"));
        assert!(remove(&mut list, "2001:db8::1"));
        assert!(!remove(&mut list, "10.0.0.0/8"));
        assert!(list.is_empty());
    }
}
