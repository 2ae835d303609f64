//! The Pod Security Standards, checked as Pod Security Admission checks them: the same check
//! ids, the same fields, the same version gates (`--k8s-version`), over containers, init
//! containers and ephemeral containers.
//!
//! Every violation names the control, the level it belongs to, the field path in the
//! workload's manifest and the offending value. A workload meets `restricted` with no
//! violations, `baseline` with only restricted ones, else only `privileged`.

use std::fmt;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, Lifecycle, Probe, SELinuxOptions, SecurityContext, Volume,
    VolumeMount,
};
use serde::Serialize;

use crate::workloads::Workload;

/// A Pod Security Standards level, from least to most strict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Pod Security Standards version: `latest` or a Kubernetes minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `v1.<minor>`
    Minor(u32),
    Latest,
}

impl Version {
    pub fn parse(s: &str) -> crate::Result<Version> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let minor = s
            .strip_prefix('v')
            .unwrap_or(s)
            .strip_prefix("1.")
            .and_then(|m| m.split('.').next())
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| crate::PolicyError::Version(s.to_string()))?;
        Ok(Version::Minor(minor))
    }

    /// True when checks introduced in `v1.minor` apply.
    fn at_least(self, minor: u32) -> bool {
        match self {
            Version::Latest => true,
            Version::Minor(m) => m >= minor,
        }
    }

    /// The label value Pod Security Admission takes: `latest` or `v1.N`.
    pub fn label(self) -> String {
        match self {
            Version::Latest => "latest".into(),
            Version::Minor(m) => format!("v1.{m}"),
        }
    }
}

/// One failed control.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The Pod Security Admission check id (`hostNamespaces`, `capabilities_restricted`, ...).
    pub control: &'static str,
    pub level: Level,
    /// Field path in the manifest, e.g. `spec.template.spec.containers[0].securityContext.privileged`.
    pub path: String,
    /// The offending value as it appears (or `<unset>` where the control needs a value).
    pub value: String,
}

/// The strictest level a workload with these violations meets.
pub fn level_met(violations: &[Violation]) -> Level {
    if violations.iter().any(|v| v.level == Level::Baseline) {
        Level::Privileged
    } else if violations.is_empty() {
        Level::Restricted
    } else {
        Level::Baseline
    }
}

/// A container of any of the three kinds, as the checks see it.
pub struct ContainerRef<'a> {
    /// `containers`, `initContainers` or `ephemeralContainers`.
    pub field: &'static str,
    pub index: usize,
    pub name: &'a str,
    pub image: Option<&'a str>,
    pub security_context: Option<&'a SecurityContext>,
    pub ports: &'a [ContainerPort],
    pub volume_mounts: &'a [VolumeMount],
    pub probes: [Option<&'a Probe>; 3],
    pub lifecycle: Option<&'a Lifecycle>,
}

impl ContainerRef<'_> {
    pub fn is_init(&self) -> bool {
        self.field == "initContainers"
    }
    pub fn is_ephemeral(&self) -> bool {
        self.field == "ephemeralContainers"
    }
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.security_context.and_then(|s| s.capabilities.as_ref())
    }
}

/// A `ContainerRef` from a `Container` or an `EphemeralContainer` (same field names, two
/// types in the API).
macro_rules! container_ref {
    ($field:expr, $index:expr, $c:expr) => {
        ContainerRef {
            field: $field,
            index: $index,
            name: &$c.name,
            image: $c.image.as_deref(),
            security_context: $c.security_context.as_ref(),
            ports: $c.ports.as_deref().unwrap_or(&[]),
            volume_mounts: $c.volume_mounts.as_deref().unwrap_or(&[]),
            probes: [
                $c.liveness_probe.as_ref(),
                $c.readiness_probe.as_ref(),
                $c.startup_probe.as_ref(),
            ],
            lifecycle: $c.lifecycle.as_ref(),
        }
    };
}

