//! A hardening patch for the workload's securityContext (a strategic merge patch, for
//! `kubectl patch KIND NAME --patch-file`): drop ALL capabilities and add back only those the
//! container adds, runAsNonRoot, a read-only root filesystem, seccomp RuntimeDefault and no
//! privilege escalation — each only where nothing the workload needs forbids it. What is left
//! out, and why, is listed beside the patch.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::needs::{ContainerNeeds, Needs};
use crate::workloads::Workload;

/// A patch and the hardening it leaves out.
#[derive(Clone, Debug, Serialize)]
pub struct Hardening {
    pub patch: Value,
    /// One line per setting left out: `container: setting: reason`.
    pub skipped: Vec<String>,
}

/// The hardening patch of one workload.
pub fn hardening(w: &Workload, needs: &Needs) -> Hardening {
    let mut skipped = Vec::new();
    let mut pod = Map::new();
    let any_unconfined = needs
        .containers
        .iter()
        .any(|c| c.seccomp.as_deref() == Some("Unconfined"));
    let pod_seccomp = w
        .spec
        .security_context
        .as_ref()
        .and_then(|p| p.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    match pod_seccomp {
        Some("RuntimeDefault" | "Localhost") => {}
        _ if any_unconfined => skipped
            .push("pod: seccompProfile RuntimeDefault: a container runs Unconfined".to_string()),
        _ => {
            pod.insert("seccompProfile".into(), json!({"type": "RuntimeDefault"}));
        }
    }
    let mut groups: [(&str, Vec<Value>); 2] =
        [("initContainers", Vec::new()), ("containers", Vec::new())];
    for c in &needs.containers {
        // Ephemeral containers cannot be patched in; they are covered by the policies.
        if c.ephemeral {
            continue;
        }
        let sc = container_patch(c, &mut skipped);
        if !sc.is_empty() {
            let slot = if c.init { 0 } else { 1 };
            groups[slot]
                .1
                .push(json!({"name": c.name, "securityContext": Value::Object(sc)}));
        }
    }
    let mut spec = Map::new();
    if !pod.is_empty() {
        spec.insert("securityContext".into(), Value::Object(pod));
    }
    for (field, list) in groups {
        if !list.is_empty() {
            spec.insert(field.into(), Value::Array(list));
        }
    }
    let spec = Value::Object(spec);
    let patch = match w.kind.as_str() {
        "Pod" => json!({"spec": spec}),
        "CronJob" => json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}}),
        _ => json!({"spec": {"template": {"spec": spec}}}),
    };
    Hardening { patch, skipped }
}

fn container_patch(c: &ContainerNeeds, skipped: &mut Vec<String>) -> Map<String, Value> {
    let mut sc = Map::new();
    let name = &c.name;
    if c.privileged {
        skipped.push(format!(
            "{name}: capabilities, allowPrivilegeEscalation: the container is privileged"
        ));
    } else {
        if !c.capabilities_drop.iter().any(|d| d == "ALL") {
            let mut caps = json!({"drop": ["ALL"]});
            if !c.capabilities_add.is_empty() {
                caps["add"] = json!(c.capabilities_add);
            }
            sc.insert("capabilities".into(), caps);
        }
        let needs_escalation = c.allow_privilege_escalation == Some(true)
            || c.capabilities_add
                .iter()
                .any(|cap| cap == "SYS_ADMIN" || cap == "CAP_SYS_ADMIN");
        if needs_escalation {
            skipped.push(format!(
                "{name}: allowPrivilegeEscalation false: the container sets it true or adds SYS_ADMIN"
            ));
        } else if c.allow_privilege_escalation.is_none() {
            sc.insert("allowPrivilegeEscalation".into(), Value::Bool(false));
        }
    }
    match c.read_only_root_filesystem {
        Some(true) => {}
        Some(false) => skipped.push(format!(
            "{name}: readOnlyRootFilesystem: the manifest sets it false on purpose"
        )),
        None => {
            sc.insert("readOnlyRootFilesystem".into(), Value::Bool(true));
        }
    }
    match (c.run_as_user, c.run_as_non_root) {
        (Some(0), _) => skipped.push(format!("{name}: runAsNonRoot: the container runs as uid 0")),
        (_, Some(true)) => {}
        (Some(_), _) => {
            sc.insert("runAsNonRoot".into(), Value::Bool(true));
        }
        (None, _) => skipped.push(format!(
            "{name}: runAsNonRoot: the image's user is unknown (set runAsUser to a non-zero uid first)"
        )),
    }
    sc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::needs::needs;
    use crate::pss::Version;
    use crate::test_workloads::deployment;

    #[test]
    fn the_patch_drops_all_and_adds_back_what_the_container_adds() {
        let w = deployment(
            "web",
            "api",
            "      containers:\n      - name: app\n        image: nginx\n        securityContext:\n          \
             runAsUser: 1000\n          capabilities: {add: [NET_BIND_SERVICE]}\n",
        );
        let h = hardening(&w, &needs(&w, Version::Latest));
        let spec = &h.patch["spec"]["template"]["spec"];
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let sc = &spec["containers"][0]["securityContext"];
        assert_eq!(spec["containers"][0]["name"], "app");
        assert_eq!(
            sc["capabilities"],
            json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
        );
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsNonRoot"], true);
        assert!(h.skipped.is_empty(), "{:?}", h.skipped);
    }

    #[test]
    fn what_the_workload_needs_is_left_out_and_said() {
        let w = deployment(
            "ops",
            "agent",
            "      securityContext: {seccompProfile: {type: Unconfined}}\n      containers:\n      \
             - name: agent\n        image: agent\n        securityContext:\n          \
             privileged: true\n          runAsUser: 0\n          readOnlyRootFilesystem: false\n",
        );
        let h = hardening(&w, &needs(&w, Version::Latest));
        let sc = &h.patch["spec"]["template"]["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc.get("capabilities"), None);
        assert_eq!(sc.get("runAsNonRoot"), None);
        assert_eq!(sc.get("readOnlyRootFilesystem"), None);
        let skipped = h.skipped.join("\n");
        for reason in [
            "the container is privileged",
            "runs as uid 0",
            "sets it false on purpose",
        ] {
            assert!(skipped.contains(reason), "{skipped}");
        }
    }
}
