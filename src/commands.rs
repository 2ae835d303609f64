//! The commands on the store: ingest, SQL, the shell, serve, settings, verify, repair and
//! compact. Each opens what it needs, calls the library and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use datafusion::sql::parser::DFParser;
use ingest::Format;

use crate::cli::{NetworksAction, ServeArgs};
use crate::error::CliError;
use crate::session::{local_session, open_store, open_store_with, record_damage, runtime};
use crate::{output, pg, serve, shell};

pub fn gen_cmd(
    seed: u64,
    events: u64,
    out: &std::path::Path,
    incident_file: Option<&std::path::Path>,
) -> Result<ExitCode, CliError> {
    let cfg = generator::Config::new(seed, events);
    let summary = generator::generate(out, &cfg)
        .map_err(|e| CliError::Other(format!("{}: {e}", out.display())))?;
    for f in &summary.files {
        println!("{}", f.display());
    }
    let i = &summary.incident;
    if let Some(path) = incident_file {
        let answers = serde_json::json!({
            "seed": seed,
            "records": summary.records,
            "user": i.user,
            "namespace": i.namespace,
            "pod": i.pod,
            "session_id": i.session_id,
            "unknown_ip": i.unknown_ip,
            "deleted_pod": i.deleted_pod,
            "exfil_ip": i.exfil_ip,
            "privileged_pod": i.privileged_pod,
            "privileged_namespace": i.privileged_namespace,
        });
        std::fs::write(path, format!("{answers:#}\n"))
            .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    }
    eprintln!(
        "{} records; incident session {}",
        summary.records, i.session_id
    );
    Ok(ExitCode::SUCCESS)
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn ingest_cmd(
    data: &PathBuf,
    format: Format,
    batch_rows: usize,
    dead_letter: &std::path::Path,
    paths: &[PathBuf],
) -> Result<ExitCode, CliError> {
    let inputs = ingest::expand_inputs(paths)?;
    let store = open_store(data, true)?;
    let mut dead = load::DeadLetter::new(dead_letter);
    let loaded = load::load_inputs(
        &store,
        &inputs,
        format,
        batch_rows,
        &mut dead,
        &mut PrintRejections,
    )?;
    store.close()?;
    let mut counts = loaded.counts;
    if counts.is_empty() {
        counts.insert(format.name(), load::Counts::default());
    }
    for (name, c) in &counts {
        eprintln!(
            "{name}: accepted {}, rejected {}, duplicates {}",
            c.accepted, c.rejected, c.duplicates
        );
    }
    if loaded.skipped_inputs > 0 {
        eprintln!(
            "{} input(s) already ingested, skipped",
            loaded.skipped_inputs
        );
    }
    for e in &loaded.failed_inputs {
        eprintln!("error: {}", one_line(&e.to_string()));
    }
    if dead.kept > 0 {
        eprintln!(
            "{} rejected record(s) kept in {}",
            dead.kept,
            dead_letter.display()
        );
    }
    Ok(if loaded.failed_inputs.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Each rejection on stderr as `PATH:LINE: reason`, as it happens.
pub struct PrintRejections;

impl load::Progress for PrintRejections {
    fn rejected(&mut self, r: &ingest::Rejection) {
        eprintln!("{r}");
    }
}

pub async fn sql_cmd(
    data: &PathBuf,
    format: output::OutputFormat,
    no_index: bool,
    allow_damaged: bool,
    limits: query::limits::QueryLimits,
    sql: &str,
) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    let answered = run_statements(&store, format, no_index, allow_damaged, limits, sql).await;
    record_damage(&store)?;
    answered
}

async fn run_statements(
    store: &storage::Store,
    format: output::OutputFormat,
    no_index: bool,
    allow_damaged: bool,
    limits: query::limits::QueryLimits,
    sql: &str,
) -> Result<ExitCode, CliError> {
    let ctx = local_session(store, no_index, allow_damaged, &limits).await?;
    let statements = DFParser::parse_sql(sql)?;
    if statements.is_empty() {
        return Err(CliError::Other("no SQL statement given".into()));
    }
    let mut out = std::io::stdout().lock();
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await?;
        let stream = ctx
            .execute_logical_plan(plan)
            .await?
            .execute_stream()
            .await?;
        output::write(&mut out, format, stream).await?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn shell_cmd(
    data: &PathBuf,
    no_index: bool,
    allow_damaged: bool,
    limits: query::limits::QueryLimits,
) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    let rt = runtime();
    let ctx = rt.block_on(local_session(&store, no_index, allow_damaged, &limits))?;
    let failures = shell::run(ctx, rt);
    record_damage(&store)?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The trimmed content of a secret file (token, password); empty is an error.
pub fn read_secret(path: &std::path::Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(CliError::Other(format!("{}: empty", path.display())));
    }
    Ok(text)
}

pub fn pg_options(
    addr: Option<std::net::SocketAddr>,
    password_file: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<Option<pg::PgOptions>, CliError> {
    let Some(addr) = addr else {
        if password_file.is_some() || tls.is_some() {
            return Err(CliError::Other(
                "--pg-password-file and --pg-tls-* need --pg ADDR".into(),
            ));
        }
        return Ok(None);
    };
    let Some(password_file) = password_file else {
        return Err(CliError::Other(format!(
            "--pg needs --pg-password-file (the password of user {})",
            pg::USER
        )));
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(CliError::Other(format!(
            "refusing Postgres on {addr} without TLS (--pg-tls-cert/--pg-tls-key): only loopback may go without"
        )));
    }
    Ok(Some(pg::PgOptions {
        max_connections: 64,
        addr,
        password: read_secret(&password_file)?,
        tls,
    }))
}

pub fn serve_cmd(data: &PathBuf, args: ServeArgs) -> Result<ExitCode, CliError> {
    let ServeArgs {
        http,
        grpc,
        pg,
        config,
        token_file,
        pg_password_file,
        pg_tls_cert,
        pg_tls_key,
        grpc_tls_cert,
        grpc_tls_key,
        limits,
        server_memory,
        max_connections,
        max_body_bytes,
        max_inflight,
        scrub_hours,
        retain_local,
        retain_archive,
        archive_to,
        digest_interval,
    } = args;
    if let Some(c) = config {
        Err(CliError::Other(format!(
            "--config {}: configuration files are not supported yet; use the flags",
            c.display()
        )))
    } else {
        // With no listener named, the HTTP webhooks on loopback.
        let http = match (http, grpc, pg) {
            (None, None, None) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8480))),
            (h, _, _) => h,
        };
        let limits = query::limits::QueryLimits {
            shared: Some(query::limits::server_pool(server_memory)),
            ..limits.limits()
        };
        pg_options(pg, pg_password_file, pg_tls_cert.zip(pg_tls_key)).and_then(|mut pg| {
            if let Some(pg) = &mut pg {
                pg.max_connections = max_connections.max(1);
            }
            let archive = (retain_local.is_some() || retain_archive.is_some())
                .then(|| -> Result<_, CliError> {
                    Ok(storage::Archive::open(&archive_url(
                        data,
                        archive_to.as_deref(),
                    )?)?)
                })
                .transpose()?;
            // Digests on the schedule asked for, copied to the archive too.
            let digests = crate::session::signing().map(|mut d| {
                d.interval = digest_interval.max(std::time::Duration::from_secs(1));
                d.copies.extend(archive.clone());
                d
            });
            let store = open_store_with(
                data,
                storage::StoreOptions {
                    scrub_interval: (scrub_hours > 0)
                        .then(|| std::time::Duration::from_secs(scrub_hours * 3600)),
                    digests,
                    ..Default::default()
                },
            )?;
            if let Some(archive) = archive {
                spawn_retention(store.clone(), archive, retain_local, retain_archive);
            }
            serve(
                store,
                data,
                serve::ServeOptions {
                    http,
                    grpc,
                    token: token_file.as_deref().map(read_secret).transpose()?,
                    max_body_bytes,
                    max_inflight,
                    batch_rows: 8192,
                    pg,
                    limits,
                    max_queries: max_connections.max(1),
                    grpc_tls: grpc_tls_cert.zip(grpc_tls_key),
                },
            )
        })
    }
}

