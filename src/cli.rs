//! The command line: every command, argument and value parser (`clap`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ingest::Format;

#[derive(Parser)]
#[command(
    name = "ktrail",
    version,
    about = "A forensic event store for Kubernetes, queried in SQL"
)]
pub struct Cli {
    /// The store's directory.
    #[arg(
        long,
        global = true,
        env = "KTRAIL_DATA",
        default_value = "./ktrail-data"
    )]
    pub data: PathBuf,
    /// Ed25519 key (from `ktrail keygen`) that signs digests of the store's hash chain: when a
    /// command that wrote closes the store, and hourly in `serve`. `verify` and `evidence
    /// verify` take the private key or its FILE.pub.
    #[arg(long, global = true, env = "KTRAIL_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// A second place each digest is copied to (a directory or `file://`/`s3://` URL only an
    /// auditor can write): `verify` checks the chain's head against it, which defeats removing
    /// the newest history together with its digests.
    #[arg(long, global = true, env = "KTRAIL_WITNESS", value_name = "PATH|URL")]
    pub witness: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up; boxing the large `serve` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
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
        #[arg(long, value_enum, default_value_t = crate::output::OutputFormat::Table)]
        format: crate::output::OutputFormat,
        /// Answer without the sidecar indexes (full scans; for comparison).
        #[arg(long)]
        no_index: bool,
        /// Answer without the segments recorded as damaged (each skipped is a warning on
        /// stderr with its event count) instead of failing.
        #[arg(long)]
        allow_damaged: bool,
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
        /// Answer without the segments recorded as damaged, as `sql --allow-damaged`.
        #[arg(long)]
        allow_damaged: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// The ingest and query service. Binds 127.0.0.1 unless an address says otherwise; prints
    /// `listening <proto> <addr>` per listener when ready; SIGINT/SIGTERM stop it gracefully.
    Serve(ServeArgs),
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
    /// Check every segment (local and archived) against the manifest, the manifest against
    /// the hash chain, and the chain against its signed digests (and the --witness's copies):
    /// one line per finding, exit 3 on any.
    Verify,
    /// Write a new Ed25519 signing key to FILE (owner-only) and its public key to FILE.pub.
    Keygen {
        #[arg(short, long = "out", value_name = "FILE")]
        out: PathBuf,
    },
    /// Rebuild a missing or unreadable MANIFEST from the segment files after checking each;
    /// what does not check out goes to DATA/quarantine/ (nothing is deleted).
    Repair {
        /// An archive the store's segments were moved to (repeatable): with the manifest
        /// lost, its segments are listed again from their entries there, once their copies
        /// check out.
        #[arg(long = "archive", value_name = "URL")]
        archives: Vec<String>,
    },
    /// Flush the memtable and merge each hour's segments into as few as the target size allows.
    Compact,
    /// Delete the hours that ended longer ago than --older-than, archived or local, recording
    /// each segment deleted in the manifest (its events, time range, SHA-256, the policy and
    /// when), and in the archive as `expired/<id>.json`.
    Expire {
        #[arg(long, value_parser = parse_age)]
        older_than: std::time::Duration,
    },
    /// Move sealed segments to an archive (`file:///dir`, `s3://bucket/prefix`): each is
    /// uploaded, read back and checked before its local copy is deleted. Queries read archived
    /// segments where they are. S3 settings come from the standard AWS environment variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    Archive {
        /// Where to; default `file://DATA/archive`.
        #[arg(long, env = "KTRAIL_ARCHIVE", value_name = "URL")]
        to: Option<String>,
        /// Archive the hours that ended at least this long ago (`2d`, `36h`, `90m`, `0s`).
        #[arg(long, default_value = "2d", value_parser = parse_age)]
        older_than: std::time::Duration,
    },
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
        action: crate::falco_cmd::FalcoAction,
    },
    /// Evidence bundles: selected events with proofs a third party checks offline.
    Evidence {
        #[command(subcommand)]
        action: crate::evidence_cmd::EvidenceAction,
    },
    /// Policy Advisor: least-privilege pod policies from workload manifests.
    Policy {
        #[command(subcommand)]
        action: crate::policy_cmd::PolicyAction,
    },
}

#[derive(Subcommand)]
pub enum NetworksAction {
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
pub fn parse_format(name: &str) -> Result<Format, String> {
    Format::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        format!("possible values: {}", names.join(", "))
    })
}

/// A listen address: `HOST:PORT`, `:PORT` or `PORT` (the last two on 127.0.0.1).
pub fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not HOST:PORT, :PORT or PORT"))
}

