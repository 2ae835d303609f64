//! Falco Tuning end to end on a generated alert history: real rule names and the output
//! fields of the real rules (`../shared/samples/falco-rules`), four recurring false-positive
//! patterns, rare true positives labelled through the CLI.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{ktrail, stderr, stdout};
use falco::rules::Ruleset;
use serde_json::{Value, json};

fn rules_file() -> PathBuf {
    Path::new(common::SAMPLES).join("falco-rules/falco_rules.yaml")
}

const START: i64 = 1_795_564_800; // 2026-11-25T00:00:00Z

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 123_456_789)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// One Falco alert as `json_output: true` prints it, with the rule's real output fields
/// (plus the container and Kubernetes fields deployments append).
fn alert(
    rules: &Ruleset,
    rule: &str,
    secs: i64,
    host: &str,
    values: &[(&str, &str)],
    uuid: Option<&str>,
) -> Value {
    let r = rules.rule(rule).unwrap_or_else(|| panic!("no rule {rule}"));
    let given: BTreeMap<&str, &str> = values.iter().copied().collect();
    let mut fields = serde_json::Map::new();
    let extra = [
        "container.id",
        "container.image.repository",
        "container.image.tag",
        "k8s.ns.name",
        "k8s.pod.name",
    ];
    for f in r.output_fields().iter().map(String::as_str).chain(extra) {
        let v = match (f, given.get(f)) {
            (_, Some(v)) => json!(v),
            ("evt.type", None) => json!("openat"),
            ("user.uid", None) | ("user.loginuid", None) => json!(0),
            ("proc.tty", None) => json!(0),
            ("fd.lport", None) => json!(40000 + secs % 20000),
            ("container.id", None) => json!(format!("{:012x}", secs * 7919 % 0xffff_ffff)),
            _ => Value::Null,
        };
        fields.insert(f.to_string(), v);
    }
    let mut a = json!({
        "time": rfc3339(secs),
        "rule": rule,
        "priority": r.priority,
        "source": "syscall",
        "hostname": host,
        "output": format!("{} | {}", rule, given.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")),
        "output_fields": fields,
        "tags": r.tags,
    });
    if let Some(u) = uuid {
        a["uuid"] = json!(u);
    }
    a
}

/// The history: (alerts, number of each pattern).
fn history(rules: &Ruleset) -> Vec<Value> {
    let mut out = Vec::new();
    // 1. Prometheus scraping the API server: every 20 minutes for a day on three nodes.
    for host in ["worker-1", "worker-2", "worker-3"] {
        for i in 0..72 {
            let t = START + i * 1200 + 7;
            let port = (40000 + (t % 20000)).to_string();
            let fd = format!("10.0.1.5:{port}->10.96.0.1:443");
            out.push(alert(
                rules,
                "Contact K8S API Server From Container",
                t,
                host,
                &[
                    (
                        "container.image.repository",
                        "quay.io/prometheus/prometheus",
                    ),
                    ("container.image.tag", "v2.53.0"),
                    ("proc.exepath", "/bin/prometheus"),
                    ("proc.name", "prometheus"),
                    (
                        "proc.cmdline",
                        "prometheus --config.file=/etc/prometheus/prometheus.yml",
                    ),
                    ("k8s.ns.name", "monitoring"),
                    (
                        "k8s.pod.name",
                        &format!(
                            "prometheus-k8s-{}",
                            ["b5m2x", "c7k9q", "d2f4z"][i as usize % 3]
                        ),
                    ),
                    ("fd.name", &fd),
                    ("fd.rport", "443"),
                    ("user.name", "nobody"),
                ],
                None,
            ));
        }
    }
    // 2. A backup agent reading /etc/shadow hourly on two nodes.
    for host in ["worker-1", "worker-2"] {
        for i in 0..24 {
            out.push(alert(
                rules,
                "Read sensitive file untrusted",
                START + i * 3600 + 60,
                host,
                &[
                    (
                        "container.image.repository",
                        "registry.example.com/backup-agent",
                    ),
                    ("container.image.tag", "1.8.2"),
                    ("proc.exepath", "/usr/bin/restic"),
                    ("proc.name", "restic"),
                    ("proc.cmdline", "restic backup /etc"),
                    ("fd.name", "/etc/shadow"),
                    ("k8s.ns.name", "backup"),
                    ("user.name", "root"),
                ],
                None,
            ));
        }
    }
    // 3. Log rotation truncating dated log files every two hours.
    for i in 0..12 {
        let file = format!("/var/log/app/app-2026112{}-{:02}.log", 5, i * 2);
        out.push(alert(
            rules,
            "Clear Log Activities",
            START + i * 7200 + 300,
            "worker-3",
            &[
                ("container.image.repository", "docker.io/example/logrotate"),
                ("container.image.tag", "3.21"),
                ("proc.exepath", "/usr/sbin/logrotate"),
                ("proc.name", "logrotate"),
                ("proc.cmdline", "logrotate /etc/logrotate.conf"),
                ("fd.name", &file),
                ("k8s.ns.name", "logging"),
            ],
            None,
        ));
    }
    // 4. CI jobs opening shells with a terminal, on two nodes.
    for i in 0..30 {
        out.push(alert(
            rules,
            "Terminal shell in container",
            START + i * 1200 + 900,
            ["worker-1", "worker-2"][i as usize % 2],
            &[
                ("container.image.repository", "ghcr.io/example/ci-runner"),
                ("container.image.tag", "2024.11"),
                ("proc.exepath", "/bin/bash"),
                ("proc.name", "bash"),
                ("proc.cmdline", "bash -l"),
                ("k8s.ns.name", "ci"),
            ],
            None,
        ));
    }
    // True positive: mallory's shell in the billing pod.
    out.push(alert(
        rules,
        "Terminal shell in container",
        START + 36_000,
        "worker-1",
        &[
            ("container.image.repository", "ghcr.io/example/invoice-api"),
            ("proc.exepath", "/bin/sh"),
            ("proc.name", "sh"),
            ("proc.cmdline", "sh"),
            ("k8s.ns.name", "billing"),
        ],
        None,
    ));
    // True positive: the backup agent's image abused to dump /etc/shadow, same image and
    // executable as the noise: the proposal has to be narrowed.
    out.push(alert(
        rules,
        "Read sensitive file untrusted",
        START + 40_000,
        "worker-1",
        &[
            (
                "container.image.repository",
                "registry.example.com/backup-agent",
            ),
            ("container.image.tag", "1.8.2"),
            ("proc.exepath", "/usr/bin/restic"),
            ("proc.name", "restic"),
            ("proc.cmdline", "restic dump latest /etc/shadow"),
            ("fd.name", "/etc/shadow"),
            ("k8s.ns.name", "backup"),
            ("user.name", "root"),
        ],
        Some("7c1f2a9e-4b1d-4c55-9d0e-1a2b3c4d5e6f"),
    ));
    // One-off noise: not recurring, no suggestion.
    out.push(alert(
        rules,
        "Packet socket created in container",
        START + 50_000,
        "worker-2",
        &[
            ("container.image.repository", "docker.io/nicolaka/netshoot"),
            ("proc.exepath", "/usr/bin/tcpdump"),
            ("proc.name", "tcpdump"),
            ("k8s.ns.name", "default"),
        ],
        None,
    ));
    out
}

fn store_with_history(dir: &Path) -> (PathBuf, Vec<Value>) {
    let rules = Ruleset::load(&[rules_file()]).unwrap();
    let alerts = history(&rules);
    let file = dir.join("falco.jsonl");
    let text: String = alerts.iter().map(|a| format!("{a}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let data = dir.join("store");
    let o = ktrail(
        &data,
        &["ingest", "--format", "falco", file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let tp = |args: &[&str]| {
        let mut all = vec!["falco", "label", "--true-positive"];
        all.extend_from_slice(args);
        let o = ktrail(&data, &all);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(
        tp(&[
            "--rule",
            "Terminal shell in container",
            "--field",
            "k8s.ns.name=billing",
            "--note",
            "mallory"
        ])
        .trim(),
        "labelled: matches 1 stored alert(s)"
    );
    assert_eq!(
        tp(&["--uuid", "7c1f2a9e-4b1d-4c55-9d0e-1a2b3c4d5e6f"]).trim(),
        "labelled: matches 1 stored alert(s)"
    );
    (data, alerts)
}

#[test]
fn tune_proposes_narrow_exceptions_proven_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (data, alerts) = store_with_history(dir.path());
    let overrides = dir.path().join("overrides.yaml");
    let o = ktrail(
        &data,
        &[
            "falco",
            "tune",
            "--rules",
            rules_file().to_str().unwrap(),
            "--format",
            "json",
            "-o",
            overrides.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let suggestions = report["suggestions"].as_array().unwrap();
    let by_rule = |rule: &str| -> &Value {
        suggestions
            .iter()
            .find(|s| s["rule"] == rule)
            .unwrap_or_else(|| panic!("no suggestion for {rule}: {report:#}"))
    };

    // Every noisy pattern has a suggestion, the narrowest combination that covers it.
    assert_eq!(suggestions.len(), 4, "{report:#}");
    let k8s = by_rule("Contact K8S API Server From Container");
    // fd.name is a socket tuple with an ephemeral port: its server side is what is excepted.
    assert_eq!(
        k8s["exception"]["fields"],
        json!([
            "container.image.repository",
            "proc.exepath",
            "fd.sip",
            "fd.sport"
        ])
    );
    assert_eq!(
        k8s["via"],
        "macro user_known_contact_k8s_api_server_activities"
    );
    assert_eq!(k8s["suppressed"], 216);
    let logs = by_rule("Clear Log Activities");
    assert_eq!(
        logs["exception"]["fields"],
        json!(["container.image.repository", "proc.exepath", "fd.name"])
    );
    assert_eq!(logs["exception"]["comps"], json!(["=", "=", "startswith"]));
    assert_eq!(
        logs["exception"]["values"],
        // Falco's shape, as the YAML written by -o has it: one scalar per field.
        json!([[
            "docker.io/example/logrotate",
            "/usr/sbin/logrotate",
            "/var/log/app/"
        ]])
    );
    assert_eq!(logs["suppressed"], 12);
    // The backup agent's proposal would have hidden the labelled dump: narrowed, not dropped.
    let backup = by_rule("Read sensitive file untrusted");
    assert!(
        backup["narrowed"]
            .as_str()
            .unwrap()
            .starts_with("narrowed with proc.cmdline"),
        "{backup:#}"
    );
    assert_eq!(backup["suppressed"], 48);
    assert_eq!(by_rule("Terminal shell in container")["suppressed"], 30);
    for s in suggestions {
        assert!(
            s["exception"]["fields"].as_array().unwrap().len() >= 2,
            "never one field alone: {s}"
        );
        assert!(s["evidence"]["expires"].as_str().unwrap() > "2026-11-26");
    }

    // No true positive suppressed; the reduction is exactly what the suggestions match.
    assert_eq!(report["true_positives"], 2);
    assert_eq!(report["true_positives_suppressed"], 0);
    assert_eq!(report["suppressed_total"], 216 + 48 + 12 + 30);
    assert_eq!(report["total_alerts"], alerts.len());

    // The overrides file: only appends, parses back, merges onto the original rules as Falco
    // merges it, and its exceptions replayed here give the same numbers.
    let text = std::fs::read_to_string(&overrides).unwrap();
    assert!(!text.contains("replace"), "{text}");
    let merged = Ruleset::load(&[rules_file(), overrides.clone()]).unwrap();
    let original = Ruleset::load(&[rules_file()]).unwrap();
    let cond = &merged.macros["user_known_contact_k8s_api_server_activities"].condition;
    assert!(
        cond.starts_with(&original.macros["user_known_contact_k8s_api_server_activities"].condition)
            && cond.contains("or (container.image.repository = \"quay.io/prometheus/prometheus\" and proc.exepath = \"/bin/prometheus\" and fd.sip = \"10.96.0.1\" and fd.sport = \"443\")"),
        "{cond}"
    );
    let clear = merged.rule("Clear Log Activities").unwrap();
    assert_eq!(
        clear.exceptions.len(),
        original
            .rule("Clear Log Activities")
            .unwrap()
            .exceptions
            .len()
            + 1
    );
    let read = falco::overrides::read_back(&text).unwrap();
    assert_eq!(read.len(), 4);
    let mut suppressed = 0;
    for a in &alerts {
        // With the socket's parts, as Falco evaluates exceptions on the event.
        let f = falco::eval::fields_of(&a["output_fields"]);
        let hit = read
            .iter()
            .any(|x| x.rule == a["rule"] && falco::eval::excepts(&x.exception, &f));
        if hit {
            suppressed += 1;
            assert!(
                a["output_fields"]["k8s.ns.name"] != "billing" && a.get("uuid").is_none(),
                "a true positive is hidden: {a}"
            );
        }
    }
    assert_eq!(suppressed, 216 + 48 + 12 + 30);

    // The text report ranks the noisiest rule first.
    let o = ktrail(
        &data,
        &["falco", "tune", "--rules", rules_file().to_str().unwrap()],
    );
    let text = stdout(&o);
    let first = text.lines().nth(1).unwrap();
    assert!(
        first.contains("Contact K8S API Server From Container"),
        "{text}"
    );
    assert!(text.contains("true positives: 2, suppressed: 0"), "{text}");
    let coverage = text.split("COVERAGE\n").nth(1).expect("a coverage section");
    assert!(
        coverage
            .lines()
            .next()
            .is_some_and(|l| l.contains("of 216 alert(s): Contact K8S API Server From Container")),
        "{text}"
    );
    let api = &report["coverage"][0];
    assert_eq!(api["rule"], "Contact K8S API Server From Container");
    assert_eq!(api["suppressed"], 216);
}

#[test]
fn check_exceptions_reports_new_contexts_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = store_with_history(dir.path());
    let overrides = dir.path().join("overrides.yaml");
    let o = ktrail(
        &data,
        &[
            "falco",
            "tune",
            "--rules",
            rules_file().to_str().unwrap(),
            "-o",
            overrides.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ktrail(
        &data,
        &[
            "falco",
            "check-exceptions",
            "--rules",
            overrides.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("4 exception(s) checked, 0 finding(s)"),
        "{}",
        stdout(&o)
    );

    // The excepted prometheus tuple shows up on a node it was never seen on.
    let rules = Ruleset::load(&[rules_file()]).unwrap();
    let late = alert(
        &rules,
        "Contact K8S API Server From Container",
        START + 90_000,
        "worker-9",
        &[
            (
                "container.image.repository",
                "quay.io/prometheus/prometheus",
            ),
            ("container.image.tag", "v2.53.0"),
            ("proc.exepath", "/bin/prometheus"),
            ("k8s.ns.name", "monitoring"),
            ("fd.name", "10.42.9.4:51234->10.96.0.1:443"),
        ],
        None,
    );
    // And Tetragon saw the CI runner's bash in a namespace it was never excepted for: with the
    // exception loaded, Falco would not alert on it, so only the process events tell.
    let exec = json!({"process_exec": {"process": {
        "exec_id": "d29ya2VyLTc6OTAwMDo3NzAx", "pid": 7701, "uid": 0, "cwd": "/",
        "binary": "/bin/bash", "arguments": "-l", "flags": "execve clone",
        "start_time": "2026-11-26T12:00:00.000000000Z",
        "pod": {"namespace": "prod", "name": "runner-0", "container": {
            "id": "containerd://77aa", "name": "runner",
            "image": {"id": "ghcr.io/example/ci-runner@sha256:aa", "name": "ghcr.io/example/ci-runner:2024.11"}}}},
        "parent": {"exec_id": "d29ya2VyLTc6MTAwOjc3MDA=", "pid": 7700, "binary": "/usr/bin/containerd-shim-runc-v2"}},
        "node_name": "worker-7", "time": "2026-11-26T12:00:00.000000000Z"});
    let file = dir.path().join("late.jsonl");
    std::fs::write(&file, format!("{late}\n{exec}\n")).unwrap();
    assert!(
        ktrail(&data, &["ingest", file.to_str().unwrap()])
            .status
            .success()
    );
    // And one exception is past its expiry.
    let text = std::fs::read_to_string(&overrides).unwrap();
    let expires = falco::overrides::read_back(&text).unwrap()[1]
        .expires
        .clone();
    let expired = text.replacen(
        &format!("\"expires\":\"{expires}\""),
        "\"expires\":\"2026-01-01\"",
        1,
    );
    std::fs::write(&overrides, expired).unwrap();
    let o = ktrail(
        &data,
        &[
            "falco",
            "check-exceptions",
            "--rules",
            overrides.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("NEW node Contact K8S API Server From Container / ktrail_repository_exepath_sip_sport_1: worker-9 (1 alert(s)"), "{out}");
    assert!(
        out.contains("EXPIRED ") && out.contains("expired 2026-01-01"),
        "{out}"
    );
    let shell = out
        .lines()
        .find(|l| l.starts_with("NEW namespace Terminal shell in container / "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        shell.ends_with(
            ": prod (0 alert(s) the exception would hide, 1 process execution(s) it matches)"
        ),
        "{out}"
    );
}

#[test]
fn groups_digest_repeated_alerts_as_a_command_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let (data, alerts) = store_with_history(dir.path());
    let o = ktrail(&data, &["falco", "groups", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let groups: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let total: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(total as usize, alerts.len(), "every alert in one group");
    let api = &groups[0];
    assert_eq!(api["rule"], "Contact K8S API Server From Container");
    assert_eq!(api["count"], 216);
    assert_eq!(api["recurring"], true);
    assert!(
        api["sample"].as_str().unwrap().contains("->10.96.0.1:443"),
        "{api}"
    );

    let o = ktrail(
        &data,
        &["falco", "groups", "--rule", "Terminal shell in container"],
    );
    let text = stdout(&o);
    assert!(
        text.lines()
            .skip(1)
            .filter(|l| !l.trim_start().starts_with("sample:")
                && !l.trim_start().starts_with("varying:"))
            .all(|l| l.ends_with("Terminal shell in container") || l.ends_with("(not recurring)")),
        "{text}"
    );

    let rows = ktrail_sql_csv(
        &data,
        "SELECT rule, alerts, recurring FROM falco_alert_groups ORDER BY alerts DESC, rule LIMIT 1",
    );
    assert_eq!(
        rows,
        "rule,alerts,recurring\nContact K8S API Server From Container,216,true\n"
    );
}

fn ktrail_sql_csv(data: &Path, sql: &str) -> String {
    let o = ktrail(data, &["sql", "--format", "csv", sql]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}
