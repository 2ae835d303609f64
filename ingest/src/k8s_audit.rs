//! Kubernetes audit events (`audit.k8s.io/v1`, `v1beta1`, and events with no `apiVersion`):
//! one `Event` per line (log backend) or an `EventList` (webhook backend).
//!
//! Identity: one request has one `auditID` and up to three stages, so `(auditID, stage)` is the
//! event id: the same event read from the log and posted by the webhook is stored once.

use std::collections::BTreeMap;

use model::Event;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    #[serde(default)]
    kind: Option<serde_json::Value>,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: String,
    #[serde(rename = "requestURI", default)]
    request_uri: Option<String>,
    #[serde(default)]
    verb: Option<String>,
    #[serde(default)]
    user: Option<UserInfo>,
    #[serde(default)]
    impersonated_user: Option<UserInfo>,
    #[serde(rename = "sourceIPs", default)]
    source_ips: Option<Vec<String>>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    #[serde(default)]
    request_received_timestamp: Option<String>,
    /// v1beta1 events also carry `timestamp` (second precision); used only as a fallback.
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    stage_timestamp: Option<String>,
}

#[derive(Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    extra: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct ResponseStatus {
    #[serde(default)]
    code: Option<i32>,
}

#[derive(Deserialize)]
struct EventList<'a> {
    #[serde(borrow)]
    items: Vec<&'a serde_json::value::RawValue>,
}

/// Parses one record: an `Event` or an `EventList`. `original` is the record's bytes, kept in
/// `raw` (each item of a list gets its own JSON).
pub fn parse(original: &str, out: &mut Vec<Event>) -> Result<(), String> {
    // One typed pass for a single `Event` (the log backend's lines); anything else (a list, a
    // wrong `kind`, a bad field) takes the path below, which names what is wrong.
    if let Ok(ev) = serde_json::from_str::<AuditEvent>(original)
        && ev.kind.as_ref().is_none_or(|k| k.as_str() == Some("Event"))
    {
        out.push(to_event(ev, original.to_string())?);
        return Ok(());
    }
    let head: KindOnly = serde_json::from_str(original).map_err(|e| e.to_string())?;
    match head.kind.as_ref().map(|k| k.as_str()) {
        None | Some(Some("Event" | "EventList")) => {}
        Some(_) => {
            return Err(format!(
                "`kind` is {}, expected \"Event\" or \"EventList\"",
                head.kind.unwrap_or_default()
            ));
        }
    }
    if head.kind.as_ref().and_then(|k| k.as_str()) == Some("EventList") {
        let list: EventList = serde_json::from_str(original).map_err(|e| e.to_string())?;
        for (i, item) in list.items.into_iter().enumerate() {
            let ev: AuditEvent =
                serde_json::from_str(item.get()).map_err(|e| format!("items[{i}]: {e}"))?;
            out.push(to_event(ev, item.get().to_string())?);
        }
        return Ok(());
    }
    let ev: AuditEvent = serde_json::from_str(original).map_err(|e| e.to_string())?;
    out.push(to_event(ev, original.to_string())?);
    Ok(())
}

#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: Option<serde_json::Value>,
}

fn to_event(a: AuditEvent, raw: String) -> Result<Event, String> {
    let ts_text = a
        .request_received_timestamp
        .as_deref()
        .or(a.timestamp.as_deref())
        .or(a.stage_timestamp.as_deref())
        .ok_or("audit event without requestReceivedTimestamp")?;
    let ts = model::parse_ts(ts_text).map_err(|e| e.to_string())?;
    let object = a.object_ref.unwrap_or(ObjectRef {
        resource: None,
        namespace: None,
        name: None,
        uid: None,
        subresource: None,
    });
    let is_pod = object.resource.as_deref() == Some("pods");
    // `kubectl exec` / `attach`: the command (argv, `command=` repeats) and container are
    // query parameters; the request's auditID names the session.
    let is_session = is_pod
        && matches!(object.subresource.as_deref(), Some("exec" | "attach"))
        && matches!(a.verb.as_deref(), Some("create" | "get"));
    let uri = a.request_uri.as_deref().unwrap_or_default();
    let (exe, args, container_name) = if is_session {
        let argv = query_values(uri, "command");
        let exe = argv.first().cloned();
        let args = (argv.len() > 1).then(|| argv[1..].join(" "));
        (exe, args, query_values(uri, "container").into_iter().next())
    } else {
        (None, None, None)
    };
    let user = a.user.unwrap_or(UserInfo {
        username: None,
        groups: None,
        extra: None,
    });
    Ok(Event {
        ts,
        kind: "k8s_audit".into(),
        source: "k8s_audit".into(),
        event_id: Some(model::event_id_of(
            "k8s_audit",
            format!("{}/{}", a.audit_id, a.stage).as_bytes(),
        )),
        namespace: if is_pod {
            object.namespace.clone()
        } else {
            None
        },
        pod: if is_pod { object.name.clone() } else { None },
        pod_uid: if is_pod { object.uid.clone() } else { None },
        exe,
        args,
        container_name,
        session_id: is_session.then(|| a.audit_id.clone()),
        k8s_user: user.username,
        impersonated_user: a.impersonated_user.and_then(|u| u.username),
        k8s_groups: user.groups,
        source_ips: a.source_ips,
        verb: a.verb,
        resource: object.resource,
        subresource: object.subresource,
        object_namespace: object.namespace,
        object_name: object.name,
        request_uri: a.request_uri,
        user_agent: a.user_agent,
        audit_id: Some(a.audit_id),
        stage: Some(a.stage),
        response_code: a.response_status.and_then(|s| s.code),
        raw: Some(raw),
        ..Default::default()
    })
}

/// The values of one query parameter of a request URI, in order (`command=` repeats: it is
/// argv), percent-decoded.
pub fn query_values(request_uri: &str, key: &str) -> Vec<String> {
    let Some((_, query)) = request_uri.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
