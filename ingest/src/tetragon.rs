//! Tetragon's JSON export: one object per line keyed by the event type (`process_exec`,
//! `process_exit`, `process_kprobe`, `process_tracepoint`, the older `process_connect` /
//! `process_close` / `process_listen`, ...), with `node_name` and `time`. Field names are the
//! proto names of `api/v1/tetragon/*.proto` in cilium/tetragon.
//!
//! Network direction: `src` is the side that initiated the connection, `dst` the side that
//! accepted it (so for `inet_csk_accept` the peer is the source).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use model::Event;

/// Text borrowed from the line when it has no escapes (most do not), owned otherwise.
type Text<'a> = Cow<'a, str>;

/// Reads an optional [`Text`]. Serde's own `Option<Cow<str>>` always copies: it borrows only a
/// field spelled `Cow<'a, str>` (not an alias), as in this newtype.
fn text<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Text<'a>>, D::Error> {
    #[derive(Deserialize)]
    struct Field<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Field>::deserialize(d)?.map(|f| f.0))
}

#[derive(Deserialize, Default)]
struct Process<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    exec_id: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    parent_exec_id: Option<Text<'a>>,
    #[serde(default)]
    pid: Option<i64>,
    #[serde(default)]
    uid: Option<i64>,
    #[serde(borrow, default, deserialize_with = "text")]
    cwd: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    binary: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    arguments: Option<Text<'a>>,
    #[serde(borrow, default)]
    pod: Option<Pod<'a>>,
    /// Short container id (older exports, or no pod).
    #[serde(borrow, default, deserialize_with = "text")]
    docker: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    start_time: Option<Text<'a>>,
}

/// The parent process: only what ktrail keeps of it (its pod, labels etc. are skipped).
#[derive(Deserialize, Default)]
struct Parent<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    exec_id: Option<Text<'a>>,
    #[serde(default)]
    pid: Option<i64>,
    #[serde(borrow, default, deserialize_with = "text")]
    binary: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
struct Pod<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    namespace: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    container: Option<Container<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    workload: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    workload_kind: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
struct Container<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    id: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    image: Option<Image<'a>>,
}

#[derive(Deserialize, Default)]
struct Image<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    name: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Sock<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    protocol: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    saddr: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    daddr: Option<Text<'a>>,
    #[serde(default)]
    sport: Option<i64>,
    #[serde(default)]
    dport: Option<i64>,
}

/// A line of the event types ktrail maps, read in one typed pass (unknown keys skipped).
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    process_exec: Option<Box<Body<'a>>>,
    #[serde(borrow, default)]
    process_exit: Option<Box<Body<'a>>>,
    #[serde(borrow, default)]
    process_kprobe: Option<Box<Body<'a>>>,
    #[serde(borrow, default)]
    process_tracepoint: Option<Box<Body<'a>>>,
    #[serde(borrow, default)]
    process_connect: Option<Box<Body<'a>>>,
    #[serde(borrow, default)]
    process_close: Option<Box<Body<'a>>>,
    #[serde(borrow, default)]
    process_listen: Option<Box<Body<'a>>>,
    #[serde(borrow, default, deserialize_with = "text")]
    node_name: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    cluster_name: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    time: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    process: Option<Box<Process<'a>>>,
    #[serde(borrow, default)]
    parent: Option<Parent<'a>>,
    #[serde(borrow, default, deserialize_with = "text")]
    function_name: Option<Text<'a>>,
    #[serde(borrow, default)]
    args: Option<Vec<Arg<'a>>>,
    // The older process_connect / process_close / process_listen events.
    #[serde(borrow, default, deserialize_with = "text")]
    source_ip: Option<Text<'a>>,
    #[serde(default)]
    source_port: Option<i64>,
    #[serde(borrow, default, deserialize_with = "text")]
    destination_ip: Option<Text<'a>>,
    #[serde(default)]
    destination_port: Option<i64>,
    #[serde(borrow, default, deserialize_with = "text")]
    protocol: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Arg<'a> {
    #[serde(borrow, default)]
    sock_arg: Option<Sock<'a>>,
    #[serde(borrow, default)]
    skb_arg: Option<Sock<'a>>,
    #[serde(default)]
    file_arg: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    path_arg: Option<serde::de::IgnoredAny>,
}

/// Parses one export line into its one event, whose text borrows from the line.
///
/// The common event types are read in one typed pass straight from the text; anything that
/// pass does not take (another event type, a field of an unexpected type) goes through the
/// general path over a JSON tree, which decides whether it is kept (as `other`) or rejected.
///
/// `raw` is left empty: the line itself is the record, and the caller stores it (as
/// `read_input` does, see `Format::raw_is_record`).
pub fn parse(line: &str) -> Result<Event<Text<'_>>, String> {
    if let Ok(typed_line) = serde_json::from_str::<Line>(line)
        && let Some(ev) = typed(typed_line, line)?
    {
        return Ok(ev);
    }
    parse_tree(line)
}

