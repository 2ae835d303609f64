//! `ktrail falco`: Falco Tuning over the stored alerts (the `falco` crate does the work).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use falco::overrides::Finding;
use falco::recorded;
use falco::rules::Ruleset;
use falco::tune::{Alert, Options, Tuning, tune};
use query::settings::falco_labels::{self, FalcoLabel};

use crate::error::CliError;
use crate::session::store_session;

#[derive(Subcommand)]
pub enum FalcoAction {
    /// Finds recurring noise in the stored alerts, proposes the narrowest Falco exceptions,
    /// and proves each by replaying the alerts; labelled true positives are never
    /// suppressed. A ranked report on stdout; the overrides rules file to `-o FILE`.
    Tune {
        /// The rules files the alerts came from, in Falco's load order.
        #[arg(long, required = true, num_args = 1..)]
        rules: Vec<PathBuf>,
        /// Start of the window (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// End of the window (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = TuneFormat::Text)]
        format: TuneFormat,
        /// Where to write the overrides rules file.
        #[arg(short = 'o', long = "output")]
        out: Option<PathBuf>,
        /// A group needs this many alerts to count as noise.
        #[arg(long, default_value_t = 10)]
        min_count: usize,
        /// ... and to recur in this many distinct hours (or on two hosts).
        #[arg(long, default_value_t = 3)]
        min_hours: usize,
        /// Days until each suggestion expires.
        #[arg(long, default_value_t = 90)]
        expires_in_days: i64,
    },
    /// Labels stored alerts: every alert the selector matches (by falcosidekick `--uuid`, or
    /// `--rule`, `--field NAME=VALUE`..., `--from`/`--to`). Kept in the `falco_labels` table.
    Label {
        /// The alerts are true positives: tuning never suppresses them.
        #[arg(long, required = true)]
        true_positive: bool,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// An output field the alert carries with exactly this value (repeatable).
        #[arg(long = "field", value_parser = parse_field)]
        fields: Vec<(String, String)>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The repeated-alert digest: per group of a rule's alerts that differ only in what
    /// varies, its count, first and last time, hosts and a sample (the `falco_alert_groups`
    /// table); the alerts themselves stay in `falco_alerts`.
    Groups {
        /// Only this rule's groups.
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, value_enum, default_value_t = TuneFormat::Text)]
        format: TuneFormat,
    },
    /// Checks an overrides file `tune` wrote: exceptions past their expiry, and excepted
    /// tuples now seen (in alerts or process events) with an image, namespace or node they
    /// were not seen with when proposed. Exit 3 when anything is reported.
    CheckExceptions {
        #[arg(long)]
        rules: PathBuf,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TuneFormat {
    Text,
    Json,
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

pub fn run(data: &PathBuf, action: FalcoAction) -> Result<ExitCode, CliError> {
    match action {
        FalcoAction::Groups { rule, format } => {
            let alerts = stored_alerts(data, None, None)?;
            let groups: Vec<_> = falco::digest::digest(&alerts, &Options::default())
                .into_iter()
                .filter(|g| rule.as_ref().is_none_or(|r| *r == g.rule))
                .collect();
            match format {
                TuneFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&groups).expect("the digest serialises")
                ),
                TuneFormat::Text => print_groups(&groups),
            }
            Ok(ExitCode::SUCCESS)
        }
        FalcoAction::Tune {
            rules,
            from,
            to,
            format,
            out,
            min_count,
            min_hours,
            expires_in_days,
        } => {
            let ruleset = Ruleset::load(&rules)?;
            let alerts = stored_alerts(data, from.as_deref(), to.as_deref())?;
            let today = chrono::Utc::now().date_naive();
            let opts = Options {
                min_count,
                min_hours,
                expires: (today + chrono::Days::new(expires_in_days.max(0) as u64)).to_string(),
            };
            let tuning = tune(&ruleset, &alerts, &opts);
            if let Some(path) = &out {
                let text = falco::overrides::render(&tuning, &today.to_string());
                std::fs::write(path, text)
                    .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
            }
            match format {
                TuneFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&tuning)
                        .map_err(|e| CliError::Other(e.to_string()))?
                ),
                TuneFormat::Text => print_tuning(&tuning),
            }
            Ok(ExitCode::SUCCESS)
        }
        FalcoAction::Label {
            true_positive,
            uuid,
            rule,
            fields,
            from,
            to,
            note,
        } => {
            if !true_positive {
                return Err(CliError::Other("only --true-positive labels exist".into()));
            }
            if uuid.is_none() && rule.is_none() && fields.is_empty() {
                return Err(CliError::Other(
                    "a label needs a selector: --uuid, --rule or --field".into(),
                ));
            }
            for t in [&from, &to].into_iter().flatten() {
                recorded::nanos(t)?;
            }
            let label = FalcoLabel {
                label: "true_positive".into(),
                uuid,
                rule,
                fields: fields.into_iter().collect(),
                from,
                to,
                note,
                labelled_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            };
            let labels = vec![label.clone()];
            let (rt, _store, ctx) = store_session(data)?;
            let matched = rt
                .block_on(recorded::stored(&ctx, None, None))?
                .iter()
                .filter(|a| recorded::labelled(a, &labels))
                .count();
            let mut all = falco_labels::load(data)?;
            all.push(label);
            falco_labels::save(data, &all)?;
            println!("labelled: matches {matched} stored alert(s)");
            Ok(ExitCode::SUCCESS)
        }
        FalcoAction::CheckExceptions { rules, from, to } => {
            check_exceptions(data, &rules, from.as_deref(), to.as_deref())
        }
    }
}

