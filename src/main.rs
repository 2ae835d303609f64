//! `ktrail`: the command-line front of the store.

mod demo;
mod falco;
mod flight;
mod grpc;
mod output;
mod pg;
mod policy;
mod serve;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;
use ingest::Format;
use query::IndexUse;
use storage::{Store, StoreOptions};

// Ingest allocates (and frees) a string per field of every record; mimalloc measured
// +10-15 % over the system allocator on that path (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ktrail",
    version,
    about = "A forensic event store for Kubernetes, queried in SQL"
)]
struct Cli {
    /// The store's directory.
    #[arg(
        long,
        global = true,
        env = "KTRAIL_DATA",
        default_value = "./ktrail-data"
    )]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; boxing the large `serve` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Ingest records from files, directories (recursive) or `-` (stdin); `.gz`/`.zst` by
    /// extension. Bad records are reported as PATH:LINE: reason; the rest goes on.
    Ingest {
        /// Input format: auto (recognises each record), native, k8s-audit, falco, tetragon,
        /// tracee, k8s-objects.
        #[arg(long, default_value = "auto", value_parser = parse_format)]
        format: Format,
        /// Events per batch written to the store.
        #[arg(long, default_value_t = 8192)]
        batch_rows: usize,
        /// Where rejected records are kept, one JSON object per line (path, line, reason,
        /// record); default `DATA/dead-letter.jsonl`.
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run SQL statement(s) and print the results.
    Sql {
        #[arg(long, value_enum, default_value_t = output::OutputFormat::Table)]
        format: output::OutputFormat,
        /// Answer without the sidecar indexes (full scans; for comparison).
        #[arg(long)]
        no_index: bool,
        #[command(flatten)]
        limits: LimitArgs,
        sql: String,
    },
    /// An interactive SQL shell with psql's habits (`\\?` for help); reads a script from
    /// stdin when it is not a terminal.
    Shell {
        /// Answer without the sidecar indexes (full scans; for comparison).
        #[arg(long)]
        no_index: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// The ingest and query service. Binds 127.0.0.1 unless an address says otherwise; prints
    /// `listening <proto> <addr>` per listener when ready; SIGINT/SIGTERM stop it gracefully.
    Serve {
        /// HTTP ingest webhooks: ADDR as HOST:PORT, :PORT or PORT (default 127.0.0.1:8480 when
        /// no listener is given).
        #[arg(long, value_parser = parse_addr)]
        http: Option<std::net::SocketAddr>,
        /// gRPC: Arrow Flight SQL (read-only queries), the `ktrail.v1.Ingest` stream and
        /// `grpc.health.v1`.
        #[arg(long, value_parser = parse_addr)]
        grpc: Option<std::net::SocketAddr>,
        /// Postgres wire protocol.
        #[arg(long, value_parser = parse_addr)]
        pg: Option<std::net::SocketAddr>,
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// File holding the bearer token HTTP and gRPC clients must send. Required to listen
        /// on anything but loopback.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// File holding the Postgres password of user `ktrail` (SCRAM-SHA-256); required
        /// with --pg.
        #[arg(long)]
        pg_password_file: Option<PathBuf>,
        /// PEM certificate chain for Postgres TLS. Once configured, TLS is required: the
        /// server does not start without a usable certificate and refuses plaintext clients.
        /// Required to listen on anything but loopback.
        #[arg(long, requires = "pg_tls_key")]
        pg_tls_cert: Option<PathBuf>,
        /// PEM private key of --pg-tls-cert.
        #[arg(long, requires = "pg_tls_cert")]
        pg_tls_key: Option<PathBuf>,
        /// PEM certificate chain for gRPC TLS (Flight SQL, ingest, health). Once configured,
        /// TLS is required: the server does not start without a usable certificate.
        #[arg(long, requires = "grpc_tls_key")]
        grpc_tls_cert: Option<PathBuf>,
        /// PEM private key of --grpc-tls-cert.
        #[arg(long, requires = "grpc_tls_cert")]
        grpc_tls_key: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Memory all remote queries (Postgres, Flight SQL) hold together; each query's
        /// --query-memory is drawn from it (bytes; K/M/G suffix).
        #[arg(long, default_value = "8G", value_parser = parse_bytes)]
        server_memory: usize,
        /// Postgres connections open at once; more are refused (SQLSTATE 53300).
        #[arg(long, default_value_t = 64)]
        max_connections: usize,
        /// Largest request body accepted.
        #[arg(long, default_value_t = 64 << 20)]
        max_body_bytes: usize,
        /// Request bodies parsed or stored at once; more are answered 429 + Retry-After.
        #[arg(long, default_value_t = 8)]
        max_inflight: usize,
    },
    /// Generate a small cluster history with an embedded incident, ingest it into the data
    /// directory, and walk through the investigation (SQL and answers).
    Demo {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Runtime, audit and alert records to generate.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
    /// Write a seeded, realistic cluster history in the producers' formats (inventories,
    /// audit log, Tetragon, Falco) to a directory, for `ktrail ingest` or other tools.
    #[command(name = "gen")]
    Generate {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Where the files go.
        #[arg(short, long)]
        out: PathBuf,
        /// Also write the embedded incident's known answers (user, pods, session id, IPs) to
        /// FILE as JSON, for harnesses that check them.
        #[arg(long, value_name = "FILE")]
        incident: Option<PathBuf>,
    },
    /// Recompute every segment's SHA-256 and compare it with the manifest: one line per
    /// damaged file, exit 3 on any.
    Verify,
    /// Rebuild a missing or unreadable MANIFEST from the segment files after checking each;
    /// what does not check out goes to DATA/quarantine/ (nothing is deleted).
    Repair,
    /// Flush the memtable and merge each hour's segments into as few as the target size allows.
    Compact,
    /// The `known_networks` allow-list (destinations `egress` calls `allowlisted`). Local only:
    /// edits the data directory's `known_networks.json`, also while `serve` runs (`sql` and
    /// `shell` see the change at once; `serve`'s Postgres and Flight SQL sessions after a
    /// restart).
    Networks {
        #[command(subcommand)]
        action: NetworksAction,
    },
    /// Falco Tuning: recurring alert noise, the narrowest exceptions, proven by replay.
    Falco {
        #[command(subcommand)]
        action: falco::FalcoAction,
    },
    /// Policy Advisor: least-privilege pod policies from workload manifests.
    Policy {
        #[command(subcommand)]
        action: policy::PolicyAction,
    },
}

#[derive(Subcommand)]
enum NetworksAction {
    /// Add (or relabel) a network.
    Add {
        /// IPv4/IPv6 CIDR or single address.
        cidr: String,
        /// What it is.
        label: String,
    },
    /// Remove a network.
    Remove { cidr: String },
    /// List the networks, one `CIDR<TAB>LABEL` per line.
    List,
}

/// `--format` values: the names `ingest::Format` defines.
fn parse_format(name: &str) -> Result<Format, String> {
    Format::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        format!("possible values: {}", names.join(", "))
    })
}

