//! `count(*)`, grouped or not, answered from the sidecar indexes.
//!
//! A segment's index holds, per indexed column, each distinct value's rows. When a grouped
//! count reads only indexed columns (`SELECT namespace, pod, count(*) FROM events WHERE kind =
//! 'network_connect' GROUP BY namespace, pod`), each group's count in a segment is the size of
//! an intersection of those row sets, and no row of the segment needs to be decoded.
//!
//! [`IndexCountRule`] replaces such a partial aggregate over an `events` scan with
//! [`IndexCountExec`] (the segments' counts, in the partial aggregate's output shape) unioned
//! with the same partial aggregate over the memtable; the final aggregate above adds them up.
//! It applies only when every part of the predicate is answered exactly by every segment's
//! index: a conjunct the index cannot answer exactly leaves the plan as it was.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::{Column as PhysicalColumn, Literal};
use datafusion::physical_expr::utils::{collect_columns, split_conjunction};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use roaring::RoaringBitmap;
use storage::{INDEXED_COLUMNS, SegmentIndex, Snapshot};

use crate::index_filter::{
    IndexFilter, all_rows, exact_index_filter, kept_values, segment_index, value_test,
};
use crate::provider::memtable_exec;
use crate::scan_exec::ScanExec;

/// Most intersections one query may spend per segment (the product of the group columns'
/// distinct values): past it, grouping by a column of many values is left to the scan.
const MAX_INTERSECTIONS_PER_SEGMENT: usize = 1 << 16;

/// Rewrites `count(*)`s over `events` that the indexes answer (see module docs).
/// It runs before DataFusion's own physical rules, on the plan as the planner made it.
#[derive(Debug, Default)]
pub struct IndexCountRule;

