//! Opening the store and a query session over it, for the commands that read.

use std::path::PathBuf;

use datafusion::prelude::SessionContext;
use query::IndexUse;
use storage::{Store, StoreOptions};

use crate::error::CliError;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn open_store(data: &PathBuf, background: bool) -> Result<Store, CliError> {
    open_store_with(
        data,
        StoreOptions {
            background,
            ..Default::default()
        },
    )
}

/// [`open_store`] with `options`; what the open found is printed on stderr.
pub fn open_store_with(data: &PathBuf, options: StoreOptions) -> Result<Store, CliError> {
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
    for s in store.damaged() {
        eprintln!(
            "warning: segment {} ({} events) is damaged and quarantined: {}",
            s.id,
            s.rows,
            s.damaged.map(|d| d.reason).unwrap_or_default()
        );
    }
    Ok(store)
}

/// Records the damage this process found (queries check each segment on first read) in the
/// manifest and quarantines those segments' files, saying so on stderr.
pub fn record_damage(store: &Store) -> Result<(), CliError> {
    let n = store.quarantine_damaged()?;
    if n > 0 {
        eprintln!(
            "warning: {n} damaged segment(s) recorded in the manifest; their files are in {}",
            store.dir().join(storage::QUARANTINE_DIR).display()
        );
    }
    Ok(())
}

/// A session over the store for local use, under `limits` (its memory pool is the session's:
/// local statements run one at a time).
pub async fn local_session(
    store: &Store,
    no_index: bool,
    allow_damaged: bool,
    limits: &query::limits::QueryLimits,
) -> Result<SessionContext, CliError> {
    let index = if no_index {
        IndexUse::Off
    } else {
        IndexUse::On
    };
    let ctx = query::session(store, index).await?;
    register_analyses(&ctx)?;
    let ctx = query::limits::limited_context(&ctx, limits)?;
    if allow_damaged {
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .set(query::ALLOW_DAMAGED, "true")?;
    }
    Ok(ctx)
}

/// Registers the tables the analyses compute over the store (`falco_alert_groups`) in a
/// session `query::session` made.
pub fn register_analyses(ctx: &SessionContext) -> Result<(), CliError> {
    ctx.register_table(
        falco::digest::TABLE,
        std::sync::Arc::new(falco::digest::AlertGroupsTable),
    )?;
    Ok(())
}

/// A local query session over the store at `data` (what `policy` and `falco` query through) (keep the store alive while it is used).
pub fn store_session(
    data: &PathBuf,
) -> Result<
    (
        tokio::runtime::Runtime,
        storage::Store,
        datafusion::prelude::SessionContext,
    ),
    CliError,
> {
    let rt = runtime();
    let store = open_store(data, false)?;
    let ctx = rt.block_on(local_session(
        &store,
        false,
        false,
        &query::limits::QueryLimits::default(),
    ))?;
    Ok((rt, store, ctx))
}
