//! DataFusion over the store: the `events` table provider with segment pruning and index row
//! selection, the views of the contract, and a session factory.
//!
//! Invariant: pruning never changes an answer. Every filter is reported as `Inexact`, so
//! DataFusion re-checks it on whatever rows the segments, indexes and statistics let through;
//! skipping is only ever done on proof that no row can match.

mod access_plan;
pub mod csv_export;
mod deadline;
mod derived;
mod error;
pub mod functions;
mod index_count;
mod index_filter;
pub mod investigations;
mod json_rows;
mod large_topk;
pub mod limits;
mod partials;
mod provider;
mod prune;
pub mod read_only;
mod scan_exec;
pub mod sessions;
pub mod settings;
pub mod views;

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::prelude::{SessionConfig, SessionContext};
use storage::Store;

pub use error::QueryError;
pub use json_rows::rows_json;
pub use provider::{EventsTable, IndexUse};
pub use scan_exec::{ScanExec, ScanStats};

/// Sorts of up to this much data concatenate their input and sort it once, rather than
/// sorting each batch and merging the runs (DataFusion's default is 1 MiB).
const SORT_IN_PLACE_BYTES: usize = 64 << 20;

datafusion::common::extensions_options! {
    /// ktrail's own session settings (`SET ktrail.<name> = ...`).
    pub struct KtrailOptions {
        /// Answer without the segments recorded as damaged instead of failing a query that
        /// needs them; each one skipped is logged as a warning with its event count.
        pub allow_damaged: bool, default = false
    }
}

impl datafusion::config::ConfigExtension for KtrailOptions {
    const PREFIX: &'static str = "ktrail";
}

/// The setting that lets a query skip damaged segments (see [`KtrailOptions`]).
pub const ALLOW_DAMAGED: &str = "ktrail.allow_damaged";

/// A DataFusion session over `store`, with `events` and the views registered.
pub async fn session(store: &Store, index: IndexUse) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new()
        .with_option_extension(KtrailOptions::default())
        .with_information_schema(true)
        .with_default_catalog_and_schema("ktrail", "public")
        .set_usize(
            "datafusion.execution.sort_in_place_threshold_bytes",
            SORT_IN_PLACE_BYTES,
        );
    let runtime = RuntimeEnvBuilder::new().build_arc()?;
    let defaults = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    // Grouped counts from the indexes first, on the plan as the planner made it.
    let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> =
        vec![Arc::new(index_count::IndexCountRule)];
    rules.extend(defaults.physical_optimizers().iter().cloned());
    // Large top-k sorts become sorts that spill, before the pushdown of top-k filters: run
    // after it, a scan would keep a dynamic filter that nothing tightens. The rule's name is
    // DataFusion's; if an upgrade renames it, every session fails here rather than run the
    // rule in the wrong place.
    let at = rules
        .iter()
        .position(|r| r.name() == "FilterPushdown(Post)")
        .expect("DataFusion's physical optimizer has a rule named FilterPushdown(Post)");
    rules.insert(at, Arc::new(large_topk::LargeTopKRule));
    let mut state = SessionStateBuilder::new_from_existing(defaults)
        .with_physical_optimizer_rules(rules)
        .build();
    state.register_file_format(Arc::new(csv_export::CsvWithJsonFactory::default()), true)?;
    let mut ctx = SessionContext::new_with_state(state);
    datafusion_functions_json::register_all(&mut ctx)?;
    let networks: Vec<(String, String)> = settings::networks::load(store.dir())?
        .into_iter()
        .map(|n| (n.cidr, n.label))
        .collect();
    for udf in functions::udfs(&networks) {
        ctx.register_udf(udf);
    }
    ctx.register_table("events", Arc::new(EventsTable::new(store.clone(), index)))?;
    ctx.register_table("known_networks", known_networks(&networks)?)?;
    let labels = settings::falco_labels::load(store.dir())?;
    ctx.register_table("falco_labels", falco_labels(&labels)?)?;
    ctx.register_table("exec_sessions", Arc::new(sessions::ExecSessionsTable))?;
    let all_views = views::BASE_VIEWS
        .iter()
        .chain(views::CORRELATION_VIEWS)
        .chain(views::SESSION_VIEWS);
    for (name, sql) in all_views {
        let view = ctx.sql(sql).await?;
        let table: Arc<dyn TableProvider> = if views::DERIVED.contains(name) {
            Arc::new(derived::DerivedTable::new(
                store.clone(),
                view.into_unoptimized_plan(),
            ))
        } else {
            view.into_view()
        };
        ctx.register_table(*name, table)?;
    }
    investigations::register(&ctx).await?;
    Ok(ctx)
}

/// Computes the derived tables (`containers`, `pods`, `pod_ips`) of `ctx`'s store now. Their
/// per-segment partial aggregates are kept in the segments' cache directories, so the first
/// query that reads one, in this process or a later one, aggregates only what is new.
pub async fn prepare_derived(ctx: &SessionContext) -> Result<(), QueryError> {
    for name in views::DERIVED {
        ctx.sql(&format!("SELECT count(*) FROM {name}"))
            .await?
            .collect()
            .await?;
    }
    Ok(())
}

/// Whether `name` is one of ktrail's own functions (rather than DataFusion's): the network
/// functions, the JSON functions and the investigations.
pub fn is_ktrail_function(name: &str) -> bool {
    name.starts_with("json_")
        || functions::udfs(&[]).iter().any(|f| f.name() == name)
        || investigations::names().any(|n| n == name)
}

/// The allow-list as a table (`cidr`, `label`), read when the session opens.
fn known_networks(nets: &[(String, String)]) -> Result<Arc<MemTable>, QueryError> {
    let rows = nets
        .iter()
        .map(|(cidr, label)| vec![Some(cidr.clone()), Some(label.clone())])
        .collect();
    string_table(&[("cidr", false), ("label", false)], rows)
}

/// Analysts' Falco labels as a table, read when the session opens: `label`, `uuid`, `rule`,
/// `fields` (JSON object of output-field values), `from`, `to`, `note`, `labelled_at`.
fn falco_labels(
    labels: &[settings::falco_labels::FalcoLabel],
) -> Result<Arc<MemTable>, QueryError> {
    let rows = labels
        .iter()
        .map(|l| {
            vec![
                Some(l.label.clone()),
                l.uuid.clone(),
                l.rule.clone(),
                Some(serde_json::to_string(&l.fields).unwrap_or_default()),
                l.from.clone(),
                l.to.clone(),
                Some(l.note.clone()),
                Some(l.labelled_at.clone()),
            ]
        })
        .collect();
    let columns = [
        ("label", false),
        ("uuid", true),
        ("rule", true),
        ("fields", false),
        ("from", true),
        ("to", true),
        ("note", false),
        ("labelled_at", false),
    ];
    string_table(&columns, rows)
}

/// A table of text columns (`name`, nullable) from rows.
fn string_table(
    columns: &[(&str, bool)],
    rows: Vec<Vec<Option<String>>>,
) -> Result<Arc<MemTable>, QueryError> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, nullable)| Field::new(*name, DataType::Utf8, *nullable))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<datafusion::arrow::array::ArrayRef> = (0..columns.len())
        .map(|c| {
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r[c].as_deref())))
                as datafusion::arrow::array::ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .map_err(datafusion::error::DataFusionError::from)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

#[cfg(test)]
mod tests;
