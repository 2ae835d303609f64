//! `ktrail serve --http` end to end: the producers' webhook posts (apiserver audit webhook
//! `EventList`, Falco `http_output`, Tetragon JSON lines), bearer auth, size limit, graceful
//! shutdown, and the data answered by `ktrail sql` afterwards.

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use common::{SAMPLES, Server, ktrail, raw_exchange, sql, stderr};

const TOKEN: &str = "s3cret-token-for-tests";

/// `ktrail serve --PROTO 127.0.0.1:0 --token-file FILE EXTRA...`, once it says where it listens.
fn start(data: &Path, proto: &str, token_file: &Path, extra: &[&str]) -> Server {
    let mut args: Vec<OsString> = vec![
        "serve".into(),
        format!("--{proto}").into(),
        "127.0.0.1:0".into(),
        "--token-file".into(),
        token_file.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    Server::start(data, &args, proto)
}

/// A minimal HTTP/1.1 client: returns (status, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (status, text) = raw_exchange(addr, &head, body);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn sample(path: &str) -> String {
    std::fs::read_to_string(Path::new(SAMPLES).join(path)).unwrap()
}

const FALCO_ALERT: &str = r#"{"hostname":"worker-1","output":"10:00:05.123456789: Notice A shell was spawned in a container with an attached terminal (evt_type=execve user=root user_uid=0 process=sh proc_exepath=/bin/sh parent=runc command=sh terminal=34816 container_id=3f1c0c9f7d2e image=ghcr.io/example/invoice-api)","priority":"Notice","rule":"Terminal shell in container","source":"syscall","tags":["T1059","container","maturity_stable","mitre_execution","shell"],"time":"2026-11-26T10:00:05.123456789Z","output_fields":{"container.id":"3f1c0c9f7d2e","container.image.repository":"ghcr.io/example/invoice-api","evt.time":1795687205123456789,"evt.type":"execve","k8s.ns.name":"billing","k8s.pod.name":"invoice-api-7d9f8b6c5-abc12","proc.cmdline":"sh","proc.exepath":"/bin/sh","proc.name":"sh","proc.pname":"runc","proc.tty":34816,"user.loginuid":-1,"user.name":"root","user.uid":0}}"#;

