//! Opening the store and a query session over it, for the commands that read.

use std::path::{Path, PathBuf};

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

/// How every store this process opens signs its digests (`--signing-key`, `--witness`).
static SIGNING: std::sync::OnceLock<storage::digest::DigestOptions> = std::sync::OnceLock::new();

/// Loads the signing key and opens the witness, for [`open_store_with`].
pub fn set_signing(key: Option<&Path>, witness: Option<&str>) -> Result<(), CliError> {
    let Some(key) = key else {
        return Ok(());
    };
    let copies = match witness {
        Some(w) => vec![storage::Archive::open(&location_url(w)?)?],
        None => Vec::new(),
    };
    let options = storage::digest::DigestOptions {
        key: std::sync::Arc::new(storage::digest::load_signing_key(key)?),
        interval: std::time::Duration::from_secs(3600),
        copies,
    };
    let _ = SIGNING.set(options);
    Ok(())
}

/// The digest options [`set_signing`] set, if any.
pub fn signing() -> Option<storage::digest::DigestOptions> {
    SIGNING.get().cloned()
}

/// A location given as a URL or as a local path (made a `file://` URL).
pub fn location_url(location: &str) -> Result<String, CliError> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    let path = Path::new(location);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| CliError::Other(format!("no current directory: {e}")))?
            .join(path)
    };
    Ok(format!("file://{}", path.display()))
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
pub fn open_store_with(data: &PathBuf, mut options: StoreOptions) -> Result<Store, CliError> {
    if options.digests.is_none() {
        options.digests = signing();
    }
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
