//! The legacy export: a `policy/v1beta1` PodSecurityPolicy per workload (or per service
//! account), with the Role and RoleBinding that let the service account `use` it.
//!
//! PodSecurityPolicy was removed in Kubernetes 1.25 and k8s-openapi's current API set has no
//! type for it, so it is built as JSON here and checked against the 1.24 schema in the tests.
//! Unlike kube-psp-advisor this keeps host paths writable where the workload writes, ignores
//! `hostPort: 0`, keeps the pod's user when a container has a securityContext, and covers
//! seccomp, AppArmor, procMount, sysctls and ephemeral containers.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::needs::{ContainerNeeds, Needs};
use crate::vap::managed_labels;
use crate::workloads::Workload;

/// Volume types as PodSecurityPolicy names them (its `volumes` list uses the field names).
fn psp_volumes(needs: &Needs) -> Vec<String> {
    let mut v: BTreeSet<String> = needs.volume_types.iter().cloned().collect();
    if needs.service_account_token {
        v.insert("projected".into());
    }
    v.into_iter().collect()
}

fn ranges<I: IntoIterator<Item = i64>>(ids: I) -> Value {
    let ids: BTreeSet<i64> = ids.into_iter().collect();
    Value::Array(
        ids.into_iter()
            .map(|id| json!({"min": id, "max": id}))
            .collect(),
    )
}

fn profile_names(
    containers: &[ContainerNeeds],
    profile: fn(&ContainerNeeds) -> Option<&str>,
) -> (Vec<&'static str>, &'static str) {
    let mut names = BTreeSet::new();
    for c in containers {
        names.insert(match profile(c) {
            Some("Unconfined") => "unconfined",
            Some("Localhost") => "localhost/*",
            // Unset runs under the runtime's default once the PSP defaults it.
            _ => "runtime/default",
        });
    }
    if names.is_empty() {
        names.insert("runtime/default");
    }
    let default = if names.contains("runtime/default") {
        "runtime/default"
    } else {
        names.iter().next().copied().unwrap_or("runtime/default")
    };
    (names.into_iter().collect(), default)
}

/// The PodSecurityPolicy admitting exactly what `needs` asks for, named `name`.
pub fn pod_security_policy(name: &str, labels: &Value, needs: &Needs) -> Value {
    let containers = &needs.containers;
    let users: Option<Vec<i64>> = containers.iter().map(|c| c.run_as_user).collect();
    let run_as_user = match users {
        Some(ids) if !ids.is_empty() => json!({"rule": "MustRunAs", "ranges": ranges(ids)}),
        _ if !containers.is_empty() && containers.iter().all(|c| c.non_root()) => {
            json!({"rule": "MustRunAsNonRoot"})
        }
        _ => json!({"rule": "RunAsAny"}),
    };
    let groups: Option<Vec<i64>> = containers.iter().map(|c| c.run_as_group).collect();
    let run_as_group = match groups {
        Some(ids) if !ids.is_empty() => json!({"rule": "MustRunAs", "ranges": ranges(ids)}),
        _ => json!({"rule": "RunAsAny"}),
    };
    let supplemental = if needs.supplemental_groups.is_empty() {
        json!({"rule": "RunAsAny"})
    } else {
        json!({"rule": "MustRunAs", "ranges": ranges(needs.supplemental_groups.iter().copied())})
    };
    let fs_group = match needs.fs_group {
        Some(g) => json!({"rule": "MustRunAs", "ranges": ranges([g])}),
        None => json!({"rule": "RunAsAny"}),
    };
    let se_linux = match needs.selinux.as_slice() {
        [one] => {
            let mut parts = one.splitn(4, ':');
            let mut options = serde_json::Map::new();
            for key in ["user", "role", "type", "level"] {
                if let Some(v) = parts.next().filter(|v| !v.is_empty()) {
                    options.insert(key.into(), Value::String(v.into()));
                }
            }
            json!({"rule": "MustRunAs", "seLinuxOptions": options})
        }
        _ => json!({"rule": "RunAsAny"}),
    };
    let privileged = needs.privileged();
    // Escalation stays possible only where a container asks for it or is privileged.
    let escalation = privileged
        || containers
            .iter()
            .any(|c| c.allow_privilege_escalation == Some(true));
    let drops: Option<BTreeSet<String>> = containers
        .iter()
        .map(|c| c.capabilities_drop.iter().cloned().collect::<BTreeSet<_>>())
        .reduce(|a, b| a.intersection(&b).cloned().collect());
    let mut spec = json!({
        "privileged": privileged,
        "allowPrivilegeEscalation": escalation,
        "hostNetwork": needs.host_network,
        "hostPID": needs.host_pid,
        "hostIPC": needs.host_ipc,
        "volumes": psp_volumes(needs),
        "runAsUser": run_as_user,
        "runAsGroup": run_as_group,
        "supplementalGroups": supplemental,
        "fsGroup": fs_group,
        "seLinux": se_linux,
        "readOnlyRootFilesystem": !containers.is_empty()
            && containers.iter().all(|c| c.read_only_root_filesystem == Some(true)),
    });
    let obj = spec.as_object_mut().expect("a JSON object");
    let caps = needs.capabilities();
    if !caps.is_empty() {
        obj.insert("allowedCapabilities".into(), json!(caps));
    }
    if let Some(drops) = drops.filter(|d| !d.is_empty()) {
        obj.insert("requiredDropCapabilities".into(), json!(drops));
    }
    if !needs.host_ports.is_empty() {
        let ports: Vec<Value> = needs
            .host_ports
            .iter()
            .map(|p| json!({"min": p, "max": p}))
            .collect();
        obj.insert("hostPorts".into(), Value::Array(ports));
    }
    if !needs.host_paths.is_empty() {
        let paths: Vec<Value> = needs
            .host_paths
            .iter()
            .map(|h| json!({"pathPrefix": h.path, "readOnly": h.read_only}))
            .collect();
        obj.insert("allowedHostPaths".into(), Value::Array(paths));
    }
    if containers.iter().any(|c| c.proc_mount == "Unmasked") {
        obj.insert(
            "allowedProcMountTypes".into(),
            json!(["Default", "Unmasked"]),
        );
    }
    if !needs.unsafe_sysctls.is_empty() {
        obj.insert("allowedUnsafeSysctls".into(), json!(needs.unsafe_sysctls));
    }
    let (seccomp, seccomp_default) = profile_names(containers, |c| c.seccomp.as_deref());
    let (apparmor, apparmor_default) = profile_names(containers, |c| c.apparmor.as_deref());
    json!({
        "apiVersion": "policy/v1beta1",
        "kind": "PodSecurityPolicy",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "seccomp.security.alpha.kubernetes.io/allowedProfileNames": seccomp.join(","),
                "seccomp.security.alpha.kubernetes.io/defaultProfileName": seccomp_default,
                "apparmor.security.beta.kubernetes.io/allowedProfileNames": apparmor.join(","),
                "apparmor.security.beta.kubernetes.io/defaultProfileName": apparmor_default,
            }
        },
        "spec": spec,
    })
}