fn serve(
    store: storage::Store,
    data: &std::path::Path,
    options: serve::ServeOptions,
) -> Result<ExitCode, CliError> {
    runtime()
        .block_on(serve::run(store, data.to_path_buf(), options))
        .map_err(CliError::Other)?;
    Ok(ExitCode::SUCCESS)
}

pub fn networks_cmd(data: &std::path::Path, action: NetworksAction) -> Result<ExitCode, CliError> {
    use query::settings::networks;
    let mut list = networks::load(data)?;
    match action {
        NetworksAction::List => {
            for n in &list {
                println!("{}\t{}", n.cidr, n.label);
            }
            return Ok(ExitCode::SUCCESS);
        }
        NetworksAction::Add { cidr, label } => {
            networks::add(&mut list, &cidr, label)?;
        }
        NetworksAction::Remove { cidr } => {
            if !networks::remove(&mut list, &cidr) {
                return Err(CliError::Other(format!("{cidr} is not a known network")));
            }
        }
    }
    std::fs::create_dir_all(data)
        .map_err(|e| CliError::Other(format!("{}: {e}", data.display())))?;
    networks::save(data, &list)?;
    Ok(ExitCode::SUCCESS)
}

pub fn verify_cmd(
    data: &PathBuf,
    key: Option<&std::path::Path>,
    witness: Option<&str>,
) -> Result<ExitCode, CliError> {
    if witness.is_some() && key.is_none() {
        return Err(CliError::Other(
            "--witness is checked against signed digests: give --signing-key KEY.pub too".into(),
        ));
    }
    let key = key.map(storage::digest::load_public_key).transpose()?;
    let witness = witness
        .map(|w| crate::session::location_url(w).and_then(|u| Ok(storage::Archive::open(&u)?)))
        .transpose()?;
    let store = open_store(data, false)?;
    let segments = store.snapshot().segments;
    let mut findings = 0;
    for s in &segments {
        match s.verify() {
            Ok(()) => {}
            Err(e @ storage::StorageError::Damaged { .. }) => {
                println!("{}", one_line(&e.to_string()));
                findings += 1;
            }
            // An archive that cannot be reached proves nothing either way.
            Err(e) => return Err(e.into()),
        }
    }
    record_damage(&store)?;
    println!(
        "{} segment(s) verified, {findings} damaged",
        segments.len() - findings
    );
    let manifest = store.manifest();
    let expired = &manifest.expired;
    if !expired.is_empty() {
        println!(
            "{} segment(s) ({} events) expired by retention policy, each recorded in the manifest",
            expired.len(),
            expired.iter().map(|e| e.rows).sum::<u64>()
        );
    }
    let history = storage::check_history(store.dir(), &manifest, key.as_ref(), witness.as_ref())?;
    for f in &history.findings {
        println!("{}", one_line(f));
    }
    println!(
        "hash chain: {} entries; digests: {} of {} valid{}",
        history.chain_entries,
        history.digests_valid,
        history.digests_found,
        history
            .signed_entry
            .map(|e| format!(", the newest signs entry {e}"))
            .unwrap_or_default()
    );
    if let (Some(w), Some(n)) = (&witness, history.witness_digests) {
        println!(
            "witness {}: {n} valid digest(s){}",
            w.url(),
            history
                .witness_entry
                .map(|e| format!(", the newest signs entry {e}"))
                .unwrap_or_default()
        );
    }
    for note in &history.notes {
        eprintln!("note: {note}");
    }
    findings += history.findings.len();
    Ok(if findings > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn keygen_cmd(out: &std::path::Path) -> Result<ExitCode, CliError> {
    let key = storage::digest::keygen(out)?;
    println!(
        "wrote the signing key {} and its public key {} (Ed25519 {})",
        out.display(),
        storage::digest::public_key_path(out).display(),
        hex::encode(key.as_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

pub fn repair_cmd(data: &PathBuf, archives: &[String]) -> Result<ExitCode, CliError> {
    let archives = archives
        .iter()
        .map(|url| storage::Archive::open(url))
        .collect::<Result<Vec<_>, _>>()?;
    let report = storage::repair(data, storage::StoreOptions::default(), &archives)?;
    for (key, finding) in &report.archive_findings {
        println!("archive entry {key} not listed: {}", one_line(finding));
    }
    for id in &report.restored {
        println!("segment {id}: its files check out again; listed as whole");
    }
    for (id, path) in &report.still_damaged {
        println!(
            "segment {id} is still damaged: put a good copy at {} (and of its index) and run repair again",
            path.display()
        );
    }
    if !report.rebuilt {
        println!("the manifest is readable: nothing else to repair");
    } else {
        for (path, reason) in &report.quarantined {
            println!("quarantined {}: {}", path.display(), one_line(reason));
        }
        println!(
            "manifest rebuilt: {} segment(s) ({} of them archived), {} event(s); WAL: {} record(s) read, {} event(s) no segment held written as new segments",
            report.segments,
            report.archived,
            report.rows,
            report.wal_records,
            report.wal_events_stored
        );
    }
    // The store opens again (exit 0), or the reason it does not is the error.
    open_store(data, false)?;
    Ok(ExitCode::SUCCESS)
}

pub fn compact_cmd(data: &PathBuf) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    store.flush()?;
    let n = store.compact_major()?;
    println!("{n} segment(s) compacted");
    let damaged = store.damaged();
    if !damaged.is_empty() {
        // The derived tables need every segment: they wait for a repair.
        for s in &damaged {
            let reason = s
                .damaged
                .as_ref()
                .map(|d| d.reason.as_str())
                .unwrap_or_default();
            println!(
                "segment {} ({} events) is damaged, left out and quarantined: {}",
                s.id,
                s.rows,
                one_line(reason)
            );
        }
        return Ok(ExitCode::from(3));
    }
    // The compacted segments are new: their partial aggregates for the derived tables are
    // computed now, with the rewrite, not by the first query that needs them.
    runtime().block_on(async {
        let ctx = query::session(&store, query::IndexUse::On).await?;
        query::prepare_derived(&ctx).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn archive_cmd(
    data: &PathBuf,
    to: Option<&str>,
    older_than: std::time::Duration,
) -> Result<ExitCode, CliError> {
    let archive = storage::Archive::open(&archive_url(data, to)?)?;
    // The digest signed on close goes to the archive too.
    let digests = crate::session::signing().map(|mut d| {
        d.copies.push(archive.clone());
        d
    });
    let store = open_store_with(
        data,
        storage::StoreOptions {
            background: false,
            digests,
            ..Default::default()
        },
    )?;
    // What is still in memory of an old hour goes into a segment first, so it moves too.
    store.flush()?;
    let cutoff = chrono::Utc::now() - older_than;
    let before = cutoff.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "Archiving {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {elapsed})",
        )
        .expect("static template"),
    );
    let started = std::time::Instant::now();
    let report = store.archive(&archive, before, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} segment(s) archived to {}: {} events, {:.1} MB in {secs:.1} s ({:.1} MB/s); hours ended before {}",
        report.archived.len(),
        archive.url(),
        report.rows(),
        report.bytes() as f64 / 1e6,
        report.bytes() as f64 / 1e6 / secs.max(1e-9),
        cutoff.format("%Y-%m-%dT%H:%M:%SZ"),
    );
    for id in &report.damaged_kept {
        println!("segment {id} is damaged: kept in quarantine/, not archived");
    }
    store.close()?;
    Ok(if report.damaged_kept.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The archive named, or the embedded default `file://DATA/archive`.
fn archive_url(data: &std::path::Path, to: Option<&str>) -> Result<String, CliError> {
    Ok(match to {
        Some(u) => u.to_string(),
        None => {
            let dir = std::path::absolute(data.join("archive"))
                .map_err(|e| CliError::Other(format!("{}: {e}", data.display())))?;
            format!("file://{}", dir.display())
        }
    })
}

/// `serve --retain-local/--retain-archive`: every 10 minutes the hours that ended more than
/// `local` ago move to the archive, and those older than `archive` are deleted (recorded). A
/// failed run leaves what it did not finish as it was; the next retries.
fn spawn_retention(
    store: storage::Store,
    archive: std::sync::Arc<storage::Archive>,
    local: Option<std::time::Duration>,
    expire: Option<std::time::Duration>,
) {
    let ago = |d: std::time::Duration| {
        (chrono::Utc::now() - d)
            .timestamp_nanos_opt()
            .unwrap_or(i64::MIN)
    };
    let run = move || loop {
        if let Some(retain) = local {
            match store.archive(&archive, ago(retain), &mut |_, _| {}) {
                Ok(r) if !r.archived.is_empty() => tracing::info!(
                    segments = r.archived.len(),
                    events = r.rows(),
                    bytes = r.bytes(),
                    archive = archive.url(),
                    "archived the hours past --retain-local"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "archiving failed; the segments stay local until the next run")
                }
            }
        }
        if let Some(retain) = expire {
            let policy = format!("retain_archive={}", crate::cli::age_text(retain));
            match store.expire(ago(retain), &policy) {
                Ok(gone) if !gone.is_empty() => tracing::info!(
                    segments = gone.len(),
                    events = gone.iter().map(|e| e.rows).sum::<u64>(),
                    %policy,
                    "expired the hours past --retain-archive (recorded in the manifest)"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "expiry failed; retried at the next run"),
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(600));
    };
    std::thread::Builder::new()
        .name("ktrail-retention".into())
        .spawn(run)
        .expect("spawn the retention thread");
}

pub fn expire_cmd(data: &PathBuf, older_than: std::time::Duration) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    store.flush()?;
    let cutoff = chrono::Utc::now() - older_than;
    let policy = format!(
        "ktrail expire --older-than {}",
        crate::cli::age_text(older_than)
    );
    let gone = store.expire(cutoff.timestamp_nanos_opt().unwrap_or(i64::MIN), &policy)?;
    let time = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    for e in &gone {
        println!(
            "segment {} ({} events, {} to {}) expired from {}",
            e.id,
            e.rows,
            time(e.min_ts),
            time(e.max_ts),
            e.archive.as_deref().unwrap_or("the local disk")
        );
    }
    println!(
        "{} segment(s) expired, {} events; hours ended before {}; recorded in the manifest as `{policy}`",
        gone.len(),
        gone.iter().map(|e| e.rows).sum::<u64>(),
        cutoff.format("%Y-%m-%dT%H:%M:%SZ"),
    );
    store.close()?;
    Ok(ExitCode::SUCCESS)
}
