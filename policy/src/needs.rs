//! What a workload needs from the node and the kernel, read from its pod spec: the facts
//! every policy is cut to.
//!
//! Where kube-psp-advisor went wrong, this reads the spec as the kubelet does: a container's
//! user is its own `runAsUser`, else the pod's (so a container securityContext without one
//! keeps the pod's); `hostPort: 0` means no host port; a host path is read-only only when every
//! mount of it is; init and ephemeral containers count.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::pss::{ContainerRef, Version, containers, safe_sysctl, volume_type};
use crate::workloads::Workload;

/// One container's needs and identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerNeeds {
    pub name: String,
    pub init: bool,
    pub ephemeral: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub privileged: bool,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// The effective user: the container's `runAsUser`, else the pod's; None = the image's.
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    /// The effective `runAsNonRoot` (container, else pod).
    pub run_as_non_root: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    /// `Default` unless the container asks for `Unmasked` (empty only in a blank value).
    pub proc_mount: String,
    /// Effective seccomp profile type (container, else pod, else legacy annotation); None =
    /// the runtime's default.
    pub seccomp: Option<String>,
    /// Effective AppArmor profile (field or legacy annotation); None = the runtime's default.
    pub apparmor: Option<String>,
    pub host_ports: Vec<i32>,
}

impl ContainerNeeds {
    /// Known to run as a user other than root.
    pub fn non_root(&self) -> bool {
        self.run_as_user.is_some_and(|u| u != 0)
            || (self.run_as_user.is_none() && self.run_as_non_root == Some(true))
    }
}

/// A host path the pod mounts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct HostPath {
    pub path: String,
    /// True only when every mount of it (in every container) is read-only.
    pub read_only: bool,
    /// The volume's name in the pod spec.
    pub volume: String,
}

/// Everything a workload needs. `Needs::default()` needs nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Needs {
    pub containers: Vec<ContainerNeeds>,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// Non-zero host ports, sorted, each once.
    pub host_ports: Vec<i32>,
    pub host_paths: Vec<HostPath>,
    /// Volume source types by field name (`configMap`, `hostPath`, ...), sorted.
    pub volume_types: Vec<String>,
    /// Sysctls the pod sets, and those of them baseline does not allow.
    pub sysctls: Vec<String>,
    pub unsafe_sysctls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    /// SELinux options the pod or a container sets, as `user:role:type:level`.
    pub selinux: Vec<String>,
    pub windows_host_process: bool,
    pub service_account: String,
    /// False when `automountServiceAccountToken: false` (no projected token volume).
    pub service_account_token: bool,
}

impl Needs {
    pub fn privileged(&self) -> bool {
        self.containers.iter().any(|c| c.privileged)
    }

    /// Capabilities any container adds.
    pub fn capabilities(&self) -> BTreeSet<String> {
        self.containers
            .iter()
            .flat_map(|c| c.capabilities_add.iter().cloned())
            .collect()
    }
}

/// What several workloads need together (those sharing a service account, for one
/// PodSecurityPolicy): every container, every host access, each id only when all agree.
pub fn merge<'a>(all: impl IntoIterator<Item = &'a Needs>) -> Option<Needs> {
    let mut iter = all.into_iter();
    let mut out = iter.next()?.clone();
    for n in iter {
        out.containers.extend(n.containers.iter().cloned());
        out.host_network |= n.host_network;
        out.host_pid |= n.host_pid;
        out.host_ipc |= n.host_ipc;
        let union = |a: &mut Vec<String>, b: &[String]| {
            let set: BTreeSet<String> = a.iter().chain(b).cloned().collect();
            *a = set.into_iter().collect();
        };
        union(&mut out.volume_types, &n.volume_types);
        union(&mut out.sysctls, &n.sysctls);
        union(&mut out.unsafe_sysctls, &n.unsafe_sysctls);
        union(&mut out.selinux, &n.selinux);
        let ports: BTreeSet<i32> = out
            .host_ports
            .iter()
            .chain(&n.host_ports)
            .copied()
            .collect();
        out.host_ports = ports.into_iter().collect();
        for h in &n.host_paths {
            match out.host_paths.iter_mut().find(|x| x.path == h.path) {
                Some(x) => x.read_only &= h.read_only,
                None => out.host_paths.push(h.clone()),
            }
        }
        out.host_paths.sort();
        if out.fs_group != n.fs_group {
            out.fs_group = None;
        }
        if out.supplemental_groups != n.supplemental_groups {
            out.supplemental_groups.clear();
        }
        out.windows_host_process |= n.windows_host_process;
        out.service_account_token |= n.service_account_token;
    }
    Some(out)
}