#[test]
fn webhooks_store_durably_and_sql_answers_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = start(&data, "http", &token_file, &["--max-body-bytes", "1048576"]);
    let addr = server.addr;

    assert_eq!(request(addr, "GET", "/healthz", None, b"").0, 200);
    // Without (or with a wrong) token: 401, nothing stored.
    let audit_line = sample("k8s-audit/exec_pod.json");
    assert_eq!(
        request(
            addr,
            "POST",
            "/v1/ingest/k8s-audit",
            None,
            audit_line.as_bytes()
        )
        .0,
        401
    );
    assert_eq!(
        request(
            addr,
            "POST",
            "/v1/ingest/k8s-audit",
            Some("wrong"),
            audit_line.as_bytes()
        )
        .0,
        401
    );

    // The apiserver webhook backend: an EventList of real events.
    let items: Vec<serde_json::Value> = [
        "k8s-audit/exec_pod.json",
        "k8s-audit/attach_pod.json",
        "k8s-audit/create_deployment.json",
    ]
    .iter()
    .flat_map(|p| {
        sample(p)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<_>>()
    })
    .collect();
    let n_audit = items.len();
    let list = serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items});
    let (status, body) = request(
        addr,
        "POST",
        "/v1/ingest/k8s-audit",
        Some(TOKEN),
        list.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["accepted"], n_audit as u64, "{body}");
    // The webhook retries: the same list again is stored once.
    let (status, body) = request(
        addr,
        "POST",
        "/v1/ingest/k8s-audit",
        Some(TOKEN),
        list.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (reply["accepted"].as_u64(), reply["duplicates"].as_u64()),
        (Some(0), Some(n_audit as u64))
    );

    // Falco http_output: one alert per POST.
    let (status, body) = request(
        addr,
        "POST",
        "/v1/ingest/falco",
        Some(TOKEN),
        FALCO_ALERT.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");

    // Tetragon JSON lines, one of them broken: the rest is stored, the bad line is named.
    let mut lines = sample("tetragon/testdata_events.jsonl");
    lines.push_str("{\"process_exec\": {broken\n");
    let (status, body) = request(
        addr,
        "POST",
        "/v1/ingest/tetragon",
        Some(TOKEN),
        lines.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["accepted"], 3, "{body}");
    assert_eq!(reply["rejected"], 1, "{body}");
    assert!(
        reply["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("http:tetragon:4: "),
        "{body}"
    );

    // A Tracee event, one per request as its webhook output posts them.
    let tracee = sample("tracee/docs_output-options_sched_process_exec.legacy.json");
    let (status, body) = request(
        addr,
        "POST",
        "/v1/ingest/tracee",
        Some(TOKEN),
        tracee.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["accepted"], 1, "{body}");

    // A `kubectl get -o json` inventory.
    let inventory = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ingest/tests/data/kubectl_get_pods_services_nodes.json"
    ))
    .unwrap();
    let (status, body) = request(
        addr,
        "POST",
        "/v1/ingest/k8s-objects",
        Some(TOKEN),
        &inventory,
    );
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let n_objects = reply["accepted"].as_u64().unwrap();
    assert!(n_objects >= 10, "{body}");

    // Nothing but garbage: 400. Too large: 413. Unknown producer: 404.
    assert_eq!(
        request(addr, "POST", "/v1/ingest/falco", Some(TOKEN), b"not json").0,
        400
    );
    let big = vec![b' '; 2 << 20];
    assert_eq!(
        request(addr, "POST", "/v1/ingest/falco", Some(TOKEN), &big).0,
        413
    );
    assert_eq!(
        request(addr, "POST", "/v1/ingest/syslog", Some(TOKEN), b"{}").0,
        404
    );

    server.stop();

    assert_eq!(
        sql(
            &data,
            "csv",
            "SELECT source, count(*) AS n FROM events GROUP BY source ORDER BY source"
        ),
        format!(
            "source,n\nfalco,1\nk8s_audit,{n_audit}\nk8s_objects,{n_objects}\ntetragon,3\ntracee,1\n"
        )
    );
    let dead = std::fs::read_to_string(data.join("dead-letter.jsonl")).unwrap();
    assert!(dead.contains("\"path\":\"http:tetragon\""), "{dead}");
}

#[test]
fn non_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = ktrail(&dir.path().join("store"), &["serve", "--http", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("without --token-file"));
}

