//! Falco Tuning: find recurring alert noise, propose the narrowest exception for each
//! recurring group, and prove it by replay.
//!
//! 1. **Noise**: a rule's alerts are grouped by the fields that stay constant: the volatile
//!    ones are dropped (pids, ephemeral ports, container ids, times, and any field whose
//!    values in that rule's history are many and short-lived: pod IPs, pod names of a
//!    ReplicaSet), a socket tuple counts as its parts (`fd.cip`, `fd.sip`, `fd.sport`), the
//!    rest is normalised (digits and hashes in paths and names); groups are ranked by count,
//!    hosts, days and steadiness.
//! 2. **Proposals**: for each recurring group the first field combination (image, executable
//!    and path prefix; image and executable; namespace and image; ...; never one field alone)
//!    whose values are the same in every alert of the group.
//! 3. **Proof**: every stored alert is replayed through the proposals exactly as Falco applies
//!    exceptions; a proposal that would hide a labelled true positive is narrowed with more
//!    fields, or dropped, and the report says which.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::condition::Op;
use crate::eval::{Fields, excepts};
use crate::rules::{Exception, Ruleset};

/// One stored alert.
#[derive(Clone, Debug)]
pub struct Alert {
    /// Nanoseconds since the epoch.
    pub ts: i64,
    pub rule: String,
    pub host: String,
    pub output: String,
    /// What Falco evaluates an exception on: the output fields, with a socket tuple's parts
    /// ([`crate::eval::fields_of`] adds them).
    pub fields: Fields,
    /// Labelled as a true positive: never to be suppressed.
    pub true_positive: bool,
}

/// Tuning knobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// A group needs at least this many alerts to be noise.
    pub min_count: usize,
    /// ... and to recur: in this many distinct hours, or on two hosts.
    pub min_hours: usize,
    /// The expiry date written on every suggestion (`YYYY-MM-DD`).
    pub expires: String,
}

impl Default for Options {
    /// What `ktrail falco tune` uses unless told otherwise (no expiry date).
    fn default() -> Self {
        Self {
            min_count: 10,
            min_hours: 3,
            expires: String::new(),
        }
    }
}

/// Fields whose values change with every event: never part of a group or an exception.
const VOLATILE: [&str; 22] = [
    "proc.pid",
    "proc.ppid",
    "proc.vpid",
    "proc.pvpid",
    "proc.sid",
    "proc.vpgid",
    "proc.tty",
    "thread.tid",
    "thread.vtid",
    "evt.time",
    "evt.time.s",
    "evt.time.iso8601",
    "evt.datetime",
    "evt.rawtime",
    "evt.num",
    "fd.num",
    "fd.lport",
    "fd.cport",
    "container.id",
    "k8s.pod.uid",
    "k8s.pod.id",
    "ka.auditid",
];

/// Field combinations tried in order for an exception: the narrowest first, never one field.
const COMBINATIONS: [&[&str]; 15] = [
    // A workload's connections to one server: the client side (a pod's IP) is left out.
    &[
        "container.image.repository",
        "proc.exepath",
        "fd.sip",
        "fd.sport",
    ],
    &["container.image.repository", "proc.exepath", "fd.name"],
    &["container.image.repository", "proc.exepath", "fd.directory"],
    &["container.image.repository", "proc.exepath"],
    &["container.image.repository", "proc.name"],
    &["k8s.ns.name", "container.image.repository"],
    // Namespace + workload (its pods' common name).
    &["k8s.ns.name", "k8s.pod.name", "fd.sip", "fd.sport"],
    &["k8s.ns.name", "k8s.pod.name"],
    &["k8s.ns.name", "proc.exepath"],
    &["k8s.ns.name", "proc.name"],
    &["proc.exepath", "proc.cmdline"],
    &["proc.pname", "proc.exepath"],
    &["ka.user.name", "ka.target.namespace", "ka.target.resource"],
    &["ka.user.name", "ka.target.resource"],
    &["ka.user.name", "ka.verb"],
];

/// Fields that can narrow a proposal that would hide a true positive.
const NARROWERS: [&str; 8] = [
    "proc.cmdline",
    "user.name",
    "k8s.ns.name",
    "proc.pname",
    "container.image.tag",
    "fd.name",
    "ka.target.namespace",
    "ka.target.name",
];

/// Paths whose tail can vary: an exception uses their common directory with `startswith`.
const PATH_FIELDS: [&str; 4] = ["fd.name", "fd.directory", "fs.path.name", "proc.cwd"];

/// `value` with what changes between runs of the same thing replaced by `*`: runs of 4+
/// digits (any digits in paths), hex/base32-ish ids of 8+ characters, the client port of a socket tuple, the
/// generated suffixes of pod names.
pub fn normalise(field: &str, value: &str) -> String {
    if field == "k8s.pod.name" {
        return pod_base(value);
    }
    if field == "fd.name"
        && let Some((client, server)) = value.split_once("->")
    {
        let client = client
            .rsplit_once(':')
            .map_or(client.to_string(), |(ip, _)| format!("{ip}:*"));
        return format!("{client}->{server}");
    }
    let mut out = String::new();
    for token in split_keep(value) {
        let digits = token.chars().all(|c| c.is_ascii_digit());
        let idish = token.len() >= 8
            && token.chars().all(|c| c.is_ascii_alphanumeric())
            && token.chars().any(|c| c.is_ascii_digit())
            && token.chars().any(|c| c.is_ascii_alphabetic());
        // In paths any number varies (rotated logs, pids, dates); elsewhere long ones do.
        let long = token.len() >= 4 || PATH_FIELDS.contains(&field);
        if (digits && long) || idish {
            out.push('*');
        } else {
            out.push_str(token);
        }
    }
    out
}

