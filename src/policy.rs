//! `ktrail policy`: the Policy Advisor's commands over the `policy` crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use policy::report::{Report, generate, write_yaml, yaml_documents};
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
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Escalations from the OLD manifests to the NEW ones (new privileged containers, host
    /// namespaces, capabilities, host paths, root where it was non-root, ...): exit 3 on any.
    Diff {
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
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
pub enum DiffFormat {
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

pub fn run(action: PolicyAction) -> Result<ExitCode, CliError> {
    match action {
        PolicyAction::Generate {
            format,
            out,
            k8s_version,
            paths,
        } => generate_cmd(&paths, format, out.as_deref(), k8s_version),
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
    paths: &[PathBuf],
    format: GenerateFormat,
    out: Option<&Path>,
    version: Version,
) -> Result<ExitCode, CliError> {
    let loaded = load(paths)?;
    let errors = loaded.errors();
    let report = generate(loaded, version);
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
        (GenerateFormat::Yaml, None) => {
            let mut docs = Vec::new();
            for w in &report.workloads {
                docs.extend(w.policies());
            }
            for n in &report.namespaces {
                docs.push(
                    serde_json::to_value(policy::psa::namespace_object(n))
                        .map_err(|e| CliError::Other(e.to_string()))?,
                );
            }
            print!("{}", yaml_documents(&docs)?);
        }
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
    format: DiffFormat,
    version: Version,
) -> Result<ExitCode, CliError> {
    let old = generate(load(&[old.to_path_buf()])?, version);
    let new = generate(load(&[new.to_path_buf()])?, version);
    let escalations = policy::diff::diff(&old.workloads, &new.workloads);
    match format {
        DiffFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "escalations": escalations }))
                .map_err(|e| CliError::Other(e.to_string()))?
        ),
        DiffFormat::Text if escalations.is_empty() => println!("no escalations"),
        DiffFormat::Text => {
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
