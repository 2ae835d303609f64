//! Workload manifests in: YAML or JSON files and directories, multi-document, `List`s, any of
//! Pod, Deployment, DaemonSet, StatefulSet, ReplicaSet, ReplicationController, Job, CronJob.
//!
//! Each document is parsed on its own, so one bad document costs only itself: it becomes a
//! [`Diagnostic`] naming file, document and line, and the rest continue. Objects are decoded
//! with k8s-openapi's typed structs; legacy API groups (`extensions/v1beta1`, `apps/v1beta2`,
//! `batch/v1beta1`, ...) are read as their current version, whose pod template is the same.
//!
//! Owned objects are kept (kube-psp-advisor drops every Pod and ReplicaSet with an owner, so
//! a Pod whose Deployment is not in the input vanished); they are dropped only when their
//! owner is itself in the input, which already covers their pod template.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use crate::PolicyError;

/// The workload kinds whose pod template the advisor reads.
pub const WORKLOAD_KINDS: [&str; 8] = [
    "Pod",
    "Deployment",
    "DaemonSet",
    "StatefulSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
];

/// Where a workload came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based document number in the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// Index in a `List`'s `items`, when the workload was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

/// An owner reference, as `kind/name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// One workload: its identity and the pod it makes.
#[derive(Clone, Debug)]
pub struct Workload {
    pub kind: String,
    /// `default` when the manifest names none.
    pub namespace: String,
    pub name: String,
    pub source: Source,
    pub owner: Option<Owner>,
    /// Labels that select the workload's pods: the selector's `matchLabels`, else the pod
    /// template's labels. Empty for a bare Pod (it is matched by name).
    pub selector: BTreeMap<String, String>,
    /// The pod template's (or Pod's) metadata: annotations carry legacy seccomp/AppArmor.
    pub pod_meta: ObjectMeta,
    pub spec: PodSpec,
}

impl Workload {
    /// The path of the pod spec inside the manifest, for violation paths.
    pub fn spec_path(&self) -> &'static str {
        match self.kind.as_str() {
            "Pod" => "spec",
            "CronJob" => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }

    /// The path of the pod metadata inside the manifest.
    pub fn meta_path(&self) -> &'static str {
        match self.kind.as_str() {
            "Pod" => "metadata",
            "CronJob" => "spec.jobTemplate.spec.template.metadata",
            _ => "spec.template.metadata",
        }
    }

    /// `namespace/kind/name`, the key workloads are compared by.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.kind, self.name)
    }

    /// The service account the pods run as.
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .or(self.spec.service_account.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }
}

/// A document that did not yield a workload, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub document: usize,
    pub line: usize,
    /// `error` (bad input) or `skipped` (a valid object that is not a workload).
    pub severity: Severity,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Skipped,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.severity {
            Severity::Error => "error",
            Severity::Skipped => "skipped",
        };
        write!(
            f,
            "{}: document {} (line {}): {what}: {}",
            self.file.display(),
            self.document,
            self.line,
            self.reason
        )
    }
}

/// Workloads and the diagnostics of the documents that gave none.
#[derive(Debug, Default)]
pub struct Loaded {
    pub workloads: Vec<Workload>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Adds another load's workloads and diagnostics.
    pub fn extend(&mut self, other: Loaded) {
        self.workloads.extend(other.workloads);
        self.diagnostics.extend(other.diagnostics);
    }

    /// Keeps the last of every `namespace/kind/name` (recorded history: the newest version).
    pub fn keep_latest(&mut self) {
        let mut seen = HashSet::new();
        let mut latest: Vec<Workload> = Vec::new();
        for w in self.workloads.drain(..).rev() {
            if seen.insert(w.key()) {
                latest.push(w);
            }
        }
        latest.reverse();
        self.workloads = latest;
    }

