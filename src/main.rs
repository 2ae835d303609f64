//! `ktrail`: the command-line front of the store. This file only dispatches: the commands are
//! in `commands` (and `demo`, `falco_cmd`, `policy_cmd`), their arguments in `cli`.

mod auth;
mod cli;
mod commands;
mod demo;
mod error;
mod evidence_cmd;
mod falco_cmd;
mod flight;
mod grpc;
mod output;
mod pg;
mod policy_cmd;
mod serve;
mod session;
mod shell;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

// Ingest allocates (and frees) a string per field of every record; mimalloc measured
// +10-15 % over the system allocator on that path (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KTRAIL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Commands that write sign the chain's head on close; the checking commands read the key
    // themselves (a public key file is enough for them).
    let signs = !matches!(
        cli.command,
        Command::Verify
            | Command::Keygen { .. }
            | Command::Evidence {
                action: evidence_cmd::EvidenceAction::Verify { .. }
            }
    );
    if signs
        && let Err(e) = session::set_signing(cli.signing_key.as_deref(), cli.witness.as_deref())
    {
        eprintln!("error: {}", commands::one_line(&e.to_string()));
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Ingest {
            format,
            batch_rows,
            dead_letter,
            paths,
        } => {
            let dead_letter = dead_letter.unwrap_or_else(|| cli.data.join("dead-letter.jsonl"));
            commands::ingest_cmd(&cli.data, format, batch_rows, &dead_letter, &paths)
        }
        Command::Shell {
            no_index,
            allow_damaged,
            limits,
        } => commands::shell_cmd(&cli.data, no_index, allow_damaged, limits.limits()),
        Command::Sql {
            format,
            no_index,
            allow_damaged,
            limits,
            sql,
        } => session::runtime().block_on(commands::sql_cmd(
            &cli.data,
            format,
            no_index,
            allow_damaged,
            limits.limits(),
            &sql,
        )),
        Command::Serve(args) => commands::serve_cmd(&cli.data, args),
        Command::Demo { seed, events } => demo::run(&cli.data, seed, events),
        Command::Generate {
            seed,
            events,
            out,
            incident,
        } => commands::gen_cmd(seed, events, &out, incident.as_deref()),
        Command::Verify => commands::verify_cmd(
            &cli.data,
            cli.signing_key.as_deref(),
            cli.witness.as_deref(),
        ),
        Command::Keygen { out } => commands::keygen_cmd(&out),
        Command::Repair { archives } => commands::repair_cmd(&cli.data, &archives),
        Command::Compact => commands::compact_cmd(&cli.data),
        Command::Expire { older_than } => commands::expire_cmd(&cli.data, older_than),
        Command::Archive { to, older_than } => {
            commands::archive_cmd(&cli.data, to.as_deref(), older_than)
        }
        Command::Networks { action } => commands::networks_cmd(&cli.data, action),
        Command::Policy { action } => policy_cmd::run(&cli.data, action),
        Command::Falco { action } => falco_cmd::run(&cli.data, action),
        Command::Evidence { action } => {
            evidence_cmd::run(&cli.data, cli.signing_key.as_deref(), action)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", commands::one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
