//! Kubernetes object inventories: a `List` as `kubectl get pods,services,nodes -A -o json`
//! prints it (or a `PodList`, or a single object), parsed with `k8s-openapi`'s typed structs.
//!
//! Each object becomes `kind = 'k8s_object'` rows stamped with the time ktrail observed the
//! inventory (a `kubectl get` output carries no time of its own):
//! - a Pod: one row per container (init, regular, ephemeral) with its container id, image,
//!   the pod IP in `src_ip`, the node, and the workload its owner references resolve to
//!   (ReplicaSet → Deployment, Job → CronJob, from the owner objects in the same list, else from
//!   the `pod-template-hash` naming rule);
//! - a Service: one row per cluster / external / load-balancer IP in `src_ip`;
//! - a Node: one row per address in `src_ip`;
//! - anything else: one row naming it (`resource`, `object_namespace`, `object_name`).
//!
//! `resource` says which (`pods`, `services`, `nodes`, ...); `raw` is the object as JSON.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use model::Event;
use serde::Deserialize;
use serde_json::value::RawValue;

pub const SOURCE: &str = "k8s_objects";

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    kind: Option<String>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
}

/// Parses one inventory record observed at `observed_at` (ns since the epoch) into `out`.
pub fn parse(text: &str, observed_at: i64, out: &mut Vec<Event>) -> Result<(), String> {
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| format!("not a Kubernetes object: {e}"))?;
    let items: Vec<&RawValue> = match envelope.items {
        Some(items) => items,
        None if envelope
            .kind
            .as_deref()
            .is_some_and(|k| k.ends_with("List")) =>
        {
            Vec::new()
        }
        None => vec![serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?],
    };
    let mut heads = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let head: Head = serde_json::from_str(item.get())
            .map_err(|e| format!("item {i}: not a Kubernetes object: {e}"))?;
        match head.kind.as_deref() {
            Some(k) if !k.is_empty() => {}
            _ => return Err(format!("item {i}: missing \"kind\"")),
        }
        heads.push(head);
    }
    // Owners in this list (ReplicaSets, Jobs, ...), by uid, for resolving pods' workloads.
    let owners: HashMap<&str, &OwnerReference> = heads
        .iter()
        .filter_map(|h| {
            let m = h.metadata.as_ref()?;
            Some((
                m.uid.as_deref()?,
                controller_of(m.owner_references.as_deref()?)?,
            ))
        })
        .collect();
    for (i, (item, head)) in items.iter().zip(&heads).enumerate() {
        let raw = item.get();
        let base = Event {
            ts: observed_at,
            kind: "k8s_object".into(),
            source: SOURCE.into(),
            raw: Some(raw.to_string()),
            ..Default::default()
        };
        let before = out.len();
        match head.kind.as_deref().unwrap_or_default() {
            "Pod" => {
                let pod: Pod =
                    serde_json::from_str(raw).map_err(|e| format!("item {i}: Pod: {e}"))?;
                pod_rows(&pod, &owners, base, out);
            }
            "Service" => {
                let svc: Service =
                    serde_json::from_str(raw).map_err(|e| format!("item {i}: Service: {e}"))?;
                service_rows(&svc, base, out);
            }
            "Node" => {
                let node: Node =
                    serde_json::from_str(raw).map_err(|e| format!("item {i}: Node: {e}"))?;
                node_rows(&node, base, out);
            }
            kind => {
                let meta = head.metadata.as_ref();
                let (wk, wn) = match meta.and_then(|m| m.owner_references.as_deref()) {
                    Some(refs) => controller_of(refs)
                        .map(|o| (Some(o.kind.clone()), Some(o.name.clone())))
                        .unwrap_or_default(),
                    None => (None, None),
                };
                out.push(Event {
                    resource: Some(plural(kind)),
                    namespace: meta.and_then(|m| m.namespace.clone()),
                    object_namespace: meta.and_then(|m| m.namespace.clone()),
                    object_name: meta.and_then(|m| m.name.clone()),
                    workload_kind: wk,
                    workload_name: wn,
                    ..base
                });
            }
        }
        // Identity: the observation time and the object's bytes, one id per row.
        for (n, ev) in out[before..].iter_mut().enumerate() {
            let mut key = Vec::with_capacity(raw.len() + 16);
            key.extend_from_slice(&observed_at.to_le_bytes());
            key.extend_from_slice(&(n as u64).to_le_bytes());
            key.extend_from_slice(raw.as_bytes());
            ev.event_id = Some(model::event_id_of(SOURCE, &key));
        }
    }
    Ok(())
}

