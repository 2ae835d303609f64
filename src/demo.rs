//! `ktrail demo`: a generated cluster history with an embedded incident, ingested through the
//! same path as `ktrail ingest`, then investigated step by step — each step the SQL it runs
//! and the answer — ending with how to open the shell.

use std::path::Path;
use std::process::ExitCode;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use query::IndexUse;

use crate::error::CliError;
use crate::session::{open_store, runtime};
use crate::shell;

/// Destinations the cluster's workloads call on purpose (the payment provider, the object
/// store the nightly export writes to): known, so `egress` calls them `allowlisted`, and what
/// is left as `unknown` stands out.
const KNOWN_NETWORKS: &[(&str, &str)] = &[
    ("192.0.2.0/24", "payment-gateway"),
    ("52.216.0.0/15", "object-storage"),
];

/// The ingest progress bar.
struct Bar<'a>(&'a indicatif::ProgressBar);

impl load::Progress for Bar<'_> {
    fn batch(&mut self, rows: usize) {
        self.0.inc(rows as u64);
    }
}

pub fn run(data: &Path, seed: u64, events: u64) -> Result<ExitCode, CliError> {
    let input_dir = data.join("demo-input");
    println!(
        "Generating a cluster history: {events} events over one day, seed {seed}, \
         in the producers' formats ({})",
        input_dir.display()
    );
    let cfg = generator::Config::new(seed, events);
    let summary = generator::generate(&input_dir, &cfg)
        .map_err(|e| CliError::Other(format!("{}: {e}", input_dir.display())))?;
    let incident = summary.incident;

    let store = open_store(&data.to_path_buf(), true)?;
    let inputs = ingest::expand_inputs(&summary.files)?;
    let mut dead = load::DeadLetter::new(&data.join("dead-letter.jsonl"));
    let bar = indicatif::ProgressBar::new(summary.records);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "Ingesting {bar:40} {pos}/{len} events ({per_sec}, {elapsed})",
        )
        .expect("static template"),
    );
    let loaded = load::load_inputs(
        &store,
        &inputs,
        ingest::Format::Auto,
        8192,
        &mut dead,
        &mut Bar(&bar),
    )?;
    bar.finish_and_clear();
    let accepted: u64 = loaded.counts.values().map(|c| c.accepted).sum();
    let rejected: u64 = loaded.counts.values().map(|c| c.rejected).sum();
    println!(
        "Ingested {accepted} new events ({rejected} rejected, {} inputs already there) into {}",
        loaded.skipped_inputs,
        data.display()
    );
    if rejected > 0 || !loaded.failed_inputs.is_empty() {
        return Err(CliError::Other(
            "the generated history did not ingest cleanly".into(),
        ));
    }
    let mut networks = query::settings::networks::load(data)?;
    for (cidr, label) in KNOWN_NETWORKS {
        if !networks.iter().any(|n| n.cidr == *cidr) {
            networks.push(query::settings::networks::KnownNetwork {
                cidr: (*cidr).into(),
                label: (*label).into(),
            });
        }
    }
    query::settings::networks::save(data, &networks)?;

    let steps = [
        (
            "Who ran `kubectl exec` into billing, and what did each session run and connect to?",
            "SELECT ts, k8s_user, pod, command, processes, connections\n\
             FROM exec_sessions WHERE namespace = 'billing' ORDER BY ts"
                .to_string(),
        ),
        (
            "Everything that session did, as a timeline",
            format!(
                "SELECT ts, kind, what FROM exec_trace('{}')",
                incident.session_id
            ),
        ),
        (
            "Which billing pods talked to destinations nobody knows? (known_networks holds \
             the payment gateway and the object store)",
            "SELECT ts, pod, binary_name, dst_ip, dst_port FROM egress_unknown('billing')"
                .to_string(),
        ),
        (
            "Who ran tcpdump, and where?",
            "SELECT ts, node, namespace, pod, workload_kind, workload_name, args\n\
             FROM executions('tcpdump') WHERE source = 'tetragon'"
                .to_string(),
        ),
        (
            "Which pods sent data to unknown destinations and are gone now?",
            "SELECT p.namespace, p.pod, p.workload_name, p.deleted_at, e.dst_ip, e.ts AS sent_at\n\
             FROM pods p JOIN egress e ON e.namespace = p.namespace AND e.pod = p.pod\n\
             WHERE p.deleted_at IS NOT NULL AND e.dst_class = 'unknown'\n  \
             AND e.ts > p.deleted_at - INTERVAL '5 minutes'"
                .to_string(),
        ),
        (
            "What did that pod do before it was deleted?",
            format!(
                "SELECT ts, relation, what FROM pod_timeline('batch', '{}')",
                incident.deleted_pod
            ),
        ),
        (
            "Privileged pods, and who created them",
            "SELECT DISTINCT o.namespace, o.object_name AS pod, o.node, a.k8s_user AS created_by\n\
             FROM events o LEFT JOIN k8s_audit a ON a.verb = 'create' AND a.resource = 'pods'\n  \
             AND a.object_namespace = o.namespace AND a.object_name = o.object_name\n\
             WHERE o.kind = 'k8s_object' AND o.resource = 'pods'\n  \
             AND json_get_bool(o.raw, 'spec', 'containers', 0, 'securityContext', 'privileged')"
                .to_string(),
        ),
    ];
    let rt = runtime();
    let ctx = rt.block_on(query::session(&store, IndexUse::On))?;
    println!();
    for (n, (question, sql)) in steps.iter().enumerate() {
        println!("{}. {question}\n", n + 1);
        for line in sql.lines() {
            println!("    {line}");
        }
        println!();
        let (schema, batches) = rt.block_on(answer(&ctx, sql))?;
        for line in shell::render(&schema, &batches, false).lines() {
            println!("    {line}");
        }
        println!();
    }
    drop(ctx);
    store.close()?;
    println!(
        "Explore it yourself: ktrail --data {} shell   (\\dt lists the tables, \\? the commands)",
        data.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn answer(
    ctx: &SessionContext,
    sql: &str,
) -> Result<(SchemaRef, Vec<datafusion::arrow::array::RecordBatch>), CliError> {
    let df = ctx.sql(sql).await?;
    let schema: SchemaRef = std::sync::Arc::new(df.schema().as_arrow().clone());
    Ok((schema, df.collect().await?))
}