    /// Drops workloads whose owner is loaded too (see [`load_paths`]).
    pub fn drop_owned(&mut self) {
        drop_covered_by_owner(&mut self.workloads);
    }

    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

/// Loads every `.yaml`, `.yml` and `.json` file under `paths` (directories recursively, in
/// name order). Unreadable paths are errors; bad documents are diagnostics.
pub fn load_paths(paths: &[PathBuf]) -> crate::Result<Loaded> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut loaded = Loaded::default();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|source| PolicyError::Io {
            path: file.clone(),
            source,
        })?;
        match String::from_utf8(bytes) {
            Ok(text) => {
                let one = load_str(&file, &text);
                loaded.workloads.extend(one.workloads);
                loaded.diagnostics.extend(one.diagnostics);
            }
            Err(e) => loaded.diagnostics.push(Diagnostic {
                file: file.clone(),
                document: 1,
                line: 1,
                severity: Severity::Error,
                reason: format!(
                    "not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            }),
        }
    }
    loaded.drop_owned();
    Ok(loaded)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> crate::Result<()> {
    let io = |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort();
        for entry in entries {
            let is_manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if entry.is_dir() || is_manifest {
                collect_files(&entry, out)?;
            }
        }
    } else {
        std::fs::metadata(path).map_err(io)?;
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Loads the documents of one file's text. Owned objects are not yet deduplicated (see
/// [`load_paths`]).
pub fn load_str(file: &Path, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    for (index, (line, parsed)) in documents(text).into_iter().enumerate() {
        let document = index + 1;
        let value: Value = match parsed {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err((at, reason)) => {
                loaded.diagnostics.push(Diagnostic {
                    file: file.to_path_buf(),
                    document,
                    line: at,
                    severity: Severity::Error,
                    reason,
                });
                continue;
            }
        };
        let mut diagnose = |severity, reason: String| {
            loaded.diagnostics.push(Diagnostic {
                file: file.to_path_buf(),
                document,
                line,
                severity,
                reason,
            })
        };
        let source = Source {
            file: file.to_path_buf(),
            document,
            line,
            item: None,
        };
        let mut found = Vec::new();
        if let Err((severity, reason)) = objects(value, &source, &mut found) {
            diagnose(severity, reason);
        }
        for result in found {
            match result {
                Ok(w) => loaded.workloads.push(w),
                Err((severity, reason)) => diagnose(severity, reason),
            }
        }
    }
    loaded
}

type Found = Result<Workload, (Severity, String)>;

/// One document: a single object, or a `List` of them.
fn objects(value: Value, source: &Source, out: &mut Vec<Found>) -> Result<(), (Severity, String)> {
    let Value::Object(mut map) = value else {
        return Err((
            Severity::Error,
            format!("not a Kubernetes object (a {})", json_type(&value)),
        ));
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(other) => {
            return Err((
                Severity::Error,
                format!("`kind` is {other}, expected a string"),
            ));
        }
        None => return Err((Severity::Error, "missing `kind`".into())),
    };
    if kind.ends_with("List") && map.contains_key("items") {
        let Some(Value::Array(items)) = map.remove("items") else {
            return Err((Severity::Error, format!("{kind}: `items` is not a list")));
        };
        for (i, item) in items.into_iter().enumerate() {
            let source = Source {
                item: Some(i),
                ..source.clone()
            };
            let mut inner = Vec::new();
            match objects(item, &source, &mut inner) {
                Ok(()) => out.extend(inner),
                Err((severity, reason)) => out.push(Err((severity, format!("item {i}: {reason}")))),
            }
        }
        return Ok(());
    }
    out.push(workload(kind, map, source));
    Ok(())
}

fn workload(kind: String, mut map: serde_json::Map<String, Value>, source: &Source) -> Found {
    let name_of = |map: &serde_json::Map<String, Value>| {
        let meta = map.get("metadata");
        let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
        field("name")
            .or(field("generateName"))
            .unwrap_or("")
            .to_string()
    };
    let label = format!("{kind} {}", name_of(&map));
    if !WORKLOAD_KINDS.contains(&kind.as_str()) {
        return Err((Severity::Skipped, format!("{label}: not a workload")));
    }
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let current = current_api_version(&kind);
    if api_version != current {
        if !LEGACY_API_VERSIONS.contains(&(kind.as_str(), api_version.as_str())) {
            return Err((
                Severity::Error,
                format!(
                    "{label}: apiVersion {api_version:?} is not one Kubernetes serves for {kind}"
                ),
            ));
        }
        map.insert("apiVersion".into(), Value::String(current.into()));
        fill_legacy_selector(&mut map);
    }
    let value = Value::Object(map);
    let invalid = |e: serde_json::Error| (Severity::Error, format!("{label}: invalid {kind}: {e}"));
    let (meta, template, selector): (ObjectMeta, Option<PodTemplateSpec>, _) = match kind.as_str() {
        "Pod" => {
            let pod: Pod = serde_json::from_value(value).map_err(invalid)?;
            let spec = pod
                .spec
                .ok_or_else(|| (Severity::Error, format!("{label}: no spec")))?;
            let template = PodTemplateSpec {
                metadata: Some(pod.metadata.clone()),
                spec: Some(spec),
            };
            (pod.metadata, Some(template), None)
        }
        "Deployment" => {
            let d: Deployment = serde_json::from_value(value).map_err(invalid)?;
            let spec = d.spec;
            (d.metadata, Some(spec.template), spec.selector.match_labels)
        }
        "DaemonSet" => {
            let d: DaemonSet = serde_json::from_value(value).map_err(invalid)?;
            let spec = d.spec;
            (d.metadata, Some(spec.template), spec.selector.match_labels)
        }
        "StatefulSet" => {
            let d: StatefulSet = serde_json::from_value(value).map_err(invalid)?;
            let spec = d.spec;
            (d.metadata, Some(spec.template), spec.selector.match_labels)
        }
        "ReplicaSet" => {
            let d: ReplicaSet = serde_json::from_value(value).map_err(invalid)?;
            let spec = d.spec;
            (d.metadata, spec.template, spec.selector.match_labels)
        }
        "ReplicationController" => {
            let d: ReplicationController = serde_json::from_value(value).map_err(invalid)?;
            let spec = d.spec.unwrap_or_default();
            (d.metadata, spec.template, spec.selector)
        }
        "Job" => {
            let d: Job = serde_json::from_value(value).map_err(invalid)?;
            let spec = d.spec.unwrap_or_default();
            let mut selector = spec.selector.and_then(|s| s.match_labels);
            if spec.manual_selector != Some(true) {
                // The Job controller labels its pods `job-name: <job>` (every version).
                let mut labels = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                if let Some(name) = &d.metadata.name {
                    labels.insert("job-name".into(), name.clone());
                }
                selector = Some(labels);
            }
            (d.metadata, Some(spec.template), selector)
        }
        "CronJob" => {
            let d: CronJob = serde_json::from_value(value).map_err(invalid)?;
            let template = d.spec.job_template.spec.map(|s| s.template);
            (d.metadata, template, None)
        }
        _ => unreachable!("checked against WORKLOAD_KINDS"),
    };
    let template = template.unwrap_or_default();
    let Some(spec) = template.spec else {
        return Err((
            Severity::Error,
            format!("{label}: the pod template has no spec"),
        ));
    };
    let pod_meta = template.metadata.unwrap_or_default();
    let selector = selector
        .filter(|s| !s.is_empty())
        .or_else(|| (kind != "Pod").then(|| pod_meta.labels.clone().unwrap_or_default()))
        .unwrap_or_default();
    let owner = meta
        .owner_references
        .as_ref()
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.controller == Some(true))
                .or(refs.first())
        })
        .map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        });
    Ok(Workload {
        namespace: meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
        name: meta
            .name
            .clone()
            .or(meta.generate_name.clone())
            .unwrap_or_default(),
        kind,
        source: source.clone(),
        owner,
        selector,
        pod_meta,
        spec,
    })
}

