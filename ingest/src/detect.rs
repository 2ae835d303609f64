//! Recognising a record's producer by its top-level keys.

use crate::Format;

pub(crate) fn unrecognised(record: &[u8]) -> String {
    match serde_json::from_slice::<serde::de::IgnoredAny>(record) {
        Err(e) => format!("invalid JSON: {e}"),
        Ok(_) => "unrecognised record: not a Kubernetes audit event, Falco alert, Tetragon or Tracee event, Kubernetes object list or native ktrail event".into(),
    }
}

/// Keys `detect` looks for, compiled once (building a searcher per record cost more than the
/// search).
struct Keys {
    ts: memchr::memmem::Finder<'static>,
    source: memchr::memmem::Finder<'static>,
    audit_id: memchr::memmem::Finder<'static>,
    event_list: memchr::memmem::Finder<'static>,
    output_fields: memchr::memmem::Finder<'static>,
    rule: memchr::memmem::Finder<'static>,
    priority: memchr::memmem::Finder<'static>,
    time: memchr::memmem::Finder<'static>,
    node_name: memchr::memmem::Finder<'static>,
    process: memchr::memmem::Finder<'static>,
    api_version: memchr::memmem::Finder<'static>,
    items: memchr::memmem::Finder<'static>,
    metadata: memchr::memmem::Finder<'static>,
    kind: memchr::memmem::Finder<'static>,
    event_name: memchr::memmem::Finder<'static>,
    process_id: memchr::memmem::Finder<'static>,
    workload: memchr::memmem::Finder<'static>,
    timestamp: memchr::memmem::Finder<'static>,
}

static KEYS: std::sync::LazyLock<Keys> = std::sync::LazyLock::new(|| {
    let f = memchr::memmem::Finder::new;
    Keys {
        ts: f("\"ts\":"),
        source: f("\"source\":"),
        audit_id: f("\"auditID\":"),
        event_list: f("\"kind\":\"EventList\""),
        output_fields: f("\"output_fields\":"),
        rule: f("\"rule\":"),
        priority: f("\"priority\":"),
        time: f("\"time\":"),
        node_name: f("\"node_name\":"),
        process: f("\"process\":"),
        api_version: f("\"apiVersion\""),
        items: f("\"items\""),
        metadata: f("\"metadata\""),
        kind: f("\"kind\":"),
        event_name: f("\"eventName\":"),
        process_id: f("\"processId\":"),
        workload: f("\"workload\":"),
        timestamp: f("\"timestamp\":"),
    }
});

/// Tetragon's event types as the first key of a line.
const TETRAGON_TYPES: [&str; 7] = [
    "process_exec",
    "process_exit",
    "process_kprobe",
    "process_tracepoint",
    "process_connect",
    "process_close",
    "process_listen",
];

/// Recognises a record's producer by its top-level keys (cheap byte search; nested JSON in a
/// string value is escaped, so its keys do not match).
pub(crate) fn detect(record: &[u8]) -> Option<Format> {
    let k = &*KEYS;
    let has = |f: &memchr::memmem::Finder<'_>| f.find(record).is_some();
    let tetragon_first_key = || {
        let r = record.trim_ascii_start();
        r.strip_prefix(b"{\"").is_some_and(|rest| {
            TETRAGON_TYPES.iter().any(|t| {
                rest.strip_prefix(t.as_bytes())
                    .is_some_and(|r| r.starts_with(b"\":"))
            })
        })
    };
    // Tetragon first: its lines start with the event type, so this needs no scan of the line.
    if tetragon_first_key() {
        Some(Format::Tetragon)
    } else if has(&k.ts) && has(&k.source) {
        Some(Format::Native)
    } else if has(&k.audit_id) || has(&k.event_list) {
        Some(Format::K8sAudit)
    } else if has(&k.output_fields) || (has(&k.rule) && has(&k.priority) && has(&k.time)) {
        Some(Format::Falco)
    } else if has(&k.node_name) && has(&k.process) {
        Some(Format::Tetragon)
    } else if has(&k.api_version) && (has(&k.items) || has(&k.metadata)) && has(&k.kind) {
        // `kubectl get -o json` output is pretty-printed (`"kind": "List"`).
        Some(Format::K8sObjects)
    } else if has(&k.timestamp) && ((has(&k.event_name) && has(&k.process_id)) || has(&k.workload))
    {
        // Tracee: legacy `trace.Event` or `v1beta1.Event`.
        Some(Format::Tracee)
    } else {
        None
    }
}