fn typed<'a>(line: Line<'a>, raw: &str) -> Result<Option<Event<Text<'a>>>, String> {
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
    let Some(time) = line.time.as_deref().or(process.start_time.as_deref()) else {
        return Ok(None);
    };
    let ts = model::parse_ts(time).map_err(|e| e.to_string())?;
    let mut ev = base_event(ts, *process, parent.unwrap_or_default(), raw);
    ev.node = line.node_name;
    ev.cluster = line.cluster_name;
    ev.kind = match kind {
        "process_exec" | "process_exit" => kind.into(),
        "process_kprobe" => {
            let mut args = args.unwrap_or_default();
            let file = args
                .iter()
                .any(|a| a.file_arg.is_some() || a.path_arg.is_some());
            match args
                .iter_mut()
                .find_map(|a| a.sock_arg.take().or_else(|| a.skb_arg.take()))
            {
                Some(s) => sock_event(function_name.as_deref().unwrap_or(""), s, &mut ev),
                None if file => "file_access".into(),
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

fn port(p: Option<i64>) -> Option<i32> {
    p.and_then(|p| i32::try_from(p).ok())
}

/// The general path: any `process_*` event, from a JSON tree (its text is copied out).
fn parse_tree(raw: &str) -> Result<Event<Text<'static>>, String> {
    let mut top: Map<String, Value> = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    let event_type = top
        .iter()
        .find(|(k, v)| k.starts_with("process_") && v.is_object())
        .map(|(k, _)| k.clone())
        .ok_or("Tetragon event without a `process_*` object")?;
    let Some(Value::Object(mut body)) = top.remove(&event_type) else {
        unreachable!("checked object");
    };
    let owned = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| Text::Owned(s.into()));
    // Some exports omit the top-level `time`; an exec then happened at the process start.
    let time = top
        .get("time")
        .or_else(|| body.get("process")?.get("start_time"))
        .and_then(Value::as_str)
        .ok_or("Tetragon event without `time` (nor `process.start_time`)")?;
    let ts = model::parse_ts(time).map_err(|e| e.to_string())?;
    let process: Process = match body.remove("process") {
        Some(p) => Process::deserialize(p).map_err(|e| format!("{event_type}.process: {e}"))?,
        None => Process::default(),
    };
    let parent: Parent = match body.remove("parent") {
        Some(p) => Parent::deserialize(p).map_err(|e| format!("{event_type}.parent: {e}"))?,
        None => Parent::default(),
    };
    let mut ev = base_event(ts, process, parent, raw);
    ev.node = owned(top.get("node_name"));
    ev.cluster = owned(top.get("cluster_name"));
    ev.kind = match event_type.as_str() {
        "process_exec" => "process_exec".into(),
        "process_exit" => "process_exit".into(),
        "process_kprobe" => kprobe(body, &mut ev),
        "process_connect" | "process_close" | "process_listen" => {
            ev.src_ip = owned(body.get("source_ip"));
            ev.src_port = port(body.get("source_port").and_then(Value::as_i64));
            ev.dst_ip = owned(body.get("destination_ip"));
            ev.dst_port = port(body.get("destination_port").and_then(Value::as_i64));
            ev.protocol = owned(body.get("protocol"));
            match event_type.as_str() {
                "process_connect" => "network_connect",
                "process_close" => "network_close",
                _ => "network_listen",
            }
            .into()
        }
        _ => "other".into(),
    };
    Ok(ev)
}

/// The columns every event type shares, moved out of the parsed process and its parent.
fn base_event<'a>(ts: i64, p: Process<'a>, parent: Parent<'a>, raw: &str) -> Event<Text<'a>> {
    let pod = p.pod.unwrap_or_default();
    let container = pod.container.unwrap_or_default();
    let container_id = container.id.or(p.docker).map(|id| cut(id, runtime_id));
    Event {
        ts,
        kind: Text::Borrowed(""),
        source: Text::Borrowed("tetragon"),
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

/// The part of `text` that `part` picks, still borrowed from the line if `text` was.
fn cut<'a>(text: Text<'a>, part: impl Fn(&str) -> &str) -> Text<'a> {
    match text {
        Cow::Borrowed(t) => Cow::Borrowed(part(t)),
        Cow::Owned(t) => Cow::Owned(part(&t).to_string()),
    }
}

/// `containerd://abc` → `abc` (also `docker://`, `cri-o://`).
pub fn runtime_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

fn kprobe(mut body: Map<String, Value>, ev: &mut Event<Text<'static>>) -> Text<'static> {
    let function = body
        .get("function_name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let args = match body.remove("args") {
        Some(Value::Array(args)) => args,
        _ => Vec::new(),
    };
    let file = args
        .iter()
        .any(|a| a.get("file_arg").is_some() || a.get("path_arg").is_some());
    let sock = args.into_iter().find_map(|mut a| {
        let a = a.as_object_mut()?;
        let s = a.remove("sock_arg").or_else(|| a.remove("skb_arg"))?;
        Sock::deserialize(s).ok()
    });
    match sock {
        Some(s) => sock_event(&function, s, ev),
        None if file => "file_access".into(),
        None => "other".into(),
    }
}

/// A kprobe on a socket function: its kind, and the connection's ends (`src` initiated it).
fn sock_event<'a>(function: &str, s: Sock<'a>, ev: &mut Event<Text<'a>>) -> Text<'a> {
    let (kind, accepted) = match function {
        "tcp_connect" | "tcp_sendmsg" | "udp_sendmsg" => ("network_connect", false),
        "tcp_close" => ("network_close", false),
        "inet_csk_accept" => ("network_accept", true),
        "inet_csk_listen_start" => ("network_listen", false),
        _ => ("network_connect", false),
    };
    ev.protocol = s
        .protocol
        .map(|p| cut(p, |p| p.trim_start_matches("IPPROTO_")));
    if accepted {
        (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port) =
            (s.daddr, port(s.dport), s.saddr, port(s.sport));
    } else {
        (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port) =
            (s.saddr, port(s.sport), s.daddr, port(s.dport));
    }
    kind.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of each typed event shape; the second has escaped text, which cannot be borrowed.
    const LINES: &[&str] = &[
        r#"{"process_exec":{"process":{"exec_id":"e1","parent_exec_id":"p1","pid":7,"uid":0,"cwd":"/","binary":"/usr/bin/curl","arguments":"-s http://198.51.100.23","pod":{"namespace":"billing","name":"api-1","container":{"id":"containerd://c1","name":"api","image":{"name":"alpine:3"}},"workload":"api","workload_kind":"Deployment"},"start_time":"2026-11-26T10:00:00Z"},"parent":{"exec_id":"p1","pid":6,"binary":"/bin/sh"}},"node_name":"node-a","cluster_name":"prod","time":"2026-11-26T10:00:00.000000001Z"}"#,
        r#"{"process_exec":{"process":{"exec_id":"e\u0032","binary":"\/bin\/sh","arguments":"-c \"echo hi\"","docker":"docker:\/\/d2"}},"time":"2026-11-26T10:00:01Z"}"#,
        r#"{"process_kprobe":{"process":{"exec_id":"a","binary":"/usr/bin/curl"},"function_name":"tcp_connect","args":[{"int_arg":1},{"sock_arg":{"protocol":"IPPROTO_TCP","saddr":"10.244.1.33","daddr":"198.51.100.23","sport":41822,"dport":80}}]},"time":"2026-11-26T10:00:02Z"}"#,
        r#"{"process_kprobe":{"process":{"exec_id":"f"},"function_name":"security_file_permission","args":[{"file_arg":{"path":"/etc/shadow"}}]},"time":"2026-11-26T10:00:03Z"}"#,
        r#"{"process_close":{"process":{"exec_id":"c"},"source_ip":"10.0.0.1","source_port":1234,"destination_ip":"10.0.0.2","destination_port":443,"protocol":"TCP"},"time":"2026-11-26T10:00:04Z"}"#,
    ];

    #[test]
    fn the_typed_pass_and_the_tree_read_the_same_event() {
        for line in LINES {
            let typed = parse(line).unwrap();
            let tree = parse_tree(line).unwrap();
            assert_eq!(typed, tree, "{line}");
            assert_ne!(typed.kind, "other", "{line}");
        }
    }

    #[test]
    fn text_is_borrowed_from_the_line_unless_escaped() {
        let ev = parse(LINES[0]).unwrap();
        assert!(matches!(ev.exe, Some(Cow::Borrowed("/usr/bin/curl"))));
        assert!(matches!(ev.container_id, Some(Cow::Borrowed("c1"))));
        let ev = parse(LINES[1]).unwrap();
        assert_eq!(ev.exec_id.as_deref(), Some("e2"));
        assert_eq!(ev.exe.as_deref(), Some("/bin/sh"));
        assert_eq!(ev.args.as_deref(), Some(r#"-c "echo hi""#));
        assert_eq!(ev.container_id.as_deref(), Some("d2"));
        let ev = parse(LINES[2]).unwrap();
        assert_eq!(
            (ev.kind.as_ref(), ev.protocol.as_deref(), ev.dst_port),
            ("network_connect", Some("TCP"), Some(80))
        );
    }
}
