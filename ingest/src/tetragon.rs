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

// Missing keys and JSON nulls read as `None`: serde's default for `Option` fields.
#[derive(Deserialize, Default)]
struct Process {
    exec_id: Option<String>,
    parent_exec_id: Option<String>,
    pid: Option<i64>,
    uid: Option<i64>,
    cwd: Option<String>,
    binary: Option<String>,
    arguments: Option<String>,
    pod: Option<Pod>,
    /// Short container id (older exports, or no pod).
    docker: Option<String>,
    start_time: Option<String>,
}

/// The parent process: only what ktrail keeps of it (its pod, labels etc. are skipped).
#[derive(Deserialize, Default)]
struct Parent {
    exec_id: Option<String>,
    pid: Option<i64>,
    binary: Option<String>,
}

#[derive(Deserialize, Default)]
struct Pod {
    namespace: Option<String>,
    name: Option<String>,
    container: Option<Container>,
    workload: Option<String>,
    workload_kind: Option<String>,
}

#[derive(Deserialize, Default)]
struct Container {
    id: Option<String>,
    name: Option<String>,
    image: Option<Image>,
}

#[derive(Deserialize, Default)]
struct Image {
    name: Option<String>,
}

#[derive(Deserialize, Clone)]
struct Sock {
    protocol: Option<String>,
    saddr: Option<String>,
    daddr: Option<String>,
    sport: Option<i64>,
    dport: Option<i64>,
}