fn current_api_version(kind: &str) -> &'static str {
    match kind {
        "Pod" | "ReplicationController" => "v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "apps/v1",
    }
}

/// API versions Kubernetes once served for a workload kind; their pod templates read as
/// the current version's.
const LEGACY_API_VERSIONS: [(&str, &str); 11] = [
    ("Deployment", "extensions/v1beta1"),
    ("Deployment", "apps/v1beta1"),
    ("Deployment", "apps/v1beta2"),
    ("DaemonSet", "extensions/v1beta1"),
    ("DaemonSet", "apps/v1beta2"),
    ("ReplicaSet", "extensions/v1beta1"),
    ("ReplicaSet", "apps/v1beta2"),
    ("StatefulSet", "apps/v1beta1"),
    ("StatefulSet", "apps/v1beta2"),
    ("CronJob", "batch/v1beta1"),
    ("CronJob", "batch/v2alpha1"),
];

/// Legacy workloads could omit `spec.selector` (the API defaulted it to the template's
/// labels); `apps/v1` requires it.
fn fill_legacy_selector(map: &mut serde_json::Map<String, Value>) {
    let Some(Value::Object(spec)) = map.get_mut("spec") else {
        return;
    };
    if spec.contains_key("selector") || spec.contains_key("jobTemplate") {
        return;
    }
    let labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    spec.insert(
        "selector".into(),
        serde_json::json!({ "matchLabels": labels }),
    );
}