/// Reads the needs of one workload.
pub fn needs(w: &Workload, version: Version) -> Needs {
    let spec = &w.spec;
    let psc = spec.security_context.as_ref();
    let annotations = w.pod_meta.annotations.clone().unwrap_or_default();
    let all = containers(w);
    let mut host_paths: BTreeMap<String, HostPath> = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(hp) = &v.host_path {
            let mounts: Vec<bool> = all
                .iter()
                .flat_map(|c| c.volume_mounts.iter())
                .filter(|m| m.name == v.name)
                .map(|m| m.read_only == Some(true))
                .collect();
            host_paths.insert(
                v.name.clone(),
                HostPath {
                    path: hp.path.clone(),
                    // Not mounted at all: nothing writes through it.
                    read_only: mounts.iter().all(|ro| *ro),
                    volume: v.name.clone(),
                },
            );
        }
    }
    let mut host_paths: Vec<HostPath> = host_paths.into_values().collect();
    host_paths.sort();
    let containers: Vec<ContainerNeeds> = all
        .iter()
        .map(|c| container_needs(c, psc, &annotations))
        .collect();
    let host_ports: BTreeSet<i32> = containers
        .iter()
        .flat_map(|c| c.host_ports.iter().copied())
        .collect();
    let volume_types: BTreeSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| volume_type(v).to_string())
        .collect();
    let sysctls: Vec<String> = psc
        .and_then(|p| p.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    let unsafe_sysctls = sysctls
        .iter()
        .filter(|s| !safe_sysctl(s, version))
        .cloned()
        .collect();
    let mut selinux: BTreeSet<String> = BTreeSet::new();
    let mut add_selinux = |se: Option<&k8s_openapi::api::core::v1::SELinuxOptions>| {
        if let Some(se) = se {
            let f = |v: &Option<String>| v.clone().unwrap_or_default();
            selinux.insert(format!(
                "{}:{}:{}:{}",
                f(&se.user),
                f(&se.role),
                f(&se.type_),
                f(&se.level)
            ));
        }
    };
    add_selinux(psc.and_then(|p| p.se_linux_options.as_ref()));
    for c in &all {
        add_selinux(c.security_context.and_then(|s| s.se_linux_options.as_ref()));
    }
    let windows_host_process = psc
        .and_then(|p| p.windows_options.as_ref())
        .and_then(|o| o.host_process)
        == Some(true)
        || all.iter().any(|c| {
            c.security_context
                .and_then(|s| s.windows_options.as_ref())
                .and_then(|o| o.host_process)
                == Some(true)
        });
    Needs {
        containers,
        host_network: spec.host_network == Some(true),
        host_pid: spec.host_pid == Some(true),
        host_ipc: spec.host_ipc == Some(true),
        host_ports: host_ports.into_iter().collect(),
        host_paths,
        volume_types: volume_types.into_iter().collect(),
        sysctls,
        unsafe_sysctls,
        fs_group: psc.and_then(|p| p.fs_group),
        supplemental_groups: psc
            .and_then(|p| p.supplemental_groups.clone())
            .unwrap_or_default(),
        selinux: selinux.into_iter().collect(),
        windows_host_process,
        service_account: w.service_account().to_string(),
        service_account_token: spec.automount_service_account_token != Some(false),
    }
}