/// The controlling owner reference (`controller: true`), else the first one.
fn controller_of(refs: &[OwnerReference]) -> Option<&OwnerReference> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

/// The workload that runs a pod: its controller, followed up through ReplicaSet → Deployment
/// and Job → CronJob.
fn workload_of(pod: &Pod, owners: &HashMap<&str, &OwnerReference>) -> Option<(String, String)> {
    let owner = controller_of(pod.metadata.owner_references.as_deref()?)?;
    let up = owners.get(owner.uid.as_str());
    match (owner.kind.as_str(), up) {
        ("ReplicaSet", Some(o)) if o.kind == "Deployment" => {
            Some(("Deployment".into(), o.name.clone()))
        }
        ("Job", Some(o)) if o.kind == "CronJob" => Some(("CronJob".into(), o.name.clone())),
        ("ReplicaSet", None) => {
            // A Deployment names its ReplicaSets `<deployment>-<pod-template-hash>`.
            let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash");
            match hash.and_then(|h| owner.name.strip_suffix(h.as_str())?.strip_suffix('-')) {
                Some(deployment) => Some(("Deployment".into(), deployment.to_string())),
                None => Some(("ReplicaSet".into(), owner.name.clone())),
            }
        }
        _ => Some((owner.kind.clone(), owner.name.clone())),
    }
}

fn pod_rows(pod: &Pod, owners: &HashMap<&str, &OwnerReference>, base: Event, out: &mut Vec<Event>) {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let (workload_kind, workload_name) = workload_of(pod, owners).unzip();
    let base = Event {
        namespace: meta.namespace.clone(),
        pod: meta.name.clone(),
        pod_uid: meta.uid.clone(),
        node: spec.and_then(|s| s.node_name.clone()),
        workload_kind,
        workload_name,
        src_ip: status.and_then(|s| s.pod_ip.clone()),
        resource: Some("pods".into()),
        object_namespace: meta.namespace.clone(),
        object_name: meta.name.clone(),
        ..base
    };
    // (name, image) of every container the spec declares, with the status that names it.
    let mut containers: Vec<(&str, Option<&str>)> = Vec::new();
    if let Some(spec) = spec {
        for c in spec.init_containers.iter().flatten() {
            containers.push((&c.name, c.image.as_deref()));
        }
        for c in &spec.containers {
            containers.push((&c.name, c.image.as_deref()));
        }
        for c in spec.ephemeral_containers.iter().flatten() {
            containers.push((&c.name, c.image.as_deref()));
        }
    }
    let statuses: Vec<_> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
                .chain(s.ephemeral_container_statuses.iter().flatten())
        })
        .collect();
    if containers.is_empty() {
        out.push(base);
        return;
    }
    for (name, image) in containers {
        let st = statuses.iter().find(|s| s.name == name);
        out.push(Event {
            container_name: Some(name.to_string()),
            container_id: st
                .and_then(|s| s.container_id.as_deref())
                .filter(|id| !id.is_empty())
                .map(crate::tetragon::strip_runtime_prefix),
            image: image
                .map(str::to_string)
                .or_else(|| st.map(|s| s.image.clone())),
            ..base.clone()
        });
    }
}

fn service_rows(svc: &Service, base: Event, out: &mut Vec<Event>) {
    let meta = &svc.metadata;
    let base = Event {
        namespace: meta.namespace.clone(),
        resource: Some("services".into()),
        object_namespace: meta.namespace.clone(),
        object_name: meta.name.clone(),
        ..base
    };
    let mut ips: Vec<String> = Vec::new();
    if let Some(spec) = &svc.spec {
        ips.extend(spec.cluster_ips.iter().flatten().cloned());
        ips.extend(spec.cluster_ip.clone());
        ips.extend(spec.external_ips.iter().flatten().cloned());
        ips.extend(spec.load_balancer_ip.clone());
    }
    if let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        ips.extend(lb.ingress.iter().flatten().filter_map(|i| i.ip.clone()));
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips.sort();
    ips.dedup();
    push_per_ip(base, ips, out);
}

fn node_rows(node: &Node, base: Event, out: &mut Vec<Event>) {
    let name = node.metadata.name.clone();
    let base = Event {
        node: name.clone(),
        resource: Some("nodes".into()),
        object_name: name,
        ..base
    };
    let mut ips: Vec<String> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .map(|a| a.address.clone())
        .collect();
    ips.dedup();
    push_per_ip(base, ips, out);
}

