//! Tetragon's JSON export: one object per line keyed by the event type (`process_exec`,
//! `process_exit`, `process_kprobe`, `process_tracepoint`, the older `process_connect` /
//! `process_close` / `process_listen`, ...), with `node_name` and `time`. Field names are the
//! proto names of `api/v1/tetragon/*.proto` in cilium/tetragon.
//!
//! Network direction: `src` is the side that initiated the connection, `dst` the side that
//! accepted it (so for `inet_csk_accept` the peer is the source).

use serde::Deserialize;
use serde_json::{Map, Value};

use model::Event;

#[derive(Deserialize, Default)]
struct Process {
    #[serde(default)]
    exec_id: Option<String>,
    #[serde(default)]
    parent_exec_id: Option<String>,
    #[serde(default)]
    pid: Option<i64>,
    #[serde(default)]
    uid: Option<i64>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    binary: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    pod: Option<Pod>,
    /// Short container id (older exports, or no pod).
    #[serde(default)]
    docker: Option<String>,
}

#[derive(Deserialize, Default)]
struct Pod {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    container: Option<Container>,
    #[serde(default)]
    workload: Option<String>,
    #[serde(default)]
    workload_kind: Option<String>,
}

#[derive(Deserialize, Default)]
struct Container {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    image: Option<Image>,
}

#[derive(Deserialize, Default)]
struct Image {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Sock {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    saddr: Option<String>,
    #[serde(default)]
    daddr: Option<String>,
    #[serde(default)]
    sport: Option<i64>,
    #[serde(default)]
    dport: Option<i64>,
}

/// Parses one export line.
pub fn parse(original: &[u8], out: &mut Vec<Event>) -> Result<(), String> {
    let top: Map<String, Value> = serde_json::from_slice(original).map_err(|e| e.to_string())?;
    let raw = std::str::from_utf8(original).map_err(|_| "invalid UTF-8".to_string())?;
    let (event_type, body) = top
        .iter()
        .find(|(k, v)| k.starts_with("process_") && v.is_object())
        .ok_or("Tetragon event without a `process_*` object")?;
    let body = body.as_object().expect("checked object");
    // Some exports omit the top-level `time`; an exec then happened at the process start.
    let time = top
        .get("time")
        .or_else(|| body.get("process")?.get("start_time"))
        .and_then(Value::as_str)
        .ok_or("Tetragon event without `time` (nor `process.start_time`)")?;
    let ts = model::parse_ts(time).map_err(|e| e.to_string())?;
    let process: Process = match body.get("process") {
        Some(p) => {
            serde_json::from_value(p.clone()).map_err(|e| format!("{event_type}.process: {e}"))?
        }
        None => Process::default(),
    };
    let parent: Process = match body.get("parent") {
        Some(p) => {
            serde_json::from_value(p.clone()).map_err(|e| format!("{event_type}.parent: {e}"))?
        }
        None => Process::default(),
    };
    let mut ev = base_event(ts, &process, &parent, raw);
    ev.node = top
        .get("node_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    ev.cluster = top
        .get("cluster_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    ev.kind = match event_type.as_str() {
        "process_exec" => "process_exec".into(),
        "process_exit" => "process_exit".into(),
        "process_kprobe" => kprobe(body, &mut ev),
        "process_connect" => legacy_connection(body, &mut ev, "network_connect"),
        "process_close" => legacy_connection(body, &mut ev, "network_close"),
        "process_listen" => legacy_connection(body, &mut ev, "network_listen"),
        _ => "other".into(),
    };
    out.push(ev);
    Ok(())
}

fn base_event(ts: i64, p: &Process, parent: &Process, raw: &str) -> Event {
    let pod = p.pod.as_ref();
    let container = pod.and_then(|pod| pod.container.as_ref());
    let container_id = container
        .and_then(|c| c.id.as_deref())
        .or(p.docker.as_deref())
        .map(strip_runtime_prefix);
    Event {
        ts,
        kind: String::new(),
        source: "tetragon".into(),
        event_id: Some(model::event_id_of("tetragon", raw.as_bytes())),
        namespace: pod.and_then(|p| p.namespace.clone()),
        pod: pod.and_then(|p| p.name.clone()),
        container_id,
        container_name: container.and_then(|c| c.name.clone()),
        image: container
            .and_then(|c| c.image.as_ref())
            .and_then(|i| i.name.clone()),
        workload_kind: pod.and_then(|p| p.workload_kind.clone()),
        workload_name: pod.and_then(|p| p.workload.clone()),
        pid: p.pid,
        ppid: parent.pid,
        uid: p.uid,
        exe: p.binary.clone(),
        args: p.arguments.clone(),
        cwd: p.cwd.clone(),
        exec_id: p.exec_id.clone(),
        parent_exec_id: p.parent_exec_id.clone().or_else(|| parent.exec_id.clone()),
        parent_exe: parent.binary.clone(),
        raw: Some(raw.to_string()),
        ..Default::default()
    }
}

/// `containerd://abc` → `abc` (also `docker://`, `cri-o://`).
pub fn strip_runtime_prefix(id: &str) -> String {
    id.split_once("://")
        .map_or(id, |(_, rest)| rest)
        .to_string()
}

fn kprobe(body: &Map<String, Value>, ev: &mut Event) -> String {
    let function = body
        .get("function_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let args = body.get("args").and_then(Value::as_array);
    let sock = args.into_iter().flatten().find_map(|a| {
        let s = a.get("sock_arg").or_else(|| a.get("skb_arg"))?;
        serde_json::from_value::<Sock>(s.clone()).ok()
    });
    if let Some(s) = sock {
        let (kind, accepted) = match function {
            "tcp_connect" | "tcp_sendmsg" | "udp_sendmsg" => ("network_connect", false),
            "tcp_close" => ("network_close", false),
            "inet_csk_accept" => ("network_accept", true),
            "inet_csk_listen_start" => ("network_listen", false),
            _ => ("network_connect", false),
        };
        let port = |p: Option<i64>| p.and_then(|p| i32::try_from(p).ok());
        ev.protocol = s
            .protocol
            .map(|p| p.trim_start_matches("IPPROTO_").to_string());
        if accepted {
            (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port) =
                (s.daddr, port(s.dport), s.saddr, port(s.sport));
        } else {
            (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port) =
                (s.saddr, port(s.sport), s.daddr, port(s.dport));
        }
        return kind.into();
    }
    let file = args
        .into_iter()
        .flatten()
        .any(|a| a.get("file_arg").is_some() || a.get("path_arg").is_some());
    if file {
        "file_access".into()
    } else {
        "other".into()
    }
}

fn legacy_connection(body: &Map<String, Value>, ev: &mut Event, kind: &str) -> String {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let port = |k: &str| {
        body.get(k)
            .and_then(Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
    };
    ev.src_ip = text("source_ip");
    ev.src_port = port("source_port");
    ev.dst_ip = text("destination_ip");
    ev.dst_port = port("destination_port");
    ev.protocol = text("protocol");
    kind.into()
}
