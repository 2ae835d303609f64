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
    /// Read lazily: only the fields that map onto columns are decoded.
    #[serde(borrow, default)]
    output_fields: OutputFields<'a>,
}

/// An alert's `output_fields`, each value as its JSON text. Hashed with foldhash (already in
/// the build through hashbrown): SipHash over these short keys was 14% of the parse (perf,
/// `ingest_parse/falco`). The table starts with room for a rule's usual fields: grown from
/// empty, as serde's map does (JSON gives no length), its rehashes were 4% of durable Falco
/// ingest (perf, `ingest_durable/falco_generated`).
#[derive(Default)]
struct OutputFields<'a>(HashMap<Cow<'a, str>, &'a RawValue, foldhash::fast::FixedState>);

impl<'de: 'a, 'a> Deserialize<'de> for OutputFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = OutputFields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of output fields")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut fields = HashMap::with_capacity_and_hasher(
                    m.size_hint().unwrap_or(USUAL_FIELDS),
                    foldhash::fast::FixedState::default(),
                );
                while let Some((FieldName(k), v)) = m.next_entry::<FieldName<'a>, &'a RawValue>()? {
                    fields.insert(k, v);
                }
                Ok(OutputFields(fields))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// A field's name, borrowed from the line unless it has escapes (serde reads a `Cow<str>` map
/// key as an owned `String` always: an allocation per field; `borrow` on a field lets it
/// borrow).
#[derive(Deserialize)]
struct FieldName<'a>(#[serde(borrow)] Cow<'a, str>);

/// Room made for `output_fields` up front: Falco's default rules print up to about 25.
const USUAL_FIELDS: usize = 28;

/// Parses one alert. `output_fields` map onto columns where a column exists; every field stays
/// in `raw`.
pub fn parse(original: &str, out: &mut Vec<Event>) -> Result<(), String> {
    let a: Alert = serde_json::from_str(original).map_err(|e| e.to_string())?;
    let ts = model::parse_ts(&a.time).map_err(|e| e.to_string())?;
    let f = &a.output_fields.0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_field_names_with_escapes_still_map() {
        // `\u0061` is `a`: the name is read into a string of its own, not borrowed.
        let line = r#"{"time":"2026-11-26T10:00:00Z","rule":"r","output_fields":{"k8s.ns.n\u0061me":"billing","k8s.pod.name":"p","proc.pid":7}}"#;
        let mut out = Vec::new();
        parse(line, &mut out).unwrap();
        assert_eq!(out[0].namespace.as_deref(), Some("billing"));
        assert_eq!(out[0].pod.as_deref(), Some("p"));
        assert_eq!(out[0].pid, Some(7));
        // Plain names are borrowed from the line, escaped ones copied.
        let fields: OutputFields =
            serde_json::from_str(r#"{"k8s.pod.name":"p","k8s.ns.n\u0061me":"billing"}"#).unwrap();
        let borrowed = |name: &str| {
            let (k, _) = fields.0.get_key_value(name).unwrap();
            matches!(k, Cow::Borrowed(_))
        };
        assert!(borrowed("k8s.pod.name"));
        assert!(!borrowed("k8s.ns.name"));
    }

    #[test]
    fn output_fields_that_are_not_an_object_are_refused() {
        let line = r#"{"time":"2026-11-26T10:00:00Z","rule":"r","output_fields":["k8s.ns.name"]}"#;
        let err = parse(line, &mut Vec::new()).unwrap_err();
        assert!(err.contains("output fields"), "{err}");
    }
}
