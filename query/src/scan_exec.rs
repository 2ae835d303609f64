//! `KtrailScanExec`: the root of every `events` scan. It passes its input through unchanged and
//! shows what the manifest summaries and indexes skipped, in `EXPLAIN` and as metrics in
//! `EXPLAIN ANALYZE`. It also holds the store snapshot, so the segment files the plan reads
//! stay alive until the plan is dropped.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use storage::Snapshot;

/// What one scan of `events` skipped before reading anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub segments_total: usize,
    pub segments_scanned: usize,
    pub row_groups_total: usize,
    pub row_groups_scanned: usize,
    /// Rows the index selected in the scanned segments (0 when no index lookup applied).
    pub rows_selected_by_index: u64,
    pub memtable_rows: usize,
    pub index: bool,
    /// Damaged segments the scan needed and left out (`ktrail.allow_damaged`), and their rows.
    pub damaged_segments_skipped: usize,
    pub damaged_rows_skipped: u64,
    /// Scanned segments whose files are in an archive (read by ranged requests there).
    pub archived_segments_scanned: usize,
}

/// Pass-through root of an `events` scan (see module docs).
#[derive(Debug)]
pub struct ScanExec {
    input: Arc<dyn ExecutionPlan>,
    stats: ScanStats,
    metrics: ExecutionPlanMetricsSet,
    _snapshot: Arc<Snapshot>,
    /// What the scan reads, whatever the snapshot: scans with the same reading the same
    /// segment return the same rows. Kept as given; only derived tables ask for its text.
    reading: Arc<ScanReading>,
}

/// The arguments an `events` scan was planned with.
#[derive(Debug)]
pub(crate) struct ScanReading {
    pub projection: Option<Vec<usize>>,
    pub filters: Vec<Expr>,
    pub limit: Option<usize>,
}

impl ScanExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        stats: ScanStats,
        snapshot: Snapshot,
        reading: ScanReading,
    ) -> Self {
        Self::with_snapshot(input, stats, Arc::new(snapshot), Arc::new(reading))
    }

    fn with_snapshot(
        input: Arc<dyn ExecutionPlan>,
        stats: ScanStats,
        snapshot: Arc<Snapshot>,
        reading: Arc<ScanReading>,
    ) -> Self {
        let metrics = ExecutionPlanMetricsSet::new();
        let count =
            |name: &'static str, v: usize| MetricBuilder::new(&metrics).global_counter(name).add(v);
        count("segments_total", stats.segments_total);
        count(
            "segments_pruned",
            stats.segments_total - stats.segments_scanned - stats.damaged_segments_skipped,
        );
        count("damaged_segments_skipped", stats.damaged_segments_skipped);
        count("damaged_rows_skipped", stats.damaged_rows_skipped as usize);
        count("archived_segments_scanned", stats.archived_segments_scanned);
        count("row_groups_total", stats.row_groups_total);
        count(
            "row_groups_skipped",
            stats.row_groups_total - stats.row_groups_scanned,
        );
        count(
            "rows_selected_by_index",
            stats.rows_selected_by_index as usize,
        );
        count("memtable_rows", stats.memtable_rows);
        Self {
            input,
            stats,
            metrics,
            _snapshot: snapshot,
            reading,
        }
    }

    /// The store snapshot the scan reads.
    pub(crate) fn snapshot(&self) -> &Arc<Snapshot> {
        &self._snapshot
    }

    /// What the scan reads, as text (see the field).
    pub(crate) fn reading(&self) -> String {
        let r = &self.reading;
        format!(
            "projection={:?} filters={:?} limit={:?}",
            r.projection, r.filters, r.limit
        )
    }

    /// What the scan skipped.
    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// The stats of the first `events` scan in `plan` (tests and tooling).
    pub fn find_stats(plan: &Arc<dyn ExecutionPlan>) -> Option<ScanStats> {
        if let Some(s) = (plan.as_ref() as &dyn Any).downcast_ref::<ScanExec>() {
            return Some(s.stats);
        }
        plan.children().into_iter().find_map(Self::find_stats)
    }
}

impl DisplayAs for ScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let s = &self.stats;
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "KtrailScanExec: segments={}/{}, row_groups={}/{}, index={}, memtable_rows={}",
                    s.segments_scanned,
                    s.segments_total,
                    s.row_groups_scanned,
                    s.row_groups_total,
                    if s.index { "on" } else { "off" },
                    s.memtable_rows
                )?;
                if s.archived_segments_scanned > 0 {
                    write!(f, ", archived={}", s.archived_segments_scanned)?;
                }
                if s.damaged_segments_skipped > 0 {
                    write!(
                        f,
                        ", damaged_skipped={} ({} rows)",
                        s.damaged_segments_skipped, s.damaged_rows_skipped
                    )?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => write!(
                f,
                "segments={}/{}\nrow_groups={}/{}",
                s.segments_scanned, s.segments_total, s.row_groups_scanned, s.row_groups_total
            ),
        }
    }
}

impl ExecutionPlan for ScanExec {
    fn name(&self) -> &str {
        "KtrailScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.pop().expect("one child");
        Ok(Arc::new(Self::with_snapshot(
            input,
            self.stats,
            self._snapshot.clone(),
            self.reading.clone(),
        )))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    /// A pass-through for dynamic filters: a join's or a top-k's dynamic filter (pushed after
    /// optimisation, [`FilterPushdownPhase::Post`]) reaches the Parquet scans below, which
    /// prune files, row groups and rows with it once it is known. The query's own filters
    /// (pushed before, `Pre`) are stopped here: the table gave them to its scans already
    /// (`EventsTable::scan`), and a Parquet scan that takes them again evaluated each twice,
    /// when building its pruning predicates and in its row filter (`predicate=A AND A`).
    fn gather_filters_for_pushdown(
        &self,
        phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        match phase {
            FilterPushdownPhase::Pre => Ok(FilterDescription::all_unsupported(
                &parent_filters,
                &self.children(),
            )),
            FilterPushdownPhase::Post => {
                FilterDescription::from_children(parent_filters, &self.children())
            }
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
