//! `ktrail policy`: the Policy Advisor's commands over the `policy` crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use policy::report::{PspScope, Report, generate, write_yaml, yaml_documents};
use policy::validate::{Break, Verdict};
use policy::{Loaded, Version};

use crate::CliError;

#[derive(Subcommand)]
pub enum PolicyAction {
    /// Least-privilege policies from workload manifests (YAML/JSON files or directories):
    /// Pod Security Standards verdicts, Pod Security Admission labels, a
    /// ValidatingAdmissionPolicy, a legacy PodSecurityPolicy and a hardening patch per
    /// workload. Bad documents are reported as FILE: document N (line L): reason; the rest
    /// goes on, and the exit code is 1.
    Generate {
        /// `yaml`: kubectl-ready files (to `-o DIR`, else all on stdout); `json`: the report.
        #[arg(long, value_enum, default_value_t = GenerateFormat::Yaml)]
        format: GenerateFormat,
        /// Directory for the YAML files (or `report.json`).
        #[arg(short = 'o', long = "output")]
        out: Option<PathBuf>,
        /// Pod Security Standards version to check against: `latest` or `v1.N`.
        #[arg(long, default_value = "latest", value_parser = parse_version)]
        k8s_version: Version,
        /// What one legacy PodSecurityPolicy covers: `workload`, or `service-account` (one per
        /// service account, admitting what all its workloads need; kube-psp-advisor's way).
        #[arg(long, value_enum, default_value_t = PspScopeArg::Workload)]
        psp_scope: PspScopeArg,
        /// Also the workloads recorded in the store: the `kubectl get -o json` inventory and
        /// the objects in audit `create`/`update` events (the newest version of each).
        #[arg(long)]
        from_store: bool,
        #[arg(required_unless_present = "from_store")]
        paths: Vec<PathBuf>,
    },
    /// Replays recorded history against a candidate policy: a Pod Security Standards level
    /// (`privileged`, `baseline`, `restricted`) or a file holding PodSecurityPolicies (any, or
    /// one `generate` wrote). Per workload `ok` or `would break`, with counts, first and last
    /// time, the evidence rows and the SQL that finds them; exit 3 when something would break.
    Validate {
        /// The candidate: a level name or a YAML/JSON file.
        #[arg(long)]
        policy: String,
        /// Only this namespace (default: the one the policy names, else all).
        #[arg(long)]
        namespace: Option<String>,
        /// Only this workload (default: the one the policy names, else all).
        #[arg(long)]
        workload: Option<String>,
        /// Start of the window (a timestamp SQL understands, e.g. 2026-11-25T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// End of the window.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Escalations from the OLD manifests to the NEW ones (new privileged containers, host
    /// namespaces, capabilities, host paths, root where it was non-root, ...): exit 3 on any.
    Diff {
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[arg(long, default_value = "latest", value_parser = parse_version)]
        k8s_version: Version,
        old: PathBuf,
        new: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GenerateFormat {
    Yaml,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PspScopeArg {
    Workload,
    ServiceAccount,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

fn parse_version(s: &str) -> Result<Version, String> {
    Version::parse(s).map_err(|e| e.to_string())
}

impl From<policy::PolicyError> for CliError {
    fn from(e: policy::PolicyError) -> Self {
        CliError::Other(e.to_string())
    }
}

pub fn run(data: &PathBuf, action: PolicyAction) -> Result<ExitCode, CliError> {
    match action {
        PolicyAction::Validate {
            policy,
            namespace,
            workload,
            from,
            to,
            format,
        } => {
            let window = Window { from, to };
            validate_cmd(data, &policy, namespace, workload, &window, format)
        }
        PolicyAction::Generate {
            format,
            out,
            k8s_version,
            psp_scope,
            from_store,
            paths,
        } => {
            let mut loaded = load(&paths)?;
            if from_store {
                loaded.extend(load_from_store(data)?);
                loaded.keep_latest();
                loaded.drop_owned();
            }
            let scope = match psp_scope {
                PspScopeArg::Workload => PspScope::Workload,
                PspScopeArg::ServiceAccount => PspScope::ServiceAccount,
            };
            generate_cmd(loaded, format, out.as_deref(), k8s_version, scope)
        }
        PolicyAction::Diff {
            format,
            k8s_version,
            old,
            new,
        } => diff_cmd(&old, &new, format, k8s_version),
    }
}

/// Loads manifests and reports every bad or skipped document on stderr.
fn load(paths: &[PathBuf]) -> Result<Loaded, CliError> {
    let loaded = policy::load_paths(paths)?;
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    Ok(loaded)
}

/// The workload objects the store recorded: inventory rows (`raw` is the object) and audit
/// events (`responseObject`, the object as stored, else `requestObject`), oldest first.
fn load_from_store(data: &PathBuf) -> Result<Loaded, CliError> {
    let kinds = "('pods', 'deployments', 'daemonsets', 'statefulsets', 'replicasets', \
                 'replicationcontrollers', 'jobs', 'cronjobs')";
    let sql = format!(
        "SELECT DISTINCT ts, source, audit_id, raw FROM events WHERE resource IN {kinds} AND \
         ((source = 'k8s_objects') OR (source = 'k8s_audit' AND verb IN ('create', 'update') \
         AND (subresource IS NULL OR subresource = ''))) ORDER BY ts"
    );
    let (rt, _store, ctx) = crate::store_session(data)?;
    let mut loaded = Loaded::default();
    for r in rt.block_on(crate::rows(&ctx, &sql))? {
        let raw = match r["raw"]
            .as_str()
            .map(serde_json::from_str::<serde_json::Value>)
        {
            Some(Ok(raw)) => raw,
            // The store keeps every record's raw JSON; anything else is damage to report.
            other => {
                let reason = other.map_or("no raw record".to_string(), |e| {
                    e.err()
                        .map_or(String::new(), |e| format!("raw is not JSON: {e}"))
                });
                eprintln!("store: {} event at {}: {reason}", r["source"], r["ts"]);
                continue;
            }
        };
        let (label, object) = if r["source"] == "k8s_audit" {
            let object = raw
                .get("responseObject")
                .filter(|o| o.get("spec").is_some())
                .or_else(|| raw.get("requestObject"))
                .cloned();
            (
                format!("store:audit/{}", r["audit_id"].as_str().unwrap_or("")),
                object,
            )
        } else {
            ("store:k8s_objects".to_string(), Some(raw))
        };
        if let Some(object) = object.filter(|o| o.is_object()) {
            loaded.extend(policy::load_str(Path::new(&label), &object.to_string()));
        }
    }
    Ok(loaded)
}

fn generate_cmd(
    loaded: Loaded,
    format: GenerateFormat,
    out: Option<&Path>,
    version: Version,
    psp_scope: PspScope,
) -> Result<ExitCode, CliError> {
    let errors = loaded.errors();
    let mut report = generate(loaded, version);
    report.psp_scope = psp_scope;
    match (format, out) {
        (GenerateFormat::Json, None) => println!("{}", json(&report)?),
        (GenerateFormat::Json, Some(dir)) => {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            let path = dir.join("report.json");
            std::fs::write(&path, json(&report)? + "\n").map_err(|e| io(&path, e))?;
            println!("wrote {}", path.display());
        }
        (GenerateFormat::Yaml, Some(dir)) => {
            let written = write_yaml(&report, dir)?;
            print_summary(&report);
            println!("wrote {} files to {}", written.len(), dir.display());
        }
        (GenerateFormat::Yaml, None) => print!("{}", yaml_documents(&report.objects())?),
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(report: &Report) {
    println!(
        "{:<12} {:<24} {:<40} {:<10} VIOLATIONS",
        "KIND", "NAMESPACE", "NAME", "LEVEL"
    );
    for w in &report.workloads {
        println!(
            "{:<12} {:<24} {:<40} {:<10} {}",
            w.kind,
            w.namespace,
            w.name,
            w.pss_level,
            w.violations.len()
        );
    }
    for n in &report.namespaces {
        println!("namespace {}: enforce {}", n.name, n.pss_level);
    }
}

fn diff_cmd(
    old: &Path,
    new: &Path,
    format: ReportFormat,
    version: Version,
) -> Result<ExitCode, CliError> {
    let old = generate(load(&[old.to_path_buf()])?, version);
    let new = generate(load(&[new.to_path_buf()])?, version);
    let escalations = policy::diff::diff(&old.workloads, &new.workloads);
    match format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "escalations": escalations }))
                .map_err(|e| CliError::Other(e.to_string()))?
        ),
        ReportFormat::Text if escalations.is_empty() => println!("no escalations"),
        ReportFormat::Text => {
            for e in &escalations {
                println!("ESCALATION {e}");
            }
            println!("{} escalation(s)", escalations.len());
        }
    }
    Ok(if escalations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn json(report: &Report) -> Result<String, CliError> {
    serde_json::to_string_pretty(report).map_err(|e| CliError::Other(e.to_string()))
}

fn io(path: &Path, e: std::io::Error) -> CliError {
    CliError::Other(format!("{}: {e}", path.display()))
}

struct Window {
    from: Option<String>,
    to: Option<String>,
}

impl Window {
    fn sql(&self) -> String {
        let mut out = String::new();
        if let Some(f) = &self.from {
            out.push_str(&format!(" AND ts >= CAST({} AS TIMESTAMP)", quote(f)));
        }
        if let Some(t) = &self.to {
            out.push_str(&format!(" AND ts < CAST({} AS TIMESTAMP)", quote(t)));
        }
        out
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn load_constraints(policy: &str) -> Result<Vec<policy::validate::Constraints>, CliError> {
    use policy::validate::Constraints;
    if let Some(level) = policy::Level::parse(policy) {
        return Ok(vec![Constraints::level(level)]);
    }
    let loaded_text = std::fs::read_to_string(policy).map_err(|e| io(Path::new(policy), e))?;
    let mut docs = Vec::new();
    for (_, parsed) in policy::manifest::documents(&loaded_text) {
        match parsed {
            Ok(Some(v)) => docs.push(v),
            Ok(None) => {}
            Err((line, e)) => return Err(CliError::Other(format!("{policy}:{line}: {e}"))),
        }
    }
    let mut found = Constraints::from_documents(policy, &docs);
    if found.is_empty()
        && let [patch] = docs.as_slice()
    {
        found.extend(Constraints::from_patch(policy, &loaded_text, patch));
    }
    if found.is_empty() {
        return Err(CliError::Other(format!(
            "{policy}: no PodSecurityPolicy or hardening patch in it, and not a level \
             (privileged, baseline, restricted)"
        )));
    }
    Ok(found)
}

fn validate_cmd(
    data: &PathBuf,
    policy: &str,
    namespace: Option<String>,
    workload: Option<String>,
    window: &Window,
    format: ReportFormat,
) -> Result<ExitCode, CliError> {
    let mut all = Vec::new();
    let (rt, _store, ctx) = crate::store_session(data)?;
    for mut c in load_constraints(policy)? {
        if namespace.is_some() {
            c.namespace = namespace.clone();
        }
        if workload.is_some() {
            c.workload = workload.clone();
        }
        let verdicts = rt.block_on(judge(&ctx, &c, window))?;
        all.push((c, verdicts));
    }
    let broken = all.iter().any(|(_, v)| v.iter().any(|v| v.verdict != "ok"));
    match format {
        ReportFormat::Json => {
            let out: Vec<serde_json::Value> = all
                .iter()
                .map(|(c, v)| serde_json::json!({"policy": c.policy, "results": v}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "policies": out }))
                    .map_err(|e| CliError::Other(e.to_string()))?
            );
        }
        ReportFormat::Text => {
            for (c, verdicts) in &all {
                println!("policy: {}", c.policy);
                if verdicts.is_empty() {
                    println!("  no recorded workload in scope");
                }
                for v in verdicts {
                    println!("  {}: {}", v.workload, v.verdict);
                    for b in &v.breaks {
                        println!(
                            "    {}: {} ({} times, {} .. {})",
                            b.check, b.detail, b.count, b.first, b.last
                        );
                        for e in b.evidence.iter().take(3) {
                            println!("      {e}");
                        }
                        println!("      sql: {}", b.sql);
                    }
                }
            }
        }
    }
    Ok(if broken {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every workload in scope, judged: processes and pod specs recorded in the window.
async fn judge(
    ctx: &datafusion::prelude::SessionContext,
    c: &policy::validate::Constraints,
    window: &Window,
) -> Result<Vec<Verdict>, CliError> {
    use std::collections::BTreeMap;
    let mut scope = String::new();
    if let Some(ns) = &c.namespace {
        scope.push_str(&format!(" AND namespace = {}", quote(ns)));
    }
    if let Some(w) = &c.workload {
        scope.push_str(&format!(
            " AND (workload_name = {q} OR pod = {q})",
            q = quote(w)
        ));
    }
    if let Some(names) = &c.containers {
        let names: Vec<String> = names.iter().map(|n| quote(n)).collect();
        scope.push_str(&format!(" AND container_name IN ({})", names.join(", ")));
    }
    let mut verdicts: BTreeMap<String, Vec<Break>> = BTreeMap::new();

    // Processes: binaries that need a capability the candidate drops; root where it forbids.
    let binaries: Vec<(&str, &str)> = policy::validate::CAPABILITY_BINARIES
        .iter()
        .copied()
        .filter(|(_, cap)| c.drops(cap))
        .collect();
    let mut wanted = Vec::new();
    if !binaries.is_empty() {
        let names: Vec<String> = binaries.iter().map(|(b, _)| quote(b)).collect();
        wanted.push(format!(
            "regexp_replace(exe, '^.*/', '') IN ({})",
            names.join(", ")
        ));
    }
    if c.non_root {
        wanted.push("uid = 0".into());
    }
    let workload_of = |r: &serde_json::Value| {
        let ns = r["namespace"].as_str().unwrap_or("");
        let w = r["workload_name"]
            .as_str()
            .or(r["pod"].as_str())
            .unwrap_or("");
        format!("{ns}/{w}")
    };
    if !wanted.is_empty() {
        let sql = format!(
            "SELECT ts, namespace, pod, workload_kind, workload_name, container_name, exe, args, uid \
             FROM process_events WHERE kind = 'process_exec' AND namespace IS NOT NULL{scope}{window} \
             AND ({wanted}) ORDER BY ts",
            window = window.sql(),
            wanted = wanted.join(" OR ")
        );
        let mut groups: BTreeMap<(String, &'static str, String), Vec<serde_json::Value>> =
            BTreeMap::new();
        for r in crate::rows(ctx, &sql).await? {
            let exe = r["exe"].as_str().unwrap_or("");
            let base = exe.rsplit('/').next().unwrap_or(exe);
            if let Some((_, cap)) = binaries.iter().find(|(b, _)| *b == base) {
                let detail = format!("{base} needs {cap}, which the policy drops");
                groups
                    .entry((workload_of(&r), "capability", detail))
                    .or_default()
                    .push(r.clone());
            }
            if c.non_root && r["uid"].as_i64() == Some(0) {
                let detail =
                    "processes run as root (uid 0); the policy requires non-root".to_string();
                groups
                    .entry((workload_of(&r), "run_as_root", detail))
                    .or_default()
                    .push(r);
            }
        }
        for ((w, check, detail), evidence) in groups {
            verdicts
                .entry(w)
                .or_default()
                .push(Break::new(check, detail, evidence, &sql));
        }
    }

    // Writes below a read-only root filesystem: Tetragon's security_file_permission with
    // MAY_WRITE, and Falco's `Write below ...` rules. Writes under the workload's recorded
    // volume mounts and to /proc, /sys, /dev are not the root filesystem's.
    if c.read_only_root {
        let mounts = volume_mounts(ctx, c).await?;
        let tetragon = format!(
            "SELECT ts, namespace, pod, workload_name, container_name, exe, \
             json_get_str(raw, 'process_kprobe', 'args', 0, 'file_arg', 'path') AS path \
             FROM events WHERE kind = 'file_access' AND source = 'tetragon'{scope}{window} \
             AND json_get_str(raw, 'process_kprobe', 'function_name') = 'security_file_permission' \
             AND (json_get_int(raw, 'process_kprobe', 'args', 1, 'int_arg') & 2) = 2 ORDER BY ts",
            window = window.sql()
        );
        let falco = format!(
            "SELECT ts, namespace, pod, workload_name, container_name, exe, \
             json_get_str(raw, 'output_fields', 'fd.name') AS path, rule \
             FROM falco_alerts WHERE rule LIKE 'Write below%'{scope}{window} ORDER BY ts",
            window = window.sql()
        );
        for sql in [tetragon, falco] {
            let mut groups: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
            for r in crate::rows(ctx, &sql).await? {
                let path = r["path"].as_str().unwrap_or("");
                let special = ["/proc/", "/sys/", "/dev/"]
                    .iter()
                    .any(|p| path.starts_with(p));
                let mounted = mounts.iter().any(|m| {
                    path == m || path.starts_with(&format!("{}/", m.trim_end_matches('/')))
                });
                if !special && !mounted {
                    groups.entry(workload_of(&r)).or_default().push(r);
                }
            }
            for (w, evidence) in groups {
                let mut paths: Vec<&str> =
                    evidence.iter().filter_map(|r| r["path"].as_str()).collect();
                paths.sort_unstable();
                paths.dedup();
                let detail = format!(
                    "writes below the root filesystem, which the policy makes read-only: {}",
                    paths.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                );
                verdicts.entry(w).or_default().push(Break::new(
                    "read_only_root",
                    detail,
                    evidence,
                    &sql,
                ));
            }
        }
    }

    // The host network: connections from a node's own address (the inventory's node
    // addresses) made by a pod's process.
    if !c.host_network {
        let sql = format!(
            "SELECT ts, namespace, pod, workload_name, container_name, exe, src_ip, dst_ip, dst_port \
             FROM network_events WHERE namespace IS NOT NULL{scope}{window} AND src_ip IN \
             (SELECT DISTINCT src_ip FROM events WHERE source = 'k8s_objects' AND resource = 'nodes' \
             AND src_ip IS NOT NULL) ORDER BY ts",
            window = window.sql()
        );
        let mut groups: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for r in crate::rows(ctx, &sql).await? {
            groups.entry(workload_of(&r)).or_default().push(r);
        }
        for (w, evidence) in groups {
            let mut addrs: Vec<&str> = evidence
                .iter()
                .filter_map(|r| r["src_ip"].as_str())
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            let detail = format!(
                "connects from the node's address (hostNetwork), which the policy forbids: {}",
                addrs.join(", ")
            );
            verdicts
                .entry(w)
                .or_default()
                .push(Break::new("host_network", detail, evidence, &sql));
        }
    }

    // Pod specs the apiserver admitted (audit requestObjects).
    let mut audit_scope = String::new();
    if let Some(ns) = &c.namespace {
        audit_scope.push_str(&format!(" AND object_namespace = {}", quote(ns)));
    }
    let sql = format!(
        "SELECT ts, audit_id, object_namespace, object_name, verb, k8s_user, raw FROM k8s_audit \
         WHERE resource = 'pods' AND (subresource IS NULL OR subresource = '') \
         AND verb IN ('create', 'update'){audit_scope}{window} ORDER BY ts",
        window = window.sql()
    );
    let mut seen = std::collections::HashSet::new();
    let mut groups: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    for r in crate::rows(ctx, &sql).await? {
        let id = r["audit_id"].as_str().unwrap_or("").to_string();
        let raw: serde_json::Value = r["raw"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let Some(object) = raw.get("requestObject").filter(|o| o.is_object()) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let loaded = policy::load_str(Path::new("audit"), &object.to_string());
        for w in loaded.workloads {
            let name = workload_name(&w);
            if c.workload.as_ref().is_some_and(|want| *want != name) {
                continue;
            }
            let needs = policy::needs::needs(&w, Version::Latest);
            let key = format!(
                "{}/{name}",
                r["object_namespace"].as_str().unwrap_or(&w.namespace)
            );
            let mut evidence = r.clone();
            evidence.as_object_mut().map(|o| o.remove("raw"));
            for detail in policy::validate::pod_breaks(c, &w, &needs) {
                groups
                    .entry((key.clone(), detail))
                    .or_default()
                    .push(evidence.clone());
            }
            verdicts.entry(key).or_default();
        }
    }
    for ((w, detail), evidence) in groups {
        verdicts
            .entry(w)
            .or_default()
            .push(Break::new("pod_spec", detail, evidence, &sql));
    }
    // Workloads seen running in scope, even with nothing against them.
    let sql = format!(
        "SELECT DISTINCT namespace, pod, workload_name FROM process_events \
         WHERE namespace IS NOT NULL{scope}{window}",
        window = window.sql()
    );
    for r in crate::rows(ctx, &sql).await? {
        verdicts.entry(workload_of(&r)).or_default();
    }
    Ok(verdicts
        .into_iter()
        .map(|(workload, breaks)| Verdict::new(workload, breaks))
        .collect())
}

/// The volume mount paths recorded (inventory and audit pod specs) for the pods in scope.
async fn volume_mounts(
    ctx: &datafusion::prelude::SessionContext,
    c: &policy::validate::Constraints,
) -> Result<Vec<String>, CliError> {
    let mut scope = String::new();
    if let Some(ns) = &c.namespace {
        scope.push_str(&format!(" AND namespace = {}", quote(ns)));
    }
    let sql = format!(
        "SELECT DISTINCT raw FROM events WHERE resource = 'pods' AND \
         source IN ('k8s_objects', 'k8s_audit'){scope}"
    );
    let mut out = std::collections::BTreeSet::new();
    for r in crate::rows(ctx, &sql).await? {
        let Some(raw) = r["raw"]
            .as_str()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            continue;
        };
        let object = raw.get("requestObject").cloned().unwrap_or(raw);
        let loaded = policy::load_str(Path::new("store"), &object.to_string());
        for w in loaded.workloads {
            if c.workload
                .as_ref()
                .is_some_and(|want| *want != workload_name(&w))
            {
                continue;
            }
            for cn in w
                .spec
                .containers
                .iter()
                .chain(w.spec.init_containers.iter().flatten())
            {
                for m in cn.volume_mounts.iter().flatten() {
                    out.insert(m.mount_path.clone());
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The workload a recorded pod belongs to: its controller's name (a ReplicaSet's minus the
/// pod-template hash), else its own.
fn workload_name(w: &policy::Workload) -> String {
    match &w.owner {
        Some(o) if o.kind == "ReplicaSet" => o
            .name
            .rsplit_once('-')
            .map_or(o.name.clone(), |(d, _)| d.to_string()),
        Some(o) => o.name.clone(),
        None => w.name.clone(),
    }
}