/// Splits into alphanumeric runs and the separators between them.
fn split_keep(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut alnum = None;
    for (i, c) in s.char_indices() {
        let a = c.is_ascii_alphanumeric();
        if alnum.is_some_and(|p| p != a) {
            out.push(&s[start..i]);
            start = i;
        }
        alnum = Some(a);
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// `web-7d9f8b6c5-x7k2p` → `web-*`, `node-exporter-x7k2p` → `node-exporter-*`,
/// `ledger-0` stays. Kubernetes makes pod-template hashes and name suffixes from an alphabet
/// without vowels and look-alike digits, which tells them from words like `nginx`.
fn pod_base(name: &str) -> String {
    const ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";
    let generated = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len()) && s.chars().all(|c| ALPHABET.contains(c))
    };
    let parts: Vec<&str> = name.split('-').collect();
    match parts.as_slice() {
        [base @ .., h, r] if !base.is_empty() && generated(h, 8..=10) && generated(r, 5..=5) => {
            format!("{}-*", base.join("-"))
        }
        [base @ .., r] if !base.is_empty() && generated(r, 5..=5) => {
            format!("{}-*", base.join("-"))
        }
        _ => name.to_string(),
    }
}

/// A group of alerts of one rule with the same normalised fields.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub rule: String,
    /// The normalised, non-volatile fields that define it.
    pub key: BTreeMap<String, String>,
    /// Fields left out because their values in this rule's alerts are many and short-lived.
    pub varying: Vec<String>,
    pub count: usize,
    /// Its share of all alerts (0..1).
    pub share: f64,
    pub hosts: usize,
    pub days: usize,
    pub hours: usize,
    /// Hours with alerts over hours from first to last (0..1]: 1 = every hour.
    pub steadiness: f64,
    pub first_ns: i64,
    pub last_ns: i64,
    pub recurring: bool,
    #[serde(skip)]
    pub members: Vec<usize>,
}

/// A rule's values of a field are volatile when there are many of them and most live briefly:
/// at least this many distinct values…
const VOLATILE_MIN_VALUES: usize = 8;
/// …and half of them seen over at most this share of the time the field was seen at all.
const VOLATILE_MAX_LIFETIME: f64 = 0.25;

/// Per rule, the fields that behave as volatile in `alerts` (see the constants): a pod IP of
/// a pod that restarts, the pod names of a ReplicaSet, a WAL segment in a command line.
fn varying_fields(alerts: &[Alert]) -> BTreeMap<String, BTreeSet<String>> {
    // value → (first, last) seen
    type Lifetimes<'a> = BTreeMap<&'a str, (i64, i64)>;
    // rule → field → its values' lifetimes
    let mut seen: BTreeMap<&str, BTreeMap<&str, Lifetimes>> = BTreeMap::new();
    for a in alerts {
        let fields = seen.entry(a.rule.as_str()).or_default();
        for (f, v) in &a.fields {
            let life = fields
                .entry(f.as_str())
                .or_default()
                .entry(v.as_str())
                .or_insert((a.ts, a.ts));
            life.0 = life.0.min(a.ts);
            life.1 = life.1.max(a.ts);
        }
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rule, fields) in seen {
        for (field, values) in fields {
            if values.len() < VOLATILE_MIN_VALUES {
                continue;
            }
            let first = values.values().map(|l| l.0).min().unwrap_or(0);
            let last = values.values().map(|l| l.1).max().unwrap_or(0);
            let span = (last - first).max(1) as f64;
            let mut lifetimes: Vec<i64> = values.values().map(|(f, l)| l - f).collect();
            lifetimes.sort_unstable();
            let median = lifetimes[lifetimes.len() / 2] as f64;
            if median <= VOLATILE_MAX_LIFETIME * span {
                out.entry(rule.to_string())
                    .or_default()
                    .insert(field.to_string());
            }
        }
    }
    out
}