/// One row per IP in `src_ip`; one row without an IP when there is none.
fn push_per_ip(base: Event, ips: Vec<String>, out: &mut Vec<Event>) {
    if ips.is_empty() {
        out.push(base);
        return;
    }
    for ip in ips {
        out.push(Event {
            src_ip: Some(ip),
            ..base.clone()
        });
    }
}

/// The API resource name of a kind (`Deployment` → `deployments`, `NetworkPolicy` →
/// `networkpolicies`, `Ingress` → `ingresses`).
fn plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k == "endpoints" {
        k
    } else if let Some(stem) = k.strip_suffix('y') {
        format!("{stem}ies")
    } else if k.ends_with('s') {
        format!("{k}es")
    } else {
        format!("{k}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = include_str!("../tests/data/kubectl_get_pods_services_nodes.json");

    #[test]
    fn pods_services_nodes_list() {
        let mut out = Vec::new();
        parse(LIST, 1_000, &mut out).unwrap();
        let pods: Vec<_> = out
            .iter()
            .filter(|e| e.resource.as_deref() == Some("pods"))
            .collect();
        // invoice-api: one container; ledger-0: init + main; a pending pod without statuses.
        let api = pods
            .iter()
            .find(|e| e.pod.as_deref() == Some("invoice-api-7d9f8b6c5-abc12"))
            .unwrap();
        assert_eq!(api.namespace.as_deref(), Some("billing"));
        assert_eq!(api.workload_kind.as_deref(), Some("Deployment"));
        assert_eq!(api.workload_name.as_deref(), Some("invoice-api"));
        assert_eq!(api.src_ip.as_deref(), Some("10.244.1.17"));
        assert_eq!(api.node.as_deref(), Some("worker-1"));
        assert_eq!(
            api.container_id.as_deref(),
            Some("3f1c0c9f7d2e4b8a9c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b")
        );
        let ledger: Vec<_> = pods
            .iter()
            .filter(|e| e.pod.as_deref() == Some("ledger-0"))
            .collect();
        assert_eq!(ledger.len(), 2);
        assert!(
            ledger
                .iter()
                .all(|e| e.workload_kind.as_deref() == Some("StatefulSet"))
        );
        let backup = pods
            .iter()
            .find(|e| e.pod.as_deref() == Some("ledger-backup-29345760-x7k2p"))
            .unwrap();
        assert_eq!(
            (
                backup.workload_kind.as_deref(),
                backup.workload_name.as_deref()
            ),
            (Some("CronJob"), Some("ledger-backup"))
        );
        let svc: Vec<_> = out
            .iter()
            .filter(|e| e.resource.as_deref() == Some("services"))
            .filter_map(|e| e.src_ip.as_deref())
            .collect();
        assert!(svc.contains(&"10.96.0.1") && svc.contains(&"10.96.12.34"));
        let nodes: Vec<_> = out
            .iter()
            .filter(|e| e.resource.as_deref() == Some("nodes"))
            .map(|e| (e.node.as_deref().unwrap(), e.src_ip.as_deref().unwrap()))
            .collect();
        assert!(nodes.contains(&("worker-1", "172.18.0.3")));
        // Every row has its own id, all stamped with the observation time.
        let mut ids: Vec<_> = out.iter().map(|e| e.event_id.unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), out.len());
        assert!(out.iter().all(|e| e.ts == 1_000 && e.kind == "k8s_object"));
    }

    #[test]
    fn bad_items_are_named() {
        let mut out = Vec::new();
        let err = parse(
            r#"{"kind":"List","apiVersion":"v1","items":[{"kind":"Pod","apiVersion":"v1","spec":{"containers":"x"}}]}"#,
            0,
            &mut out,
        )
        .unwrap_err();
        assert!(err.starts_with("item 0: Pod:"), "{err}");
        let err = parse(r#"{"kind": 0}"#, 0, &mut out).unwrap_err();
        assert!(err.starts_with("not a Kubernetes object"), "{err}");
    }

    #[test]
    fn plural_names() {
        assert_eq!(plural("Deployment"), "deployments");
        assert_eq!(plural("NetworkPolicy"), "networkpolicies");
        assert_eq!(plural("Ingress"), "ingresses");
    }
}
