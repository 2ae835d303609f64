//! A `ValidatingAdmissionPolicy` (CEL) and its binding per workload, admitting exactly what
//! the workload needs: its pods (matched by the workload's selector in its namespace) may
//! not add a privilege, host namespace, host port, host path, capability, volume type, sysctl
//! or profile the workload does not already use, nor give up a protection it already has.
//!
//! Pods are checked on CREATE and UPDATE, including `pods/ephemeralcontainers` (a debug
//! container must fit the same policy). Expressions read `object` dynamically, so one list
//! (`variables.containers`) holds containers, init containers and ephemeral containers.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::needs::Needs;
use crate::workloads::Workload;

/// The policy and its binding for one workload.
pub fn policy(
    name: &str,
    w: &Workload,
    needs: &Needs,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let name = name.to_string();
    let labels = managed_labels(w);
    let policy = ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["pods".into(), "pods/ephemeralcontainers".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "pods-of-this-workload".into(),
                expression: pod_match(w),
            }]),
            variables: Some(variables(needs)),
            validations: Some(validations(needs)),
            ..Default::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: name,
            validation_actions: vec!["Deny".into()],
            match_resources: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        w.namespace.clone(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    (policy, binding)
}

/// `ktrail-<namespace>-<kind>-<name>`, as a DNS subdomain.
pub fn object_name(w: &Workload) -> String {
    dns_name(&format!("ktrail-{}-{}-{}", w.namespace, w.kind, w.name))
}

/// `raw` lowercased, with what a DNS subdomain cannot hold replaced, at most 253 long.
pub fn dns_name(raw: &str) -> String {
    let raw = raw.to_ascii_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// Labels on every generated object, so they can be found and removed together.
pub fn managed_labels(w: &Workload) -> BTreeMap<String, String> {
    let value: String = w
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "ktrail".to_string(),
        ),
        (
            "ktrail.dev/workload".to_string(),
            value.trim_matches(['-', '_', '.']).to_string(),
        ),
    ])
}

