//! Policy Advisor end to end: every sample manifest and PSP audit trace (real third-party
//! data, `../shared/samples`, attribution in its README) assessed; the generated objects
//! checked against the Kubernetes OpenAPI schemas and, for the ValidatingAdmissionPolicies, by
//! a CEL interpreter; `policy diff` over kube-psp-advisor's own before/after pairs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ktrail, stderr, stdout};
use policy::report::{Report, WorkloadReport, generate, write_yaml};
use policy::{Level, Version};
use serde_json::{Value, json};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples")
}

fn sample_report() -> Report {
    let loaded = policy::load_paths(&[samples().join("manifests")]).unwrap();
    generate(loaded, Version::Latest)
}

fn find<'a>(r: &'a Report, ns: &str, kind: &str, name: &str, file: &str) -> &'a WorkloadReport {
    r.workloads
        .iter()
        .find(|w| {
            w.namespace == ns
                && w.kind == kind
                && w.name == name
                && w.source.file.to_string_lossy().ends_with(file)
        })
        .unwrap_or_else(|| panic!("no {ns}/{kind}/{name} from {file}"))
}

fn baseline_controls(w: &WorkloadReport) -> Vec<&'static str> {
    let set: BTreeSet<&'static str> = w
        .violations
        .iter()
        .filter(|v| v.level == Level::Baseline)
        .map(|v| v.control)
        .collect();
    set.into_iter().collect()
}

