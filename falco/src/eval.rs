//! Comparisons evaluated as Falco evaluates them, on the field values an alert carries
//! (`output_fields`). A field the alert does not carry is unknown: nothing that needs it
//! matches, so a replayed exception never suppresses what it cannot see.

use std::collections::BTreeMap;

use crate::condition::Op;
use crate::rules::Exception;

/// An alert's field values, as text (`proc.pid` → `"4120"`).
pub type Fields = BTreeMap<String, String>;

/// A Falco alert's `output_fields` as text: numbers as written, `null` as Falco prints a
/// missing value (`<NA>`), and a socket tuple's parts ([`add_socket_fields`]): Falco
/// evaluates an exception on the event, where those fields are defined.
pub fn fields_of(output_fields: &serde_json::Value) -> Fields {
    let mut fields: Fields = output_fields
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "<NA>".to_string(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    add_socket_fields(&mut fields);
    fields
}

/// The parts of a socket tuple `fd.name` (`cip:cport->sip:sport`, IPv4 or IPv6) as Falco's
/// own fields, which an exception can name.
pub(crate) fn socket_parts(name: &str) -> Option<[(&'static str, &str); 4]> {
    let (client, server) = name.split_once("->")?;
    let (cip, cport) = client.rsplit_once(':')?;
    let (sip, sport) = server.rsplit_once(':')?;
    let port = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    (port(cport) && port(sport) && !cip.is_empty() && !sip.is_empty()).then_some([
        ("fd.cip", cip),
        ("fd.cport", cport),
        ("fd.sip", sip),
        ("fd.sport", sport),
    ])
}

/// Adds the parts of `fields`' socket tuple (`fd.name`) as `fd.cip`, `fd.cport`, `fd.sip` and
/// `fd.sport` where they are missing.
pub fn add_socket_fields(fields: &mut Fields) {
    if let Some(parts) = fields.get("fd.name").and_then(|n| socket_parts(n)) {
        let parts = parts.map(|(f, v)| (f, v.to_string()));
        for (f, v) in parts {
            fields.entry(f.to_string()).or_insert(v);
        }
    }
}

/// Whether `value` (the alert's) compares `op` to the right-hand side `rhs`.
pub fn compare(value: &str, op: Op, rhs: &[String]) -> bool {
    let first = rhs.first().map(String::as_str).unwrap_or("");
    match op {
        Op::Eq => value == first,
        Op::Ne => value != first,
        Op::Lt | Op::Le | Op::Gt | Op::Ge => match (value.parse::<f64>(), first.parse::<f64>()) {
            (Ok(a), Ok(b)) => match op {
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Gt => a > b,
                _ => a >= b,
            },
            _ => false,
        },
        Op::In | Op::Intersects => rhs.iter().any(|v| v == value),
        // A path matches a prefix when it is the prefix or below it.
        Op::Pmatch => rhs.iter().any(|p| {
            let p = p.trim_end_matches('/');
            value == p || value.starts_with(&format!("{p}/"))
        }),
        Op::Startswith | Op::Bstartswith => value.starts_with(first),
        Op::Endswith => value.ends_with(first),
        Op::Contains | Op::Bcontains => value.contains(first),
        Op::Icontains => value.to_lowercase().contains(&first.to_lowercase()),
        Op::Glob => glob(first.as_bytes(), value.as_bytes()),
        Op::Iglob => glob(
            first.to_lowercase().as_bytes(),
            value.to_lowercase().as_bytes(),
        ),
        // Not used in exceptions ktrail proposes; unknown, so no match.
        Op::Regex => false,
    }
}

/// `*`, `?` and `[...]` glob matching (fnmatch without flags, as Falco's `glob`).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some(p);
                    mark = t;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some(end) = pattern[p + 1..].iter().position(|&b| b == b']') {
                        let set = &pattern[p + 1..p + 1 + end];
                        let (negate, set) = match set.first() {
                            Some(b'!' | b'^') => (true, &set[1..]),
                            _ => (false, set),
                        };
                        let mut hit = false;
                        let mut i = 0;
                        while i < set.len() {
                            if i + 2 < set.len() && set[i + 1] == b'-' {
                                hit |= (set[i]..=set[i + 2]).contains(&text[t]);
                                i += 3;
                            } else {
                                hit |= set[i] == text[t];
                                i += 1;
                            }
                        }
                        if hit != negate {
                            p += end + 2;
                            t += 1;
                            continue;
                        }
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some(s) => {
                p = s + 1;
                mark += 1;
                t = mark;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether the exception excepts an alert with these fields: some value tuple whose every
/// field compares true. Falco adds `and not (tuple or tuple ...)` to the rule's condition.
pub fn excepts(e: &Exception, fields: &Fields) -> bool {
    e.values.iter().any(|tuple| {
        e.fields
            .iter()
            .zip(&e.comps)
            .zip(tuple)
            .all(|((f, op), rhs)| fields.get(f).is_some_and(|v| compare(v, *op, rhs)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn comparisons() {
        assert!(compare("/etc/shadow", Op::Startswith, &s(&["/etc/"])));
        assert!(compare(
            "/var/lib/app/x",
            Op::Pmatch,
            &s(&["/tmp", "/var/lib/app"])
        ));
        assert!(!compare(
            "/var/lib/apple",
            Op::Pmatch,
            &s(&["/var/lib/app"])
        ));
        assert!(compare("bash", Op::In, &s(&["sh", "bash"])));
        assert!(compare(
            "/usr/bin/python3.11",
            Op::Glob,
            &s(&["/usr/bin/python3*"])
        ));
        assert!(compare("abc", Op::Glob, &s(&["a[a-c]c"])));
        assert!(compare("abd", Op::Glob, &s(&["a[!d]d"])));
        assert!(!compare("add", Op::Glob, &s(&["a[!d]d"])));
        assert!(compare("10", Op::Gt, &s(&["9"])));
    }

    #[test]
    fn an_exception_needs_every_field_of_one_tuple() {
        let e = Exception {
            name: "x".into(),
            fields: s(&["container.image.repository", "proc.exepath"]),
            comps: vec![Op::Eq, Op::Eq],
            values: vec![vec![
                s(&["quay.io/prometheus/prometheus"]),
                s(&["/bin/prometheus"]),
            ]],
        };
        let mut f = Fields::new();
        f.insert(
            "container.image.repository".into(),
            "quay.io/prometheus/prometheus".into(),
        );
        assert!(!excepts(&e, &f), "a missing field never matches");
        f.insert("proc.exepath".into(), "/bin/prometheus".into());
        assert!(excepts(&e, &f));
        f.insert("proc.exepath".into(), "/bin/sh".into());
        assert!(!excepts(&e, &f));
    }
}
