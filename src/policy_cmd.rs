//! `ktrail policy`: the Policy Advisor's commands over the `policy` crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use policy::history::{self, Window};
use policy::report::{PspScope, Report, generate, write_yaml, yaml_documents};
use policy::{Loaded, Version};

use crate::error::CliError;
use crate::session::store_session;

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
                let (rt, _store, ctx) = store_session(data)?;
                let (recorded, damaged) = rt.block_on(history::load_from_store(&ctx))?;
                damaged.iter().for_each(|d| eprintln!("{d}"));
                loaded.extend(recorded);
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

fn validate_cmd(
    data: &PathBuf,
    policy: &str,
    namespace: Option<String>,
    workload: Option<String>,
    window: &Window,
    format: ReportFormat,
) -> Result<ExitCode, CliError> {
    let mut all = Vec::new();
    let (rt, _store, ctx) = store_session(data)?;
    for mut c in history::load_constraints(policy)? {
        if namespace.is_some() {
            c.namespace = namespace.clone();
        }
        if workload.is_some() {
            c.workload = workload.clone();
        }
        let verdicts = rt.block_on(history::judge(&ctx, &c, window))?;
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
