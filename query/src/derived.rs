//! Derived tables kept per store version. `pods`, `pod_ips` and `containers` aggregate the
//! whole history (every sighting of every pod), so computing them is a scan of the store; yet
//! they change only when events are appended. A [`DerivedTable`] computes its view once per
//! [`Store::version`] and answers from memory until the version moves, so `egress` and the
//! investigations built on it cost a join against a small table, not a history scan.
//! Recomputing after events arrived aggregates only what is new: the partial aggregate of each
//! segment is kept (see `partials.rs`).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_plan::{ExecutionPlan, collect};
use storage::Store;

use crate::partials::PartialCache;

/// The calling query's state without physical filter pushdown, for two reasons. A filter a
/// join derives at run time from its other side (a dynamic filter) must not narrow a partial
/// aggregate that is kept for later queries. And where a static filter lands (above a scan,
/// or pushed through it into its union when the memtable has rows) must not change a kept
/// partial's text (`partials.rs`): without the rule it stays above the scan.
fn planning_state(state: &dyn Session) -> Result<SessionState> {
    let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
        return Err(DataFusionError::Internal(
            "derived tables are planned in a SessionState".into(),
        ));
    };
    let rules = state
        .physical_optimizers()
        .iter()
        .filter(|r| !r.name().starts_with("FilterPushdown"))
        .cloned()
        .collect();
    Ok(SessionStateBuilder::new_from_existing(state.clone())
        .with_physical_optimizer_rules(rules)
        .build())
}

/// A view whose rows are computed at most once per store version.
#[derive(Debug)]
pub struct DerivedTable {
    store: Store,
    plan: LogicalPlan,
    schema: SchemaRef,
    /// The rows and the store version they were computed at.
    rows: Mutex<Option<(u64, Arc<Vec<RecordBatch>>)>>,
    /// Per-segment partial aggregates of the view's scans of `events`.
    partials: Arc<PartialCache>,
}

impl DerivedTable {
    pub fn new(store: Store, plan: LogicalPlan) -> Self {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Self {
            store,
            plan,
            schema,
            rows: Mutex::new(None),
            partials: Arc::default(),
        }
    }

    /// The per-segment partial aggregates this table keeps (tests).
    #[cfg(test)]
    pub(crate) fn partials(&self) -> &PartialCache {
        &self.partials
    }

    fn cached(&self, version: u64) -> Option<Arc<Vec<RecordBatch>>> {
        let rows = self.rows.lock().expect("not poisoned");
        rows.as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, batches)| batches.clone())
    }
}

#[async_trait]
impl TableProvider for DerivedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The version is read before computing: rows appended meanwhile may be in the result,
        // but it is kept under the older version and recomputed on the next call.
        let version = self.store.version();
        let batches = match self.cached(version) {
            Some(b) => b,
            None => {
                // Under the calling query's limits (memory pool, deadline): a derived table
                // too big for them fails that query, as the view itself would.
                let physical = planning_state(state)?
                    .create_physical_plan(&self.plan)
                    .await?;
                let physical = self.partials.rewrite(physical)?;
                let batches = Arc::new(collect(physical, state.task_ctx()).await?);
                let live = self.store.snapshot().segments;
                self.partials
                    .retain(&live.iter().map(|s| s.meta.id).collect());
                *self.rows.lock().expect("not poisoned") = Some((version, batches.clone()));
                batches
            }
        };
        let source = MemorySourceConfig::try_new(
            &[batches.as_ref().clone()],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(DataSourceExec::from_data_source(source))
    }
}
