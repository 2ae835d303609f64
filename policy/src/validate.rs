//! `policy validate`: what a candidate policy forbids, as facts recorded history can be
//! checked against.
//!
//! A candidate is a Pod Security Standards level, or a file: a PodSecurityPolicy (any, e.g.
//! one `generate` wrote), or a hardening patch `generate` wrote. Each becomes
//! [`Constraints`]; the caller finds the recorded pods and processes that break them (pod
//! specs from audit `requestObject`s, processes running as root, binaries that need a
//! capability the policy drops) and [`pod_breaks`] / [`CAPABILITY_BINARIES`] judge them.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::needs::Needs;
use crate::pss::{Level, Version, evaluate};
use crate::workloads::Workload;

/// Binaries that fail without a capability: the runtime grants NET_RAW by default, but a
/// policy that drops ALL takes it away from `tcpdump` and `ping`.
pub const CAPABILITY_BINARIES: [(&str, &str); 16] = [
    ("tcpdump", "NET_RAW"),
    ("ping", "NET_RAW"),
    ("arping", "NET_RAW"),
    ("traceroute", "NET_RAW"),
    ("mtr", "NET_RAW"),
    ("nmap", "NET_RAW"),
    ("hping3", "NET_RAW"),
    ("nsenter", "SYS_ADMIN"),
    ("mount", "SYS_ADMIN"),
    ("umount", "SYS_ADMIN"),
    ("unshare", "SYS_ADMIN"),
    ("iptables", "NET_ADMIN"),
    ("ip6tables", "NET_ADMIN"),
    ("tc", "NET_ADMIN"),
    ("chown", "CHOWN"),
    ("hwclock", "SYS_TIME"),
];

/// What a candidate policy forbids.
#[derive(Clone, Debug, Serialize)]
pub struct Constraints {
    /// What the constraints came from, for the report.
    pub policy: String,
    /// The workload the policy is for (`generate`'s labels), when it names one.
    pub namespace: Option<String>,
    pub workload: Option<String>,
    /// A PSA level to check pod specs against, when the candidate is one.
    pub level: Option<Level>,
    /// Capabilities the containers keep when they drop: `None` = nothing is dropped; an
    /// entry `ALL` means every capability not in `allowed_capabilities` is dropped.
    pub dropped_capabilities: Option<BTreeSet<String>>,
    pub allowed_capabilities: BTreeSet<String>,
    pub non_root: bool,
    pub privileged: bool,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// Host path prefixes allowed (None = any).
    pub host_paths: Option<Vec<String>>,
    /// The root filesystem is read-only: writes outside volumes fail.
    pub read_only_root: bool,
    /// The containers the constraints are for (a patch names them); None = every one.
    pub containers: Option<BTreeSet<String>>,
}

impl Constraints {
    /// A Pod Security Standards level.
    pub fn level(level: Level) -> Constraints {
        let restricted = level == Level::Restricted;
        Constraints {
            policy: format!("Pod Security Standards {level}"),
            namespace: None,
            workload: None,
            level: Some(level),
            dropped_capabilities: restricted.then(|| BTreeSet::from(["ALL".to_string()])),
            allowed_capabilities: if restricted {
                BTreeSet::from(["NET_BIND_SERVICE".to_string()])
            } else {
                crate::pss::BASELINE_CAPABILITIES
                    .iter()
                    .map(|c| c.to_string())
                    .collect()
            },
            non_root: restricted,
            privileged: level == Level::Privileged,
            host_network: level == Level::Privileged,
            host_pid: level == Level::Privileged,
            host_ipc: level == Level::Privileged,
            host_paths: (level != Level::Privileged).then(Vec::new),
            read_only_root: false,
            containers: None,
        }
    }

    /// True when a process needing `cap` would lose it.
    pub fn drops(&self, cap: &str) -> bool {
        match &self.dropped_capabilities {
            None => false,
            Some(d) => {
                (d.contains("ALL") || d.contains(cap)) && !self.allowed_capabilities.contains(cap)
            }
        }
    }