/// A listen address: `HOST:PORT`, `:PORT` or `PORT` (the last two on 127.0.0.1).
fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not HOST:PORT, :PORT or PORT"))
}

/// A failure that ends the command: one line on stderr, exit code 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Query(#[from] query::QueryError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error("{0}")]
    Other(String),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KTRAIL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ingest {
            format,
            batch_rows,
            dead_letter,
            paths,
        } => {
            let dead_letter = dead_letter.unwrap_or_else(|| cli.data.join("dead-letter.jsonl"));
            ingest_cmd(&cli.data, format, batch_rows, &dead_letter, &paths)
        }
        Command::Shell { no_index, limits } => shell_cmd(&cli.data, no_index, limits.limits()),
        Command::Sql {
            format,
            no_index,
            limits,
            sql,
        } => runtime().block_on(sql_cmd(&cli.data, format, no_index, limits.limits(), &sql)),
        Command::Serve {
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
        } => {
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
                let limits = query::remote::QueryLimits {
                    shared: Some(query::remote::server_pool(server_memory)),
                    ..limits.limits()
                };
                pg_options(pg, pg_password_file, pg_tls_cert.zip(pg_tls_key)).and_then(|mut pg| {
                    if let Some(pg) = &mut pg {
                        pg.max_connections = max_connections.max(1);
                    }
                    serve_cmd(
                        &cli.data,
                        serve::ServeOptions {
                            http,
                            grpc,
                            token: token_file.as_deref().map(read_secret).transpose()?,
                            max_body_bytes,
                            max_inflight,
                            batch_rows: 8192,
                            pg,
                            limits,
                            grpc_tls: grpc_tls_cert.zip(grpc_tls_key),
                        },
                    )
                })
            }
        }
        Command::Demo { seed, events } => demo::run(&cli.data, seed, events),
        Command::Generate {
            seed,
            events,
            out,
            incident,
        } => gen_cmd(seed, events, &out, incident.as_deref()),
        Command::Verify => verify_cmd(&cli.data),
        Command::Repair => repair_cmd(&cli.data),
        Command::Compact => compact_cmd(&cli.data),
        Command::Networks { action } => networks_cmd(&cli.data, action),
        Command::Policy { action } => policy::run(&cli.data, action),
        Command::Falco { action } => falco::run(&cli.data, action),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