/// The PodSecurityPolicy of one workload (named `name`), and the Role + RoleBinding that let
/// its service account use it.
pub fn for_workload(name: &str, w: &Workload, needs: &Needs) -> Vec<Value> {
    bundle(name, &w.namespace, managed_labels(w), needs)
}

/// The PodSecurityPolicy for everything `needs` asks (merged over the workloads of one
/// service account), and the Role + RoleBinding that let that service account use it.
pub fn bundle(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    needs: &Needs,
) -> Vec<Value> {
    let name = name.to_string();
    let psp = pod_security_policy(&name, &json!(labels), needs);
    let role = Role {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["policy".into()]),
            resources: Some(vec!["podsecuritypolicies".into()]),
            resource_names: Some(vec![name.clone()]),
            verbs: vec!["use".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: needs.service_account.clone(),
            namespace: Some(namespace.to_string()),
            api_group: None,
        }]),
    };
    vec![
        psp,
        serde_json::to_value(role).expect("a Role serialises"),
        serde_json::to_value(binding).expect("a RoleBinding serialises"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::needs::needs;
    use crate::pss::Version;
    use crate::test_workloads::deployment;

    #[test]
    fn the_policy_admits_what_the_workload_needs_and_no_more() {
        let w = deployment(
            "mon",
            "exporter",
            "      hostPID: true\n      serviceAccountName: exporter\n      containers:\n      - name: e\n        \
             image: node-exporter\n        ports: [{containerPort: 9100, hostPort: 9100}]\n        \
             securityContext: {runAsUser: 65534, capabilities: {add: [SYS_PTRACE]}}\n",
        );
        let docs = for_workload("ktrail-mon-exporter", &w, &needs(&w, Version::Latest));
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["PodSecurityPolicy", "Role", "RoleBinding"]);
        let spec = &docs[0]["spec"];
        assert_eq!(spec["privileged"], false);
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["hostNetwork"], false);
        assert_eq!(spec["allowedCapabilities"], json!(["SYS_PTRACE"]));
        assert_eq!(spec["runAsUser"]["rule"], "MustRunAs");
        assert_eq!(spec["hostPorts"], json!([{"min": 9100, "max": 9100}]));
        assert_eq!(
            docs[1]["rules"][0]["resourceNames"],
            json!(["ktrail-mon-exporter"])
        );
        assert_eq!(docs[2]["subjects"][0]["name"], "exporter");
    }
}