fn print_tuning(t: &Tuning) {
    println!(
        "{:>7} {:>6} {:>5} {:>4} {:>5} {:>6}  RULE / GROUP",
        "ALERTS", "SHARE", "HOSTS", "DAYS", "HOURS", "STEADY"
    );
    for g in t.groups.iter().take(40) {
        println!(
            "{:>7} {:>5.1}% {:>5} {:>4} {:>5} {:>6.2}  {}{}",
            g.count,
            g.share * 100.0,
            g.hosts,
            g.days,
            g.hours,
            g.steadiness,
            g.rule,
            if g.recurring { "" } else { " (not recurring)" }
        );
        let key: Vec<String> = g
            .key
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "container.image.repository"
                        | "proc.exepath"
                        | "fd.name"
                        | "fd.sip"
                        | "fd.sport"
                        | "k8s.ns.name"
                        | "proc.cmdline"
                )
            })
            .map(|(k, v)| format!("{k}={v}"))
            .chain((!g.varying.is_empty()).then(|| format!("varying: {}", g.varying.join(","))))
            .collect();
        println!("{:>40}  {}", "", key.join(" "));
    }
    println!();
    println!("SUGGESTIONS");
    for s in &t.suggestions {
        // One tuple per pattern the exception covers.
        let values: Vec<Vec<String>> = s
            .exception
            .values
            .iter()
            .map(|tuple| tuple.iter().map(|v| v.join(",")).collect())
            .collect();
        let comps: Vec<&str> = s.exception.comps.iter().map(|c| c.as_str()).collect();
        println!(
            "  {} [{}]: {} {:?} {:?} {:?} suppresses {}{}",
            s.rule,
            s.via,
            s.exception.name,
            s.exception.fields,
            comps,
            values,
            s.suppressed,
            s.narrowed
                .as_ref()
                .map_or(String::new(), |n| format!(" ({n})"))
        );
    }
    for d in &t.dropped {
        println!("  dropped: {} ({} alerts): {}", d.rule, d.count, d.reason);
    }
    println!();
    println!("COVERAGE");
    for c in &t.coverage {
        println!(
            "  {:>5.1}% of {} alert(s): {}",
            c.share * 100.0,
            c.alerts,
            c.rule
        );
        for u in &c.uncovered {
            let key: Vec<String> = u.key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "         {} uncovered: {} [{}]",
                u.alerts,
                u.reason,
                crate::commands::one_line(&key.join(" "))
            );
        }
    }
    println!();
    println!(
        "replay: {} of {} alerts suppressed ({:.1}%); true positives: {}, suppressed: {}",
        t.suppressed_total,
        t.total_alerts,
        t.reduction * 100.0,
        t.true_positives,
        t.true_positives_suppressed
    );
}

fn print_groups(groups: &[falco::digest::AlertGroup]) {
    let time = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    println!(
        "{:>7} {:>6}  {:<16}  {:<16}  {:>5}  rule",
        "alerts", "share", "first", "last", "hosts"
    );
    for g in groups {
        println!(
            "{:>7} {:>5.1}%  {:<16}  {:<16}  {:>5}  {}{}",
            g.count,
            g.share_of_rule * 100.0,
            time(g.first_ns),
            time(g.last_ns),
            g.hosts.len(),
            g.rule,
            if g.recurring { "" } else { " (not recurring)" }
        );
        let sample: String = g.sample.chars().take(160).collect();
        println!("{:>7}  sample: {}", "", crate::commands::one_line(&sample));
        if !g.varying.is_empty() {
            println!("{:>7}  varying: {}", "", g.varying.join(", "));
        }
    }
}

fn check_exceptions(
    data: &PathBuf,
    rules: &Path,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<ExitCode, CliError> {
    let text = std::fs::read_to_string(rules)
        .map_err(|e| CliError::Other(format!("{}: {e}", rules.display())))?;
    let exceptions = falco::overrides::read_back(&text)
        .map_err(|e| CliError::Other(format!("{}: {e}", rules.display())))?;
    let today = chrono::Utc::now().date_naive().to_string();
    let labels = falco_labels::load(data)?;
    let (rt, _store, ctx) = store_session(data)?;
    let (alerts, processes) = rt.block_on(async {
        let alerts = recorded::stored_alerts(&ctx, from, to, &labels).await?;
        let processes = recorded::stored_processes(&ctx, from, to).await?;
        Ok::<_, falco::FalcoError>((alerts, processes))
    })?;
    let findings = falco::overrides::check(&exceptions, &alerts, &processes, &today);
    for f in &findings {
        match f {
            Finding::Expired {
                rule,
                exception,
                expires,
            } => {
                println!("EXPIRED {rule} / {exception}: expired {expires}")
            }
            Finding::New {
                what,
                rule,
                exception,
                value,
                alerts,
                processes,
            } => println!(
                "NEW {what} {rule} / {exception}: {value} ({alerts} alert(s) the exception would hide{})",
                if *processes > 0 {
                    format!(", {processes} process execution(s) it matches")
                } else {
                    String::new()
                }
            ),
        }
    }
    println!(
        "{} exception(s) checked, {} finding(s)",
        exceptions.len(),
        findings.len()
    );
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The stored alerts in the window, each marked when a true-positive label matches it.
fn stored_alerts(
    data: &PathBuf,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<Alert>, CliError> {
    let labels = falco_labels::load(data)?;
    let (rt, _store, ctx) = store_session(data)?;
    Ok(rt.block_on(recorded::stored_alerts(&ctx, from, to, &labels))?)
}