/// Every sample manifest: the one unrenderable template is the one error; non-workloads are
/// skipped by name; each workload's level, baseline controls and needs are as its spec says.
#[test]
fn every_sample_manifest_is_assessed() {
    let r = sample_report();
    let errors: Vec<String> = r
        .diagnostics
        .iter()
        .filter(|d| d.severity == policy::workloads::Severity::Error)
        .map(|d| d.to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("kubernetes_kube-proxy-ds.TEMPLATE.yaml: document 1 (line 37): error: not valid YAML at line 37"),
        "{}",
        errors[0]
    );
    assert_eq!(r.workloads.len(), 24);

    // (namespace, kind, name, file, level, baseline controls)
    type Expected<'a> = (&'a str, &'a str, &'a str, &'a str, Level, &'a [&'a str]);
    let expected: [Expected<'_>; 24] = [
        (
            "default",
            "DaemonSet",
            "falco-daemonset",
            "falco-daemonset-configmap.yaml",
            Level::Privileged,
            &["hostPathVolumes", "privileged"],
        ),
        (
            "default",
            "Deployment",
            "apache-unomi-aaa",
            "web-deployment.yaml",
            Level::Privileged,
            &["hostNamespaces", "hostPathVolumes", "hostPorts"],
        ),
        (
            "default",
            "Deployment",
            "falco-event-generator-deployment",
            "falco-event-generator-deployment.yaml",
            Level::Baseline,
            &[],
        ),
        (
            "default",
            "Deployment",
            "falco-k8s-audit",
            "falco-k8s-audit-deployment.yaml",
            Level::Privileged,
            &["privileged"],
        ),
        (
            "default",
            "Pod",
            "my-lamp-site",
            "test-yaml_subpath.yaml",
            Level::Baseline,
            &[],
        ),
        (
            "default",
            "Pod",
            "nginx",
            "srcYamls_nginx.yaml",
            Level::Baseline,
            &[],
        ),
        (
            "default",
            "Pod",
            "nginx",
            "targetYamls_nginx.yaml",
            Level::Privileged,
            &["hostNamespaces", "hostPathVolumes", "privileged"],
        ),
        (
            "default",
            "Pod",
            "security-context-pod",
            "test-opa.yaml",
            Level::Privileged,
            &["capabilities_baseline", "hostPathVolumes", "hostPorts"],
        ),
        (
            "kube-system",
            "DaemonSet",
            "calico-node",
            "calico-node-daemonset.yaml",
            Level::Privileged,
            &[
                "hostNamespaces",
                "hostPathVolumes",
                "hostProbesAndHostLifecycle",
                "privileged",
            ],
        ),
        (
            "monitoring",
            "DaemonSet",
            "node-exporter",
            "nodeExporter-daemonset.yaml",
            Level::Privileged,
            &[
                "capabilities_baseline",
                "hostNamespaces",
                "hostPathVolumes",
                "hostPorts",
            ],
        ),
        (
            "privileged",
            "Pod",
            "privileged-busybox-0",
            "examples_pods-allow.yaml",
            Level::Privileged,
            &["hostNamespaces"],
        ),
        (
            "privileged",
            "Pod",
            "privileged-busybox-1",
            "examples_pods-deny.yaml",
            Level::Privileged,
            &["privileged"],
        ),
        (
            "privileged",
            "Pod",
            "privileged-busybox-base",
            "examples_pods.yaml",
            Level::Privileged,
            &["capabilities_baseline", "hostNamespaces", "privileged"],
        ),
        (
            "psp-test",
            "DaemonSet",
            "busy-ds",
            "base-busybox.yaml",
            Level::Privileged,
            &["hostPathVolumes", "sysctls"],
        ),
        (
            "psp-test",
            "Deployment",
            "busy-deploy",
            "base-busybox.yaml",
            Level::Privileged,
            &["capabilities_baseline", "hostNamespaces", "hostPathVolumes"],
        ),
        (
            "psp-test",
            "Job",
            "busy-job",
            "base-busybox.yaml",
            Level::Privileged,
            &["hostNamespaces", "hostPathVolumes"],
        ),
        (
            "psp-test",
            "Pod",
            "busy-pod",
            "base-busybox.yaml",
            Level::Privileged,
            &["hostNamespaces", "hostPathVolumes", "sysctls"],
        ),
        (
            "psp-test",
            "Pod",
            "my-busybox",
            "srcYamls_busy-box.yaml",
            Level::Privileged,
            &["capabilities_baseline", "hostNamespaces", "privileged"],
        ),
        (
            "psp-test",
            "Pod",
            "my-busybox",
            "targetYamls_busy-box.yaml",
            Level::Privileged,
            &["hostNamespaces"],
        ),
        (
            "psp-test",
            "ReplicaSet",
            "busy-rs",
            "base-busybox.yaml",
            Level::Privileged,
            &["capabilities_baseline", "hostNamespaces"],
        ),
        (
            "psp-test",
            "ReplicationController",
            "busy-rc",
            "base-busybox.yaml",
            Level::Privileged,
            &["hostPathVolumes", "privileged"],
        ),
        (
            "restricted",
            "Pod",
            "restricted-busybox-0",
            "examples_pods-allow.yaml",
            Level::Baseline,
            &[],
        ),
        (
            "restricted",
            "Pod",
            "restricted-busybox-1",
            "examples_pods-deny.yaml",
            Level::Privileged,
            &["privileged"],
        ),
        (
            "restricted",
            "Pod",
            "restricted-busybox-base",
            "examples_pods.yaml",
            Level::Baseline,
            &[],
        ),
    ];
    for (ns, kind, name, file, level, controls) in expected {
        let w = find(&r, ns, kind, name, file);
        assert_eq!(
            w.pss_level, level,
            "{ns}/{kind}/{name}: {:#?}",
            w.violations
        );
        assert_eq!(
            baseline_controls(w),
            controls.to_vec(),
            "{ns}/{kind}/{name}"
        );
    }

    // Needs, where the manifests are well known.
    let ne = find(
        &r,
        "monitoring",
        "DaemonSet",
        "node-exporter",
        "nodeExporter-daemonset.yaml",
    );
    assert!(ne.needs.host_network && ne.needs.host_pid && !ne.needs.host_ipc);
    assert_eq!(ne.needs.host_ports, vec![9100]);
    let paths: Vec<(&str, bool)> = ne
        .needs
        .host_paths
        .iter()
        .map(|h| (h.path.as_str(), h.read_only))
        .collect();
    assert_eq!(paths, vec![("/", true), ("/sys", true)]);
    assert_eq!(ne.needs.containers[0].capabilities_add, vec!["SYS_TIME"]);
    assert_eq!(ne.needs.containers[0].run_as_user, Some(65534));

    let calico = find(
        &r,
        "kube-system",
        "DaemonSet",
        "calico-node",
        "calico-node-daemonset.yaml",
    );
    assert_eq!(calico.needs.host_paths.len(), 7);
    assert!(
        calico
            .needs
            .containers
            .iter()
            .any(|c| c.init && c.name == "install-cni")
    );
    assert!(
        calico
            .needs
            .containers
            .iter()
            .any(|c| !c.init && c.privileged)
    );

    let falco = find(
        &r,
        "default",
        "DaemonSet",
        "falco-daemonset",
        "falco-daemonset-configmap.yaml",
    );
    assert_eq!(falco.needs.host_paths.len(), 8);
    // kube-psp-advisor forced every host path read-only; the docker socket is mounted writable.
    let sock = falco
        .needs
        .host_paths
        .iter()
        .find(|h| h.path == "/var/run/docker.sock")
        .unwrap();
    assert!(!sock.read_only);

    // Namespaces: enforce the weakest workload's level, audit/warn restricted, exemptions named.
    let mon = r
        .namespaces
        .iter()
        .find(|n| n.name == "monitoring")
        .unwrap();
    assert_eq!(mon.pss_level, Level::Privileged);
    assert_eq!(
        mon.labels["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    assert_eq!(mon.labels["pod-security.kubernetes.io/warn"], "restricted");
    assert_eq!(
        mon.labels["pod-security.kubernetes.io/enforce-version"],
        "latest"
    );
    assert_eq!(mon.exemptions[0].workload, "DaemonSet/node-exporter");
}

/// Each PSP audit trace varies one securityContext attribute of a pod `create`; the pod in
/// its `requestObject` is read and the attribute lands where it should.
#[test]
fn psp_audit_traces_are_read_as_their_attribute_says() {
    let dir = samples().join("k8s-audit/psp-traces");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 32);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let objects: Vec<Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map(|v| v.unwrap())
            .filter_map(|e| e.get("requestObject").cloned())
            .collect();
        assert_eq!(objects.len(), 1, "{}", file.display());
        let loaded = policy::load_str(&file, &objects[0].to_string());
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let w = policy::report::assess(
            loaded.workloads.into_iter().next().unwrap(),
            Version::Latest,
        );
        let stem = file.file_stem().unwrap().to_str().unwrap();
        let c = &w.needs.containers[0];
        let has = |control: &str| w.violations.iter().any(|v| v.control == control);
        let ok = match stem {
            "capability_add_sys_nice" => {
                c.capabilities_add == ["SYS_NICE"] && has("capabilities_baseline")
            }
            "capability_add_sys_time" => {
                c.capabilities_add == ["SYS_TIME"] && has("capabilities_baseline")
            }
            "create_vanilla_nginx_deployment" => w.pss_level == Level::Baseline,
            "flex_volumes" => {
                w.needs.volume_types.contains(&"flexVolume".to_string()) && has("restrictedVolumes")
            }
            "fs_group" => w.needs.fs_group == Some(2000),
            "host_ipc" => w.needs.host_ipc && has("hostNamespaces"),
            "host_network" => w.needs.host_network && has("hostNamespaces"),
            "host_network_ports" => !w.needs.host_ports.is_empty() && has("hostPorts"),
            "host_pid" => w.needs.host_pid && has("hostNamespaces"),
            "mount_etc_using_host_path" => w.needs.host_paths.iter().any(|h| h.path == "/etc"),
            "privilege_escalation" => c.allow_privilege_escalation == Some(true),
            "privileged" => c.privileged && has("privileged"),
            "proc_mount_type_default" => c.proc_mount == "Default" && !has("procMount"),
            "proc_mount_type_unmasked" => c.proc_mount == "Unmasked" && has("procMount"),
            "read_only_root_fs" => c.read_only_root_filesystem == Some(true),
            "supplemental_groups_10_20" => w.needs.supplemental_groups == [10, 20],
            s if s.starts_with("run_as_user_") || s.starts_with("run_as_group_") => {
                // The container's id where it sets one, else the pod's (`sec_ctx`).
                let ids: Vec<i64> = s.split('_').filter_map(|p| p.parse().ok()).collect();
                let effective = if s.ends_with("_container") {
                    *ids.last().unwrap()
                } else {
                    ids[0]
                };
                let got = if s.starts_with("run_as_user_") {
                    c.run_as_user
                } else {
                    c.run_as_group
                };
                // Pod Security Admission flags every explicit 0, even one a container overrides.
                let root_flagged =
                    !s.starts_with("run_as_user_") || ids.contains(&0) == has("runAsUser");
                got == Some(effective) && root_flagged
            }
            other => panic!("no expectation for {other}"),
        };
        assert!(ok, "{stem}: {:#?}", w);
    }
}

/// The generated objects validate against the Kubernetes OpenAPI schemas, and every
/// ValidatingAdmissionPolicy admits its workload's own pod and nothing more privileged.
#[test]
fn generated_policies_validate_and_admit_exactly_their_workload() {
    let r = sample_report();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("policies");
    write_yaml(&r, &out).unwrap();
    let cases: Vec<Value> = r
        .workloads
        .iter()
        .map(|w| {
            let mut spec = serde_json::to_value(&w.workload.spec).unwrap();
            if w.needs.service_account_token {
                // What the ServiceAccount admission plugin adds before validation runs.
                let volumes = spec.as_object_mut().unwrap().entry("volumes").or_insert(json!([]));
                volumes.as_array_mut().unwrap().push(json!({
                    "name": "kube-api-access-x",
                    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}
                }));
            }
            let mut meta = serde_json::to_value(&w.workload.pod_meta).unwrap();
            meta["namespace"] = json!(w.namespace);
            if w.kind == "Pod" {
                meta["name"] = json!(w.name);
            } else {
                meta["generateName"] = json!(format!("{}-", w.name));
                meta["name"] = json!(format!("{}-x7k2p", w.name));
            }
            if w.kind == "Job" {
                // The label the Job controller adds to its pods.
                meta["labels"]["job-name"] = json!(w.name);
            }
            json!({"file": format!("{}.yaml", w.file_stem), "pod": {"metadata": meta, "spec": spec}})
        })
        .collect();
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&cases).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy/check.py");
    let o = Command::new(common::python())
        .arg(script)
        .arg(&out)
        .arg(&cases_file)
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "{text}");
    // 24 workloads × (policy, binding, PSP, Role, RoleBinding) + 6 namespaces.
    assert!(
        text.contains("schema-valid objects: 126; policies checked with CEL: 24; failures: 0"),
        "{text}"
    );
}