/// A CEL string literal.
pub fn cel_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn cel_list<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| cel_str(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

fn cel_ints(items: &[i32]) -> String {
    let items: Vec<String> = items.iter().map(i32::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Which pods belong to the workload: the selector's labels, a bare Pod's name, else the
/// controller's name prefix.
fn pod_match(w: &Workload) -> String {
    if w.kind == "Pod" {
        return format!("object.metadata.name == {}", cel_str(&w.name));
    }
    if w.selector.is_empty() {
        return format!(
            "has(object.metadata.generateName) && object.metadata.generateName.startsWith({})",
            cel_str(&format!("{}-", w.name))
        );
    }
    let mut terms = vec!["has(object.metadata.labels)".to_string()];
    for (k, v) in &w.selector {
        terms.push(format!(
            "{key} in object.metadata.labels && object.metadata.labels[{key}] == {value}",
            key = cel_str(k),
            value = cel_str(v)
        ));
    }
    terms.join(" && ")
}

fn variables(needs: &Needs) -> Vec<Variable> {
    let mut out = vec![Variable {
        name: "containers".into(),
        expression: "object.spec.containers + \
            (has(object.spec.initContainers) ? object.spec.initContainers : []) + \
            (has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers : [])"
            .into(),
    }];
    let read_only: Vec<&str> = needs
        .host_paths
        .iter()
        .filter(|h| h.read_only)
        .map(|h| h.path.as_str())
        .collect();
    if !read_only.is_empty() {
        out.push(Variable {
            name: "readOnlyHostPathVolumes".into(),
            expression: format!(
                "has(object.spec.volumes) ? object.spec.volumes.filter(v, has(v.hostPath) && v.hostPath.path in {}).map(v, v.name) : []",
                cel_list(&read_only)
            ),
        });
    }
    out
}

/// `c.securityContext.<path>` is set (CEL's `has` needs every step).
fn sc_has(var: &str, path: &str) -> String {
    let mut steps = vec![format!("has({var}.securityContext)")];
    let mut prefix = format!("{var}.securityContext");
    for part in path.split('.') {
        prefix = format!("{prefix}.{part}");
        steps.push(format!("has({prefix})"));
    }
    steps.join(" && ")
}

fn rule(expression: String, message: &str) -> Validation {
    Validation {
        expression,
        message: Some(message.to_string()),
        reason: Some("Forbidden".into()),
        ..Default::default()
    }
}

fn validations(needs: &Needs) -> Vec<Validation> {
    let mut out = Vec::new();
    let pod = "object.spec";
    for (needed, field) in [
        (needs.host_network, "hostNetwork"),
        (needs.host_pid, "hostPID"),
        (needs.host_ipc, "hostIPC"),
    ] {
        if !needed {
            out.push(rule(
                format!("!has({pod}.{field}) || {pod}.{field} == false"),
                &format!("{field} is not needed by this workload"),
            ));
        }
    }

    let privileged: Vec<&str> = needs
        .containers
        .iter()
        .filter(|c| c.privileged)
        .map(|c| c.name.as_str())
        .collect();
    out.push(rule(
        format!(
            "variables.containers.all(c, {}!({} && c.securityContext.privileged))",
            if privileged.is_empty() {
                String::new()
            } else {
                format!("c.name in {} || ", cel_list(&privileged))
            },
            sc_has("c", "privileged")
        ),
        &if privileged.is_empty() {
            "no container of this workload is privileged".to_string()
        } else {
            format!("only {} may be privileged", privileged.join(", "))
        },
    ));

    let caps: BTreeMap<&str, Vec<&str>> = needs
        .containers
        .iter()
        .filter(|c| !c.capabilities_add.is_empty())
        .map(|c| {
            (
                c.name.as_str(),
                c.capabilities_add.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let adds = "c.securityContext.capabilities.add";
    let allowed = if caps.is_empty() {
        format!("{adds}.size() == 0")
    } else {
        let map: Vec<String> = caps
            .iter()
            .map(|(name, list)| format!("{}: {}", cel_str(name), cel_list(list)))
            .collect();
        let map = format!("{{{}}}", map.join(", "));
        format!("{adds}.all(x, x in (c.name in {map} ? {map}[c.name] : []))")
    };
    out.push(rule(
        format!(
            "variables.containers.all(c, !({}) || {allowed})",
            sc_has("c", "capabilities.add")
        ),
        "containers may add only the capabilities this workload adds",
    ));
    if needs
        .containers
        .iter()
        .all(|c| c.capabilities_drop.iter().any(|d| d == "ALL"))
    {
        out.push(rule(
            format!(
                "variables.containers.all(c, {} && 'ALL' in c.securityContext.capabilities.drop)",
                sc_has("c", "capabilities.drop")
            ),
            "every container drops ALL capabilities",
        ));
    }

    out.push(rule(
        format!(
            "variables.containers.all(c, !has(c.ports) || c.ports.all(p, !has(p.hostPort) || p.hostPort == 0{}))",
            if needs.host_ports.is_empty() {
                String::new()
            } else {
                format!(" || p.hostPort in {}", cel_ints(&needs.host_ports))
            }
        ),
        &if needs.host_ports.is_empty() {
            "no host ports".to_string()
        } else {
            format!("host ports only {:?}", needs.host_ports)
        },
    ));

    let mut types: Vec<&str> = needs.volume_types.iter().map(String::as_str).collect();
    if needs.service_account_token && !types.contains(&"projected") {
        // The ServiceAccount admission plugin adds the projected token volume before
        // validating admission runs.
        types.push("projected");
    }
    types.sort_unstable();
    let any_of: Vec<String> = types.iter().map(|t| format!("has(v.{t})")).collect();
    out.push(rule(
        format!(
            "!has(object.spec.volumes) || object.spec.volumes.all(v, {})",
            if any_of.is_empty() {
                "false".to_string()
            } else {
                any_of.join(" || ")
            }
        ),
        &format!("volume types only {}", types.join(", ")),
    ));
    if !needs.host_paths.is_empty() {
        let paths: Vec<&str> = needs.host_paths.iter().map(|h| h.path.as_str()).collect();
        out.push(rule(
            format!(
                "object.spec.volumes.all(v, !has(v.hostPath) || v.hostPath.path in {})",
                cel_list(&paths)
            ),
            &format!("host paths only {}", paths.join(", ")),
        ));
    }
    if needs.host_paths.iter().any(|h| h.read_only) {
        out.push(rule(
            "variables.containers.all(c, !has(c.volumeMounts) || c.volumeMounts.all(m, \
             !(m.name in variables.readOnlyHostPathVolumes) || (has(m.readOnly) && m.readOnly)))"
                .into(),
            "host paths this workload mounts read-only stay read-only",
        ));
    }

    if needs.containers.iter().all(|c| c.proc_mount == "Default") {
        out.push(rule(
            format!(
                "variables.containers.all(c, !({}) || c.securityContext.procMount == 'Default')",
                sc_has("c", "procMount")
            ),
            "procMount stays Default",
        ));
    }
    let pod_sc = |field: &str| {
        format!("has(object.spec.securityContext) && has(object.spec.securityContext.{field})")
    };
    type Profile = fn(&crate::needs::ContainerNeeds) -> Option<&str>;
    let profiles: [(Profile, &str, &str); 2] = [
        (|c| c.seccomp.as_deref(), "seccompProfile", "seccomp"),
        (|c| c.apparmor.as_deref(), "appArmorProfile", "AppArmor"),
    ];
    for (profile, field, label) in profiles {
        if !needs
            .containers
            .iter()
            .any(|c| profile(c) == Some("Unconfined"))
        {
            out.push(rule(
                format!(
                    "(!({pod_has}) || object.spec.securityContext.{field}.type != 'Unconfined') && \
                     variables.containers.all(c, !({c_has}) || c.securityContext.{field}.type != 'Unconfined')",
                    pod_has = pod_sc(field),
                    c_has = sc_has("c", field),
                ),
                &format!("{label} is never Unconfined"),
            ));
        }
    }
    out.push(rule(
        format!(
            "!({}) || object.spec.securityContext.sysctls.all(s, s.name in {})",
            pod_sc("sysctls"),
            cel_list(&needs.sysctls)
        ),
        &if needs.sysctls.is_empty() {
            "no sysctls".to_string()
        } else {
            format!("sysctls only {}", needs.sysctls.join(", "))
        },
    ));
    if needs.containers.iter().all(|c| c.non_root()) {
        out.push(rule(
            format!(
                "!({pod} && object.spec.securityContext.runAsUser == 0) && \
                 variables.containers.all(c, !({c} && c.securityContext.runAsUser == 0))",
                pod = pod_sc("runAsUser"),
                c = sc_has("c", "runAsUser")
            ),
            "never runs as root (uid 0)",
        ));
    }
    if needs
        .containers
        .iter()
        .all(|c| c.run_as_non_root == Some(true))
    {
        out.push(rule(
            format!(
                "variables.containers.all(c, {c} ? c.securityContext.runAsNonRoot : ({pod} && object.spec.securityContext.runAsNonRoot))",
                c = sc_has("c", "runAsNonRoot"),
                pod = pod_sc("runAsNonRoot")
            ),
            "runAsNonRoot stays true",
        ));
    }
    if needs
        .containers
        .iter()
        .all(|c| c.allow_privilege_escalation == Some(false))
    {
        out.push(rule(
            format!(
                "variables.containers.all(c, {} && c.securityContext.allowPrivilegeEscalation == false)",
                sc_has("c", "allowPrivilegeEscalation")
            ),
            "allowPrivilegeEscalation stays false",
        ));
    }
    if needs
        .containers
        .iter()
        .all(|c| c.read_only_root_filesystem == Some(true))
    {
        out.push(rule(
            format!(
                "variables.containers.all(c, {} && c.securityContext.readOnlyRootFilesystem == true)",
                sc_has("c", "readOnlyRootFilesystem")
            ),
            "the root filesystem stays read-only",
        ));
    }
    if !needs.windows_host_process {
        let pod = pod_sc("windowsOptions");
        out.push(rule(
            format!(
                "!({pod} && has(object.spec.securityContext.windowsOptions.hostProcess) && \
                 object.spec.securityContext.windowsOptions.hostProcess == true) && \
                 variables.containers.all(c, !({c} && c.securityContext.windowsOptions.hostProcess == true))",
                c = sc_has("c", "windowsOptions.hostProcess")
            ),
            "no Windows HostProcess containers",
        ));
    }
    if needs.selinux.is_empty() {
        out.push(rule(
            format!(
                "!({}) && variables.containers.all(c, !({}))",
                pod_sc("seLinuxOptions"),
                sc_has("c", "seLinuxOptions")
            ),
            "no custom SELinux options",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::needs::needs;
    use crate::pss::Version;
    use crate::test_workloads::deployment;

    #[test]
    fn names_labels_and_cel_literals_are_what_kubernetes_accepts() {
        assert_eq!(
            dns_name("ktrail-Billing-Deployment-API_v2."),
            "ktrail-billing-deployment-api-v2"
        );
        assert_eq!(dns_name(&"a".repeat(300)).len(), 253);
        assert_eq!(cel_str(r"it's a \ path"), r"'it\'s a \\ path'");
        let w = deployment(
            "billing",
            "_Invoice!",
            "      containers:\n      - {name: a, image: x}\n",
        );
        assert_eq!(object_name(&w), "ktrail-billing-deployment--invoice");
        assert_eq!(managed_labels(&w)["ktrail.dev/workload"], "Invoice");
    }

    #[test]
    fn the_policy_matches_the_workloads_pods_and_checks_what_it_may_not_do() {
        let w = deployment(
            "billing",
            "api",
            "      containers:\n      - name: app\n        image: api\n        securityContext: {runAsUser: 1000}\n",
        );
        let (policy, binding) = policy(
            "ktrail-billing-deployment-api",
            &w,
            &needs(&w, Version::Latest),
        );
        let policy = serde_json::to_value(policy).unwrap();
        let binding = serde_json::to_value(binding).unwrap();
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        let resources = &policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"];
        assert_eq!(
            resources,
            &serde_json::json!(["pods", "pods/ephemeralcontainers"])
        );
        let expressions: Vec<&str> = policy["spec"]["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["expression"].as_str().unwrap())
            .collect();
        assert!(
            expressions.iter().any(|e| e.contains("privileged")),
            "{expressions:?}"
        );
        assert!(
            expressions.iter().any(|e| e.contains("hostNetwork")),
            "{expressions:?}"
        );
        assert_eq!(
            binding["spec"]["policyName"],
            "ktrail-billing-deployment-api"
        );
        assert_eq!(
            binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "billing"
        );
    }
}
