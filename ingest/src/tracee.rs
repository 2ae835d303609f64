//! Tracee's JSON events, in both shapes Tracee writes:
//! - the legacy `trace.Event` (`--output json`, `types/trace/trace.go`): `timestamp` in epoch
//!   nanoseconds, `eventName`, `processId` / `hostProcessId` / `hostParentProcessId`, `userId`,
//!   `hostName`, `executable.path`, `processEntityId` / `parentEntityId` (Tracee's process
//!   identities), the container and pod nested (`container: {id, name, image}`,
//!   `kubernetes: {podName, podNamespace, podUID}`) or flat as older releases wrote them
//!   (`containerId`, `podName`, ...; the sample's shape), and `args: [{name, type, value}]`;
//! - the `tracee.v1beta1.Event` of `api/v1beta1/event.proto` as JSON: `timestamp` (RFC 3339,
//!   or `{seconds, nanos}`), `name`, `workload.{process, container, k8s}` and
//!   `data: [{name, <typed value>}]`. Wrapped integers (`google.protobuf.UInt32Value`) are
//!   read bare or as `{"value": n}`.
//!
//! `sched_process_exec` and `sched_process_exit` are process events,
//! `security_socket_connect` / `_accept` / `_listen` network events (their `sockaddr`
//! arguments), `security_file_open` a file access; any other event is kept as `other` with
//! its record in `raw`. Tracee's pids are the host's (`hostProcessId`, `host_pid`), as
//! Tetragon's are.

use serde_json::{Map, Value};

use model::Event;

/// Parses one Tracee event (either shape). `raw` is left empty: the record is `raw`
/// (`Format::raw_is_record`).
pub fn parse(text: &str, out: &mut Vec<Event>) -> Result<(), String> {
    let top: Map<String, Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut ev = if top.contains_key("eventName") {
        legacy(&top)?
    } else if top.contains_key("workload") || top.contains_key("data") {
        v1beta1(&top)?
    } else {
        return Err("Tracee event without `eventName` (legacy) or `workload` (v1beta1)".into());
    };
    ev.source = "tracee".into();
    ev.event_id = Some(model::event_id_of("tracee", text.as_bytes()));
    out.push(ev);
    Ok(())
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An integer, bare or wrapped (`{"value": n}`), or a decimal string (protobuf's 64-bit form).
fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        Value::Object(o) => int(o.get("value")),
        _ => None,
    }
}

/// A Tracee process identity; 0 means none.
fn entity(v: Option<&Value>) -> Option<String> {
    int(v).filter(|&id| id != 0).map(|id| id.to_string())
}

/// `v[key]`, when `v` is there.
fn field<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    v.and_then(|v| v.get(key))
}

fn legacy(top: &Map<String, Value>) -> Result<Event, String> {
    let ts = match top.get("timestamp") {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or("Tracee `timestamp` is not integer nanoseconds")?,
        _ => return Err("Tracee event without an integer `timestamp`".into()),
    };
    let name = top
        .get("eventName")
        .and_then(Value::as_str)
        .ok_or("Tracee `eventName` is not a string")?;
    // Nested since Tracee v0.11, flat before.
    let container = top.get("container").and_then(Value::as_object);
    let k8s = top.get("kubernetes").and_then(Value::as_object);
    let nested = |obj: Option<&Map<String, Value>>, key: &str, flat: &str| {
        text(obj.and_then(|o| o.get(key))).or_else(|| text(top.get(flat)))
    };
    let mut args = Map::new();
    for arg in top
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v)) = (arg.get("name").and_then(Value::as_str), arg.get("value")) {
            args.insert(n.to_string(), v.clone());
        }
    }
    let mut ev = Event {
        ts,
        node: text(top.get("hostName")),
        namespace: nested(k8s, "podNamespace", "podNamespace"),
        pod: nested(k8s, "podName", "podName"),
        pod_uid: nested(k8s, "podUID", "podUID"),
        container_id: nested(container, "id", "containerId")
            .map(|id| crate::tetragon::strip_runtime_prefix(&id)),
        container_name: nested(container, "name", "containerName"),
        image: nested(container, "image", "containerImage"),
        pid: int(top.get("hostProcessId")).or_else(|| int(top.get("processId"))),
        ppid: int(top.get("hostParentProcessId")).or_else(|| int(top.get("parentProcessId"))),
        uid: int(top.get("userId")),
        exec_id: entity(top.get("processEntityId")),
        parent_exec_id: entity(top.get("parentEntityId")),
        ..Default::default()
    };
    ev.kind = event_kind(name, &args, &mut ev);
    // An exec's `pathname` first, else the process's executable; never `processName`, the
    // 16-byte comm, which is not a path (it stays in `raw`).
    if ev.exe.is_none() {
        ev.exe = text(field(top.get("executable"), "path"));
    }
    Ok(ev)
}

