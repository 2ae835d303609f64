//! `policy diff OLD NEW`: the privileges the NEW manifests grant that the OLD ones did not,
//! for pull-request review. Workloads are matched by namespace, kind and name, containers by
//! name; a new workload or container is compared with one that needs nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::needs::{ContainerNeeds, Needs};
use crate::pss::{Level, RESTRICTED_VOLUME_TYPES};
use crate::report::WorkloadReport;

/// One privilege NEW grants that OLD did not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Escalation {
    /// `namespace/Kind/name`
    pub workload: String,
    /// The container, when the privilege is a container's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What kind of escalation: `pss_level`, `privileged`, `host_namespace`, `capability`,
    /// `host_path`, `host_port`, `run_as_root`, `privilege_escalation`, `seccomp`,
    /// `apparmor`, `proc_mount`, `sysctl`, `volume_type`, `read_only_root_filesystem`.
    pub change: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Escalation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.workload)?;
        if let Some(c) = &self.container {
            write!(f, " container {c}")?;
        }
        write!(f, ": {}: {}", self.change, self.detail)
    }
}

/// Every escalation from `old` to `new`, in the order of `new`.
pub fn diff(old: &[WorkloadReport], new: &[WorkloadReport]) -> Vec<Escalation> {
    let old: BTreeMap<String, &WorkloadReport> =
        old.iter().map(|w| (w.workload.key(), w)).collect();
    let mut out = Vec::new();
    for w in new {
        let key = w.workload.key();
        compare(&key, old.get(&key).copied(), w, &mut out);
    }
    out
}

fn compare(
    key: &str,
    old: Option<&WorkloadReport>,
    new: &WorkloadReport,
    out: &mut Vec<Escalation>,
) {
    let mut push = |container: Option<&str>, change: &'static str, detail: String| {
        out.push(Escalation {
            workload: key.to_string(),
            container: container.map(str::to_string),
            change,
            detail,
        })
    };
    let old_level = old.map_or(Level::Restricted, |o| o.pss_level);
    if new.pss_level < old_level {
        let what = if old.is_some() {
            "was"
        } else {
            "new workload; the floor is"
        };
        push(
            None,
            "pss_level",
            format!("meets {} ({what} {old_level})", new.pss_level),
        );
    }
    let empty = Needs::default();
    let o: &Needs = old.map_or(&empty, |o| &o.needs);
    let n = &new.needs;
    for (was, is, field) in [
        (o.host_network, n.host_network, "hostNetwork"),
        (o.host_pid, n.host_pid, "hostPID"),
        (o.host_ipc, n.host_ipc, "hostIPC"),
    ] {
        if is && !was {
            push(None, "host_namespace", format!("{field}: true"));
        }
    }
    for p in &n.host_ports {
        if !o.host_ports.contains(p) {
            push(None, "host_port", format!("hostPort {p}"));
        }
    }
    for h in &n.host_paths {
        match o.host_paths.iter().find(|x| x.path == h.path) {
            None => push(
                None,
                "host_path",
                format!(
                    "{} ({})",
                    h.path,
                    if h.read_only {
                        "read-only"
                    } else {
                        "read-write"
                    }
                ),
            ),
            Some(x) if x.read_only && !h.read_only => push(
                None,
                "host_path",
                format!("{} is now mounted read-write", h.path),
            ),
            Some(_) => {}
        }
    }
    for s in &n.unsafe_sysctls {
        if !o.unsafe_sysctls.contains(s) {
            push(None, "sysctl", s.clone());
        }
    }
    for t in &n.volume_types {
        if !RESTRICTED_VOLUME_TYPES.contains(&t.as_str())
            && !o.volume_types.contains(t)
            && t != "hostPath"
        {
            push(None, "volume_type", t.clone());
        }
    }
    let fresh = ContainerNeeds {
        proc_mount: "Default".into(),
        ..Default::default()
    };
    for c in &n.containers {
        let known = o.containers.iter().find(|x| x.name == c.name);
        let was = known.unwrap_or(&fresh);
        let name = Some(c.name.as_str());
        if c.privileged && !was.privileged {
            push(name, "privileged", "privileged: true".into());
        }
        let had: BTreeSet<&String> = was.capabilities_add.iter().collect();
        for cap in &c.capabilities_add {
            if !had.contains(cap) {
                push(name, "capability", format!("adds {cap}"));
            }
        }
        if known.is_some() && was.non_root() && !c.non_root() {
            let now = match c.run_as_user {
                Some(u) => format!("runAsUser {u}"),
                None => "no non-root user".into(),
            };
            push(name, "run_as_root", format!("was non-root, now {now}"));
        }
        if known.is_some()
            && was.allow_privilege_escalation == Some(false)
            && c.allow_privilege_escalation != Some(false)
        {
            push(
                name,
                "privilege_escalation",
                "allowPrivilegeEscalation no longer false".into(),
            );
        }
        if known.is_some()
            && was.read_only_root_filesystem == Some(true)
            && c.read_only_root_filesystem != Some(true)
        {
            push(
                name,
                "read_only_root_filesystem",
                "root filesystem no longer read-only".into(),
            );
        }
        for (label, was_p, is_p) in [
            ("seccomp", &was.seccomp, &c.seccomp),
            ("apparmor", &was.apparmor, &c.apparmor),
        ] {
            if is_p.as_deref() == Some("Unconfined") && was_p.as_deref() != Some("Unconfined") {
                let change = if label == "seccomp" {
                    "seccomp"
                } else {
                    "apparmor"
                };
                push(name, change, "profile Unconfined".into());
            }
        }
        if c.proc_mount != "Default" && was.proc_mount == "Default" {
            push(name, "proc_mount", format!("procMount {}", c.proc_mount));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pss::Version;
    use crate::report::assess;
    use crate::test_workloads::deployment;

    #[test]
    fn new_privileges_are_escalations_and_dropped_ones_are_not() {
        let before = deployment(
            "shop",
            "web",
            "      containers:\n      - name: app\n        image: nginx\n        securityContext: {runAsUser: 1000}\n",
        );
        let after = deployment(
            "shop",
            "web",
            "      hostNetwork: true\n      containers:\n      - name: app\n        image: nginx\n        \
             securityContext: {runAsUser: 0, privileged: true, capabilities: {add: [NET_ADMIN]}}\n",
        );
        let (old, new) = (
            [assess(before, Version::Latest)],
            [assess(after, Version::Latest)],
        );
        let escalations = diff(&old, &new);
        let changes: Vec<(&str, Option<&str>)> = escalations
            .iter()
            .map(|e| (e.change, e.container.as_deref()))
            .collect();
        for expected in [
            ("pss_level", None),
            ("host_namespace", None),
            ("privileged", Some("app")),
            ("capability", Some("app")),
            ("run_as_root", Some("app")),
        ] {
            assert!(
                changes.contains(&expected),
                "{expected:?} not in {changes:?}"
            );
        }
        // Back again: nothing escalates.
        assert_eq!(diff(&new, &old), []);
        let shown = escalations
            .iter()
            .find(|e| e.change == "privileged")
            .unwrap()
            .to_string();
        assert_eq!(
            shown,
            "shop/Deployment/web container app: privileged: privileged: true"
        );
    }
}