/// Groups the alerts per rule, noisiest rules first and noisiest groups first within each.
pub fn groups(alerts: &[Alert], opts: &Options) -> Vec<Group> {
    let varying = varying_fields(alerts);
    let none = BTreeSet::new();
    let mut by_key: BTreeMap<(String, BTreeMap<String, String>), Vec<usize>> = BTreeMap::new();
    for (i, a) in alerts.iter().enumerate() {
        let rule_varying = varying.get(&a.rule).unwrap_or(&none);
        let split_socket = a
            .fields
            .get("fd.name")
            .and_then(|n| crate::eval::socket_parts(n))
            .is_some();
        let key: BTreeMap<String, String> = a
            .fields
            .iter()
            .filter(|(f, _)| !VOLATILE.contains(&f.as_str()) && !rule_varying.contains(*f))
            // A socket tuple is grouped by its parts, so a varying client leaves the rest.
            .filter(|(f, _)| !(split_socket && f.as_str() == "fd.name"))
            .map(|(f, v)| (f.clone(), normalise(f, v)))
            .collect();
        by_key.entry((a.rule.clone(), key)).or_default().push(i);
    }
    let total = alerts.len().max(1) as f64;
    let mut per_rule: BTreeMap<String, usize> = BTreeMap::new();
    for a in alerts {
        *per_rule.entry(a.rule.clone()).or_default() += 1;
    }
    const HOUR: i64 = 3_600_000_000_000;
    let mut out: Vec<Group> = by_key
        .into_iter()
        .map(|((rule, key), members)| {
            let ts: Vec<i64> = members.iter().map(|&i| alerts[i].ts).collect();
            let (first, last) = (
                *ts.iter().min().unwrap_or(&0),
                *ts.iter().max().unwrap_or(&0),
            );
            let hours: BTreeSet<i64> = ts.iter().map(|t| t.div_euclid(HOUR)).collect();
            let days: BTreeSet<i64> = ts.iter().map(|t| t.div_euclid(24 * HOUR)).collect();
            let hosts: BTreeSet<&str> = members.iter().map(|&i| alerts[i].host.as_str()).collect();
            let span = (last.div_euclid(HOUR) - first.div_euclid(HOUR) + 1).max(1);
            let count = members.len();
            Group {
                varying: varying
                    .get(&rule)
                    .map(|v| v.iter().cloned().collect())
                    .unwrap_or_default(),
                recurring: count >= opts.min_count
                    && (hours.len() >= opts.min_hours || hosts.len() >= 2),
                rule,
                key,
                count,
                share: count as f64 / total,
                hosts: hosts.len(),
                days: days.len(),
                hours: hours.len(),
                steadiness: hours.len() as f64 / span as f64,
                first_ns: first,
                last_ns: last,
                members,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        per_rule[&b.rule]
            .cmp(&per_rule[&a.rule])
            .then(a.rule.cmp(&b.rule))
            .then(b.count.cmp(&a.count))
            .then(b.hosts.cmp(&a.hosts))
    });
    out
}

/// A proposed exception for one group, with its evidence and what replay proved.
#[derive(Clone, Debug, Serialize)]
pub struct Suggestion {
    pub rule: String,
    pub exception: Exception,
    /// `exceptions` (appended to the rule) or the `user_known_*` macro it is appended to.
    pub via: String,
    /// Alerts the replay suppresses with this suggestion.
    pub suppressed: usize,
    pub evidence: Evidence,
    /// Set when the first proposal would have hidden a true positive and was narrowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub narrowed: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    pub count: usize,
    pub hosts: Vec<String>,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub sample: String,
    pub expires: String,
    /// What the excepted alerts ran as, for `check-exceptions` to notice a change.
    pub images: Vec<String>,
    pub namespaces: Vec<String>,
}

/// A recurring group that got no suggestion, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Dropped {
    pub rule: String,
    pub key: BTreeMap<String, String>,
    pub count: usize,
    pub reason: String,
}

/// How much of one rule's alerts the suggestions cover, and what they leave.
#[derive(Clone, Debug, Serialize)]
pub struct RuleCoverage {
    pub rule: String,
    pub alerts: usize,
    pub suppressed: usize,
    /// `suppressed` over `alerts` (0..1).
    pub share: f64,
    /// The largest groups with alerts no suggestion covers, largest first (at most 3).
    pub uncovered: Vec<Uncovered>,
}

/// A group with alerts no suggestion covers, and why none does.
#[derive(Clone, Debug, Serialize)]
pub struct Uncovered {
    pub key: BTreeMap<String, String>,
    pub alerts: usize,
    pub reason: String,
}

/// Per rule (noisiest first), the share of its alerts the replay suppressed and its largest
/// uncovered groups with the reason.
fn coverage(groups: &[Group], dropped: &[Dropped], hidden: &[bool]) -> Vec<RuleCoverage> {
    let mut out: Vec<RuleCoverage> = Vec::new();
    for g in groups {
        if out.last().is_none_or(|c| c.rule != g.rule) {
            out.push(RuleCoverage {
                rule: g.rule.clone(),
                alerts: 0,
                suppressed: 0,
                share: 0.0,
                uncovered: Vec::new(),
            });
        }
        let c = out.last_mut().expect("pushed");
        let covered = g.members.iter().filter(|&&i| hidden[i]).count();
        c.alerts += g.count;
        c.suppressed += covered;
        if covered < g.count {
            let reason = match dropped.iter().find(|d| d.rule == g.rule && d.key == g.key) {
                Some(d) => d.reason.clone(),
                None if !g.recurring => format!(
                    "does not recur: {} alert(s) in {} hour(s) on {} host(s)",
                    g.count, g.hours, g.hosts
                ),
                None => "partly covered: the suggestion's values miss some of its alerts".into(),
            };
            c.uncovered.push(Uncovered {
                key: g.key.clone(),
                alerts: g.count - covered,
                reason,
            });
        }
    }
    for c in &mut out {
        c.share = c.suppressed as f64 / c.alerts.max(1) as f64;
        c.uncovered.sort_by_key(|u| std::cmp::Reverse(u.alerts));
        c.uncovered.truncate(3);
    }
    out
}

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
pub struct Tuning {
    /// Per rule: what the suggestions cover and the largest groups they leave.
    pub coverage: Vec<RuleCoverage>,
    pub total_alerts: usize,
    pub groups: Vec<Group>,
    pub suggestions: Vec<Suggestion>,
    pub dropped: Vec<Dropped>,
    /// Alerts suppressed by at least one suggestion (each counted once).
    pub suppressed_total: usize,
    pub reduction: f64,
    pub true_positives: usize,
    /// True positives any suggestion would suppress: zero by construction, re-checked.
    pub true_positives_suppressed: usize,
}