fn v1beta1(top: &Map<String, Value>) -> Result<Event, String> {
    let ts = match top.get("timestamp") {
        Some(Value::String(s)) => model::parse_ts(s).map_err(|e| e.to_string())?,
        Some(Value::Object(t)) => {
            let seconds = int(t.get("seconds")).ok_or("Tracee `timestamp.seconds` missing")?;
            let nanos = int(t.get("nanos")).unwrap_or(0);
            seconds
                .checked_mul(1_000_000_000)
                .and_then(|s| s.checked_add(nanos))
                .ok_or("Tracee `timestamp` out of range")?
        }
        _ => return Err("Tracee event without `timestamp`".into()),
    };
    let name = top
        .get("name")
        .and_then(Value::as_str)
        .ok_or("Tracee event without `name`")?;
    let workload = top.get("workload");
    let process = workload.and_then(|w| w.get("process"));
    let container = workload.and_then(|w| w.get("container"));
    let pod = workload.and_then(|w| w.get("k8s"));
    let parent = process
        .and_then(|p| p.get("ancestors"))
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let pid_of = |p: Option<&Value>| int(field(p, "host_pid")).or_else(|| int(field(p, "pid")));
    let mut args = Map::new();
    for value in top
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(obj) = value.as_object() else {
            continue;
        };
        let Some(name) = obj.get("name").and_then(Value::as_str) else {
            continue;
        };
        // One typed member besides `name` (`str`, `int32`, `str_array: {value: [..]}`, ...).
        if let Some((_, v)) = obj.iter().find(|(k, _)| *k != "name") {
            let v = match v {
                Value::Object(o) if o.len() == 1 && o.contains_key("value") => o["value"].clone(),
                v => v.clone(),
            };
            args.insert(name.to_string(), v);
        }
    }
    let mut ev = Event {
        ts,
        namespace: text(field(field(pod, "namespace"), "name")),
        pod: text(field(field(pod, "pod"), "name")),
        pod_uid: text(field(field(pod, "pod"), "uid")),
        container_id: text(field(container, "id"))
            .map(|id| crate::tetragon::strip_runtime_prefix(&id)),
        container_name: text(field(container, "name")),
        image: text(field(field(container, "image"), "name")),
        pid: pid_of(process),
        ppid: pid_of(parent),
        uid: int(field(field(process, "real_user"), "id")),
        exec_id: entity(field(process, "unique_id")),
        parent_exec_id: entity(field(parent, "unique_id")),
        ..Default::default()
    };
    ev.kind = event_kind(name, &args, &mut ev);
    if ev.exe.is_none() {
        ev.exe = text(field(field(process, "executable"), "path"));
    }
    Ok(ev)
}

/// The event's kind from Tracee's event name, filling what its arguments say.
fn event_kind(name: &str, args: &Map<String, Value>, ev: &mut Event) -> String {
    let arg = |k: &str| text(args.get(k));
    match name {
        "sched_process_exec" => {
            ev.exe = arg("pathname").or_else(|| arg("cmdpath"));
            let argv: Vec<&str> = args
                .get("argv")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            // The contract's `args`: the arguments after the executable.
            if argv.len() > 1 {
                ev.args = Some(argv[1..].join(" "));
            }
            "process_exec".into()
        }
        "sched_process_exit" => "process_exit".into(),
        "security_socket_connect" => {
            (ev.dst_ip, ev.dst_port) = sockaddr(args.get("remote_addr"));
            "network_connect".into()
        }
        "security_socket_accept" => {
            // The peer initiated the connection: it is the source.
            (ev.src_ip, ev.src_port) = sockaddr(args.get("remote_addr"));
            (ev.dst_ip, ev.dst_port) = sockaddr(args.get("local_addr"));
            "network_accept".into()
        }
        "security_socket_listen" => {
            (ev.dst_ip, ev.dst_port) = sockaddr(args.get("local_addr"));
            "network_listen".into()
        }
        "security_file_open" => "file_access".into(),
        _ => "other".into(),
    }
}

