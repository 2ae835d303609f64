//! `deploy/`: the manifests validate against the Kubernetes schemas and `ktrail policy
//! generate` finds the pods at the `restricted` level; every producer configuration in
//! `deploy/producers/` is followed to the letter (its URL, its auth header, the body shape its
//! producer documents) against a running `ktrail serve`, and the events are stored.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{SAMPLES, Server, ktrail, python, raw_exchange, sql, stderr, stdout};

const TOKEN: &str = "token-from-the-ktrail-token-secret";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap()
}

fn sample(path: &str) -> String {
    std::fs::read_to_string(Path::new(SAMPLES).join(path)).unwrap()
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let o = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deploy/check.py"))
        .arg(deploy("kubernetes"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("9 objects checked"), "{}", stdout(&o));
}

#[test]
fn policy_generate_finds_every_pod_restricted() {
    let data = tempfile::tempdir().unwrap();
    let o = ktrail(
        data.path(),
        &[
            "policy",
            "generate",
            "--format",
            "json",
            deploy("kubernetes").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut seen: Vec<(String, String)> = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                format!(
                    "{} {}",
                    w["kind"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                ),
                w["pss_level"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "CronJob ktrail-inventory".to_string(),
                "restricted".to_string()
            ),
            ("StatefulSet ktrail".to_string(), "restricted".to_string()),
        ]
    );
}

/// The value after `key` on the first line of `text` that has it (`key: value`, `Key value`).
fn setting<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

/// The path of an in-cluster URL to ktrail's HTTP Service (`http://ktrail.ktrail.svc:8480/…`).
fn service_path(url: &str) -> &str {
    url.strip_prefix("http://ktrail.ktrail.svc:8480")
        .unwrap_or_else(|| panic!("{url} is not ktrail's HTTP Service"))
}

/// POSTs `body` to `path` with the headers a producer sends; (status, reply body as JSON).
fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let (status, text) = raw_exchange(addr, &head, body);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn every_producer_configuration_reaches_ktrail_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let args: Vec<OsString> = ["serve", "--http", "127.0.0.1:0", "--token-file"]
        .iter()
        .map(OsString::from)
        .chain([token_file.clone().into_os_string()])
        .collect();
    let server = Server::start(&data, &args, "http");
    let addr = server.addr;
    let accepted = |reply: &serde_json::Value| reply["accepted"].as_u64().unwrap();

    // kube-apiserver's audit webhook: batches of Events as an EventList, the kubeconfig's
    // user token as a bearer token.
    let kubeconfig = read("producers/audit-webhook-kubeconfig.yaml");
    let path = service_path(setting(&kubeconfig, "server:"));
    assert_eq!(
        setting(&kubeconfig, "token:"),
        "REPLACE-WITH-THE-KTRAIL-TOKEN"
    );
    let items: Vec<String> = ["k8s-audit/exec_pod.json", "k8s-audit/attach_pod.json"]
        .iter()
        .map(|f| sample(f).trim().to_string())
        .collect();
    let list = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    );
    let headers = [
        ("Authorization", format!("Bearer {TOKEN}")),
        ("Content-Type", "application/json".into()),
    ];
    let (status, reply) = post(addr, path, &headers, list.as_bytes());
    assert_eq!((status, accepted(&reply)), (200, 2), "{reply}");

    // falcosidekick's webhook output: each alert as Falco's JSON plus its uuid, with the
    // configured custom header.
    let values = read("producers/falco-values.yaml");
    let path = service_path(setting(&values, "address:"));
    let (name, value) = setting(&values, "customHeaders:").split_once(':').unwrap();
    let value = value.replace("REPLACE-WITH-THE-KTRAIL-TOKEN", TOKEN);
    let alert = r#"{"uuid":"6f3c1f8e-2a4b-4f7e-9d1c-0b5a7e2c9d10","output":"10:00:05.123456789: Notice A shell was spawned in a container with an attached terminal (user=root process=sh container_id=3f1c0c9f7d2e)","priority":"Notice","rule":"Terminal shell in container","time":"2026-11-26T10:00:05.123456789Z","output_fields":{"container.id":"3f1c0c9f7d2e","evt.time":1795687205123456789,"k8s.ns.name":"billing","k8s.pod.name":"invoice-api-7d9f8b6c5-abc12","proc.cmdline":"sh","proc.name":"sh","user.name":"root"},"source":"syscall","tags":["container","shell","mitre_execution"],"hostname":"worker-1"}"#;
    let headers = [
        (name, value),
        ("Content-Type", "application/json".into()),
        ("User-Agent", "Falcosidekick".into()),
    ];
    let (status, reply) = post(addr, path, &headers, alert.as_bytes());
    assert_eq!((status, accepted(&reply)), (200, 1), "{reply}");

    // Vector's http sink: text codec, newline-delimited framing (each line as read from
    // Tetragon's export file), bearer auth.
    let vector = read("producers/vector.yaml");
    let path = service_path(setting(&vector, "uri:"));
    assert_eq!(setting(&vector, "codec:"), "text");
    assert!(vector.contains("method: newline_delimited"), "{vector}");
    assert_eq!(setting(&vector, "strategy:"), "bearer");
    let lines = sample("tetragon/testdata_events.jsonl");
    let records = lines.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    let headers = [
        ("Authorization", format!("Bearer {TOKEN}")),
        ("Content-Type", "text/plain".into()),
    ];
    let (status, reply) = post(addr, path, &headers, lines.as_bytes());
    assert_eq!((status, accepted(&reply)), (200, records), "{reply}");

    // Fluent Bit's http output, json_lines without its date key: the records parsed and
    // written again as JSON. (Event ids hash the record's bytes, so these re-serialised
    // copies of the lines Vector sent are new events; a cluster runs one of the two.)
    let fluent = read("producers/fluent-bit.conf");
    let path = setting(&fluent, "URI");
    assert_eq!(
        (setting(&fluent, "Host"), setting(&fluent, "Port")),
        ("ktrail.ktrail.svc", "8480")
    );
    assert_eq!(setting(&fluent, "Format"), "json_lines");
    assert_eq!(setting(&fluent, "json_date_key"), "false");
    let header = setting(&fluent, "Header").replace("${KTRAIL_TOKEN}", TOKEN);
    let (name, value) = header.split_once(' ').unwrap();
    let body: String = lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap()
                .to_string()
                + "\n"
        })
        .collect();
    let headers = [
        (name, value.to_string()),
        ("Content-Type", "application/x-ndjson".into()),
    ];
    let (status, reply) = post(addr, path, &headers, body.as_bytes());
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (
            reply["accepted"].as_u64(),
            reply["duplicates"].as_u64(),
            reply["rejected"].as_u64()
        ),
        (Some(records), Some(0), Some(0)),
        "{reply}"
    );

    // The inventory CronJob: `kubectl get pods,services,nodes -A -o json | curl …`.
    let cronjob = read("kubernetes/inventory-cronjob.yaml");
    assert!(cronjob.contains("kubectl get pods,services,nodes -A -o json"));
    let url = cronjob
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let path = service_path(url);
    let list = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("ingest/tests/data/kubectl_get_pods_services_nodes.json"),
    )
    .unwrap();
    let headers = [
        ("Authorization", format!("Bearer {TOKEN}")),
        ("Content-Type", "application/json".into()),
    ];
    let (status, reply) = post(addr, path, &headers, &list);
    assert_eq!(status, 200, "{reply}");
    assert!(accepted(&reply) > 0, "{reply}");

    server.stop();
    let counts = sql(
        &data,
        "csv",
        "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind",
    );
    for kind in ["falco_alert", "k8s_audit", "k8s_object"] {
        assert!(counts.contains(kind), "{kind} missing in {counts}");
    }
}