/// Finds the noise, proposes exceptions, and replays every alert through them.
pub fn tune(ruleset: &Ruleset, alerts: &[Alert], opts: &Options) -> Tuning {
    let groups = groups(alerts, opts);
    let mut suggestions: Vec<Suggestion> = Vec::new();
    let mut dropped = Vec::new();
    for g in groups.iter().filter(|g| g.recurring) {
        let Some(rule) = ruleset.rule(&g.rule) else {
            // An override of a rule Falco has not loaded fails to load.
            dropped.push(Dropped {
                rule: g.rule.clone(),
                key: g.key.clone(),
                count: g.count,
                reason: "the rule is not in the rules files given".into(),
            });
            continue;
        };
        let members: Vec<&Alert> = g.members.iter().map(|&i| &alerts[i]).collect();
        let positives: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.true_positive && a.rule == g.rule)
            .collect();
        // Any field the alerts carry will do (constant_values needs it in every one): Falco
        // evaluates exceptions on the event, and deployments append container and
        // Kubernetes fields to every rule's output.
        let Some((fields, comps, values)) = COMBINATIONS
            .iter()
            .find_map(|combo| constant_values(combo, &members))
        else {
            dropped.push(Dropped {
                rule: g.rule.clone(),
                key: g.key.clone(),
                count: g.count,
                reason: "no field combination is the same in every alert of the group".into(),
            });
            continue;
        };
        let mut exception = Exception {
            name: String::new(),
            fields,
            comps,
            values: vec![values],
        };
        let mut narrowed = None;
        let hides = |e: &Exception| positives.iter().filter(|a| excepts(e, &a.fields)).count();
        let hidden = hides(&exception);
        if hidden > 0 {
            // Add the first narrowing field that is constant in the group and sets every
            // true positive apart.
            let better = NARROWERS
                .iter()
                .filter(|f| !exception.fields.iter().any(|x| x == *f))
                .find_map(|f| {
                    let (fs, cs, vs) = constant_values(&[f], &members)?;
                    let mut e = exception.clone();
                    e.fields.extend(fs);
                    e.comps.extend(cs);
                    e.values[0].extend(vs);
                    (hides(&e) == 0).then_some((f.to_string(), e))
                });
            match better {
                Some((f, e)) => {
                    narrowed = Some(format!(
                        "narrowed with {f}: the first proposal would have hidden {hidden} true positive(s)"
                    ));
                    exception = e;
                }
                None => {
                    dropped.push(Dropped {
                        rule: g.rule.clone(),
                        key: g.key.clone(),
                        count: g.count,
                        reason: format!(
                            "every exception that covers it would hide {hidden} labelled true positive(s)"
                        ),
                    });
                    continue;
                }
            }
        }
        let sorted = |values: Vec<String>| -> Vec<String> {
            let set: BTreeSet<String> = values
                .into_iter()
                .filter(|v| !v.is_empty() && v != "<NA>")
                .collect();
            set.into_iter().collect()
        };
        let evidence = Evidence {
            count: g.count,
            hosts: sorted(members.iter().map(|a| a.host.clone()).collect()),
            first_seen_ns: g.first_ns,
            last_seen_ns: g.last_ns,
            sample: members
                .first()
                .map(|a| a.output.clone())
                .unwrap_or_default(),
            expires: opts.expires.clone(),
            images: sorted(members.iter().map(|a| image_of(&a.fields)).collect()),
            namespaces: sorted(
                members
                    .iter()
                    .filter_map(|a| a.fields.get("k8s.ns.name").cloned())
                    .collect(),
            ),
        };
        // Two groups can land on the same exception (normalisation kept them apart), or on
        // the same fields with other values (a log directory that moved with an upgrade):
        // one exception, the new values an added tuple.
        if let Some(s) = suggestions.iter_mut().find(|s| {
            s.rule == g.rule
                && s.exception.fields == exception.fields
                && s.exception.comps == exception.comps
        }) {
            for tuple in exception.values {
                if !s.exception.values.contains(&tuple) {
                    s.exception.values.push(tuple);
                }
            }
            if s.narrowed.is_none() {
                s.narrowed = narrowed;
            }
            let e = &mut s.evidence;
            e.count += evidence.count;
            e.first_seen_ns = e.first_seen_ns.min(evidence.first_seen_ns);
            e.last_seen_ns = e.last_seen_ns.max(evidence.last_seen_ns);
            e.hosts = sorted(e.hosts.drain(..).chain(evidence.hosts).collect());
            e.images = sorted(e.images.drain(..).chain(evidence.images).collect());
            e.namespaces = sorted(e.namespaces.drain(..).chain(evidence.namespaces).collect());
            continue;
        }
        let index = suggestions.iter().filter(|s| s.rule == g.rule).count() + 1;
        exception.name = format!("ktrail_{}_{index}", slug(&exception.fields));
        let via = ruleset
            .user_known_macro(rule)
            .map_or("exceptions".to_string(), |m| format!("macro {m}"));
        suggestions.push(Suggestion {
            rule: g.rule.clone(),
            via,
            suppressed: 0,
            evidence,
            exception,
            narrowed,
        });
    }

    // Replay: every alert through every suggestion of its rule.
    let mut suppressed_total = 0;
    let mut tp_suppressed = 0;
    let mut hidden = vec![false; alerts.len()];
    for (i, a) in alerts.iter().enumerate() {
        for s in suggestions.iter_mut().filter(|s| s.rule == a.rule) {
            if excepts(&s.exception, &a.fields) {
                s.suppressed += 1;
                hidden[i] = true;
            }
        }
        if hidden[i] {
            suppressed_total += 1;
            tp_suppressed += usize::from(a.true_positive);
        }
    }
    let coverage = coverage(&groups, &dropped, &hidden);
    Tuning {
        coverage,
        total_alerts: alerts.len(),
        reduction: suppressed_total as f64 / alerts.len().max(1) as f64,
        true_positives: alerts.iter().filter(|a| a.true_positive).count(),
        true_positives_suppressed: tp_suppressed,
        groups,
        suggestions,
        dropped,
        suppressed_total,
    }
}

