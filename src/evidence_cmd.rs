//! `ktrail evidence`: bundles of selected rows with their proofs (the `evidence` crate does
//! the work).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use evidence::Selection;

use crate::error::CliError;
use crate::session::store_session;

#[derive(Subcommand)]
pub enum EvidenceAction {
    /// Write the selected events, with Merkle proofs up to a signed digest of the store's hash
    /// chain, to a tar file anyone can check offline (`ktrail evidence verify`). The memtable
    /// is flushed and the chain's head signed first (with --signing-key).
    Export {
        /// The events of one `kubectl exec`/`attach` session (`exec_sessions.session_id`).
        #[arg(long, group = "selection")]
        session: Option<String>,
        /// The events of one pod, as NAMESPACE/POD.
        #[arg(long, group = "selection", value_name = "NS/POD")]
        pod: Option<String>,
        /// The events a query names by its `event_id` column.
        #[arg(long, group = "selection")]
        sql: Option<String>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        #[arg(short = 'o', long = "out", value_name = "BUNDLE.tar")]
        out: PathBuf,
    },
    /// Check a bundle with nothing but its contents (and the signer's public key, with
    /// --signing-key): exit 0 valid, 3 invalid (what failed on stderr).
    Verify { bundle: PathBuf },
}

pub fn run(
    data: &PathBuf,
    key: Option<&Path>,
    action: EvidenceAction,
) -> Result<ExitCode, CliError> {
    match action {
        EvidenceAction::Export {
            session,
            pod,
            sql,
            from,
            to,
            out,
        } => {
            let selection = match (session, pod, sql) {
                (Some(id), _, _) => Selection::session(&id),
                (_, Some(pod), _) => {
                    let (ns, name) = pod.split_once('/').ok_or_else(|| {
                        CliError::Other(format!("--pod {pod}: give it as NAMESPACE/POD"))
                    })?;
                    Selection::pod(ns, name)
                }
                (_, _, Some(sql)) => Selection::sql(&sql),
                _ => {
                    return Err(CliError::Other(
                        "say what to export: --session ID, --pod NS/POD or --sql QUERY".into(),
                    ));
                }
            };
            let (rt, store, ctx) = store_session(data)?;
            let started = std::time::Instant::now();
            let report = rt.block_on(evidence::export(
                &store,
                &ctx,
                &selection,
                from.as_deref(),
                to.as_deref(),
                &out,
            ))?;
            println!(
                "wrote {}: {} event(s) from {} segment(s), proven up to chain entry {} (signed {}); {} bytes, {} of them proofs; {:.2} s",
                out.display(),
                report.rows,
                report.segments,
                report.chain_entry,
                report.signed_at,
                report.bytes,
                report.proof_bytes,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        EvidenceAction::Verify { bundle } => {
            let key = key.map(storage::digest::load_public_key).transpose()?;
            let report = evidence::verify_bundle(&bundle, key.as_ref())?;
            for f in &report.findings {
                eprintln!("invalid: {f}");
            }
            if !report.findings.is_empty() {
                return Ok(ExitCode::from(3));
            }
            let info = report.info.as_ref().expect("a checked bundle has its info");
            println!(
                "valid: these {} event(s) ({}) were in the store, unchanged, when chain entry {} was signed at {}",
                report.rows_proven,
                info.selection,
                report.signed_entry.unwrap_or_default(),
                report.signed_at.as_deref().unwrap_or_default()
            );
            if report.key_given {
                println!("signed by the key given ({})", report.key);
            } else {
                println!(
                    "signed by the key the bundle carries ({}): compare it with the store operator's, or check with --signing-key SIGNER.pub",
                    report.key
                );
            }
            println!(
                "not proven: that these are all the events the selection returns, or anything about events outside the bundle"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