/// Every container of the pod: init containers, containers, then ephemeral containers.
pub fn containers(w: &Workload) -> Vec<ContainerRef<'_>> {
    let spec = &w.spec;
    let init = spec.init_containers.iter().flatten().enumerate();
    let regular = spec.containers.iter().enumerate();
    let ephemeral = spec.ephemeral_containers.iter().flatten().enumerate();
    init.map(|(i, c)| container_ref!("initContainers", i, c))
        .chain(regular.map(|(i, c)| container_ref!("containers", i, c)))
        .chain(ephemeral.map(|(i, c)| container_ref!("ephemeralContainers", i, c)))
        .collect()
}

/// Capabilities baseline allows containers to add.
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The sysctls baseline allows, by the version that allowed them.
const SAFE_SYSCTLS: [(u32, &str); 12] = [
    (0, "kernel.shm_rmid_forced"),
    (0, "net.ipv4.ip_local_port_range"),
    (0, "net.ipv4.ip_unprivileged_port_start"),
    (0, "net.ipv4.tcp_syncookies"),
    (0, "net.ipv4.ping_group_range"),
    (27, "net.ipv4.ip_local_reserved_ports"),
    (29, "net.ipv4.tcp_keepalive_time"),
    (29, "net.ipv4.tcp_fin_timeout"),
    (29, "net.ipv4.tcp_keepalive_intvl"),
    (29, "net.ipv4.tcp_keepalive_probes"),
    (32, "net.ipv4.tcp_rmem"),
    (32, "net.ipv4.tcp_wmem"),
];

/// True when baseline at `version` allows the sysctl.
pub fn safe_sysctl(name: &str, version: Version) -> bool {
    SAFE_SYSCTLS
        .iter()
        .any(|(since, n)| *n == name && version.at_least(*since))
}