fn container_needs(
    c: &ContainerRef<'_>,
    psc: Option<&k8s_openapi::api::core::v1::PodSecurityContext>,
    annotations: &BTreeMap<String, String>,
) -> ContainerNeeds {
    let sc = c.security_context;
    let caps = c.capabilities();
    let sorted = |v: Option<&Vec<String>>| {
        let set: BTreeSet<String> = v.into_iter().flatten().cloned().collect();
        set.into_iter().collect::<Vec<_>>()
    };
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(psc.and_then(|p| p.seccomp_profile.as_ref()))
        .map(|p| p.type_.clone())
        .or_else(|| {
            annotations
                .get(&format!(
                    "container.seccomp.security.alpha.kubernetes.io/{}",
                    c.name
                ))
                .or(annotations.get("seccomp.security.alpha.kubernetes.io/pod"))
                .map(|a| legacy_profile(a))
        });
    let apparmor = sc
        .and_then(|s| s.app_armor_profile.as_ref())
        .or(psc.and_then(|p| p.app_armor_profile.as_ref()))
        .map(|p| p.type_.clone())
        .or_else(|| {
            annotations
                .get(&format!(
                    "container.apparmor.security.beta.kubernetes.io/{}",
                    c.name
                ))
                .map(|a| legacy_profile(a))
        });
    let host_ports: BTreeSet<i32> = c
        .ports
        .iter()
        .filter_map(|p| p.host_port)
        .filter(|p| *p != 0)
        .collect();
    ContainerNeeds {
        name: c.name.to_string(),
        init: c.is_init(),
        ephemeral: c.is_ephemeral(),
        image: c.image.map(str::to_string),
        privileged: sc.and_then(|s| s.privileged) == Some(true),
        capabilities_add: sorted(caps.and_then(|c| c.add.as_ref())),
        capabilities_drop: sorted(caps.and_then(|c| c.drop.as_ref())),
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .or(psc.and_then(|p| p.run_as_user)),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or(psc.and_then(|p| p.run_as_group)),
        run_as_non_root: sc
            .and_then(|s| s.run_as_non_root)
            .or(psc.and_then(|p| p.run_as_non_root)),
        allow_privilege_escalation: sc.and_then(|s| s.allow_privilege_escalation),
        read_only_root_filesystem: sc.and_then(|s| s.read_only_root_filesystem),
        proc_mount: sc
            .and_then(|s| s.proc_mount.clone())
            .unwrap_or_else(|| "Default".into()),
        seccomp,
        apparmor,
        host_ports: host_ports.into_iter().collect(),
    }
}

/// A legacy annotation value as the field's type: `runtime/default` → `RuntimeDefault`.
fn legacy_profile(annotation: &str) -> String {
    match annotation {
        "runtime/default" | "docker/default" => "RuntimeDefault".into(),
        "unconfined" => "Unconfined".into(),
        a if a.starts_with("localhost/") => "Localhost".into(),
        a => a.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::load_str;
    use std::path::Path;

    fn needs_of(text: &str) -> Needs {
        let loaded = load_str(Path::new("t.yaml"), text);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        needs(&loaded.workloads[0], Version::Latest)
    }

    /// kube-psp-advisor lost the pod's runAsUser as soon as a container had a securityContext.
    #[test]
    fn pod_run_as_user_survives_a_container_security_context() {
        let n = needs_of(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsUser: 1000}\n  \
             containers:\n  - name: app\n    image: nginx\n    securityContext: {readOnlyRootFilesystem: true}\n",
        );
        assert_eq!(n.containers[0].run_as_user, Some(1000));
        assert!(n.containers[0].non_root());
    }

    /// kube-psp-advisor marked every host path read-only.
    #[test]
    fn host_path_is_read_only_only_when_every_mount_is() {
        let n = needs_of(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: i\n    \
             volumeMounts: [{name: logs, mountPath: /l, readOnly: true}, {name: etc, mountPath: /e, readOnly: true}]\n  \
             - name: b\n    image: i\n    volumeMounts: [{name: logs, mountPath: /l}]\n  volumes:\n  \
             - {name: logs, hostPath: {path: /var/log}}\n  - {name: etc, hostPath: {path: /etc}}\n",
        );
        let got: Vec<(&str, bool)> = n
            .host_paths
            .iter()
            .map(|h| (h.path.as_str(), h.read_only))
            .collect();
        assert_eq!(got, vec![("/etc", true), ("/var/log", false)]);
    }
}
