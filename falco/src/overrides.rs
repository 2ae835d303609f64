//! The suggestions as a Falco rules file that loads after the originals: per suggestion an
//! `exceptions` entry appended to the rule (`override: {exceptions: append}`), or — where
//! the ruleset has the rule's `user_known_*` macro — a condition appended to that macro
//! (`override: {condition: append}`). Never `replace`: upstream fixes keep arriving.
//!
//! Each carries its evidence as comments, and one `# ktrail: {...}` line (JSON) that
//! `check-exceptions` reads back: expiry, images, namespaces and hosts it was seen with.

use serde::Serialize;
use serde_json::{Value, json};

use crate::condition::Op;
use crate::rules::Exception;
use crate::tune::{Suggestion, Tuning};

/// A Falco string literal.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The exception's value tuples as a Falco condition: `(f1 op v1 and f2 op v2) or (...)`.
pub fn condition(e: &Exception) -> String {
    let tuples: Vec<String> = e
        .values
        .iter()
        .map(|tuple| {
            let terms: Vec<String> = e
                .fields
                .iter()
                .zip(&e.comps)
                .zip(tuple)
                .map(|((f, op), v)| {
                    if op.takes_list() {
                        let items: Vec<String> = v.iter().map(|x| quote(x)).collect();
                        format!("{f} {} ({})", op.as_str(), items.join(", "))
                    } else {
                        format!(
                            "{f} {} {}",
                            op.as_str(),
                            quote(v.first().map_or("", String::as_str))
                        )
                    }
                })
                .collect();
            format!("({})", terms.join(" and "))
        })
        .collect();
    tuples.join(" or ")
}

fn iso(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `override: {key: append}`.
#[derive(Serialize)]
struct Append {
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exceptions: Option<&'static str>,
}

/// A rules-file item, its keys in the order people write them.
#[derive(Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Macro {
        #[serde(rename = "macro")]
        name: &'a str,
        condition: String,
        #[serde(rename = "override")]
        append: Append,
    },
    Rule {
        rule: &'a str,
        exceptions: Vec<&'a Exception>,
        #[serde(rename = "override")]
        append: Append,
    },
}

/// One suggestion's rules-file item.
fn item(s: &Suggestion) -> Item<'_> {
    match s.via.strip_prefix("macro ") {
        Some(m) => Item::Macro {
            name: m,
            condition: format!("or {}", condition(&s.exception)),
            append: Append {
                condition: Some("append"),
                exceptions: None,
            },
        },
        None => Item::Rule {
            rule: &s.rule,
            exceptions: vec![&s.exception],
            append: Append {
                condition: None,
                exceptions: Some("append"),
            },
        },
    }
}

/// The overrides file for `tuning`, generated on `today` (`YYYY-MM-DD`).
pub fn render(tuning: &Tuning, today: &str) -> String {
    let mut out = format!(
        "# ktrail falco tune, {today}: exceptions for recurring alert noise, each proven by replaying\n\
         # the stored alerts ({} alerts, {} suppressed, {:.1}%; true positives suppressed: {}).\n\
         # Load after the original rules files; review each before use.\n",
        tuning.total_alerts,
        tuning.suppressed_total,
        tuning.reduction * 100.0,
        tuning.true_positives_suppressed
    );
    for s in &tuning.suggestions {
        let e = &s.evidence;
        out.push_str(&format!(
            "\n# {rule}: {count} alerts on {hosts} host(s), first {first}, last {last};\n\
             # suppresses {suppressed} on replay; expires {expires}.\n",
            rule = s.rule,
            count = e.count,
            hosts = e.hosts.len(),
            first = iso(e.first_seen_ns),
            last = iso(e.last_seen_ns),
            suppressed = s.suppressed,
            expires = e.expires,
        ));
        if let Some(n) = &s.narrowed {
            out.push_str(&format!("# {n}\n"));
        }
        let sample: String = e.sample.chars().take(300).collect();
        out.push_str(&format!("# sample: {}\n", sample.replace('\n', " ")));
        let meta = json!({
            "rule": s.rule,
            "exception": s.exception.name,
            "expires": e.expires,
            "images": e.images,
            "namespaces": e.namespaces,
            "hosts": e.hosts,
        });
        out.push_str(&format!("# ktrail: {meta}\n"));
        let yaml = serde_saphyr::to_string(&vec![item(s)]).expect("JSON values serialise as YAML");
        out.push_str(&yaml);
    }
    out
}

/// An exception read back from an overrides file, with what it was proposed on.
#[derive(Clone, Debug)]
pub struct ReadBack {
    pub rule: String,
    pub exception: Exception,
    pub expires: String,
    pub images: Vec<String>,
    pub namespaces: Vec<String>,
    pub hosts: Vec<String>,
}

