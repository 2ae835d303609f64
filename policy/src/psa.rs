//! Pod Security Admission labels per namespace: `enforce` at the strictest level every
//! workload in the namespace meets, `audit` and `warn` at `restricted` so what still falls
//! short stays visible, each pinned to the version the workloads were checked against. The
//! workloads that hold a namespace below `restricted` are listed as its exemptions, with the
//! controls they need.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::pss::{Level, Version, Violation};

/// A workload that keeps its namespace below `restricted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exemption {
    /// `kind/name`
    pub workload: String,
    pub pss_level: Level,
    /// The controls it fails, each once.
    pub controls: Vec<String>,
}

/// The advice for one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceAdvice {
    pub name: String,
    pub pss_level: Level,
    pub labels: BTreeMap<String, String>,
    pub exemptions: Vec<Exemption>,
}

/// One workload as the namespace advice needs it.
pub struct Assessed<'a> {
    pub namespace: &'a str,
    pub workload: String,
    pub level: Level,
    pub violations: &'a [Violation],
}

/// The advice for every namespace that has a workload, by name.
pub fn namespaces(assessed: &[Assessed<'_>], version: Version) -> Vec<NamespaceAdvice> {
    let mut by_ns: BTreeMap<&str, Vec<&Assessed<'_>>> = BTreeMap::new();
    for a in assessed {
        by_ns.entry(a.namespace).or_default().push(a);
    }
    by_ns
        .into_iter()
        .map(|(name, list)| {
            let level = list
                .iter()
                .map(|a| a.level)
                .min()
                .unwrap_or(Level::Restricted);
            let exemptions = list
                .iter()
                .filter(|a| a.level < Level::Restricted)
                .map(|a| Exemption {
                    workload: a.workload.clone(),
                    pss_level: a.level,
                    controls: a
                        .violations
                        .iter()
                        .map(|v| v.control.to_string())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                })
                .collect();
            NamespaceAdvice {
                name: name.to_string(),
                pss_level: level,
                labels: labels(level, version),
                exemptions,
            }
        })
        .collect()
}

/// The `pod-security.kubernetes.io/*` labels for a namespace enforcing `level`.
pub fn labels(level: Level, version: Version) -> BTreeMap<String, String> {
    let v = version.label();
    let mut out = BTreeMap::new();
    for (mode, at) in [
        ("enforce", level),
        ("audit", Level::Restricted),
        ("warn", Level::Restricted),
    ] {
        out.insert(format!("pod-security.kubernetes.io/{mode}"), at.to_string());
        out.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            v.clone(),
        );
    }
    out
}

/// The Namespace object carrying the labels (`kubectl apply` merges them in).
pub fn namespace_object(advice: &NamespaceAdvice) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(advice.name.clone()),
            labels: Some(advice.labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pss::evaluate;
    use crate::test_workloads::deployment;

    #[test]
    fn a_namespace_enforces_its_least_workload_and_lists_it_as_the_exemption() {
        let restricted = deployment(
            "shop",
            "web",
            "      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n      \
             containers:\n      - name: app\n        image: nginx\n        securityContext:\n          \
             allowPrivilegeEscalation: false\n          capabilities: {drop: [ALL]}\n",
        );
        let host = deployment(
            "shop",
            "sniffer",
            "      hostNetwork: true\n      containers:\n      - name: s\n        image: tcpdump\n",
        );
        let (a, b) = (
            evaluate(&restricted, Version::Latest),
            evaluate(&host, Version::Latest),
        );
        let assessed = [
            Assessed {
                namespace: "shop",
                workload: "Deployment/web".into(),
                level: Level::Restricted,
                violations: &a,
            },
            Assessed {
                namespace: "shop",
                workload: "Deployment/sniffer".into(),
                level: Level::Privileged,
                violations: &b,
            },
        ];
        let advice = namespaces(&assessed, Version::Minor(30));
        assert_eq!(advice.len(), 1);
        assert_eq!(advice[0].pss_level, Level::Privileged);
        assert_eq!(
            advice[0].labels["pod-security.kubernetes.io/enforce"],
            "privileged"
        );
        assert_eq!(
            advice[0].labels["pod-security.kubernetes.io/warn"],
            "restricted"
        );
        assert_eq!(
            advice[0].labels["pod-security.kubernetes.io/enforce-version"],
            "v1.30"
        );
        assert_eq!(advice[0].exemptions.len(), 1);
        assert_eq!(advice[0].exemptions[0].workload, "Deployment/sniffer");
        assert!(
            advice[0].exemptions[0]
                .controls
                .iter()
                .any(|c| c == "hostNamespaces"),
            "{:?}",
            advice[0].exemptions
        );
        let ns = namespace_object(&advice[0]);
        assert_eq!(ns.metadata.name.as_deref(), Some("shop"));
    }
}
