//! Falco alerts (`json_output: true`): JSON lines, `http_output` posts, falcosidekick forwards
//! (with `uuid`), and old envelopes without `source` / `hostname` / `tags`.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use model::Event;

#[derive(Deserialize)]
struct Alert<'a> {
    time: String,
    rule: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    uuid: Option<String>,
    /// Read lazily: only the fields that map onto columns are decoded. Hashed with foldhash
    /// (already in the build through hashbrown): SipHash over these short keys was 14% of
    /// the parse (perf, `ingest_parse/falco`).
    #[serde(borrow, default)]
    output_fields: HashMap<Cow<'a, str>, &'a RawValue, foldhash::fast::FixedState>,
}

/// Parses one alert. `output_fields` map onto columns where a column exists; every field stays
/// in `raw`.
pub fn parse(original: &str, out: &mut Vec<Event>) -> Result<(), String> {
    let a: Alert = serde_json::from_str(original).map_err(|e| e.to_string())?;
    let ts = model::parse_ts(&a.time).map_err(|e| e.to_string())?;
    let f = &a.output_fields;
    let text = |keys: &[&str]| keys.iter().find_map(|k| field_text(f.get(*k)?));
    let int = |keys: &[&str]| keys.iter().find_map(|k| field_int(f.get(*k)?));

    let exe = text(&["proc.exepath", "proc.exe"]);
    let args = text(&["proc.args"]).or_else(|| {
        text(&["proc.cmdline"]).map(|c| {
            c.split_once(' ')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default()
        })
    });
    let image = match (
        text(&["container.image.repository"]),
        text(&["container.image.tag"]),
    ) {
        (Some(repo), Some(tag)) => Some(format!("{repo}:{tag}")),
        (repo, _) => repo.or_else(|| text(&["container.image"])),
    };
    let event_id = match &a.uuid {
        Some(u) => model::event_id_of("falco", u.as_bytes()),
        None => model::event_id_of("falco", original.as_bytes()),
    };
    out.push(Event {
        ts,
        kind: "falco_alert".into(),
        source: "falco".into(),
        event_id: Some(event_id),
        node: a.hostname,
        namespace: text(&["k8s.ns.name"]),
        pod: text(&["k8s.pod.name"]),
        pod_uid: text(&["k8s.pod.uid"]),
        container_id: text(&["container.id"]).filter(|c| c != "host"),
        container_name: text(&["container.name"]),
        image,
        pid: int(&["proc.pid"]),
        ppid: int(&["proc.ppid"]),
        uid: int(&["user.uid"]),
        exe,
        args,
        cwd: text(&["proc.cwd"]),
        parent_exe: text(&["proc.pexepath", "proc.pname"]),
        protocol: text(&["fd.l4proto"]),
        src_ip: text(&["fd.cip", "fd.lip"]),
        dst_ip: text(&["fd.sip", "fd.rip", "fd.dip"]),
        src_port: int(&["fd.cport", "fd.lport"]).and_then(|p| i32::try_from(p).ok()),
        dst_port: int(&["fd.sport", "fd.rport", "fd.dport"]).and_then(|p| i32::try_from(p).ok()),
        rule: Some(a.rule),
        priority: a.priority,
        output: a.output,
        tags: a.tags,
        // `raw` is the record: the caller puts it in the batch (`Format::raw_is_record`).
        ..Default::default()
    });
    Ok(())
}

/// A field as text: strings (not empty, not Falco's `<NA>`) and numbers.
fn field_text(v: &RawValue) -> Option<String> {
    let t = v.get();
    if t.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(t).ok()?;
        (!s.is_empty() && s != "<NA>").then(|| s.into_owned())
    } else if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Some(t.to_string())
    } else {
        None
    }
}

/// A field as an integer: numbers, and strings that hold one.
fn field_int(v: &RawValue) -> Option<i64> {
    let t = v.get();
    if t.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(t).ok()?;
        s.parse().ok()
    } else {
        t.parse().ok()
    }
}