/// kube-psp-advisor's own before/after pairs: the target manifests escalate.
#[test]
fn diff_reports_the_escalations_of_a_change() {
    let dir = samples().join("manifests/kube-psp-advisor");
    let data = tempfile::tempdir().unwrap();
    let src = dir.join("test-yaml_srcYamls_nginx.yaml");
    let target = dir.join("test-yaml_targetYamls_nginx.yaml");
    let o = ktrail(
        data.path(),
        &[
            "policy",
            "diff",
            "--format",
            "json",
            src.to_str().unwrap(),
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let changes: BTreeSet<String> = report["escalations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["change"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "pss_level: meets privileged (was baseline)",
        "host_namespace: hostNetwork: true",
        "host_namespace: hostPID: true",
        "host_namespace: hostIPC: true",
        "privileged: privileged: true",
        "host_path: /tmp (read-write)",
        "run_as_root: was non-root, now no non-root user",
        "read_only_root_filesystem: root filesystem no longer read-only",
    ] {
        assert!(changes.contains(want), "missing {want:?} in {changes:#?}");
    }

    // The same set against itself: nothing, exit 0.
    let o = ktrail(
        data.path(),
        &[
            "policy",
            "diff",
            src.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), "no escalations");
}

/// The command line: JSON report fields, bad documents named on stderr with exit 1, YAML
/// files written per workload.
#[test]
fn generate_reports_json_and_names_bad_documents() {
    let data = tempfile::tempdir().unwrap();
    let wellknown = samples().join("manifests/wellknown");
    let o = ktrail(
        data.path(),
        &[
            "policy",
            "generate",
            "--format",
            "json",
            wellknown.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "the template is bad input");
    assert!(stderr(&o).contains(
        "kubernetes_kube-proxy-ds.TEMPLATE.yaml: document 1 (line 37): error: not valid YAML"
    ));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let w = &report["workloads"][0];
    for key in [
        "kind",
        "namespace",
        "name",
        "pss_level",
        "violations",
        "containers",
        "host_network",
        "host_pid",
        "host_ipc",
        "host_ports",
        "host_paths",
    ] {
        assert!(w.get(key).is_some(), "missing {key}");
    }
    for key in ["control", "level", "path", "value"] {
        assert!(
            w["violations"][0].get(key).is_some(),
            "missing violations[].{key}"
        );
    }
    for key in [
        "name",
        "init",
        "privileged",
        "capabilities_add",
        "run_as_user",
    ] {
        assert!(
            w["containers"][0].get(key).is_some(),
            "missing containers[].{key}"
        );
    }
    for key in ["name", "pss_level", "labels"] {
        assert!(
            report["namespaces"][0].get(key).is_some(),
            "missing namespaces[].{key}"
        );
    }
    assert_eq!(
        w["violations"][0]["path"]
            .as_str()
            .unwrap()
            .split('.')
            .next(),
        Some("spec")
    );

    let out = data.path().join("out");
    let node_exporter = wellknown.join("kube-prometheus_nodeExporter-daemonset.yaml");
    let o = ktrail(
        data.path(),
        &[
            "policy",
            "generate",
            "--k8s-version",
            "v1.30",
            "-o",
            out.to_str().unwrap(),
            node_exporter.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "monitoring.daemonset.node-exporter.patch.yaml",
            "monitoring.daemonset.node-exporter.yaml",
            "namespaces.yaml"
        ]
    );
    let ns = std::fs::read_to_string(out.join("namespaces.yaml")).unwrap();
    assert!(
        ns.contains("pod-security.kubernetes.io/enforce-version: v1.30"),
        "{ns}"
    );
}

/// `ktrail policy validate ARGS... --format json`: asserts the exit code, returns the report.
fn validate_json(data: &Path, args: &[&str], code: i32) -> Value {
    let mut all = vec!["policy", "validate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let o = ktrail(data, &all);
    assert_eq!(o.status.code(), Some(code), "{}{}", stdout(&o), stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn psp_file(dir: &Path, name: &str, drops: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: policy/v1beta1\nkind: PodSecurityPolicy\nmetadata: {{name: {name}}}\nspec:\n  \
             requiredDropCapabilities: {drops}\n  seLinux: {{rule: RunAsAny}}\n  runAsUser: {{rule: RunAsAny}}\n  \
             supplementalGroups: {{rule: RunAsAny}}\n  fsGroup: {{rule: RunAsAny}}\n  volumes: ['*']\n"
        ),
    )
    .unwrap();
    path
}

/// A policy that drops NET_RAW, against a history where the billing workload ran tcpdump:
/// `would break`, with the tcpdump row as evidence and exit 3. One that fits: `ok`, exit 0.
#[test]
fn validate_replays_runtime_history_against_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::exec_scenario_store(dir.path());
    let drop = psp_file(dir.path(), "drop-net-raw", "[NET_RAW]");
    let report = validate_json(&data, &["--policy", drop.to_str().unwrap()], 3);
    let result = &report["policies"][0]["results"][0];
    assert_eq!(result["workload"], "billing/invoice-api");
    assert_eq!(result["verdict"], "would break");
    let b = &result["breaks"][0];
    assert_eq!(b["check"], "capability");
    assert_eq!(b["detail"], "tcpdump needs NET_RAW, which the policy drops");
    assert_eq!(b["count"], 1);
    assert_eq!(b["evidence"][0]["exe"], "/usr/sbin/tcpdump");
    assert_eq!(b["evidence"][0]["pod"], "invoice-api-7d9f8b6c5-abc12");
    // The SQL given as evidence finds the same row.
    let rows = common::sql_json(&data, b["sql"].as_str().unwrap());
    assert!(rows.iter().any(|r| r["exe"] == "/usr/sbin/tcpdump"));

    let fits = psp_file(dir.path(), "drop-sys-module", "[SYS_MODULE]");
    let o = ktrail(
        &data,
        &["policy", "validate", "--policy", fits.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("billing/invoice-api: ok"),
        "{}",
        stdout(&o)
    );

    // restricted requires non-root: every root process of the workload is evidence.
    let o = ktrail(
        &data,
        &[
            "policy",
            "validate",
            "--policy",
            "restricted",
            "--namespace",
            "billing",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains("run_as_root: processes run as root (uid 0)"),
        "{}",
        stdout(&o)
    );
}

/// Pod specs admitted in the past (audit `requestObject`s from the PSP traces) replayed
/// against a level: two versions of `nginx-deployment`'s pods were created, and only the
/// privileged one is evidence that baseline would break it.
#[test]
fn validate_replays_recorded_pod_specs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let traces = samples().join("k8s-audit/psp-traces");
    let o = ktrail(
        &data,
        &[
            "ingest",
            traces.join("privileged.json").to_str().unwrap(),
            traces
                .join("create_vanilla_nginx_deployment.json")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ktrail(
        &data,
        &[
            "policy", "validate", "--policy", "baseline", "--format", "json",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let results = report["policies"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0]["workload"], "default/nginx-deployment");
    assert_eq!(results[0]["verdict"], "would break");
    let breaks = results[0]["breaks"].as_array().unwrap();
    assert_eq!(breaks.len(), 1, "{breaks:#?}");
    assert_eq!(breaks[0]["check"], "pod_spec");
    assert_eq!(
        breaks[0]["detail"],
        "privileged spec.containers[0].securityContext.privileged = true (needs baseline)"
    );
    assert_eq!(breaks[0]["count"], 1);
    assert_eq!(
        breaks[0]["evidence"][0]["audit_id"],
        "a362d22b-db3c-4590-9505-23782f12925f"
    );

    // After the privileged version (14:09:12), only the vanilla one (14:09:49): it fits.
    let o = ktrail(
        &data,
        &[
            "policy",
            "validate",
            "--policy",
            "baseline",
            "--from",
            "2018-10-25T14:09:30Z",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("default/nginx-deployment: ok"),
        "{}",
        stdout(&o)
    );
}

/// `--from-store`: the pod specs the store recorded (the `kubectl get` inventory and audit
/// objects) are assessed like manifests; the newest version of each workload counts.
#[test]
fn generate_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::exec_scenario_store(dir.path());
    let traces = samples().join("k8s-audit/psp-traces");
    let o = ktrail(
        &data,
        &["ingest", traces.join("privileged.json").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ktrail(
        &data,
        &["policy", "generate", "--from-store", "--format", "json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let found: Vec<(String, String, String)> = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                format!(
                    "{}/{}/{}",
                    w["namespace"].as_str().unwrap(),
                    w["kind"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                ),
                w["pss_level"].as_str().unwrap().to_string(),
                w["source"]["file"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = |key: &str, level: &str, source: &str| {
        assert!(
            found
                .iter()
                .any(|(k, l, s)| k == key && l == level && s.starts_with(source)),
            "no {key} at {level} from {source} in {found:#?}"
        );
    };
    want(
        "billing/Pod/invoice-api-7d9f8b6c5-abc12",
        "baseline",
        "store:k8s_objects",
    );
    want(
        "billing/Job/ledger-backup-29345760",
        "baseline",
        "store:k8s_objects",
    );
    // The object as stored (`responseObject`), with the name the apiserver generated.
    want(
        "default/Pod/nginx-deployment-5cdcc99dbf-rgw6z",
        "privileged",
        "store:audit/a362d22b",
    );
}

/// `--psp-scope service-account` on kube-psp-advisor's own multi-workload file: one
/// PodSecurityPolicy per service account admitting what its workloads need together, as the
/// sample's expected `psp-grant.yaml` has it — plus the sysctl and privilege escalation
/// busy-pod asks for, which kube-psp-advisor leaves out. The objects are schema-valid.
#[test]
fn psp_per_service_account() {
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("out");
    let input = samples().join("manifests/kube-psp-advisor/test-yaml_base-busybox.yaml");
    let o = ktrail(
        data.path(),
        &[
            "policy",
            "generate",
            "--psp-scope",
            "service-account",
            "-o",
            out.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    let docs = |name: &str| -> Vec<Value> {
        policy::workloads::documents(&read(name))
            .into_iter()
            .filter_map(|(_, d)| d.unwrap())
            .collect()
    };
    let sa1 = &docs("psp-test.serviceaccount.sa-1.yaml")[0];
    assert_eq!(sa1["kind"], "PodSecurityPolicy");
    let spec = &sa1["spec"];
    assert_eq!(spec["allowedCapabilities"], json!(["SYS_ADMIN"]));
    assert_eq!(
        spec["allowedHostPaths"],
        json!([{"pathPrefix": "/usr/bin", "readOnly": true}])
    );
    assert_eq!(
        (
            spec["hostIPC"].clone(),
            spec["hostNetwork"].clone(),
            spec["hostPID"].clone()
        ),
        (json!(true), json!(true), json!(true))
    );
    assert_eq!(spec["allowedUnsafeSysctls"], json!(["net.core.somaxconn"]));
    assert_eq!(spec["runAsUser"]["rule"], "RunAsAny");
    let binding = &docs("psp-test.serviceaccount.sa-1.yaml")[2];
    assert_eq!(binding["subjects"][0]["name"], "sa-1");
    // Workload files carry no PodSecurityPolicy of their own in this scope.
    assert!(!read("psp-test.pod.busy-pod.yaml").contains("kind: PodSecurityPolicy"));

    let cases = data.path().join("cases.json");
    std::fs::write(&cases, "[]").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy/check.py");
    let o = Command::new(common::python())
        .arg(script)
        .arg(&out)
        .arg(&cases)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// The hardening patch `generate` wrote for billing/invoice-api, replayed against what the
/// workload did: it drops NET_RAW (tcpdump ran) and makes the root filesystem read-only
/// (the app wrote `/app/cache/session.db`); the read of /etc/passwd and the write to /proc
/// are no evidence.
#[test]
fn validate_a_hardening_patch() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::exec_scenario_store(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = ktrail(
        &data,
        &[
            "ingest",
            root.join("tests/data/policy/file_access.jsonl")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("out");
    let manifest = root.join("tests/data/policy/invoice-api.yaml");
    let o = ktrail(
        &data,
        &[
            "policy",
            "generate",
            "-o",
            out.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let patch = out.join("billing.deployment.invoice-api.patch.yaml");
    let report = validate_json(&data, &["--policy", patch.to_str().unwrap()], 3);
    let results = report["policies"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0]["workload"], "billing/invoice-api");
    let breaks: Vec<(String, String, u64)> = results[0]["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["check"].as_str().unwrap().into(),
                b["detail"].as_str().unwrap().into(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        breaks,
        vec![
            ("capability".into(), "tcpdump needs NET_RAW, which the policy drops".into(), 1),
            (
                "read_only_root".into(),
                "writes below the root filesystem, which the policy makes read-only: /app/cache/session.db".into(),
                2
            ),
        ]
    );
}

/// Host-namespace activity: a pod's connection from a node's own address (the inventory's)
/// is the host network; baseline forbids it, privileged does not.
#[test]
fn validate_sees_the_host_network_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::exec_scenario_store(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = ktrail(
        &data,
        &[
            "ingest",
            root.join("tests/data/policy/host_network.jsonl")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report = validate_json(
        &data,
        &["--policy", "baseline", "--namespace", "monitoring"],
        3,
    );
    let result = &report["policies"][0]["results"][0];
    assert_eq!(result["workload"], "monitoring/node-exporter");
    assert_eq!(result["breaks"][0]["check"], "host_network");
    assert_eq!(result["breaks"][0]["evidence"][0]["src_ip"], "172.18.0.3");
    let o = ktrail(
        &data,
        &[
            "policy",
            "validate",
            "--policy",
            "privileged",
            "--namespace",
            "monitoring",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}