/// The image an alert ran: `repository@digest`, else `repository:tag`, as evidence records it.
pub fn image_of(fields: &Fields) -> String {
    let known = |f: &str| fields.get(f).filter(|v| !v.is_empty() && *v != "<NA>");
    match (
        known("container.image.repository"),
        known("container.image.digest"),
        known("container.image.tag"),
    ) {
        (None, ..) => String::new(),
        (Some(r), Some(d), _) => format!("{r}@{d}"),
        (Some(r), None, Some(t)) => format!("{r}:{t}"),
        (Some(r), None, None) => r.clone(),
    }
}

/// An exception's fields, comparisons and one value tuple.
type Columns = (Vec<String>, Vec<Op>, Vec<Vec<String>>);

/// The values of `fields` if every member has the same one (paths: the common directory,
/// compared with `startswith`); None if any field varies or is missing.
fn constant_values(fields: &[&str], members: &[&Alert]) -> Option<Columns> {
    let mut fs = Vec::new();
    let mut comps = Vec::new();
    let mut values = Vec::new();
    for f in fields {
        let vals: BTreeSet<&str> = members
            .iter()
            .map(|a| a.fields.get(*f).map(String::as_str))
            .collect::<Option<_>>()?;
        let (op, value) = match vals.len() {
            1 => {
                let v = *vals.iter().next()?;
                if v.is_empty() || v == "<NA>" {
                    return None;
                }
                (Op::Eq, v.to_string())
            }
            _ if PATH_FIELDS.contains(f) => match directories(&vals) {
                Some(dirs) if dirs.len() == 1 => (Op::Startswith, dirs[0].clone()),
                // A few directories (the log directory before and after an upgrade): each
                // one, not their common parent.
                Some(dirs) => {
                    fs.push(f.to_string());
                    comps.push(Op::Pmatch);
                    values.push(
                        dirs.iter()
                            .map(|d| d.trim_end_matches('/').to_string())
                            .collect(),
                    );
                    continue;
                }
                None => (Op::Startswith, common_directory(&vals)?),
            },
            // The pods of one workload: `web-7d9f8b6c5-x7k2p`, `web-7d9f8b6c5-b5m2x` → `web-`.
            _ if *f == "k8s.pod.name" => {
                let bases: BTreeSet<String> = vals.iter().map(|v| pod_base(v)).collect();
                if bases.len() != 1 {
                    return None;
                }
                let base = bases.into_iter().next()?;
                (Op::Startswith, base.strip_suffix('*')?.to_string())
            }
            _ => return None,
        };
        fs.push(f.to_string());
        comps.push(op);
        values.push(vec![value]);
    }
    Some((fs, comps, values))
}

/// At most this many directories make a `pmatch` list; more take their common directory.
const MAX_DIRECTORIES: usize = 3;

/// The directories (ending in `/`, each at least two levels deep) that hold `paths`, those
/// inside another one left out; `None` when there are more than [`MAX_DIRECTORIES`] or a
/// path is not deep enough.
fn directories(paths: &BTreeSet<&str>) -> Option<Vec<String>> {
    let mut dirs: BTreeSet<&str> = BTreeSet::new();
    for p in paths {
        let dir = &p[..p.rfind('/')? + 1];
        if !dir.starts_with('/') || dir.matches('/').count() < 3 {
            return None;
        }
        dirs.insert(dir);
    }
    let outer: Vec<String> = dirs
        .iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && d.starts_with(o)))
        .map(|d| d.to_string())
        .collect();
    (outer.len() <= MAX_DIRECTORIES).then_some(outer)
}

/// The longest common directory (ending in `/`) of absolute paths, at least two levels
/// deep (`/var/lib/`): `/` or `/tmp/` alone would be far too broad.
fn common_directory(paths: &BTreeSet<&str>) -> Option<String> {
    let first = *paths.iter().next()?;
    let mut prefix = first.to_string();
    for p in paths {
        while !p.starts_with(&prefix) {
            prefix.pop();
        }
    }
    let dir = &prefix[..prefix.rfind('/')? + 1];
    (dir.starts_with('/') && dir.matches('/').count() >= 3).then(|| dir.to_string())
}

