//! `policy generate`: every workload's Pod Security Standards verdict, needs and policies, and
//! every namespace's labels — as one JSON report, or as kubectl-ready YAML files.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::PolicyError;
use crate::harden::{Hardening, hardening};
use crate::needs::{Needs, needs};
use crate::psa::{Assessed, NamespaceAdvice, namespace_object, namespaces};
use crate::pss::{Level, Version, Violation, evaluate, level_met};
use crate::workloads::{Diagnostic, Loaded, Owner, Source, Workload};
use crate::{psp, vap};

/// One workload in the report.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    pub pss_level: Level,
    pub violations: Vec<Violation>,
    /// What it needs: `containers[]`, `host_network`, `host_pid`, `host_ipc`, `host_ports`,
    /// `host_paths[]`, ... at the top level of the workload's JSON.
    #[serde(flatten)]
    pub needs: Needs,
    pub hardening: Hardening,
    /// The name of the generated ValidatingAdmissionPolicy / PodSecurityPolicy / Role.
    pub policy_name: String,
    /// The stem of this workload's files under `-o DIR`: `namespace.kind.name`, with `.2`,
    /// `.3`, ... when the input holds the same workload more than once.
    pub file_stem: String,
    #[serde(skip)]
    pub workload: Workload,
}

/// What one legacy PodSecurityPolicy covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PspScope {
    /// One per workload (it still binds to the workload's service account: workloads that
    /// share one can use each other's policy).
    #[default]
    Workload,
    /// One per service account, admitting what all its workloads need together.
    ServiceAccount,
}

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub k8s_version: String,
    pub psp_scope: PspScope,
    pub workloads: Vec<WorkloadReport>,
    pub namespaces: Vec<NamespaceAdvice>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Assesses every loaded workload at `version`.
pub fn generate(loaded: Loaded, version: Version) -> Report {
    let mut workloads: Vec<WorkloadReport> = loaded
        .workloads
        .into_iter()
        .map(|w| assess(w, version))
        .collect();
    workloads
        .sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    // The same workload twice (two versions in two files): both kept, named apart.
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for w in &mut workloads {
        let n = seen.entry(w.file_stem.clone()).or_default();
        *n += 1;
        if *n > 1 {
            w.file_stem = format!("{}.{n}", w.file_stem);
            w.policy_name = format!("{}-{n}", w.policy_name);
        }
    }
    let assessed: Vec<Assessed<'_>> = workloads
        .iter()
        .map(|w| Assessed {
            namespace: &w.namespace,
            workload: format!("{}/{}", w.kind, w.name),
            level: w.pss_level,
            violations: &w.violations,
        })
        .collect();
    let namespaces = namespaces(&assessed, version);
    Report {
        k8s_version: version.label(),
        psp_scope: PspScope::Workload,
        workloads,
        namespaces,
        diagnostics: loaded.diagnostics,
    }
}

/// Assesses one workload.
pub fn assess(w: Workload, version: Version) -> WorkloadReport {
    let violations = evaluate(&w, version);
    let n = needs(&w, version);
    WorkloadReport {
        kind: w.kind.clone(),
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        source: w.source.clone(),
        owner: w.owner.clone(),
        pss_level: level_met(&violations),
        violations,
        hardening: hardening(&w, &n),
        policy_name: vap::object_name(&w),
        file_stem: file_stem(&w),
        needs: n,
        workload: w,
    }
}

impl WorkloadReport {
    /// The policies of this workload as Kubernetes objects: the ValidatingAdmissionPolicy and
    /// its binding, then (per-workload scope) the legacy PodSecurityPolicy, Role and
    /// RoleBinding.
    pub fn policies(&self, scope: PspScope) -> Vec<Value> {
        let (policy, binding) = vap::policy(&self.policy_name, &self.workload, &self.needs);
        let mut out = vec![to_value(&policy), to_value(&binding)];
        if scope == PspScope::Workload {
            out.extend(psp::for_workload(
                &self.policy_name,
                &self.workload,
                &self.needs,
            ));
        }
        out
    }
}

impl Report {
    /// Every object to apply: each workload's policies, the per-service-account
    /// PodSecurityPolicies when that is the scope, and the namespaces' labels.
    pub fn objects(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .workloads
            .iter()
            .flat_map(|w| w.policies(self.psp_scope))
            .collect();
        for (_, docs) in self.service_account_policies() {
            out.extend(docs);
        }
        out.extend(
            self.namespaces
                .iter()
                .map(|n| to_value(&namespace_object(n))),
        );
        out
    }

