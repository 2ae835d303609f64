//! Policy Advisor: least-privilege pod policies from workload manifests.
//!
//! The pipeline is one way: [`workloads`] turns YAML/JSON documents into typed [`Workload`]s
//! (k8s-openapi structs); [`pss`] evaluates each against the Pod Security Standards as Pod
//! Security Admission does, per Kubernetes version; [`needs`] says what the workload needs
//! (privileges, host access, identities); the emitters build the policies that admit exactly
//! that: Pod Security Admission labels per namespace ([`psa`]), a ValidatingAdmissionPolicy
//! ([`vap`]), a legacy PodSecurityPolicy ([`psp`]) and a securityContext hardening patch
//! ([`harden`]). [`report`] ties them together; [`diff`] compares two manifest sets.
//!
//! Generation is pure: it reads manifests only. Validation against recorded history
//! ([`history`]) asks the store through `query` and judges each workload's generated policy
//! against what its pods did.

pub mod diff;
pub mod harden;
pub mod history;
pub mod needs;
pub mod psa;
pub mod psp;
pub mod pss;
pub mod report;
pub mod validate;
pub mod vap;
pub mod workloads;

use std::path::PathBuf;

pub use pss::{Level, Version, Violation};
pub use workloads::{Diagnostic, Loaded, Workload, load_paths, load_str};

/// What can go wrong in the Policy Advisor.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A manifest file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A document is not YAML, not a Kubernetes object, or not a valid workload of its kind.
    #[error("{path}: document {document} (line {line}): {reason}")]
    Document {
        path: PathBuf,
        /// 1-based document number in the file.
        document: usize,
        /// 1-based line where the document starts.
        line: usize,
        reason: String,
    },
    /// A `--k8s-version` that is neither `latest` nor `v1.N` / `1.N`.
    #[error("invalid Kubernetes version {0:?}: expected latest, v1.N or 1.N")]
    Version(String),
    /// A candidate policy file (`policy validate --policy`) that is not YAML.
    #[error("{path}:{line}: {reason}")]
    CandidateYaml {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A candidate policy that is neither a level nor a file holding a PodSecurityPolicy or
    /// a hardening patch.
    #[error(
        "{}: no PodSecurityPolicy or hardening patch in it, and not a level (privileged, baseline, restricted)",
        .0.display()
    )]
    NoCandidate(PathBuf),
    /// A query over the recorded history failed.
    #[error(transparent)]
    Query(#[from] query::QueryError),
    /// A generated policy could not be written as YAML or JSON (a bug).
    #[error("could not serialise {what}: {reason}")]
    Serialise { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, PolicyError>;

/// Workloads from YAML for the modules' unit tests.
#[cfg(test)]
pub(crate) mod test_workloads {
    use std::path::Path;

    use crate::Workload;

    /// The one workload of `yaml`, which must load without a diagnostic.
    pub fn one(yaml: &str) -> Workload {
        let mut loaded = crate::load_str(Path::new("test.yaml"), yaml);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.workloads.len(), 1);
        loaded.workloads.remove(0)
    }

    /// A Deployment `name` in namespace `ns` whose pod spec is `spec` (indented by four).
    pub fn deployment(ns: &str, name: &str, spec: &str) -> Workload {
        one(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {name}}}}}\n    spec:\n{spec}"
        ))
    }
}