fn slug(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| f.rsplit('.').next().unwrap_or(f))
        .collect::<Vec<_>>()
        .join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(
            normalise("fd.name", "10.0.0.5:43122->10.96.0.1:443"),
            "10.0.0.5:*->10.96.0.1:443"
        );
        assert_eq!(normalise("k8s.pod.name", "web-7d9f8b6c5-x7k2p"), "web-*");
        assert_eq!(
            normalise("k8s.pod.name", "node-exporter-x7k2p"),
            "node-exporter-*"
        );
        assert_eq!(normalise("k8s.pod.name", "ledger-0"), "ledger-0");
        assert_eq!(normalise("k8s.pod.name", "my-nginx"), "my-nginx");
        assert_eq!(normalise("fd.name", "/proc/12345/status"), "/proc/*/status");
        assert_eq!(
            normalise("fd.name", "/tmp/tmp.a8f3k2j9x1/out"),
            "/tmp/tmp.*/out"
        );
        assert_eq!(normalise("proc.cmdline", "sleep 30"), "sleep 30");
        assert_eq!(
            normalise("fd.name", "/var/log/app/app-20261125-02.log"),
            "/var/log/app/app-*-*.log"
        );
    }

    fn ruleset() -> Ruleset {
        let mut set = Ruleset::default();
        let text = "- rule: Shell\n  desc: d\n  condition: proc.name = bash\n  \
                    output: shell %proc.exepath %container.image.repository\n  priority: NOTICE\n";
        set.add_file(std::path::Path::new("r.yaml"), text).unwrap();
        set.compile().unwrap();
        set
    }

    fn alert(rule: &str, hour: i64, tp: bool) -> Alert {
        let fields: Fields = [
            ("container.image.repository", "ci-runner"),
            ("proc.exepath", "/bin/bash"),
            ("proc.cmdline", "bash -l"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Alert {
            ts: hour * 3_600_000_000_000,
            rule: rule.into(),
            host: "n1".into(),
            output: String::new(),
            fields,
            true_positive: tp,
        }
    }

    fn opts() -> Options {
        Options {
            min_count: 10,
            min_hours: 3,
            expires: "2027-01-01".into(),
        }
    }

    /// A true positive that looks exactly like the noise: no exception can tell them apart,
    /// so there is no suggestion, and the report says why.
    #[test]
    fn a_true_positive_indistinguishable_from_noise_drops_the_suggestion() {
        let mut alerts: Vec<Alert> = (0..12).map(|h| alert("Shell", h, false)).collect();
        alerts.push(alert("Shell", 5, true));
        let t = tune(&ruleset(), &alerts, &opts());
        assert!(t.suggestions.is_empty());
        assert_eq!(t.dropped.len(), 1);
        assert!(
            t.dropped[0]
                .reason
                .contains("would hide 1 labelled true positive"),
            "{:?}",
            t.dropped
        );
        assert_eq!((t.suppressed_total, t.true_positives_suppressed), (0, 0));
    }

    /// Alerts of a rule the given files do not define get no override (Falco would refuse it).
    #[test]
    fn rules_not_loaded_get_no_suggestion() {
        let alerts: Vec<Alert> = (0..12).map(|h| alert("Elsewhere", h, false)).collect();
        let t = tune(&ruleset(), &alerts, &opts());
        assert!(t.suggestions.is_empty());
        assert_eq!(
            t.dropped[0].reason,
            "the rule is not in the rules files given"
        );
        let ok: Vec<Alert> = (0..12).map(|h| alert("Shell", h, false)).collect();
        let t = tune(&ruleset(), &ok, &opts());
        assert_eq!(t.suggestions.len(), 1);
        assert_eq!(
            t.suggestions[0].exception.fields,
            vec!["container.image.repository", "proc.exepath"]
        );
        assert_eq!(t.suppressed_total, 12);
    }

    /// Without an image field, namespace + workload: the pods' common name prefix.
    #[test]
    fn namespace_and_workload() {
        let alerts: Vec<Alert> = (0..12)
            .map(|h| {
                let mut a = alert("Shell", h, false);
                a.fields.clear();
                a.fields.insert("k8s.ns.name".into(), "web".into());
                let pod = ["web-7d9f8b6c5-x7k2p", "web-7d9f8b6c5-b5m2x"][h as usize % 2];
                a.fields.insert("k8s.pod.name".into(), pod.into());
                a
            })
            .collect();
        let t = tune(&ruleset(), &alerts, &opts());
        let e = &t.suggestions[0].exception;
        assert_eq!(e.fields, vec!["k8s.ns.name", "k8s.pod.name"]);
        assert_eq!(e.comps, vec![Op::Eq, Op::Startswith]);
        assert_eq!(e.values[0][1], vec!["web-"]);
    }

    #[test]
    fn common_directories_are_deep_enough() {
        let set = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<&str>>();
        assert_eq!(
            common_directory(&set(&["/var/lib/app/a.db", "/var/lib/app/b.db"])).as_deref(),
            Some("/var/lib/app/")
        );
        assert_eq!(common_directory(&set(&["/tmp/a", "/tmp/b"])), None);
    }

    /// The rule as Falco ships it (falcosecurity/rules, `../shared/samples/falco-rules`).
    fn api_server_rule() -> Ruleset {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/samples/falco-rules/falco_rules.yaml"
        ))
        .unwrap();
        let mut set = Ruleset::default();
        set.add_file(std::path::Path::new("falco_rules.yaml"), &text)
            .unwrap();
        set.compile().unwrap();
        set
    }

    /// One controller's pods on 8 nodes for a week, each restarted every two hours with a new
    /// pod IP and name, connect to the API server four times an hour: 5 376 alerts in which
    /// only the client side varies. Before, each pod IP was a group of its own, too small
    /// to recur, and nothing was proposed.
    #[test]
    fn a_churning_workload_talking_to_the_api_server_is_one_suggestion() {
        const RULE: &str = "Contact K8S API Server From Container";
        const HOUR: i64 = 3_600_000_000_000;
        let alphabet: Vec<char> = "bcdfghjklmnpqrstvwxz2456789".chars().collect();
        let suffix = |mut n: usize| -> String {
            (0..5)
                .map(|_| {
                    let c = alphabet[n % alphabet.len()];
                    n /= alphabet.len();
                    c
                })
                .collect()
        };
        let mut alerts = Vec::new();
        for node in 0..8usize {
            for hour in 0..7 * 24usize {
                let incarnation = node * 1000 + hour / 2;
                let pod_ip = format!("10.42.{node}.{}", 10 + (hour / 2) % 200);
                for k in 0..4usize {
                    let fields: Fields = [
                        (
                            "fd.name",
                            format!("{pod_ip}:{}->10.43.0.1:443", 40000 + k * 7 + hour),
                        ),
                        ("fd.lport", format!("{}", 40000 + k)),
                        ("fd.rport", "443".into()),
                        (
                            "container.image.repository",
                            "ghcr.io/acme/controller".into(),
                        ),
                        ("container.id", format!("{:012x}", incarnation * 7919)),
                        ("proc.exepath", "/manager".into()),
                        ("proc.name", "manager".into()),
                        ("proc.cmdline", "manager --leader-elect".into()),
                        ("proc.pid", format!("{}", 100 + k)),
                        ("k8s.ns.name", "acme-system".into()),
                        (
                            "k8s.pod.name",
                            format!("controller-7d9f8b6c5-{}", suffix(incarnation)),
                        ),
                    ]
                    .into_iter()
                    .map(|(f, v)| (f.to_string(), v))
                    .collect();
                    let mut fields = fields;
                    crate::eval::add_socket_fields(&mut fields);
                    alerts.push(Alert {
                        ts: hour as i64 * HOUR + k as i64 * 60_000_000_000,
                        rule: RULE.into(),
                        host: format!("node-{node}"),
                        output: String::new(),
                        fields,
                        true_positive: false,
                    });
                }
            }
        }
        // Someone's curl from a debug pod to the same API server: a true positive.
        let mut tp = alerts[0].clone();
        tp.fields.insert(
            "container.image.repository".into(),
            "docker.io/library/alpine".into(),
        );
        tp.fields
            .insert("proc.exepath".into(), "/usr/bin/curl".into());
        tp.true_positive = true;
        alerts.push(tp);

        let t = tune(&api_server_rule(), &alerts, &opts());
        assert_eq!(t.suggestions.len(), 1, "{:?}", t.suggestions);
        let s = &t.suggestions[0];
        assert_eq!(
            s.exception.fields,
            [
                "container.image.repository",
                "proc.exepath",
                "fd.sip",
                "fd.sport"
            ]
        );
        assert_eq!(
            s.exception.values,
            [[
                ["ghcr.io/acme/controller"],
                ["/manager"],
                ["10.43.0.1"],
                ["443"]
            ]]
        );
        assert_eq!(s.via, "macro user_known_contact_k8s_api_server_activities");
        assert_eq!(
            s.suppressed,
            alerts.len() - 1,
            "every noise alert, replayed"
        );
        assert_eq!(t.true_positives_suppressed, 0);
        let g = t.groups.iter().find(|g| g.recurring).unwrap();
        assert_eq!(g.count, alerts.len() - 1);
        for field in ["fd.cip", "k8s.pod.name", "container.id"] {
            assert!(
                g.varying.iter().any(|v| v == field),
                "{field}: {:?}",
                g.varying
            );
        }
        assert!(!g.varying.iter().any(|v| v == "fd.sip"), "{:?}", g.varying);
    }

    /// A log rotator whose directory changed with an upgrade: one exception naming both
    /// directories, not a second exception or their common parent.
    #[test]
    fn a_directory_that_moved_with_an_upgrade_is_an_added_value() {
        let alerts: Vec<Alert> = (0..24)
            .map(|h| {
                let mut a = alert("Shell", h, false);
                let dir = if h < 12 {
                    "/var/log/app-1.4"
                } else {
                    "/var/log/app-1.5"
                };
                a.fields
                    .insert("fd.name".into(), format!("{dir}/app-{h:04}.log"));
                a
            })
            .collect();
        let t = tune(&ruleset(), &alerts, &opts());
        assert_eq!(t.suggestions.len(), 1, "{:?}", t.suggestions);
        let e = &t.suggestions[0].exception;
        assert_eq!(
            e.fields,
            ["container.image.repository", "proc.exepath", "fd.name"]
        );
        assert_eq!(e.comps, [Op::Eq, Op::Eq, Op::Pmatch]);
        assert_eq!(e.values[0][2], ["/var/log/app-1.4", "/var/log/app-1.5"]);
        assert_eq!(t.suppressed_total, 24);
        let c = &t.coverage[0];
        assert_eq!((c.alerts, c.suppressed, c.share), (24, 24, 1.0));
        assert!(c.uncovered.is_empty());
    }

    #[test]
    fn coverage_names_what_is_left_and_why() {
        let mut alerts: Vec<Alert> = (0..12).map(|h| alert("Shell", h, false)).collect();
        let mut odd = alert("Shell", 3, false);
        odd.fields
            .insert("proc.exepath".into(), "/usr/bin/zsh".into());
        alerts.push(odd);
        let t = tune(&ruleset(), &alerts, &opts());
        let c = &t.coverage[0];
        assert_eq!((c.alerts, c.suppressed), (13, 12));
        assert_eq!(c.uncovered.len(), 1);
        assert_eq!(c.uncovered[0].alerts, 1);
        assert!(
            c.uncovered[0].reason.starts_with("does not recur"),
            "{:?}",
            c.uncovered
        );
    }

    fn noise(rule: &str, ts: i64, host: &str, fields: &[(&str, String)]) -> Alert {
        let mut fields: Fields = fields
            .iter()
            .map(|(f, v)| (f.to_string(), v.clone()))
            .collect();
        crate::eval::add_socket_fields(&mut fields);
        Alert {
            ts,
            rule: rule.into(),
            host: host.into(),
            output: String::new(),
            fields,
            true_positive: false,
        }
    }

    /// A week of an 8-node cluster's noise, four patterns, each suggested once, covered, and
    /// the same exceptions read back from the overrides file as the JSON has.
    #[test]
    fn a_week_of_four_noise_patterns_gets_one_suggestion_each() {
        const H: i64 = 3_600_000_000_000;
        const MIN: i64 = 60_000_000_000;
        let mut alerts = Vec::new();
        for node in 0..8usize {
            for hour in 0..7 * 24usize {
                let t = hour as i64 * H;
                let host = format!("node-{node}");
                // A controller whose pods restart every two hours (new IP, name and id).
                let life = node * 1000 + hour / 2;
                alerts.push(noise(
                    "Contact K8S API Server From Container",
                    t + 7 * MIN,
                    &host,
                    &[
                        (
                            "fd.name",
                            format!(
                                "10.42.{node}.{}:{}->10.43.0.1:443",
                                life % 250,
                                40000 + hour
                            ),
                        ),
                        (
                            "container.image.repository",
                            "ghcr.io/acme/controller".into(),
                        ),
                        ("container.id", format!("{:012x}", life * 7919)),
                        ("proc.exepath", "/manager".into()),
                        ("k8s.ns.name", "acme-system".into()),
                        (
                            "k8s.pod.name",
                            format!(
                                "controller-7d9f8b6c5-{}",
                                ["bx2kq", "z4mnp", "t8wvc"][life % 3]
                            ),
                        ),
                    ],
                ));
                // A node agent's packet socket, every hour on every node.
                alerts.push(noise(
                    "Packet socket created in container",
                    t + 13 * MIN,
                    &host,
                    &[
                        (
                            "container.image.repository",
                            "ghcr.io/acme/node-agent".into(),
                        ),
                        ("proc.exepath", "/usr/bin/node-agent".into()),
                        ("proc.pid", format!("{}", 4000 + hour)),
                        ("k8s.ns.name", "kube-system".into()),
                        (
                            "k8s.pod.name",
                            format!(
                                "node-agent-{}",
                                [
                                    "q2w4x", "p9rtz", "m5kxs", "c7vbn", "h2jkl", "d4fgh", "s8tzr",
                                    "w2xcv"
                                ][node]
                            ),
                        ),
                    ],
                ));
            }
        }
        for hour in 0..7 * 24usize {
            let t = hour as i64 * H;
            // Postgres's archive_command: a shell every 10 minutes, a WAL segment in its line.
            for k in 0..6usize {
                let wal = format!(
                    "00000001000000{:02X}000000{:02X}",
                    hour / 40,
                    (hour * 6 + k) % 256
                );
                alerts.push(noise(
                    "Run shell untrusted",
                    t + (k as i64) * 10 * MIN,
                    "node-3",
                    &[
                        (
                            "container.image.repository",
                            "docker.io/library/postgres".into(),
                        ),
                        ("proc.exepath", "/usr/bin/dash".into()),
                        ("proc.name", "sh".into()),
                        ("proc.pname", "postgres".into()),
                        (
                            "proc.cmdline",
                            format!(
                                "sh -c test ! -f /archive/{wal} && cp pg_wal/{wal} /archive/{wal}"
                            ),
                        ),
                        ("k8s.ns.name", "db".into()),
                        ("k8s.pod.name", "postgres-0".into()),
                    ],
                ));
            }
            // logrotate truncating the app's logs; the directory changed with an upgrade.
            let dir = if hour < 60 {
                "/var/log/shop-1.4"
            } else {
                "/var/log/shop-1.5"
            };
            alerts.push(noise(
                "Clear Log Activities",
                t + 30 * MIN,
                "node-5",
                &[
                    (
                        "container.image.repository",
                        "docker.io/acme/logrotate".into(),
                    ),
                    ("proc.exepath", "/usr/sbin/logrotate".into()),
                    ("fd.name", format!("{dir}/access.log.{}", hour % 7 + 1)),
                    ("k8s.ns.name", "shop".into()),
                ],
            ));
        }
        let noise_count = alerts.len();
        // True positives: a curl to the API server and a shell in a web pod.
        let mut curl = alerts[0].clone();
        curl.fields.insert(
            "container.image.repository".into(),
            "docker.io/library/alpine".into(),
        );
        curl.fields
            .insert("proc.exepath".into(), "/usr/bin/curl".into());
        curl.true_positive = true;
        let mut shell = alerts
            .iter()
            .find(|a| a.rule == "Run shell untrusted")
            .unwrap()
            .clone();
        shell.fields.insert(
            "container.image.repository".into(),
            "docker.io/library/nginx".into(),
        );
        shell.fields.insert("proc.cmdline".into(), "sh -i".into());
        shell.true_positive = true;
        alerts.extend([curl, shell]);

        let t = tune(&api_server_rule(), &alerts, &opts());
        assert_eq!(t.true_positives_suppressed, 0);
        let rules: BTreeSet<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
        assert_eq!(t.suggestions.len(), rules.len(), "{:#?}", t.suggestions);
        for rule in rules {
            let of_rule = alerts
                .iter()
                .filter(|a| a.rule == rule && !a.true_positive)
                .count();
            let s = t.suggestions.iter().find(|s| s.rule == rule).unwrap();
            assert!(
                s.suppressed as f64 >= 0.95 * of_rule as f64,
                "{rule}: {} of {of_rule}: {:?}",
                s.suppressed,
                s.exception
            );
            assert!(s.exception.fields.len() >= 2, "{rule}: {:?}", s.exception);
        }
        assert_eq!(t.suppressed_total, noise_count);
        let logs = t
            .suggestions
            .iter()
            .find(|s| s.rule == "Clear Log Activities")
            .unwrap();
        assert_eq!(
            logs.exception.values[0][2],
            ["/var/log/shop-1.4", "/var/log/shop-1.5"]
        );

        // The overrides file holds the same exceptions as the JSON, and replaying them gives
        // the same counts.
        let text = crate::overrides::render(&t, "2026-12-07");
        let read = crate::overrides::read_back(&text).unwrap();
        assert_eq!(read.len(), t.suggestions.len());
        for (s, r) in t.suggestions.iter().zip(&read) {
            let json = |e: &Exception| {
                let mut v = serde_json::to_value(e).unwrap();
                v.as_object_mut().unwrap().remove("name");
                v
            };
            assert_eq!(json(&s.exception), json(&r.exception), "{}", s.rule);
            let replayed = alerts
                .iter()
                .filter(|a| a.rule == r.rule && excepts(&r.exception, &a.fields))
                .count();
            assert_eq!(replayed, s.suppressed, "{}", s.rule);
        }
    }
}
