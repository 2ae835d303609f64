//! DataFusion over the store: the `events` table provider with segment pruning and index row
//! selection, the views of the contract, and a session factory.
//!
//! Invariant: pruning never changes an answer. Every filter is reported as `Inexact`, so
//! DataFusion re-checks it on whatever rows the segments, indexes and statistics let through;
//! skipping is only ever done on proof that no row can match.

mod error;
mod provider;
mod scan_exec;

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use storage::Store;

pub use error::QueryError;
pub use provider::{EventsTable, IndexUse};
pub use scan_exec::{ScanExec, ScanStats};

/// Views over `events` (contract names). Each is a plain filter, so pruning applies through it.
pub const VIEWS: &[(&str, &str)] = &[
    (
        "process_events",
        "SELECT * FROM events WHERE kind IN ('process_exec', 'process_exit')",
    ),
    (
        "network_events",
        "SELECT * FROM events WHERE kind IN ('network_connect', 'network_accept', 'network_listen', 'network_close')",
    ),
    ("k8s_audit", "SELECT * FROM events WHERE kind = 'k8s_audit'"),
    (
        "falco_alerts",
        "SELECT * FROM events WHERE kind = 'falco_alert'",
    ),
];

/// A DataFusion session over `store`, with `events` and the views registered.
pub async fn session(store: &Store, index: IndexUse) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("ktrail", "public");
    let runtime = RuntimeEnvBuilder::new().build_arc()?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_table("events", Arc::new(EventsTable::new(store.clone(), index)))?;
    for (name, sql) in VIEWS {
        let view = ctx.sql(sql).await?.into_view();
        ctx.register_table(*name, view)?;
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests;