/// The limits every query runs under, local or remote.
#[derive(clap::Args)]
pub struct LimitArgs {
    /// Memory one query may use before it spills to disk, then fails (bytes; K/M/G suffix).
    #[arg(long, default_value = "4G", value_parser = parse_bytes)]
    pub query_memory: usize,
    /// Time one query may take, rows streamed included (seconds).
    #[arg(long, default_value_t = 300)]
    pub query_timeout: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> query::limits::QueryLimits {
        query::limits::QueryLimits {
            memory_bytes: self.query_memory,
            timeout: std::time::Duration::from_secs(self.query_timeout.max(1)),
            shared: None,
        }
    }
}

pub fn parse_bytes(s: &str) -> Result<usize, String> {
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

// The flags of `ktrail serve` (its help is the variant's).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// HTTP ingest webhooks: ADDR as HOST:PORT, :PORT or PORT (default 127.0.0.1:8480 when
    /// no listener is given).
    #[arg(long, value_parser = parse_addr)]
    pub http: Option<std::net::SocketAddr>,
    /// gRPC: Arrow Flight SQL (read-only queries), the `ktrail.v1.Ingest` stream and
    /// `grpc.health.v1`.
    #[arg(long, value_parser = parse_addr)]
    pub grpc: Option<std::net::SocketAddr>,
    /// Postgres wire protocol.
    #[arg(long, value_parser = parse_addr)]
    pub pg: Option<std::net::SocketAddr>,
    /// Configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// File holding the bearer token HTTP and gRPC clients must send. Required to listen
    /// on anything but loopback.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// File holding the Postgres password of user `ktrail` (SCRAM-SHA-256); required
    /// with --pg.
    #[arg(long)]
    pub pg_password_file: Option<PathBuf>,
    /// PEM certificate chain for Postgres TLS. Once configured, TLS is required: the
    /// server does not start without a usable certificate and refuses plaintext clients.
    /// Required to listen on anything but loopback.
    #[arg(long, requires = "pg_tls_key")]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key of --pg-tls-cert.
    #[arg(long, requires = "pg_tls_cert")]
    pub pg_tls_key: Option<PathBuf>,
    /// PEM certificate chain for gRPC TLS (Flight SQL, ingest, health). Once configured,
    /// TLS is required: the server does not start without a usable certificate.
    #[arg(long, requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert.
    #[arg(long, requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Memory all remote queries (Postgres, Flight SQL) hold together; each query's
    /// --query-memory is drawn from it (bytes; K/M/G suffix).
    #[arg(long, default_value = "8G", value_parser = parse_bytes)]
    pub server_memory: usize,
    /// Postgres connections open at once, and Flight SQL queries running at once; more are
    /// refused (SQLSTATE 53300; gRPC RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Request bodies parsed or stored at once; more are answered 429 + Retry-After.
    #[arg(long, default_value_t = 8)]
    pub max_inflight: usize,
    /// Hours between checks of every segment's SHA-256s (0: never); damaged segments are
    /// recorded and quarantined.
    #[arg(long, default_value_t = 24)]
    pub scrub_hours: u64,
    /// Keep this much history on the local disk (`2d`, `36h`): every 10 minutes, the hours
    /// that ended longer ago move to --archive-to, as `ktrail archive` moves them. Unset:
    /// everything stays local.
    #[arg(long, env = "KTRAIL_RETAIN_LOCAL", value_parser = parse_age, value_name = "DURATION")]
    pub retain_local: Option<std::time::Duration>,
    /// Delete, every 10 minutes, the hours that ended longer ago than this (`365d`), from the
    /// archive and the local disk alike; each segment deleted is recorded in the manifest
    /// (what, when, by which policy). Unset: nothing is ever deleted.
    #[arg(long, env = "KTRAIL_RETAIN_ARCHIVE", value_parser = parse_age, value_name = "DURATION")]
    pub retain_archive: Option<std::time::Duration>,
    /// The archive for --retain-local; default `file://DATA/archive`.
    #[arg(long, env = "KTRAIL_ARCHIVE", value_name = "URL")]
    pub archive_to: Option<String>,
    /// How often the chain's head is signed while serving (with --signing-key; and on
    /// shutdown). Digests are copied to the archive too, when retention has one.
    #[arg(long, default_value = "1h", value_parser = parse_age, value_name = "DURATION")]
    pub digest_interval: std::time::Duration,
}

/// `2d`, `36h`, `90m`, `45s`: a whole number and one unit.
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: a number and a unit (d, h, m, s), like 2d or 36h"))?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("`{s}`: the unit is d, h, m or s")),
    };
    Ok(std::time::Duration::from_secs(n * secs))
}

/// A duration as `parse_age` reads it, in its largest whole unit (`365d`, `36h`).
pub fn age_text(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}