/// An IP and port from Tracee's `sockaddr` (`{"sa_family": "AF_INET", "sin_addr": ..,
/// "sin_port": ..}`, or `sin6_*`); a Unix socket has neither.
fn sockaddr(v: Option<&Value>) -> (Option<String>, Option<i32>) {
    let Some(a) = v.and_then(Value::as_object) else {
        return (None, None);
    };
    let ip = text(a.get("sin_addr")).or_else(|| text(a.get("sin6_addr")));
    let port = int(a.get("sin_port"))
        .or_else(|| int(a.get("sin6_port")))
        .and_then(|p| i32::try_from(p).ok());
    (ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/samples/tracee");

    fn one(text: &str) -> Event {
        let mut out = Vec::new();
        parse(text, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    /// The legacy sample (aquasecurity/tracee docs, Apache-2.0; see `../shared/samples`).
    #[test]
    fn legacy_exec_sample() {
        let text = std::fs::read_to_string(format!(
            "{SAMPLES}/docs_output-options_sched_process_exec.legacy.json"
        ))
        .unwrap();
        let ev = one(text.trim());
        assert_eq!(ev.ts, 1_657_295_236_470_126_167);
        assert_eq!(ev.kind, "process_exec");
        assert_eq!(ev.source, "tracee");
        assert_eq!(ev.exe.as_deref(), Some("/usr/bin/exa"));
        assert_eq!(ev.args.as_deref(), Some("--color=auto"));
        assert_eq!(
            (ev.pid, ev.ppid, ev.uid),
            (Some(2578324), Some(2578238), Some(1000))
        );
        assert_eq!(ev.node.as_deref(), Some("fujitsu"));
        // Empty container and pod fields are absent, not empty strings.
        assert_eq!((ev.container_id, ev.pod), (None, None));
        assert!(ev.event_id.is_some());
    }

    /// The v1beta1 sample (aquasecurity/tracee docs, Apache-2.0), pretty-printed as the docs
    /// show it.
    #[test]
    fn v1beta1_exec_sample() {
        let text = std::fs::read_to_string(format!(
            "{SAMPLES}/docs_event-structure_sched_process_exec.v1beta1.json"
        ))
        .unwrap();
        let ev = one(&text);
        assert_eq!(ev.ts, 1_732_454_400_123_456_789);
        assert_eq!(ev.kind, "process_exec");
        assert_eq!(ev.exe.as_deref(), Some("/usr/bin/ls"));
        assert_eq!(ev.args.as_deref(), Some("-la /tmp"));
        assert_eq!(
            (ev.pid, ev.ppid, ev.uid),
            (Some(12345), Some(1234), Some(1000))
        );
        assert_eq!(ev.parent_exec_id.as_deref(), Some("9876543210"));
    }

    /// The nested container and pod of Tracee v0.11+, and a connection's `sockaddr`.
    #[test]
    fn legacy_nested_workload_and_connect() {
        let ev = one(
            r#"{"timestamp":1732454400000000001,"processId":7,"hostProcessId":4242,"hostParentProcessId":4200,"userId":0,"processName":"curl","executable":{"path":"/usr/bin/curl"},"processEntityId":3418850427,"parentEntityId":0,"hostName":"worker-1","containerId":"","container":{"id":"containerd://3ad7b26ded6d","name":"api","image":"docker.io/library/alpine:3.20"},"kubernetes":{"podName":"invoice-api-7d9f","podNamespace":"billing","podUID":"5b1f"},"eventName":"security_socket_connect","args":[{"name":"sockfd","type":"int","value":3},{"name":"remote_addr","type":"struct sockaddr*","value":{"sa_family":"AF_INET","sin_addr":"198.51.100.23","sin_port":"443"}}]}"#,
        );
        assert_eq!(ev.kind, "network_connect");
        assert_eq!(ev.dst_ip.as_deref(), Some("198.51.100.23"));
        assert_eq!(ev.dst_port, Some(443));
        assert_eq!(ev.container_id.as_deref(), Some("3ad7b26ded6d"));
        assert_eq!(ev.image.as_deref(), Some("docker.io/library/alpine:3.20"));
        assert_eq!(
            (
                ev.namespace.as_deref(),
                ev.pod.as_deref(),
                ev.pod_uid.as_deref()
            ),
            (Some("billing"), Some("invoice-api-7d9f"), Some("5b1f"))
        );
        assert_eq!(ev.pid, Some(4242));
        assert_eq!(ev.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(ev.exec_id.as_deref(), Some("3418850427"));
        assert_eq!(ev.parent_exec_id, None);
    }

    #[test]
    fn other_events_are_kept_and_bad_ones_refused_with_a_reason() {
        let ev = one(r#"{"timestamp":5,"eventName":"cap_capable","args":[]}"#);
        assert_eq!(ev.kind, "other");
        let mut out = Vec::new();
        let e = parse(r#"{"timestamp":1.5,"eventName":"x"}"#, &mut out).unwrap_err();
        assert!(e.contains("integer nanoseconds"), "{e}");
        let e = parse(r#"{"eventName":"x"}"#, &mut out).unwrap_err();
        assert!(e.contains("timestamp"), "{e}");
        let e = parse(
            r#"{"timestamp":{"nanos":1},"name":"x","workload":{}}"#,
            &mut out,
        )
        .unwrap_err();
        assert!(e.contains("seconds"), "{e}");
        assert!(out.is_empty());
    }
}