/// Inline volume sources restricted allows.
pub const RESTRICTED_VOLUME_TYPES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The volume source a volume uses, by its field name.
pub fn volume_type(v: &Volume) -> &'static str {
    let sources: [(bool, &'static str); 30] = [
        (v.config_map.is_some(), "configMap"),
        (v.csi.is_some(), "csi"),
        (v.downward_api.is_some(), "downwardAPI"),
        (v.empty_dir.is_some(), "emptyDir"),
        (v.ephemeral.is_some(), "ephemeral"),
        (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
        (v.projected.is_some(), "projected"),
        (v.secret.is_some(), "secret"),
        (v.host_path.is_some(), "hostPath"),
        (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
        (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
        (v.git_repo.is_some(), "gitRepo"),
        (v.nfs.is_some(), "nfs"),
        (v.iscsi.is_some(), "iscsi"),
        (v.glusterfs.is_some(), "glusterfs"),
        (v.rbd.is_some(), "rbd"),
        (v.flex_volume.is_some(), "flexVolume"),
        (v.cinder.is_some(), "cinder"),
        (v.cephfs.is_some(), "cephfs"),
        (v.flocker.is_some(), "flocker"),
        (v.fc.is_some(), "fc"),
        (v.azure_file.is_some(), "azureFile"),
        (v.vsphere_volume.is_some(), "vsphereVolume"),
        (v.quobyte.is_some(), "quobyte"),
        (v.azure_disk.is_some(), "azureDisk"),
        (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
        (v.portworx_volume.is_some(), "portworxVolume"),
        (v.scale_io.is_some(), "scaleIO"),
        (v.storageos.is_some(), "storageos"),
        (v.image.is_some(), "image"),
    ];
    // A volume with no source is an emptyDir (the API's default).
    sources
        .iter()
        .find(|(set, _)| *set)
        .map(|(_, t)| *t)
        .unwrap_or("emptyDir")
}

const SELINUX_TYPES: [&str; 4] = ["container_t", "container_init_t", "container_kvm_t", ""];

/// Evaluates every control of baseline and restricted at `version`.
pub fn evaluate(w: &Workload, version: Version) -> Vec<Violation> {
    let mut out = Checker {
        out: Vec::new(),
        spec_path: w.spec_path(),
    };
    let spec = &w.spec;
    let psc = spec.security_context.as_ref();
    let all = containers(w);
    let windows = version.at_least(25)
        && spec
            .os
            .as_ref()
            .is_some_and(|os| os.name.eq_ignore_ascii_case("windows"));

    // hostNamespaces
    for (set, field) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if set == Some(true) {
            out.push("hostNamespaces", Level::Baseline, field, "true");
        }
    }
    for c in &all {
        let sc = c.security_context;
        let at = |field: &str| format!("{}[{}].securityContext.{field}", c.field, c.index);
        // privileged
        if sc.and_then(|s| s.privileged) == Some(true) {
            out.push("privileged", Level::Baseline, &at("privileged"), "true");
        }
        // capabilities_baseline / capabilities_restricted
        let caps = c.capabilities();
        for (i, cap) in caps
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = cap.strip_prefix("CAP_").unwrap_or(cap);
            if !BASELINE_CAPABILITIES.contains(&name) {
                out.push(
                    "capabilities_baseline",
                    Level::Baseline,
                    &at(&format!("capabilities.add[{i}]")),
                    cap,
                );
            }
            if version.at_least(22) && !windows && name != "NET_BIND_SERVICE" {
                out.push(
                    "capabilities_restricted",
                    Level::Restricted,
                    &at(&format!("capabilities.add[{i}]")),
                    cap,
                );
            }
        }
        if version.at_least(22) && !windows {
            let drops_all = caps
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            if !drops_all {
                out.push(
                    "capabilities_restricted",
                    Level::Restricted,
                    &at("capabilities.drop"),
                    "<does not drop ALL>",
                );
            }
        }
        // hostPorts
        for (i, p) in c.ports.iter().enumerate() {
            if let Some(port) = p.host_port.filter(|p| *p != 0) {
                out.push(
                    "hostPorts",
                    Level::Baseline,
                    &format!("{}[{}].ports[{i}].hostPort", c.field, c.index),
                    &port.to_string(),
                );
            }
        }
        // appArmorProfile (fields, 1.30+)
        if version.at_least(30)
            && let Some(p) = sc.and_then(|s| s.app_armor_profile.as_ref())
            && !matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost")
        {
            out.push(
                "appArmorProfile",
                Level::Baseline,
                &at("appArmorProfile.type"),
                &p.type_,
            );
        }
        // seLinuxOptions
        if let Some(se) = sc.and_then(|s| s.se_linux_options.as_ref()) {
            out.selinux(se, version, &at("seLinuxOptions"));
        }
        // procMount
        if let Some(pm) = sc.and_then(|s| s.proc_mount.as_deref())
            && pm != "Default"
        {
            out.push("procMount", Level::Baseline, &at("procMount"), pm);
        }
        // seccompProfile_baseline (fields, 1.19+)
        let seccomp = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str());
        if version.at_least(19) && seccomp == Some("Unconfined") {
            out.push(
                "seccompProfile_baseline",
                Level::Baseline,
                &at("seccompProfile.type"),
                "Unconfined",
            );
        }
        // windowsHostProcess
        if sc
            .and_then(|s| s.windows_options.as_ref())
            .and_then(|o| o.host_process)
            == Some(true)
        {
            out.push(
                "windowsHostProcess",
                Level::Baseline,
                &at("windowsOptions.hostProcess"),
                "true",
            );
        }
        // hostProbesAndHostLifecycle (1.34+): no `host` in probes or lifecycle handlers.
        if version.at_least(34) {
            let mut handlers: Vec<(String, [Option<&str>; 2])> = Vec::new();
            let probe_fields = ["livenessProbe", "readinessProbe", "startupProbe"];
            for (probe, field) in c.probes.iter().zip(probe_fields) {
                if let Some(p) = probe {
                    let hosts = [
                        p.http_get.as_ref().and_then(|h| h.host.as_deref()),
                        p.tcp_socket.as_ref().and_then(|t| t.host.as_deref()),
                    ];
                    handlers.push((format!("{}[{}].{field}", c.field, c.index), hosts));
                }
            }
            for (handler, field) in c.lifecycle.iter().flat_map(|l| {
                [
                    (l.post_start.as_ref(), "postStart"),
                    (l.pre_stop.as_ref(), "preStop"),
                ]
            }) {
                if let Some(h) = handler {
                    let hosts = [
                        h.http_get.as_ref().and_then(|h| h.host.as_deref()),
                        h.tcp_socket.as_ref().and_then(|t| t.host.as_deref()),
                    ];
                    let base = format!("{}[{}].lifecycle.{field}", c.field, c.index);
                    handlers.push((base, hosts));
                }
            }
            for (base, hosts) in handlers {
                for (host, action) in hosts.into_iter().zip(["httpGet", "tcpSocket"]) {
                    if let Some(host) = host.filter(|h| !h.is_empty()) {
                        out.push(
                            "hostProbesAndHostLifecycle",
                            Level::Baseline,
                            &format!("{base}.{action}.host"),
                            host,
                        );
                    }
                }
            }
        }
        // allowPrivilegeEscalation (restricted)
        if !windows && sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            let value = match sc.and_then(|s| s.allow_privilege_escalation) {
                Some(true) => "true",
                _ => "<unset>",
            };
            out.push(
                "allowPrivilegeEscalation",
                Level::Restricted,
                &at("allowPrivilegeEscalation"),
                value,
            );
        }
        // runAsNonRoot (restricted): the container's own setting, else the pod's.
        match sc.and_then(|s| s.run_as_non_root) {
            Some(true) => {}
            Some(false) => out.push(
                "runAsNonRoot",
                Level::Restricted,
                &at("runAsNonRoot"),
                "false",
            ),
            None if psc.and_then(|p| p.run_as_non_root) == Some(true) => {}
            None => out.push(
                "runAsNonRoot",
                Level::Restricted,
                &at("runAsNonRoot"),
                "<unset>",
            ),
        }
        // runAsUser (restricted, 1.23+)
        if version.at_least(23) && sc.and_then(|s| s.run_as_user) == Some(0) {
            out.push("runAsUser", Level::Restricted, &at("runAsUser"), "0");
        }
        // seccompProfile_restricted (1.19+): the container's profile, else the pod's.
        if version.at_least(19) && !windows {
            let pod_profile = psc
                .and_then(|p| p.seccomp_profile.as_ref())
                .map(|p| p.type_.as_str());
            match seccomp.or(pod_profile) {
                Some("RuntimeDefault" | "Localhost") => {}
                Some(other) if seccomp.is_some() => out.push(
                    "seccompProfile_restricted",
                    Level::Restricted,
                    &at("seccompProfile.type"),
                    other,
                ),
                Some(_) => {}
                None => out.push(
                    "seccompProfile_restricted",
                    Level::Restricted,
                    &at("seccompProfile.type"),
                    "<unset>",
                ),
            }
        }
    }

    // Pod-level fields.
    if let Some(psc) = psc {
        if version.at_least(30)
            && let Some(p) = &psc.app_armor_profile
            && !matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost")
        {
            out.push(
                "appArmorProfile",
                Level::Baseline,
                "securityContext.appArmorProfile.type",
                &p.type_,
            );
        }
        if let Some(se) = &psc.se_linux_options {
            out.selinux(se, version, "securityContext.seLinuxOptions");
        }
        if let Some(p) = &psc.seccomp_profile {
            if version.at_least(19) && p.type_ == "Unconfined" {
                out.push(
                    "seccompProfile_baseline",
                    Level::Baseline,
                    "securityContext.seccompProfile.type",
                    "Unconfined",
                );
            }
            if version.at_least(19)
                && !windows
                && !matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost")
            {
                out.push(
                    "seccompProfile_restricted",
                    Level::Restricted,
                    "securityContext.seccompProfile.type",
                    &p.type_,
                );
            }
        }
        if psc.windows_options.as_ref().and_then(|o| o.host_process) == Some(true) {
            out.push(
                "windowsHostProcess",
                Level::Baseline,
                "securityContext.windowsOptions.hostProcess",
                "true",
            );
        }
        for (i, s) in psc.sysctls.iter().flatten().enumerate() {
            if !safe_sysctl(&s.name, version) {
                out.push(
                    "sysctls",
                    Level::Baseline,
                    &format!("securityContext.sysctls[{i}].name"),
                    &s.name,
                );
            }
        }
        if psc.run_as_non_root == Some(false) {
            out.push(
                "runAsNonRoot",
                Level::Restricted,
                "securityContext.runAsNonRoot",
                "false",
            );
        }
        if version.at_least(23) && psc.run_as_user == Some(0) {
            out.push(
                "runAsUser",
                Level::Restricted,
                "securityContext.runAsUser",
                "0",
            );
        }
    }

    // Volumes: hostPathVolumes (baseline), restrictedVolumes (restricted).
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(hp) = &v.host_path {
            out.push(
                "hostPathVolumes",
                Level::Baseline,
                &format!("volumes[{i}].hostPath.path"),
                &hp.path,
            );
        }
        let t = volume_type(v);
        if !RESTRICTED_VOLUME_TYPES.contains(&t) {
            out.push(
                "restrictedVolumes",
                Level::Restricted,
                &format!("volumes[{i}].{t}"),
                &v.name,
            );
        }
    }

    // Legacy annotations: AppArmor (1.0+) and seccomp (1.0+) on the pod template.
    let meta_path = w.meta_path();
    for (key, value) in w.pod_meta.annotations.iter().flatten() {
        let path = format!("{meta_path}.annotations[{key}]");
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && !(value.is_empty() || value == "runtime/default" || value.starts_with("localhost/"))
        {
            out.out.push(violation(
                "appArmorProfile",
                Level::Baseline,
                path.clone(),
                value,
            ));
        }
        if (key == "seccomp.security.alpha.kubernetes.io/pod"
            || key.starts_with("container.seccomp.security.alpha.kubernetes.io/"))
            && value == "unconfined"
        {
            out.out.push(violation(
                "seccompProfile_baseline",
                Level::Baseline,
                path,
                value,
            ));
        }
    }
    out.out
}