/// Drops workloads whose owner is in the input too: the owner's template already covers
/// them. A Pod owned by a ReplicaSet counts as covered by a Deployment whose name is the
/// ReplicaSet's minus its `-<pod-template-hash>` suffix.
fn drop_covered_by_owner(workloads: &mut Vec<Workload>) {
    let present: HashSet<(String, String, String)> = workloads
        .iter()
        .map(|w| (w.namespace.clone(), w.kind.clone(), w.name.clone()))
        .collect();
    let covered = |w: &Workload| {
        let Some(owner) = &w.owner else { return false };
        let ns = w.namespace.clone();
        if present.contains(&(ns.clone(), owner.kind.clone(), owner.name.clone())) {
            return true;
        }
        match (owner.kind.as_str(), owner.name.rsplit_once('-')) {
            ("ReplicaSet", Some((deployment, _))) => {
                present.contains(&(ns, "Deployment".into(), deployment.into()))
            }
            ("Job", Some((cronjob, _))) => {
                present.contains(&(ns, "CronJob".into(), cronjob.into()))
            }
            _ => false,
        }
    };
    let keep: Vec<bool> = workloads.iter().map(|w| !covered(w)).collect();
    let mut keep = keep.into_iter();
    workloads.retain(|_| keep.next().unwrap_or(true));
}