impl PhysicalOptimizerRule for IndexCountRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            Ok(match rewrite(&node)? {
                Some(new) => Transformed::new(new, true, TreeNodeRecursion::Jump),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "ktrail_index_count"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` as a `T`, when it is one.
fn plan_as<T: 'static>(plan: &Arc<dyn ExecutionPlan>) -> Option<&T> {
    (plan.as_ref() as &dyn Any).downcast_ref::<T>()
}

/// A group column and the test (over its values) that the predicate puts on it, if any.
#[derive(Debug, Clone)]
struct GroupColumn {
    name: String,
    test: Option<Arc<dyn PhysicalExpr>>,
}

/// The replacement for `node` when it is a partial count the indexes answer.
fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(agg) = plan_as::<AggregateExec>(node) else {
        return Ok(None);
    };
    if *agg.mode() != AggregateMode::Partial
        || agg.group_expr().has_grouping_set()
        || agg.limit_options().is_some()
        || agg.filter_expr().iter().any(Option::is_some)
        || !agg.aggr_expr().iter().all(|a| {
            a.fun().name() == "count"
                && !a.is_distinct()
                && a.order_bys().is_empty()
                && a.expressions().iter().all(|e| {
                    e.downcast_ref::<Literal>()
                        .is_some_and(|l| !l.value().is_null())
                })
        })
    {
        return Ok(None);
    }
    let output = agg.schema();
    let groups = agg.group_expr().expr().len();
    if output
        .fields()
        .iter()
        .skip(groups)
        .any(|f| f.data_type() != &DataType::Int64)
        || output.fields().len() != groups + agg.aggr_expr().len()
    {
        return Ok(None);
    }
    // Down to the scan: only filters and plain column projections in between.
    let mut predicates: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    let mut below = agg.input().clone();
    let scan = loop {
        if let Some(scan) = plan_as::<ScanExec>(&below) {
            break scan;
        }
        if let Some(filter) = plan_as::<FilterExec>(&below) {
            predicates.extend(split_conjunction(filter.predicate()).into_iter().cloned());
            below = filter.input().clone();
        } else if let Some(projection) = plan_as::<ProjectionExec>(&below) {
            let renames = projection.expr().iter().any(|p| {
                p.expr
                    .downcast_ref::<PhysicalColumn>()
                    .is_none_or(|c| c.name() != p.alias)
            });
            if renames {
                return Ok(None);
            }
            below = projection.input().clone();
        } else {
            return Ok(None);
        }
    };
    if !scan.stats().index {
        return Ok(None);
    }
    let mut columns: Vec<GroupColumn> = Vec::with_capacity(groups);
    for (expr, _) in agg.group_expr().expr() {
        let Some(c) = expr.downcast_ref::<PhysicalColumn>() else {
            return Ok(None);
        };
        if !INDEXED_COLUMNS.contains(&c.name()) {
            return Ok(None);
        }
        columns.push(GroupColumn {
            name: c.name().to_string(),
            test: None,
        });
    }
    // Each conjunct: a test of one group column's values, or rows the index answers exactly.
    let mut exact: Vec<IndexFilter> = Vec::new();
    for p in &predicates {
        let read = collect_columns(p);
        let on_group = match read.iter().collect::<Vec<_>>()[..] {
            [only] => columns.iter().position(|g| g.name == only.name()),
            _ => None,
        };
        match on_group.and_then(|g| Some((g, value_test(p)?))) {
            Some((g, test)) if columns[g].test.is_none() => columns[g].test = Some(test),
            _ => match exact_index_filter(p) {
                Some(f) => exact.push(f),
                None => return Ok(None),
            },
        }
    }
    let filter = match exact.len() {
        0 => None,
        1 => exact.pop(),
        _ => Some(IndexFilter::All(exact)),
    };
    let snapshot = scan.snapshot().clone();
    let mut needed: Vec<&str> = columns.iter().map(|g| g.name.as_str()).collect();
    if let Some(f) = &filter {
        f.columns(&mut needed);
    }
    for segment in &snapshot.segments {
        let index = segment_index(segment)?;
        if !needed.iter().all(|c| index.has_column(c)) {
            return Ok(None);
        }
        let intersections = columns
            .iter()
            .map(|g| index.entries(&g.name).map_or(0, |e| e.len()) + 1)
            .try_fold(1usize, usize::checked_mul);
        if intersections.is_none_or(|n| n > MAX_INTERSECTIONS_PER_SEGMENT) {
            return Ok(None);
        }
    }

    let counted: Arc<dyn ExecutionPlan> = Arc::new(IndexCountExec::new(
        output.clone(),
        columns,
        filter,
        snapshot.clone(),
    ));
    if snapshot.memtable.iter().all(|b| b.num_rows() == 0) {
        return Ok(Some(counted));
    }
    // The memtable has no index: the same partial aggregate runs over its rows.
    let events = model::events_schema();
    let projection = scan
        .schema()
        .fields()
        .iter()
        .map(|f| events.index_of(f.name()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let memtable = memtable_exec(&snapshot, Some(projection), None)?;
    let over_memtable = node
        .clone()
        .transform_up(|n| {
            Ok(if plan_as::<ScanExec>(&n).is_some() {
                Transformed::yes(memtable.clone())
            } else {
                Transformed::no(n)
            })
        })?
        .data;
    Ok(Some(UnionExec::try_new(vec![counted, over_memtable])?))
}

/// The segments' part of a count, read from their indexes (see module docs): one batch in
/// the partial aggregate's shape, a row per non-empty group (one row without GROUP BY).
#[derive(Debug)]
pub struct IndexCountExec {
    counting: Arc<Counting>,
    properties: Arc<PlanProperties>,
}

/// What [`IndexCountExec`] counts.
#[derive(Debug)]
struct Counting {
    schema: SchemaRef,
    columns: Vec<GroupColumn>,
    filter: Option<IndexFilter>,
    snapshot: Arc<Snapshot>,
}

impl IndexCountExec {
    fn new(
        schema: SchemaRef,
        columns: Vec<GroupColumn>,
        filter: Option<IndexFilter>,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            counting: Arc::new(Counting {
                schema,
                columns,
                filter,
                snapshot,
            }),
            properties,
        }
    }
}

impl Counting {
    /// Counts per group over every segment.
    fn count(&self) -> Result<RecordBatch> {
        let mut counts: HashMap<Vec<Option<String>>, i64> = HashMap::new();
        for segment in &self.snapshot.segments {
            let index = segment_index(segment)?;
            let rows = segment.meta.rows as u32;
            let selected = match &self.filter {
                Some(f) => f.exact_rows(&index, rows).ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "index of {} cannot answer the count it was planned for",
                        segment.path.display()
                    ))
                })?,
                None => all_rows(rows),
            };
            if self.columns.is_empty() {
                *counts.entry(Vec::new()).or_default() += selected.len() as i64;
                continue;
            }
            let groups = GroupValues::of(&self.columns, &index)?;
            count_groups(&groups, 0, &selected, &mut Vec::new(), &mut counts);
        }
        if self.columns.is_empty() {
            // Without GROUP BY there is one row, whatever the count.
            counts.entry(Vec::new()).or_default();
        }
        let mut keys: Vec<Vec<Option<String>>> = Vec::with_capacity(counts.len());
        let mut values: Vec<i64> = Vec::with_capacity(counts.len());
        for (k, v) in counts {
            keys.push(k);
            values.push(v);
        }
        let mut arrays: Vec<ArrayRef> = (0..self.columns.len())
            .map(|i| {
                Arc::new(
                    keys.iter()
                        .map(|k| k[i].as_deref())
                        .collect::<StringArray>(),
                ) as ArrayRef
            })
            .collect();
        let n: ArrayRef = Arc::new(Int64Array::from(values));
        arrays.extend(std::iter::repeat_n(
            n,
            self.schema.fields().len() - self.columns.len(),
        ));
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

/// One segment's values of each group column: all of them (their rows add up to the column's
/// non-NULL rows) and whether the predicate keeps each.
struct GroupValues<'a> {
    columns: Vec<Vec<(&'a str, &'a RoaringBitmap, bool)>>,
    /// Whether a NULL value forms a group (no test on the column: tests drop NULLs).
    null_group: Vec<bool>,
}

impl<'a> GroupValues<'a> {
    fn of(columns: &[GroupColumn], index: &'a SegmentIndex) -> Result<Self> {
        let mut out = Vec::with_capacity(columns.len());
        for g in columns {
            let (values, bitmaps, kept) = match &g.test {
                Some(test) => kept_values(index, &g.name, test).ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "test on {} not evaluable over its values",
                        g.name
                    ))
                })?,
                None => {
                    let (values, bitmaps): (Vec<&str>, Vec<&RoaringBitmap>) = index
                        .entries(&g.name)
                        .ok_or_else(|| {
                            DataFusionError::Internal(format!("{} not indexed", g.name))
                        })?
                        .unzip();
                    let kept = BooleanArray::from(vec![true; values.len()]);
                    (values, bitmaps, kept)
                }
            };
            out.push(
                values
                    .into_iter()
                    .zip(bitmaps)
                    .zip(kept.values().iter())
                    .map(|((v, rows), keep)| (v, rows, keep))
                    .collect(),
            );
        }
        Ok(Self {
            columns: out,
            null_group: columns.iter().map(|g| g.test.is_none()).collect(),
        })
    }
}

/// Adds the counts of `rows` split by group columns `level..` (under `key`, the values of the
/// columns before) to `counts`.
fn count_groups(
    groups: &GroupValues,
    level: usize,
    rows: &RoaringBitmap,
    key: &mut Vec<Option<String>>,
    counts: &mut HashMap<Vec<Option<String>>, i64>,
) {
    if rows.is_empty() {
        return;
    }
    let last = level + 1 == groups.columns.len();
    let mut with_value = 0u64;
    for &(value, value_rows, keep) in &groups.columns[level] {
        if last {
            let n = rows.intersection_len(value_rows);
            with_value += n;
            if keep && n > 0 {
                add(counts, key, Some(value), n);
            }
        } else {
            let narrowed = rows & value_rows;
            with_value += narrowed.len();
            if keep {
                key.push(Some(value.to_string()));
                count_groups(groups, level + 1, &narrowed, key, counts);
                key.pop();
            }
        }
    }
    // Rows holding none of the values hold NULL.
    if groups.null_group[level] && with_value < rows.len() {
        if last {
            add(counts, key, None, rows.len() - with_value);
        } else {
            let mut nulls = rows.clone();
            for &(_, value_rows, _) in &groups.columns[level] {
                nulls -= value_rows;
            }
            key.push(None);
            count_groups(groups, level + 1, &nulls, key, counts);
            key.pop();
        }
    }
}

/// Adds `n` rows to the group `key` + `value`.
fn add(
    counts: &mut HashMap<Vec<Option<String>>, i64>,
    key: &mut Vec<Option<String>>,
    value: Option<&str>,
    n: u64,
) {
    key.push(value.map(str::to_string));
    *counts.entry(key.clone()).or_default() += n as i64;
    key.pop();
}

impl DisplayAs for IndexCountExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let c = &self.counting;
        let names: Vec<&str> = c.columns.iter().map(|g| g.name.as_str()).collect();
        write!(
            f,
            "KtrailIndexCountExec: group_by=[{}], segments={}",
            names.join(", "),
            c.snapshot.segments.len()
        )
    }
}

impl ExecutionPlan for IndexCountExec {
    fn name(&self) -> &str {
        "KtrailIndexCountExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let counting = self.counting.clone();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            counting.schema.clone(),
            futures::stream::once(async move { counting.count() }),
        )))
    }
}