    /// Per service account (when that is the scope): the file stem
    /// `namespace.serviceaccount.name` and the PodSecurityPolicy, Role and RoleBinding
    /// admitting what all its workloads need.
    pub fn service_account_policies(&self) -> Vec<(String, Vec<Value>)> {
        if self.psp_scope != PspScope::ServiceAccount {
            return Vec::new();
        }
        let mut by_sa: std::collections::BTreeMap<(&str, &str), Vec<&Needs>> = Default::default();
        for w in &self.workloads {
            by_sa
                .entry((&w.namespace, &w.needs.service_account))
                .or_default()
                .push(&w.needs);
        }
        by_sa
            .into_iter()
            .filter_map(|((ns, sa), needs)| {
                let merged = crate::needs::merge(needs)?;
                let name = vap::dns_name(&format!("ktrail-{ns}-sa-{sa}"));
                let labels = std::collections::BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "ktrail".to_string(),
                    ),
                    ("ktrail.dev/service-account".to_string(), sa.to_string()),
                ]);
                let stem = sanitise_stem(&format!("{ns}.serviceaccount.{sa}"));
                Some((stem, psp::bundle(&name, ns, labels, &merged)))
            })
            .collect()
    }
}

/// `namespace.kind.name`, lowercased, safe as a file name.
fn file_stem(w: &Workload) -> String {
    sanitise_stem(&format!("{}.{}.{}", w.namespace, w.kind, w.name))
}

fn sanitise_stem(s: &str) -> String {
    s.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("Kubernetes objects serialise to JSON")
}

/// YAML documents separated by `---`.
pub fn yaml_documents(docs: &[Value]) -> crate::Result<String> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_saphyr::to_string(doc).map_err(|e| PolicyError::Serialise {
                what: "YAML".into(),
                reason: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// Writes the report as kubectl-ready YAML under `dir`: per workload `<stem>.yaml` (its
/// policies) and `<stem>.patch.yaml` (the hardening patch), and `namespaces.yaml` (the
/// Pod Security Admission labels). Returns the files written.
pub fn write_yaml(report: &Report, dir: &Path) -> crate::Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    let mut write = |name: String, text: String| -> crate::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
        Ok(())
    };
    for w in &report.workloads {
        let header = format!(
            "# ktrail policy generate: {kind} {ns}/{name} ({file}, document {doc})\n\
             # Pod Security Standards {version}: meets {level}.\n",
            kind = w.kind,
            ns = w.namespace,
            name = w.name,
            file = w.source.file.display(),
            doc = w.source.document,
            version = report.k8s_version,
            level = w.pss_level,
        );
        write(
            format!("{}.yaml", w.file_stem),
            format!("{header}{}", yaml_documents(&w.policies(report.psp_scope))?),
        )?;
        let mut patch = format!(
            "# Hardening patch: kubectl -n {ns} patch {kind} {name} --patch-file {stem}.patch.yaml\n",
            ns = w.namespace,
            kind = w.kind.to_ascii_lowercase(),
            name = w.name,
            stem = w.file_stem,
        );
        for s in &w.hardening.skipped {
            patch.push_str(&format!("# left out: {s}\n"));
        }
        patch.push_str(&yaml_documents(std::slice::from_ref(&w.hardening.patch))?);
        write(format!("{}.patch.yaml", w.file_stem), patch)?;
    }
    for (stem, docs) in report.service_account_policies() {
        write(
            format!("{stem}.yaml"),
            format!(
                "# ktrail policy generate: the legacy PodSecurityPolicy of a service account,\n\
                 # admitting what all its workloads need together.\n{}",
                yaml_documents(&docs)?
            ),
        )?;
    }
    if !report.namespaces.is_empty() {
        let docs: Vec<Value> = report
            .namespaces
            .iter()
            .map(|n| to_value(&namespace_object(n)))
            .collect();
        write(
            "namespaces.yaml".into(),
            format!(
                "# Pod Security Admission labels: enforce the strictest level every workload meets.\n{}",
                yaml_documents(&docs)?
            ),
        )?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::load_str;

    #[test]
    fn a_report_names_workloads_apart_and_keeps_bad_documents_as_diagnostics() {
        let pod = |image: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns}}\nspec:\n  containers:\n  - {{name: c, image: {image}}}\n"
            )
        };
        let text = format!(
            "{}---\nkind: Pod\napiVersion: v1\nspec: 7\n---\n{}",
            pod("a"),
            pod("b")
        );
        let report = generate(load_str(Path::new("pods.yaml"), &text), Version::Latest);
        assert_eq!(report.diagnostics.len(), 1, "{:?}", report.diagnostics);
        assert_eq!(report.diagnostics[0].document, 2);
        let stems: Vec<&str> = report
            .workloads
            .iter()
            .map(|w| w.file_stem.as_str())
            .collect();
        assert_eq!(stems, ["ns.pod.p", "ns.pod.p.2"]);
        assert_ne!(
            report.workloads[0].policy_name,
            report.workloads[1].policy_name
        );
        assert_eq!(report.namespaces.len(), 1);
        assert_eq!(report.namespaces[0].name, "ns");
    }
}