/// Splits a YAML stream into documents at `---` / `...` marker lines, with the 1-based line
/// each starts on, so a broken document cannot take the others down with it.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        let end = line.starts_with("...") && line[3..].trim().is_empty();
        if marker || end {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 1;
            if marker {
                // `--- {inline: doc}` or `--- |` keeps the rest of the line in the document.
                current.push_str(&line[3..]);
                current.push('\n');
            } else {
                start = i + 2;
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.retain(|(_, d)| {
        d.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
    });
    docs
}

/// One parsed document: its value (`None` when empty), or the line of the error and why.
pub type ParsedDocument = Result<Option<Value>, (usize, String)>;

/// The documents of a YAML stream, each with the line it starts on, parsed one by one (a
/// broken one does not stop the others).
pub fn documents(text: &str) -> Vec<(usize, ParsedDocument)> {
    split_documents(text)
        .into_iter()
        .map(|(line, doc)| {
            // The parser counts lines from the document's start.
            let parsed =
                serde_saphyr::from_str::<Option<Value>>(&doc).map_err(|e| yaml_error(&e, line));
            (line, parsed)
        })
        .collect()
}

/// The file line of a YAML error in a document starting at `start`, and its message
/// without the parser's own position prefix or source snippet.
fn yaml_error(e: &serde_saphyr::Error, start: usize) -> (usize, String) {
    let plain = e.without_snippet().to_string();
    let first = plain.lines().next().unwrap_or("").trim();
    let message = first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .split_once("column ")
        .and_then(|(_, rest)| rest.split_once(": "))
        .map_or(first, |(_, msg)| msg);
    match e.location() {
        Some(loc) => {
            let line = start + (loc.line() as usize).saturating_sub(1);
            (
                line,
                format!(
                    "not valid YAML at line {line}, column {}: {message}",
                    loc.column()
                ),
            )
        }
        None => (start, format!("not valid YAML: {message}")),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_with_their_lines() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- # c\n\n---\nc: 3\n...\n");
        let lines: Vec<usize> = docs.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![1, 2, 6]);
        assert_eq!(docs[2].1, "\nc: 3\n");
    }

    #[test]
    fn a_bad_document_does_not_stop_the_others() {
        let text = "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n---\n\
                    kind: Pod\nmetadata: {name: {{ .Name }}\n---\napiVersion: v1\nkind: Namespace\n\
                    metadata: {name: x}\n";
        let text = text.replace(
            "kind: Pod\nmetadata: {name: a}",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}",
        );
        let loaded = load_str(Path::new("m.yaml"), &text);
        assert_eq!(loaded.workloads.len(), 1, "{:?}", loaded.diagnostics);
        assert_eq!(loaded.workloads[0].namespace, "default");
        assert_eq!(loaded.diagnostics.len(), 2);
        assert_eq!(loaded.diagnostics[0].severity, Severity::Error);
        assert_eq!(loaded.diagnostics[0].document, 2);
        assert_eq!(loaded.diagnostics[1].severity, Severity::Skipped);
        assert!(loaded.diagnostics[1].reason.contains("Namespace x"));
    }

    /// kube-psp-advisor skipped every Pod and ReplicaSet with an owner, so one whose owner
    /// is not in the input vanished. Kept here; dropped only when the owner is loaded too.
    #[test]
    fn owned_objects_are_kept_unless_their_owner_is_loaded() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-5c6d-x\n  ownerReferences:\n  \
                   - {apiVersion: apps/v1, kind: ReplicaSet, name: web-5c6d, uid: u, controller: true}\n\
                   spec: {containers: [{name: c, image: i}]}\n";
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  \
                          selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
                          spec: {containers: [{name: c, image: i}]}\n";
        let mut alone = load_str(Path::new("p.yaml"), pod);
        alone.drop_owned();
        assert_eq!(alone.workloads.len(), 1);
        assert_eq!(
            alone.workloads[0].owner.as_ref().map(|o| o.name.as_str()),
            Some("web-5c6d")
        );
        let mut both = load_str(Path::new("b.yaml"), &format!("{pod}---\n{deployment}"));
        both.drop_owned();
        let kinds: Vec<&str> = both.workloads.iter().map(|w| w.kind.as_str()).collect();
        assert_eq!(kinds, vec!["Deployment"]);
    }

    #[test]
    fn legacy_deployment_without_selector_reads_as_apps_v1() {
        let text = "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: d, namespace: web}\n\
                    spec:\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: i}]}\n";
        let loaded = load_str(Path::new("d.yaml"), text);
        assert_eq!(loaded.workloads.len(), 1, "{:?}", loaded.diagnostics);
        let w = &loaded.workloads[0];
        assert_eq!(w.selector.get("app").map(String::as_str), Some("d"));
        assert_eq!(w.spec_path(), "spec.template.spec");
    }
}