fn violation(control: &'static str, level: Level, path: String, value: &str) -> Violation {
    Violation {
        control,
        level,
        path,
        value: value.to_string(),
    }
}

struct Checker {
    out: Vec<Violation>,
    spec_path: &'static str,
}

impl Checker {
    fn push(&mut self, control: &'static str, level: Level, field: &str, value: &str) {
        let path = format!("{}.{field}", self.spec_path);
        self.out.push(violation(control, level, path, value));
    }

    fn selinux(&mut self, se: &SELinuxOptions, version: Version, at: &str) {
        let t = se.type_.as_deref().unwrap_or("");
        let allowed =
            SELINUX_TYPES.contains(&t) || (version.at_least(31) && t == "container_engine_t");
        if !allowed {
            self.push("seLinuxOptions", Level::Baseline, &format!("{at}.type"), t);
        }
        for (field, value) in [("user", &se.user), ("role", &se.role)] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                self.push(
                    "seLinuxOptions",
                    Level::Baseline,
                    &format!("{at}.{field}"),
                    v,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::load_str;
    use std::path::Path;

    fn pod(spec: &str) -> Workload {
        let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{spec}");
        let mut loaded = load_str(Path::new("p.yaml"), &text);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        loaded.workloads.remove(0)
    }

    fn controls(w: &Workload, version: Version) -> Vec<(&'static str, Level)> {
        evaluate(w, version)
            .into_iter()
            .map(|v| (v.control, v.level))
            .collect()
    }

    #[test]
    fn a_hardened_pod_is_restricted() {
        let w = pod(
            "  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n  \
                     containers:\n  - name: app\n    image: nginx\n    securityContext:\n      \
                     allowPrivilegeEscalation: false\n      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n",
        );
        assert_eq!(evaluate(&w, Version::Latest), vec![]);
        assert_eq!(level_met(&evaluate(&w, Version::Latest)), Level::Restricted);
    }

    #[test]
    fn a_bare_pod_is_baseline_with_the_restricted_controls_named() {
        let w = pod("  containers:\n  - name: app\n    image: nginx\n");
        let got = controls(&w, Version::Latest);
        assert_eq!(
            got,
            vec![
                ("capabilities_restricted", Level::Restricted),
                ("allowPrivilegeEscalation", Level::Restricted),
                ("runAsNonRoot", Level::Restricted),
                ("seccompProfile_restricted", Level::Restricted),
            ]
        );
        // Before 1.19 there was no seccomp field check; before 1.22 no capabilities_restricted.
        let old = controls(&w, Version::Minor(18));
        assert_eq!(
            old,
            vec![
                ("allowPrivilegeEscalation", Level::Restricted),
                ("runAsNonRoot", Level::Restricted)
            ]
        );
        assert_eq!(level_met(&evaluate(&w, Version::Latest)), Level::Baseline);
    }

    #[test]
    fn sysctls_follow_the_version_that_allowed_them() {
        let w = pod(
            "  securityContext:\n    sysctls: [{name: net.ipv4.tcp_keepalive_time, value: '60'}]\n  \
                     containers: [{name: app, image: nginx}]\n",
        );
        assert!(controls(&w, Version::Minor(28)).contains(&("sysctls", Level::Baseline)));
        assert!(!controls(&w, Version::Minor(29)).contains(&("sysctls", Level::Baseline)));
    }

    #[test]
    fn ephemeral_containers_are_checked() {
        let w = pod(
            "  containers: [{name: app, image: nginx}]\n  ephemeralContainers:\n  \
                     - name: debugger\n    image: busybox\n    securityContext: {privileged: true}\n",
        );
        let v = evaluate(&w, Version::Latest);
        assert!(v.iter().any(|v| v.control == "privileged"
            && v.path == "spec.ephemeralContainers[0].securityContext.privileged"));
    }

    #[test]
    fn host_port_zero_is_not_a_host_port() {
        let w = pod(
            "  containers:\n  - name: app\n    image: nginx\n    ports: [{containerPort: 80, hostPort: 0}]\n",
        );
        assert!(
            !controls(&w, Version::Latest)
                .iter()
                .any(|(c, _)| *c == "hostPorts")
        );
    }

    /// kube-psp-advisor ignored seccomp, AppArmor and procMount; these are baseline controls.
    #[test]
    fn seccomp_apparmor_and_proc_mount_are_checked() {
        let w = pod(
            "  securityContext: {seccompProfile: {type: Unconfined}}\n  containers:\n  - name: app\n    \
                     image: nginx\n    securityContext:\n      appArmorProfile: {type: Unconfined}\n      \
                     procMount: Unmasked\n",
        );
        let got: Vec<(&str, String)> = evaluate(&w, Version::Latest)
            .into_iter()
            .filter(|v| v.level == Level::Baseline)
            .map(|v| (v.control, v.path))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "appArmorProfile",
                    "spec.containers[0].securityContext.appArmorProfile.type".into()
                ),
                (
                    "procMount",
                    "spec.containers[0].securityContext.procMount".into()
                ),
                (
                    "seccompProfile_baseline",
                    "spec.securityContext.seccompProfile.type".into()
                ),
            ]
        );
        // Before 1.30 AppArmor was an annotation only.
        assert!(!controls(&w, Version::Minor(29)).contains(&("appArmorProfile", Level::Baseline)));
        let annotated = load_str(
            Path::new("a.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    \
             container.apparmor.security.beta.kubernetes.io/app: unconfined\n\
             spec: {containers: [{name: app, image: nginx}]}\n",
        )
        .workloads
        .remove(0);
        assert!(
            controls(&annotated, Version::Minor(25))
                .contains(&("appArmorProfile", Level::Baseline))
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!(Version::parse("latest").unwrap(), Version::Latest);
        assert_eq!(Version::parse("v1.30").unwrap(), Version::Minor(30));
        assert_eq!(Version::parse("1.24.3").unwrap(), Version::Minor(24));
        assert!(Version::parse("2.0").is_err());
        assert_eq!(Version::Minor(30).label(), "v1.30");
    }
}