/// Reads an overrides file `render` wrote: each item with the `# ktrail: {...}` line before
/// it. Items without one (added by hand) are not ktrail's and are left out.
pub fn read_back(text: &str) -> Result<Vec<ReadBack>, String> {
    let items: Vec<Value> = serde_saphyr::from_str::<Option<Vec<Value>>>(text)
        .map_err(|e| e.without_snippet().to_string())?
        .unwrap_or_default();
    let metas: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# ktrail: "))
        .map(|j| {
            serde_json::from_str(j).map_err(|e| format!("a `# ktrail:` line is not JSON: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if metas.len() != items.len() {
        return Err(format!(
            "{} items but {} `# ktrail:` lines: not a file ktrail falco tune wrote",
            items.len(),
            metas.len()
        ));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let mut out = Vec::new();
    for (item, meta) in items.iter().zip(&metas) {
        let name = meta["exception"].as_str().unwrap_or("").to_string();
        let exception = if let Some(cond) = item["condition"].as_str() {
            from_condition(&name, cond.trim_start().strip_prefix("or ").unwrap_or(cond))?
        } else {
            let e = &item["exceptions"][0];
            let comps = strings(&e["comps"])
                .iter()
                .map(|c| Op::parse(c).ok_or(format!("unknown comparison {c:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            let values = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    t.as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| match v {
                            Value::Array(_) => strings(v),
                            Value::String(s) => vec![s.clone()],
                            other => vec![other.to_string()],
                        })
                        .collect()
                })
                .collect();
            Exception {
                name,
                fields: strings(&e["fields"]),
                comps,
                values,
            }
        };
        out.push(ReadBack {
            rule: meta["rule"].as_str().unwrap_or("").to_string(),
            exception,
            expires: meta["expires"].as_str().unwrap_or("").to_string(),
            images: strings(&meta["images"]),
            namespaces: strings(&meta["namespaces"]),
            hosts: strings(&meta["hosts"]),
        });
    }
    Ok(out)
}

/// `(f1 op v1 and f2 op v2) or (...)` (as [`condition`] writes it) back to an exception.
fn from_condition(name: &str, text: &str) -> Result<Exception, String> {
    use crate::condition::Expr;
    let expr = crate::condition::parse(text).map_err(|e| e.to_string())?;
    let tuples = match expr {
        Expr::Or(v) => v,
        other => vec![other],
    };
    let mut e = Exception {
        name: name.to_string(),
        fields: Vec::new(),
        comps: Vec::new(),
        values: Vec::new(),
    };
    for t in tuples {
        let terms = match t {
            Expr::And(v) => v,
            other => vec![other],
        };
        let mut fields = Vec::new();
        let mut comps = Vec::new();
        let mut values = Vec::new();
        for term in terms {
            let Expr::Compare {
                field,
                op,
                values: v,
            } = term
            else {
                return Err(format!("not an exception condition: {text}"));
            };
            fields.push(field.to_string());
            comps.push(op);
            values.push(v.iter().map(|i| i.text().to_string()).collect());
        }
        if e.fields.is_empty() {
            (e.fields, e.comps) = (fields, comps);
        } else if e.fields != fields || e.comps != comps {
            return Err(format!("tuples with different fields: {text}"));
        }
        e.values.push(values);
    }
    Ok(e)
}

/// What checking an exception against the recorded alerts found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The exception's review date has passed.
    Expired {
        rule: String,
        exception: String,
        expires: String,
    },
    /// The exception hides alerts from an image, namespace or node it was not proposed on
    /// (`what` names which): it has become broader than its evidence.
    New {
        what: &'static str,
        rule: String,
        exception: String,
        value: String,
        alerts: usize,
        /// Stored process executions the exception's fields match there (Falco, with the
        /// exception loaded, no longer alerts on them).
        processes: usize,
    },
}

/// Checks each exception `render` wrote against `alerts` (stored ones, replayed) and
/// `processes` (stored executions; for exceptions on process and container fields only):
/// expired on `today` (`YYYY-MM-DD`), or matching from where it was not proposed.
pub fn check(
    exceptions: &[ReadBack],
    alerts: &[crate::tune::Alert],
    processes: &[crate::recorded::Process],
    today: &str,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for x in exceptions {
        if x.expires.as_str() < today {
            findings.push(Finding::Expired {
                rule: x.rule.clone(),
                exception: x.exception.name.clone(),
                expires: x.expires.clone(),
            });
        }
        // (what, value) → (alerts, processes)
        let mut seen: std::collections::BTreeMap<(&'static str, String), (usize, usize)> =
            Default::default();
        let mut count = |fields: &crate::eval::Fields, host: &str, process: bool| {
            let mut add = |what: &'static str, value: String| {
                let n = seen.entry((what, value)).or_default();
                *if process { &mut n.1 } else { &mut n.0 } += 1;
            };
            let image = crate::tune::image_of(fields);
            if !image.is_empty() && !x.images.is_empty() && !x.images.contains(&image) {
                add("image", image);
            }
            if let Some(ns) = fields.get("k8s.ns.name")
                && !x.namespaces.is_empty()
                && !x.namespaces.contains(ns)
            {
                add("namespace", ns.clone());
            }
            if !host.is_empty() && !x.hosts.is_empty() && !x.hosts.iter().any(|h| h == host) {
                add("node", host.to_string());
            }
        };
        for a in alerts.iter().filter(|a| a.rule == x.rule) {
            if crate::eval::excepts(&x.exception, &a.fields) {
                count(&a.fields, &a.host, false);
            }
        }
        // Only where the execution carries every field the exception tests.
        for p in processes {
            if x.exception.fields.iter().all(|f| p.fields.contains_key(f))
                && crate::eval::excepts(&x.exception, &p.fields)
            {
                count(&p.fields, &p.host, true);
            }
        }
        for ((what, value), (alerts, processes)) in seen {
            findings.push(Finding::New {
                what,
                rule: x.rule.clone(),
                exception: x.exception.name.clone(),
                value,
                alerts,
                processes,
            });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_conditions() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_795_651_200_000_000_000), "2026-11-26T00:00:00Z");
        let e = Exception {
            name: "x".into(),
            fields: vec!["container.image.repository".into(), "fd.name".into()],
            comps: vec![Op::Eq, Op::Startswith],
            values: vec![vec![
                vec!["quay.io/a \"b\"".into()],
                vec!["/var/lib/app/".into()],
            ]],
        };
        assert_eq!(
            condition(&e),
            "(container.image.repository = \"quay.io/a \\\"b\\\"\" and fd.name startswith \"/var/lib/app/\")"
        );
        assert_eq!(crate::condition::parse(&condition(&e)).map(|_| ()), Ok(()));
    }
}