/// A line of the event types ktrail maps, read in one typed pass (unknown keys skipped).
#[derive(Deserialize)]
struct Line {
    process_exec: Option<Box<Body>>,
    process_exit: Option<Box<Body>>,
    process_kprobe: Option<Box<Body>>,
    process_tracepoint: Option<Box<Body>>,
    process_connect: Option<Box<Body>>,
    process_close: Option<Box<Body>>,
    process_listen: Option<Box<Body>>,
    node_name: Option<String>,
    cluster_name: Option<String>,
    time: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    process: Option<Box<Process>>,
    parent: Option<Parent>,
    function_name: Option<String>,
    args: Option<Vec<Arg>>,
    // The older process_connect / process_close / process_listen events.
    source_ip: Option<String>,
    source_port: Option<i64>,
    destination_ip: Option<String>,
    destination_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct Arg {
    sock_arg: Option<Sock>,
    skb_arg: Option<Sock>,
    file_arg: Option<serde::de::IgnoredAny>,
    path_arg: Option<serde::de::IgnoredAny>,
}

/// Parses one export line.
///
/// The common event types are read in one typed pass straight from the bytes; anything that
/// pass does not take (another event type, a field of an unexpected type) goes through the
/// general path over a JSON tree, which decides whether it is kept (as `other`) or rejected.
///
/// The event's `raw` is left empty: the line itself is the record, and `read_input` puts it in
/// the batch (`Format::raw_is_record`). A caller of its own sets `raw` to `original`.
pub fn parse(original: &str, out: &mut Vec<Event>) -> Result<(), String> {
    if let Ok(line) = serde_json::from_str::<Line>(original)
        && let Some(ev) = typed(line, original)?
    {
        out.push(ev);
        return Ok(());
    }
    parse_tree(original, out)
}

fn typed(line: Line, raw: &str) -> Result<Option<Event>, String> {
    let (kind, body) = match line {
        Line {
            process_exec: Some(b),
            ..
        } => ("process_exec", b),
        Line {
            process_exit: Some(b),
            ..
        } => ("process_exit", b),
        Line {
            process_kprobe: Some(b),
            ..
        } => ("process_kprobe", b),
        Line {
            process_tracepoint: Some(b),
            ..
        } => ("process_tracepoint", b),
        Line {
            process_connect: Some(b),
            ..
        } => ("process_connect", b),
        Line {
            process_close: Some(b),
            ..
        } => ("process_close", b),
        Line {
            process_listen: Some(b),
            ..
        } => ("process_listen", b),
        _ => return Ok(None),
    };
    let Body {
        process,
        parent,
        function_name,
        args,
        source_ip,
        source_port,
        destination_ip,
        destination_port,
        protocol,
    } = *body;
    let process = process.unwrap_or_default();
    let parent = parent.unwrap_or_default();
    let Some(time) = line.time.as_deref().or(process.start_time.as_deref()) else {
        return Ok(None);
    };
    let ts = model::parse_ts(time).map_err(|e| e.to_string())?;
    let process = *process;
    let mut ev = base_event(ts, process, parent, raw);
    ev.node = line.node_name;
    ev.cluster = line.cluster_name;
    let port = |p: Option<i64>| p.and_then(|p| i32::try_from(p).ok());
    ev.kind = match kind {
        "process_exec" | "process_exit" => kind.into(),
        "process_kprobe" => {
            let args = args.unwrap_or_default();
            let sock = args
                .iter()
                .find_map(|a| a.sock_arg.as_ref().or(a.skb_arg.as_ref()));
            match sock {
                Some(s) => sock_event(function_name.as_deref().unwrap_or(""), s.clone(), &mut ev),
                None if args
                    .iter()
                    .any(|a| a.file_arg.is_some() || a.path_arg.is_some()) =>
                {
                    "file_access".into()
                }
                None => "other".into(),
            }
        }
        "process_connect" | "process_close" | "process_listen" => {
            ev.src_ip = source_ip;
            ev.src_port = port(source_port);
            ev.dst_ip = destination_ip;
            ev.dst_port = port(destination_port);
            ev.protocol = protocol;
            match kind {
                "process_connect" => "network_connect",
                "process_close" => "network_close",
                _ => "network_listen",
            }
            .into()
        }
        _ => "other".into(),
    };
    Ok(Some(ev))
}

/// The general path: any `process_*` event, from a JSON tree.
fn parse_tree(raw: &str, out: &mut Vec<Event>) -> Result<(), String> {
    let top: Map<String, Value> = serde_json::from_str(raw).map_err(|e| e.to_string())?;
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
        Some(p) => Process::deserialize(p).map_err(|e| format!("{event_type}.process: {e}"))?,
        None => Process::default(),
    };
    let parent: Parent = match body.get("parent") {
        Some(p) => Parent::deserialize(p).map_err(|e| format!("{event_type}.parent: {e}"))?,
        None => Parent::default(),
    };
    let mut ev = base_event(ts, process, parent, raw);
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

/// The columns every event type shares, moved out of the parsed process and its parent.
fn base_event(ts: i64, p: Process, parent: Parent, raw: &str) -> Event {
    let pod = p.pod.unwrap_or_default();
    let container = pod.container.unwrap_or_default();
    let container_id = container
        .id
        .as_deref()
        .or(p.docker.as_deref())
        .map(strip_runtime_prefix);
    Event {
        ts,
        kind: String::new(),
        source: "tetragon".into(),
        event_id: Some(model::event_id_of("tetragon", raw.as_bytes())),
        namespace: pod.namespace,
        pod: pod.name,
        container_id,
        container_name: container.name,
        image: container.image.and_then(|i| i.name),
        workload_kind: pod.workload_kind,
        workload_name: pod.workload,
        pid: p.pid,
        ppid: parent.pid,
        uid: p.uid,
        exe: p.binary,
        args: p.arguments,
        cwd: p.cwd,
        exec_id: p.exec_id,
        parent_exec_id: p.parent_exec_id.or(parent.exec_id),
        parent_exe: parent.binary,
        // `raw` is the record: the caller puts it in the batch (`Format::raw_is_record`).
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
        return sock_event(function, s, ev);
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

/// A kprobe on a socket function: its kind, and the connection's ends (`src` initiated it).
fn sock_event(function: &str, s: Sock, ev: &mut Event) -> String {
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
    kind.into()
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