fn gen_cmd(
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn open_store(data: &PathBuf, background: bool) -> Result<Store, CliError> {
    let options = StoreOptions {
        background,
        ..Default::default()
    };
    let (store, report) = Store::open(data, options)?;
    if let Some((path, offset, dropped)) = &report.wal.torn_tail {
        eprintln!(
            "warning: {}: torn WAL tail cut at offset {offset} ({dropped} bytes of an unacknowledged write)",
            path.display()
        );
    }
    for (from, to) in &report.quarantined {
        eprintln!(
            "warning: {} is not listed in the manifest: moved to {}",
            from.display(),
            to.display()
        );
    }
    Ok(store)
}

fn ingest_cmd(
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
struct PrintRejections;

impl load::Progress for PrintRejections {
    fn rejected(&mut self, r: &ingest::Rejection) {
        eprintln!("{r}");
    }
}

/// The limits every query runs under, local or remote.
#[derive(clap::Args)]
struct LimitArgs {
    /// Memory one query may use before it spills to disk, then fails (bytes; K/M/G suffix).
    #[arg(long, default_value = "4G", value_parser = parse_bytes)]
    query_memory: usize,
    /// Time one query may take, rows streamed included (seconds).
    #[arg(long, default_value_t = 300)]
    query_timeout: u64,
}

impl LimitArgs {
    fn limits(&self) -> query::remote::QueryLimits {
        query::remote::QueryLimits {
            memory_bytes: self.query_memory,
            timeout: std::time::Duration::from_secs(self.query_timeout.max(1)),
            shared: None,
        }
    }
}

/// A session over the store for local use, under `limits` (its memory pool is the session's:
/// local statements run one at a time).
async fn local_session(
    store: &Store,
    no_index: bool,
    limits: &query::remote::QueryLimits,
) -> Result<SessionContext, CliError> {
    let index = if no_index {
        IndexUse::Off
    } else {
        IndexUse::On
    };
    let ctx = query::session(store, index).await?;
    Ok(query::remote::limited_context(&ctx, limits)?)
}

async fn sql_cmd(
    data: &PathBuf,
    format: output::OutputFormat,
    no_index: bool,
    limits: query::remote::QueryLimits,
    sql: &str,
) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    let ctx = local_session(&store, no_index, &limits).await?;
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

fn shell_cmd(
    data: &PathBuf,
    no_index: bool,
    limits: query::remote::QueryLimits,
) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    let rt = runtime();
    let ctx = rt.block_on(local_session(&store, no_index, &limits))?;
    let failures = shell::run(ctx, rt);
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The trimmed content of a secret file (token, password); empty is an error.
fn read_secret(path: &std::path::Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(CliError::Other(format!("{}: empty", path.display())));
    }
    Ok(text)
}

fn pg_options(
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

fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (K, M, G, T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn serve_cmd(data: &PathBuf, options: serve::ServeOptions) -> Result<ExitCode, CliError> {
    let store = open_store(data, true)?;
    runtime()
        .block_on(serve::run(store, data.clone(), options))
        .map_err(CliError::Other)?;
    Ok(ExitCode::SUCCESS)
}

fn networks_cmd(data: &std::path::Path, action: NetworksAction) -> Result<ExitCode, CliError> {
    use query::settings::networks::{self, KnownNetwork};
    let mut list = networks::load(data)?;
    match action {
        NetworksAction::List => {
            for n in &list {
                println!("{}\t{}", n.cidr, n.label);
            }
            return Ok(ExitCode::SUCCESS);
        }
        NetworksAction::Add { cidr, label } => {
            let net: ipnet::IpNet = cidr
                .parse()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| CliError::Other(format!("{cidr:?} is not a CIDR or an IP address")))?;
            // Stored normalised (`10.1.2.3/8` → `10.0.0.0/8`), so remove finds it again.
            let cidr = net.trunc().to_string();
            list.retain(|n| n.cidr != cidr);
            list.push(KnownNetwork { cidr, label });
        }
        NetworksAction::Remove { cidr } => {
            let normalised = cidr
                .parse::<ipnet::IpNet>()
                .map(|n| n.trunc().to_string())
                .or_else(|_| {
                    cidr.parse::<std::net::IpAddr>()
                        .map(|a| ipnet::IpNet::from(a).to_string())
                })
                .unwrap_or(cidr.clone());
            let before = list.len();
            list.retain(|n| n.cidr != normalised && n.cidr != cidr);
            if list.len() == before {
                return Err(CliError::Other(format!("{cidr} is not a known network")));
            }
        }
    }
    std::fs::create_dir_all(data)
        .map_err(|e| CliError::Other(format!("{}: {e}", data.display())))?;
    networks::save(data, &list)?;
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(data: &PathBuf) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    let segments = store.snapshot().segments;
    let mut findings = 0;
    for s in &segments {
        if let Err(e) = s.verify() {
            println!("{}", one_line(&e.to_string()));
            findings += 1;
        }
    }
    println!(
        "{} segment(s) verified, {findings} damaged",
        segments.len() - findings
    );
    Ok(if findings > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn repair_cmd(data: &PathBuf) -> Result<ExitCode, CliError> {
    let report = storage::repair(data, StoreOptions::default())?;
    if !report.rebuilt {
        println!("the manifest is readable: nothing to repair");
    } else {
        for (path, reason) in &report.quarantined {
            println!("quarantined {}: {}", path.display(), one_line(reason));
        }
        println!(
            "manifest rebuilt: {} segment(s), {} event(s); WAL: {} record(s) read, {} event(s) no segment held written as new segments",
            report.segments, report.rows, report.wal_records, report.wal_events_stored
        );
    }
    // The store opens again (exit 0), or the reason it does not is the error.
    open_store(data, false)?;
    Ok(ExitCode::SUCCESS)
}

fn compact_cmd(data: &PathBuf) -> Result<ExitCode, CliError> {
    let store = open_store(data, false)?;
    store.flush()?;
    let n = store.compact_major()?;
    // The compacted segments are new: their partial aggregates for the derived tables are
    // computed now, with the rewrite, not by the first query that needs them.
    runtime().block_on(async {
        let ctx = query::session(&store, IndexUse::On).await?;
        query::prepare_derived(&ctx).await
    })?;
    println!("{n} segment(s) compacted");
    Ok(ExitCode::SUCCESS)
}

/// A local query session over the store at `data` (what `policy` and `falco` query through) (keep the store alive while it is used).
fn store_session(
    data: &PathBuf,
) -> Result<
    (
        tokio::runtime::Runtime,
        storage::Store,
        datafusion::prelude::SessionContext,
    ),
    CliError,
> {
    let rt = crate::runtime();
    let store = crate::open_store(data, false)?;
    let ctx = rt.block_on(crate::local_session(
        &store,
        false,
        &query::remote::QueryLimits::default(),
    ))?;
    Ok((rt, store, ctx))
}