/// The native gRPC stream: proto events and Arrow IPC batches in one stream, one bad event
/// named in the ack, a repeated batch counted as duplicates, bearer auth, health checking.
#[test]
fn grpc_ingest_stream_acks_when_durable() {
    use datafusion::arrow::ipc::writer::StreamWriter;
    use proto::v1::{EventBatch, Events, event_batch::Payload};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let server = start(&data, "grpc", &token_file, &[]);
    let addr = server.addr;

    let event = |i: i64, kind: &str| proto::v1::Event {
        ts_unix_nanos: 1_795_687_200_000_000_000 + i,
        kind: kind.into(),
        source: "grpc".into(),
        namespace: Some("billing".into()),
        pod: Some("ledger-0".into()),
        exe: Some("/usr/bin/psql".into()),
        ..Default::default()
    };
    // Two network events with ids `first` and `first + 1`, as an Arrow IPC stream.
    let ipc_of = |first: i64| {
        let mut builder = model::EventBatchBuilder::with_capacity(2);
        for id in first..first + 2 {
            builder.push(&model::Event {
                ts: 1_795_687_300_000_000_000 + id,
                kind: "network_connect".into(),
                source: "grpc".into(),
                event_id: Some(id),
                dst_ip: Some("198.51.100.23".into()),
                ..Default::default()
            });
        }
        let batch = builder.finish();
        let mut ipc = Vec::new();
        let mut w = StreamWriter::try_new(&mut ipc, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        EventBatch {
            payload: Some(Payload::ArrowIpc(ipc)),
        }
    };
    // More batches than the service keeps in flight; the last repeats the second, which may
    // not be durable yet when it arrives: its events are duplicates all the same.
    let batches = vec![
        EventBatch {
            payload: Some(Payload::Events(Events {
                events: vec![
                    event(1, "process_exec"),
                    event(2, "bogus"),
                    event(3, "process_exit"),
                ],
            })),
        },
        ipc_of(1000),
        ipc_of(2000),
        ipc_of(3000),
        ipc_of(1000),
    ];

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("http://{addr}");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "ktrail.v1.Ingest".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        let mut client = proto::v1::ingest_client::IngestClient::new(channel);
        let err = client
            .ingest(futures::stream::iter(batches.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        let mut req = tonic::Request::new(futures::stream::iter(batches));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let ack = client.ingest(req).await.unwrap().into_inner();
        assert_eq!(
            (ack.accepted, ack.rejected, ack.duplicates),
            (8, 1, 2),
            "{ack:?}"
        );
        assert!(ack.errors[0].starts_with("batch 1: event 1: "), "{ack:?}");
    });
    server.stop();

    assert_eq!(
        sql(
            &data,
            "csv",
            "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind"
        ),
        "kind,n\nnetwork_connect,6\nprocess_exec,1\nprocess_exit,1\n"
    );
}

#[test]
fn the_token_is_checked_before_the_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let server = start(
        &dir.path().join("store"),
        "http",
        &token_file,
        &["--max-body-bytes", "1048576"],
    );
    // A client that announces 1 MB and sends 10 bytes: answered at once, not waited for.
    let head = "POST /v1/ingest/falco HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    let (status, text) = raw_exchange(server.addr, head, b"{\"a\":1}\n\n\n");
    assert_eq!(status, 401, "{text}");
    // With the token, a body over --max-body-bytes is 413.
    let big = vec![b' '; 2 << 20];
    let head = format!(
        "POST /v1/ingest/falco HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let (status, text) = raw_exchange(server.addr, &head, &big);
    assert_eq!(status, 413, "{text}");
    server.stop();
}

/// A tmpfs of `bytes` on `dir` (CI runs as root; a test that cannot mount fails).
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &Path, bytes: u64) -> SmallFs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs a small file system: `mount -t tmpfs` failed (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs(dir.to_path_buf())
    }

    /// Takes every free byte with one file; returns it (delete it to free the space).
    fn fill(&self) -> std::path::PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_answers_507_and_the_producers_retry_is_stored_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let fs_ = SmallFs::mount(&small, 32 << 20);
    let data = small.join("store");
    let server = start(&data, "http", &token_file, &[]);
    let addr = server.addr;
    let post = |body: &str| {
        let head = format!(
            "POST /v1/ingest/falco HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        raw_exchange(addr, &head, body.as_bytes())
    };
    let (status, text) = post(FALCO_ALERT);
    assert_eq!(status, 200, "{text}");
    // 300 distinct alerts, as falcosidekick batches them in JSON lines.
    let body: String = (0..300)
        .map(|i| {
            FALCO_ALERT.replace(
                "\"time\":\"2026-11-26T10:00:05.123456789Z\"",
                &format!("\"time\":\"2026-11-26T10:01:{:02}.{i:09}Z\"", i % 60),
            ) + "\n"
        })
        .collect();
    let filler = fs_.fill();
    let (status, text) = post(&body);
    assert_eq!(status, 507, "{text}");
    assert!(
        text.contains("Retry-After") || text.contains("retry-after"),
        "{text}"
    );
    let (status, text) = raw_exchange(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no space left"), "{text}");
    // The producer retries while the disk is still full: refused again, never a 200.
    let (status, text) = post(&body);
    assert_eq!(status, 507, "{text}");
    std::fs::remove_file(&filler).unwrap();
    let (status, text) = post(&body);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"accepted\":300") && text.contains("\"duplicates\":0"),
        "{text}"
    );
    let (status, _) = raw_exchange(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200);
    server.stop();
    assert_eq!(
        sql(&data, "csv", "SELECT count(*) AS n FROM events"),
        "n\n301\n"
    );
}
