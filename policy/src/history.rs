//! Validation against recorded history: a candidate policy (a PodSecurityPolicy, a hardening
//! patch, a Pod Security Standards level) judged by what the store recorded the workloads in
//! its scope doing — processes that need a capability it drops, writes below a root
//! filesystem it makes read-only, connections from the node's address, admitted pod specs it
//! would refuse. Each break carries its evidence rows and the SQL that found them.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::prelude::SessionContext;
use query::rows_json;

use crate::validate::{Break, Constraints, Verdict};
use crate::{Loaded, PolicyError, Version};

type Result<T> = std::result::Result<T, PolicyError>;

/// The workload objects the store recorded: inventory rows (`raw` is the object) and audit
/// events (`responseObject`, the object as stored, else `requestObject`), oldest first; and
/// a line for each recorded event whose `raw` is damaged (it is left out).
pub async fn load_from_store(ctx: &SessionContext) -> Result<(Loaded, Vec<String>)> {
    let kinds = "('pods', 'deployments', 'daemonsets', 'statefulsets', 'replicasets', \
                 'replicationcontrollers', 'jobs', 'cronjobs')";
    let sql = format!(
        "SELECT DISTINCT ts, source, audit_id, raw FROM events WHERE resource IN {kinds} AND \
         ((source = 'k8s_objects') OR (source = 'k8s_audit' AND verb IN ('create', 'update') \
         AND (subresource IS NULL OR subresource = ''))) ORDER BY ts"
    );
    let mut loaded = Loaded::default();
    let mut damaged = Vec::new();
    for r in rows_json(ctx, &sql).await? {
        let raw = match r["raw"]
            .as_str()
            .map(serde_json::from_str::<serde_json::Value>)
        {
            Some(Ok(raw)) => raw,
            // The store keeps every record's raw JSON; anything else is damage to report.
            other => {
                let reason = other.map_or("no raw record".to_string(), |e| {
                    e.err()
                        .map_or(String::new(), |e| format!("raw is not JSON: {e}"))
                });
                damaged.push(format!(
                    "store: {} event at {}: {reason}",
                    r["source"], r["ts"]
                ));
                continue;
            }
        };
        let (label, object) = if r["source"] == "k8s_audit" {
            let object = raw
                .get("responseObject")
                .filter(|o| o.get("spec").is_some())
                .or_else(|| raw.get("requestObject"))
                .cloned();
            (
                format!("store:audit/{}", r["audit_id"].as_str().unwrap_or("")),
                object,
            )
        } else {
            ("store:k8s_objects".to_string(), Some(raw))
        };
        if let Some(object) = object.filter(|o| o.is_object()) {
            loaded.extend(crate::load_str(Path::new(&label), &object.to_string()));
        }
    }
    Ok((loaded, damaged))
}

