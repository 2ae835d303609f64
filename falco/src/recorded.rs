//! Falco alerts as the store recorded them (`falco_alerts`), with the analyst's true-positive
//! labels applied: what tuning and the exception check replay.

use datafusion::prelude::SessionContext;
use query::settings::falco_labels::FalcoLabel;

use crate::tune::Alert;
use crate::{FalcoError, Result};

/// Nanoseconds since the epoch of an RFC 3339 time.
pub fn nanos(t: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .and_then(|d| d.timestamp_nanos_opt())
        .ok_or_else(|| FalcoError::Time(t.to_string()))
}

/// A stored alert with its uuid (falcosidekick), for labels.
pub struct Stored {
    pub alert: Alert,
    /// falcosidekick's `uuid` of the alert, when it carried one.
    pub uuid: Option<String>,
}

/// Whether one of `labels` selects `a`: its uuid, or its rule, output-field values and time.
pub fn labelled(a: &Stored, labels: &[FalcoLabel]) -> bool {
    labels.iter().any(|l| {
        if let Some(u) = &l.uuid {
            return a.uuid.as_ref() == Some(u);
        }
        let within = |bound: &Option<String>, after: bool| {
            bound.as_deref().is_none_or(|b| {
                nanos(b).is_ok_and(|b| {
                    if after {
                        a.alert.ts >= b
                    } else {
                        a.alert.ts < b
                    }
                })
            })
        };
        l.rule.as_ref().is_none_or(|r| *r == a.alert.rule)
            && l.fields
                .iter()
                .all(|(k, v)| a.alert.fields.get(k) == Some(v))
            && within(&l.from, true)
            && within(&l.to, false)
    })
}

/// The stored alerts in the window, each marked when a true-positive label matches it.
pub async fn stored_alerts(
    ctx: &SessionContext,
    from: Option<&str>,
    to: Option<&str>,
    labels: &[FalcoLabel],
) -> Result<Vec<Alert>> {
    Ok(stored(ctx, from, to)
        .await?
        .into_iter()
        .map(|s| Alert {
            true_positive: labelled(&s, labels),
            ..s.alert
        })
        .collect())
}

/// A stored process execution (Tetragon, Tracee) in Falco's field names, for checking
/// exceptions on what ran where Falco, with the exception in place, no longer alerts.
#[derive(Clone, Debug)]
pub struct Process {
    pub host: String,
    pub fields: crate::eval::Fields,
}

/// The process executions stored in the window, as [`Process`]es: `proc.exepath`,
/// `proc.name`, `proc.cmdline`, `proc.pname`, `container.image.repository` and `.tag`,
/// `k8s.ns.name`, `k8s.pod.name`, `user.uid`.
pub async fn stored_processes(
    ctx: &SessionContext,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<Process>> {
    let sql = format!(
        "SELECT node, namespace, pod, image, exe, args, parent_exe, CAST(uid AS VARCHAR) AS uid \
         FROM events WHERE kind = 'process_exec' AND exe IS NOT NULL{}",
        window(from, to)?
    );
    let name = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let mut out = Vec::new();
    for r in query::rows_json(ctx, &sql).await? {
        let text = |c: &str| r[c].as_str().filter(|v| !v.is_empty());
        let mut fields = crate::eval::Fields::new();
        let mut put = |f: &str, v: Option<String>| {
            if let Some(v) = v {
                fields.insert(f.to_string(), v);
            }
        };
        let exe = text("exe").unwrap_or_default();
        put("proc.exepath", Some(exe.to_string()));
        put("proc.name", Some(name(exe)));
        put(
            "proc.cmdline",
            Some(match text("args") {
                Some(a) => format!("{} {a}", name(exe)),
                None => name(exe),
            }),
        );
        put("proc.pname", text("parent_exe").map(name));
        put("k8s.ns.name", text("namespace").map(str::to_string));
        put("k8s.pod.name", text("pod").map(str::to_string));
        put("user.uid", text("uid").map(str::to_string));
        if let Some(image) = text("image") {
            let (repository, tag) = split_image(image);
            put("container.image.repository", Some(repository.to_string()));
            put("container.image.tag", tag.map(str::to_string));
        }
        out.push(Process {
            host: text("node").unwrap_or_default().to_string(),
            fields,
        });
    }
    Ok(out)
}

/// `registry/repo:tag` or `repo@sha256:...` as Falco splits it: repository and tag.
fn split_image(image: &str) -> (&str, Option<&str>) {
    if let Some((repository, _digest)) = image.split_once('@') {
        return (repository, None);
    }
    match image.rsplit_once(':') {
        // A colon after the last slash is a tag; before it, a registry's port.
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (image, None),
    }
}

/// ` AND ts >= … AND ts < …` for the window's bounds (RFC 3339).
fn window(from: Option<&str>, to: Option<&str>) -> Result<String> {
    let mut window = String::new();
    for (bound, op) in [(from, ">="), (to, "<")] {
        if let Some(t) = bound {
            nanos(t)?;
            window.push_str(&format!(
                " AND ts {op} CAST('{}' AS TIMESTAMP)",
                t.replace('\'', "''")
            ));
        }
    }
    Ok(window)
}

/// The stored alerts in the window, with their uuids.
pub async fn stored(
    ctx: &SessionContext,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<Stored>> {
    let window = window(from, to)?;
    let sql = format!(
        "SELECT CAST(ts AS BIGINT) AS ts_ns, rule, node, output, raw FROM falco_alerts \
         WHERE rule IS NOT NULL{window} ORDER BY ts"
    );
    let rows = query::rows_json(ctx, &sql).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let raw: serde_json::Value = r["raw"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let fields = crate::eval::fields_of(&raw["output_fields"]);
        let stored = Stored {
            uuid: raw["uuid"].as_str().map(str::to_string),
            alert: Alert {
                ts: r["ts_ns"].as_i64().unwrap_or(0),
                rule: r["rule"].as_str().unwrap_or("").to_string(),
                host: r["node"].as_str().unwrap_or("").to_string(),
                output: r["output"].as_str().unwrap_or("").to_string(),
                fields,
                true_positive: false,
            },
        };
        out.push(stored);
    }
    Ok(out)
}
