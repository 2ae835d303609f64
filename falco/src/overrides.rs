//! The suggestions as a Falco rules file that loads after the originals: per suggestion an
//! `exceptions` entry appended to the rule (`override: {exceptions: append}`), or — where
//! the ruleset has the rule's `user_known_*` macro — a condition appended to that macro
//! (`override: {condition: append}`). Never `replace`: upstream fixes keep arriving.
//!
//! Each carries its evidence as comments, and one `# ktrail: {...}` line (JSON) that
//! `check-exceptions` reads back: expiry, images, namespaces and hosts it was seen with.

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
    // Days from the civil calendar (proleptic Gregorian), no time zone database needed.
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One suggestion's rules-file item.
fn item(s: &Suggestion) -> Value {
    match s.via.strip_prefix("macro ") {
        Some(m) => json!({
            "macro": m,
            "condition": format!("or {}", condition(&s.exception)),
            "override": {"condition": "append"},
        }),
        None => json!({
            "rule": s.rule,
            "exceptions": [{
                "name": s.exception.name,
                "fields": s.exception.fields,
                "comps": s.exception.comps.iter().map(|c| Op::as_str(*c)).collect::<Vec<_>>(),
                "values": s.exception.values.iter().map(|t| t.iter().map(|v| {
                    if v.len() == 1 { json!(v[0]) } else { json!(v) }
                }).collect::<Vec<_>>()).collect::<Vec<_>>(),
            }],
            "override": {"exceptions": "append"},
        }),
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

/// The `# ktrail: {...}` metadata lines of an overrides file.
pub fn metadata(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# ktrail: "))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
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