/// The time window of a validation: RFC 3339 bounds, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Window {
    fn sql(&self) -> String {
        let mut out = String::new();
        if let Some(f) = &self.from {
            out.push_str(&format!(" AND ts >= CAST({} AS TIMESTAMP)", quote(f)));
        }
        if let Some(t) = &self.to {
            out.push_str(&format!(" AND ts < CAST({} AS TIMESTAMP)", quote(t)));
        }
        out
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The candidate `policy` names: a level (`privileged`, `baseline`, `restricted`), or a file of
/// PodSecurityPolicies or a hardening patch.
pub fn load_constraints(policy: &str) -> Result<Vec<Constraints>> {
    if let Some(level) = crate::Level::parse(policy) {
        return Ok(vec![Constraints::level(level)]);
    }
    let loaded_text = std::fs::read_to_string(policy).map_err(|source| PolicyError::Io {
        path: policy.into(),
        source,
    })?;
    let mut docs = Vec::new();
    for (_, parsed) in crate::workloads::documents(&loaded_text) {
        match parsed {
            Ok(Some(v)) => docs.push(v),
            Ok(None) => {}
            Err((line, e)) => {
                return Err(PolicyError::CandidateYaml {
                    path: policy.into(),
                    line,
                    reason: e.to_string(),
                });
            }
        }
    }
    let mut found = Constraints::from_documents(policy, &docs);
    if found.is_empty()
        && let [patch] = docs.as_slice()
    {
        found.extend(Constraints::from_patch(policy, &loaded_text, patch));
    }
    if found.is_empty() {
        return Err(PolicyError::NoCandidate(policy.into()));
    }
    Ok(found)
}

/// Every workload in scope, judged: processes and pod specs recorded in the window.
pub async fn judge(ctx: &SessionContext, c: &Constraints, window: &Window) -> Result<Vec<Verdict>> {
    let mut scope = String::new();
    if let Some(ns) = &c.namespace {
        scope.push_str(&format!(" AND namespace = {}", quote(ns)));
    }
    if let Some(w) = &c.workload {
        scope.push_str(&format!(
            " AND (workload_name = {q} OR pod = {q})",
            q = quote(w)
        ));
    }
    if let Some(names) = &c.containers {
        let names: Vec<String> = names.iter().map(|n| quote(n)).collect();
        scope.push_str(&format!(" AND container_name IN ({})", names.join(", ")));
    }
    let mut verdicts: BTreeMap<String, Vec<Break>> = BTreeMap::new();

    // Processes: binaries that need a capability the candidate drops; root where it forbids.
    let binaries: Vec<(&str, &str)> = crate::validate::CAPABILITY_BINARIES
        .iter()
        .copied()
        .filter(|(_, cap)| c.drops(cap))
        .collect();
    let mut wanted = Vec::new();
    if !binaries.is_empty() {
        let names: Vec<String> = binaries.iter().map(|(b, _)| quote(b)).collect();
        wanted.push(format!(
            "regexp_replace(exe, '^.*/', '') IN ({})",
            names.join(", ")
        ));
    }
    if c.non_root {
        wanted.push("uid = 0".into());
    }
    let workload_of = |r: &serde_json::Value| {
        let ns = r["namespace"].as_str().unwrap_or("");
        let w = r["workload_name"]
            .as_str()
            .or(r["pod"].as_str())
            .unwrap_or("");
        format!("{ns}/{w}")
    };
    if !wanted.is_empty() {
        let sql = format!(
            "SELECT ts, namespace, pod, workload_kind, workload_name, container_name, exe, args, uid \
             FROM process_events WHERE kind = 'process_exec' AND namespace IS NOT NULL{scope}{window} \
             AND ({wanted}) ORDER BY ts",
            window = window.sql(),
            wanted = wanted.join(" OR ")
        );
        let mut groups: BTreeMap<(String, &'static str, String), Vec<serde_json::Value>> =
            BTreeMap::new();
        for r in rows_json(ctx, &sql).await? {
            let exe = r["exe"].as_str().unwrap_or("");
            let base = exe.rsplit('/').next().unwrap_or(exe);
            if let Some((_, cap)) = binaries.iter().find(|(b, _)| *b == base) {
                let detail = format!("{base} needs {cap}, which the policy drops");
                groups
                    .entry((workload_of(&r), "capability", detail))
                    .or_default()
                    .push(r.clone());
            }
            if c.non_root && r["uid"].as_i64() == Some(0) {
                let detail =
                    "processes run as root (uid 0); the policy requires non-root".to_string();
                groups
                    .entry((workload_of(&r), "run_as_root", detail))
                    .or_default()
                    .push(r);
            }
        }
        for ((w, check, detail), evidence) in groups {
            verdicts
                .entry(w)
                .or_default()
                .push(Break::new(check, detail, evidence, &sql));
        }
    }

    // Writes below a read-only root filesystem: Tetragon's security_file_permission with
    // MAY_WRITE, and Falco's `Write below ...` rules. Writes under the workload's recorded
    // volume mounts and to /proc, /sys, /dev are not the root filesystem's.
    if c.read_only_root {
        let mounts = volume_mounts(ctx, c).await?;
        let tetragon = format!(
            "SELECT ts, namespace, pod, workload_name, container_name, exe, \
             json_get_str(raw, 'process_kprobe', 'args', 0, 'file_arg', 'path') AS path \
             FROM events WHERE kind = 'file_access' AND source = 'tetragon'{scope}{window} \
             AND json_get_str(raw, 'process_kprobe', 'function_name') = 'security_file_permission' \
             AND (json_get_int(raw, 'process_kprobe', 'args', 1, 'int_arg') & 2) = 2 ORDER BY ts",
            window = window.sql()
        );
        let falco = format!(
            "SELECT ts, namespace, pod, workload_name, container_name, exe, \
             json_get_str(raw, 'output_fields', 'fd.name') AS path, rule \
             FROM falco_alerts WHERE rule LIKE 'Write below%'{scope}{window} ORDER BY ts",
            window = window.sql()
        );
        for sql in [tetragon, falco] {
            let mut groups: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
            for r in rows_json(ctx, &sql).await? {
                let path = r["path"].as_str().unwrap_or("");
                let special = ["/proc/", "/sys/", "/dev/"]
                    .iter()
                    .any(|p| path.starts_with(p));
                let mounted = mounts.iter().any(|m| {
                    path == m || path.starts_with(&format!("{}/", m.trim_end_matches('/')))
                });
                if !special && !mounted {
                    groups.entry(workload_of(&r)).or_default().push(r);
                }
            }
            for (w, evidence) in groups {
                let mut paths: Vec<&str> =
                    evidence.iter().filter_map(|r| r["path"].as_str()).collect();
                paths.sort_unstable();
                paths.dedup();
                let detail = format!(
                    "writes below the root filesystem, which the policy makes read-only: {}",
                    paths.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                );
                verdicts.entry(w).or_default().push(Break::new(
                    "read_only_root",
                    detail,
                    evidence,
                    &sql,
                ));
            }
        }
    }

    // The host network: connections from a node's own address (the inventory's node
    // addresses) made by a pod's process.
    if !c.host_network {
        let sql = format!(
            "SELECT ts, namespace, pod, workload_name, container_name, exe, src_ip, dst_ip, dst_port \
             FROM network_events WHERE namespace IS NOT NULL{scope}{window} AND src_ip IN \
             (SELECT DISTINCT src_ip FROM events WHERE source = 'k8s_objects' AND resource = 'nodes' \
             AND src_ip IS NOT NULL) ORDER BY ts",
            window = window.sql()
        );
        let mut groups: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for r in rows_json(ctx, &sql).await? {
            groups.entry(workload_of(&r)).or_default().push(r);
        }
        for (w, evidence) in groups {
            let mut addrs: Vec<&str> = evidence
                .iter()
                .filter_map(|r| r["src_ip"].as_str())
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            let detail = format!(
                "connects from the node's address (hostNetwork), which the policy forbids: {}",
                addrs.join(", ")
            );
            verdicts
                .entry(w)
                .or_default()
                .push(Break::new("host_network", detail, evidence, &sql));
        }
    }

    // Pod specs the apiserver admitted (audit requestObjects).
    let mut audit_scope = String::new();
    if let Some(ns) = &c.namespace {
        audit_scope.push_str(&format!(" AND object_namespace = {}", quote(ns)));
    }
    let sql = format!(
        "SELECT ts, audit_id, object_namespace, object_name, verb, k8s_user, raw FROM k8s_audit \
         WHERE resource = 'pods' AND (subresource IS NULL OR subresource = '') \
         AND verb IN ('create', 'update'){audit_scope}{window} ORDER BY ts",
        window = window.sql()
    );
    let mut seen = std::collections::HashSet::new();
    let mut groups: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    for r in rows_json(ctx, &sql).await? {
        let id = r["audit_id"].as_str().unwrap_or("").to_string();
        let raw: serde_json::Value = r["raw"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let Some(object) = raw.get("requestObject").filter(|o| o.is_object()) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let loaded = crate::load_str(Path::new("audit"), &object.to_string());
        for w in loaded.workloads {
            let name = workload_name(&w);
            if c.workload.as_ref().is_some_and(|want| *want != name) {
                continue;
            }
            let needs = crate::needs::needs(&w, Version::Latest);
            let key = format!(
                "{}/{name}",
                r["object_namespace"].as_str().unwrap_or(&w.namespace)
            );
            let mut evidence = r.clone();
            evidence.as_object_mut().map(|o| o.remove("raw"));
            for detail in crate::validate::pod_breaks(c, &w, &needs) {
                groups
                    .entry((key.clone(), detail))
                    .or_default()
                    .push(evidence.clone());
            }
            verdicts.entry(key).or_default();
        }
    }
    for ((w, detail), evidence) in groups {
        verdicts
            .entry(w)
            .or_default()
            .push(Break::new("pod_spec", detail, evidence, &sql));
    }
    // Workloads seen running in scope, even with nothing against them.
    let sql = format!(
        "SELECT DISTINCT namespace, pod, workload_name FROM process_events \
         WHERE namespace IS NOT NULL{scope}{window}",
        window = window.sql()
    );
    for r in rows_json(ctx, &sql).await? {
        verdicts.entry(workload_of(&r)).or_default();
    }
    Ok(verdicts
        .into_iter()
        .map(|(workload, breaks)| Verdict::new(workload, breaks))
        .collect())
}

/// The volume mount paths recorded (inventory and audit pod specs) for the pods in scope.
async fn volume_mounts(ctx: &SessionContext, c: &Constraints) -> Result<Vec<String>> {
    let mut scope = String::new();
    if let Some(ns) = &c.namespace {
        scope.push_str(&format!(" AND namespace = {}", quote(ns)));
    }
    let sql = format!(
        "SELECT DISTINCT raw FROM events WHERE resource = 'pods' AND \
         source IN ('k8s_objects', 'k8s_audit'){scope}"
    );
    let mut out = std::collections::BTreeSet::new();
    for r in rows_json(ctx, &sql).await? {
        let Some(raw) = r["raw"]
            .as_str()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            continue;
        };
        let object = raw.get("requestObject").cloned().unwrap_or(raw);
        let loaded = crate::load_str(Path::new("store"), &object.to_string());
        for w in loaded.workloads {
            if c.workload
                .as_ref()
                .is_some_and(|want| *want != workload_name(&w))
            {
                continue;
            }
            for cn in w
                .spec
                .containers
                .iter()
                .chain(w.spec.init_containers.iter().flatten())
            {
                for m in cn.volume_mounts.iter().flatten() {
                    out.insert(m.mount_path.clone());
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The workload a recorded pod belongs to: its controller's name (a ReplicaSet's minus the
/// pod-template hash), else its own.
fn workload_name(w: &crate::Workload) -> String {
    match &w.owner {
        Some(o) if o.kind == "ReplicaSet" => o
            .name
            .rsplit_once('-')
            .map_or(o.name.clone(), |(d, _)| d.to_string()),
        Some(o) => o.name.clone(),
        None => w.name.clone(),
    }
}