    /// Reads the candidates in a file: PodSecurityPolicies and hardening patches.
    pub fn from_documents(file: &str, docs: &[Value]) -> Vec<Constraints> {
        let mut out = Vec::new();
        // `generate` puts the Role (namespace) beside its PSP; the labels name the workload.
        let namespace = docs
            .iter()
            .find(|d| d["kind"] == "Role")
            .and_then(|d| d["metadata"]["namespace"].as_str())
            .map(str::to_string);
        for doc in docs {
            let labels = &doc["metadata"]["labels"];
            let workload = labels["ktrail.dev/workload"].as_str().map(str::to_string);
            if doc["kind"] == "PodSecurityPolicy" {
                let spec = &doc["spec"];
                let strings = |v: &Value| -> BTreeSet<String> {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                };
                let drops = strings(&spec["requiredDropCapabilities"]);
                let rule = spec["runAsUser"]["rule"].as_str().unwrap_or("RunAsAny");
                let ranges_exclude_root = spec["runAsUser"]["ranges"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|r| r["min"].as_i64().unwrap_or(0) > 0));
                out.push(Constraints {
                    policy: format!(
                        "PodSecurityPolicy {} ({file})",
                        doc["metadata"]["name"].as_str().unwrap_or("?")
                    ),
                    namespace: workload.as_ref().and(namespace.clone()),
                    workload,
                    level: None,
                    dropped_capabilities: (!drops.is_empty()).then_some(drops),
                    allowed_capabilities: strings(&spec["allowedCapabilities"]),
                    non_root: rule == "MustRunAsNonRoot"
                        || (rule == "MustRunAs" && ranges_exclude_root),
                    privileged: spec["privileged"].as_bool().unwrap_or(false),
                    host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
                    host_pid: spec["hostPID"].as_bool().unwrap_or(false),
                    host_ipc: spec["hostIPC"].as_bool().unwrap_or(false),
                    host_paths: spec["allowedHostPaths"].as_array().map(|paths| {
                        paths
                            .iter()
                            .filter_map(|p| p["pathPrefix"].as_str().map(str::to_string))
                            .collect()
                    }),
                    read_only_root: spec["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
                    containers: None,
                });
            }
        }
        out
    }

    /// Reads a hardening patch `generate` wrote: the securityContext it sets, for the
    /// containers it names, of the workload its first line names
    /// (`# Hardening patch: kubectl -n NS patch KIND NAME ...`).
    pub fn from_patch(file: &str, text: &str, patch: &Value) -> Option<Constraints> {
        let pod = [
            &patch["spec"]["template"]["spec"],
            &patch["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            &patch["spec"],
        ]
        .into_iter()
        .find(|s| s.get("containers").is_some() || s.get("securityContext").is_some())?;
        let (namespace, workload) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# Hardening patch: kubectl -n "))
            .and_then(|rest| {
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    [ns, "patch", _kind, name, ..] => Some((ns.to_string(), name.to_string())),
                    _ => None,
                }
            })
            .unzip();
        let mut containers = BTreeSet::new();
        let mut dropped = BTreeSet::new();
        let mut allowed = BTreeSet::new();
        let mut non_root = pod["securityContext"]["runAsNonRoot"] == true;
        let mut read_only_root = false;
        for list in ["containers", "initContainers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                let sc = &c["securityContext"];
                containers.insert(c["name"].as_str().unwrap_or("").to_string());
                for d in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
                    dropped.extend(d.as_str().map(str::to_string));
                }
                for a in sc["capabilities"]["add"].as_array().into_iter().flatten() {
                    allowed.extend(a.as_str().map(str::to_string));
                }
                non_root |= sc["runAsNonRoot"] == true;
                read_only_root |= sc["readOnlyRootFilesystem"] == true;
            }
        }
        Some(Constraints {
            policy: format!("hardening patch ({file})"),
            namespace,
            workload,
            level: None,
            dropped_capabilities: (!dropped.is_empty()).then_some(dropped),
            allowed_capabilities: allowed,
            non_root,
            // A patch does not take away what the manifest already allows.
            privileged: true,
            host_network: true,
            host_pid: true,
            host_ipc: true,
            host_paths: None,
            read_only_root,
            containers: (!containers.is_empty()).then_some(containers),
        })
    }
}

/// One way recorded history breaks a candidate, with its evidence.
#[derive(Clone, Debug, Serialize)]
pub struct Break {
    /// `capability`, `run_as_root`, `read_only_root`, `host_network` or `pod_spec`.
    pub check: &'static str,
    pub detail: String,
    pub count: usize,
    pub first: String,
    pub last: String,
    /// The first 20 rows that show it.
    pub evidence: Vec<Value>,
    /// The SQL that finds every row.
    pub sql: String,
}

impl Break {
    /// A break from its evidence rows (in time order, each with a `ts`).
    pub fn new(check: &'static str, detail: String, evidence: Vec<Value>, sql: &str) -> Break {
        let ts = |r: Option<&Value>| r.and_then(|r| r["ts"].as_str()).unwrap_or("").to_string();
        Break {
            check,
            detail,
            count: evidence.len(),
            first: ts(evidence.first()),
            last: ts(evidence.last()),
            evidence: evidence.into_iter().take(20).collect(),
            sql: sql.to_string(),
        }
    }
}

/// One workload's answer: `ok` or `would break`, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// `namespace/workload`
    pub workload: String,
    pub verdict: &'static str,
    pub breaks: Vec<Break>,
}

impl Verdict {
    pub fn new(workload: String, breaks: Vec<Break>) -> Verdict {
        let verdict = if breaks.is_empty() {
            "ok"
        } else {
            "would break"
        };
        Verdict {
            workload,
            verdict,
            breaks,
        }
    }
}

/// One way a recorded pod spec breaks the constraints.
pub fn pod_breaks(c: &Constraints, w: &Workload, needs: &Needs) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(level) = c.level {
        for v in evaluate(w, Version::Latest) {
            if v.level <= level {
                out.push(format!(
                    "{} {} = {} (needs {})",
                    v.control, v.path, v.value, v.level
                ));
            }
        }
        return out;
    }
    for cn in &needs.containers {
        if cn.privileged && !c.privileged {
            out.push(format!("container {} is privileged", cn.name));
        }
        for cap in &cn.capabilities_add {
            if !c.allowed_capabilities.contains(cap) {
                out.push(format!("container {} adds {cap}", cn.name));
            }
        }
        if c.non_root && !cn.non_root() {
            out.push(format!("container {} may run as root", cn.name));
        }
    }
    for (used, allowed, field) in [
        (needs.host_network, c.host_network, "hostNetwork"),
        (needs.host_pid, c.host_pid, "hostPID"),
        (needs.host_ipc, c.host_ipc, "hostIPC"),
    ] {
        if used && !allowed {
            out.push(format!("{field}: true"));
        }
    }
    if let Some(allowed) = &c.host_paths {
        for h in &needs.host_paths {
            if !allowed.iter().any(|p| h.path.starts_with(p.as_str())) {
                out.push(format!("hostPath {}", h.path));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_drops_net_raw_but_keeps_net_bind_service() {
        let c = Constraints::level(Level::Restricted);
        assert!(c.drops("NET_RAW"));
        assert!(!c.drops("NET_BIND_SERVICE"));
        assert!(!Constraints::level(Level::Baseline).drops("NET_RAW"));
    }

    #[test]
    fn a_psp_that_drops_all_but_allows_net_admin() {
        let psp = serde_json::json!({
            "kind": "PodSecurityPolicy", "metadata": {"name": "p"},
            "spec": {"requiredDropCapabilities": ["ALL"], "allowedCapabilities": ["NET_ADMIN"],
                     "runAsUser": {"rule": "MustRunAsNonRoot"}}
        });
        let c = &Constraints::from_documents("f.yaml", &[psp])[0];
        assert!(c.drops("NET_RAW") && !c.drops("NET_ADMIN") && c.non_root);
    }
}
