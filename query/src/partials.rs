//! Partial aggregates kept per segment. A derived table aggregates the whole history, yet a
//! segment never changes once written: the partial aggregate of its rows (DataFusion's
//! `AggregateMode::Partial` output, the state a final aggregate merges) is computed once and
//! kept. When events arrive, a derived table's recomputation aggregates the memtable and the
//! segments it has not seen, then merges every segment's kept state: its cost follows what
//! arrived, not the history. The states are also written to the segment's cache directory,
//! so a restarted server reads them rather than computing them.
//!
//! This is sound because DataFusion's final aggregate merges partial states of any split of the
//! input rows (it runs one partial aggregate per partition, over an arbitrary split). A subtree
//! qualifies only if it is a partial aggregate over row-wise operators (projections, filters,
//! unions, repartitioning) down to `events` scans: a join, a sort, a limit or another aggregate
//! below it would not split by segment.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, replace_children_if_necessary,
};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
    collect, displayable,
};
use futures::{StreamExt, TryStreamExt};

use storage::Segment;

use crate::scan_exec::ScanExec;

/// Most bytes of partial states one cache keeps; past it, new states are computed and used
/// but not kept (a history with that many distinct keys per segment gains little from them).
const MAX_CACHED_BYTES: usize = 256 << 20;

/// A kept part: the partial aggregate's subtree text and a segment id.
type PartKey = (Arc<str>, u64);

/// Partial aggregate states by (subtree, segment id). Segment ids are never reused in a
/// store, and a segment's rows never change.
#[derive(Debug, Default)]
pub(crate) struct PartialCache {
    entries: Mutex<Entries>,
    /// A lock per part being computed.
    turns: Mutex<HashMap<PartKey, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct Entries {
    states: HashMap<PartKey, Arc<Vec<RecordBatch>>>,
    bytes: usize,
    /// Segment partials computed (not found kept) since the cache was made (tests, debug log).
    computed: usize,
}

impl PartialCache {
    /// `plan` with each qualifying partial aggregate replaced by one that merges the kept
    /// per-segment states with fresh ones for what is new.
    pub(crate) fn rewrite(
        self: &Arc<Self>,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let partial = downcast::<AggregateExec>(&node)
                .is_some_and(|a| *a.mode() == AggregateMode::Partial);
            if !partial || !splits_by_segment(node.children()[0]) {
                return Ok(Transformed::no(node));
            }
            let exec = SegmentPartialsExec::new(node, self.clone());
            Ok(Transformed::new(
                Arc::new(exec),
                true,
                TreeNodeRecursion::Jump,
            ))
        })
        .map(|t| t.data)
    }

    /// Drops the states of segments not in `live` (compacted away or deleted).
    pub(crate) fn retain(&self, live: &BTreeSet<u64>) {
        let mut entries = self.entries.lock().expect("not poisoned");
        entries.states.retain(|(_, id), _| live.contains(id));
        let mut turns = self.turns.lock().expect("not poisoned");
        turns.retain(|(_, id), _| live.contains(id));
        entries.bytes = entries.states.values().map(|b| batches_bytes(b)).sum();
    }

    /// The lock of the part `key` (made on first use, dropped with the part's states).
    fn turn(&self, key: &PartKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().expect("not poisoned");
        turns.entry(key.clone()).or_default().clone()
    }

    #[cfg(test)]
    pub(crate) fn computed(&self) -> usize {
        self.entries.lock().expect("not poisoned").computed
    }

    fn get(&self, key: &PartKey) -> Option<Arc<Vec<RecordBatch>>> {
        self.entries
            .lock()
            .expect("not poisoned")
            .states
            .get(key)
            .cloned()
    }

    /// Keeps `states` (`computed`: rather than read from the segment's cache directory).
    fn put(&self, key: PartKey, states: Arc<Vec<RecordBatch>>, computed: bool) {
        let mut entries = self.entries.lock().expect("not poisoned");
        entries.computed += usize::from(computed);
        let bytes = batches_bytes(&states);
        if entries.bytes + bytes <= MAX_CACHED_BYTES {
            entries.bytes += bytes;
            // Two queries may have computed the same part at once.
            if let Some(old) = entries.states.insert(key, states) {
                entries.bytes -= batches_bytes(&old);
            }
        }
    }
}

fn is<T: 'static>(plan: &Arc<dyn ExecutionPlan>) -> bool {
    downcast::<T>(plan).is_some()
}

fn downcast<T: 'static>(plan: &Arc<dyn ExecutionPlan>) -> Option<&T> {
    (plan.as_ref() as &dyn Any).downcast_ref::<T>()
}

fn batches_bytes(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::get_array_memory_size).sum()
}

/// Whether the rows under `plan` are those of `events` scans passed through row-wise
/// operators only, so that the rows of each segment can be taken apart.
fn splits_by_segment(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if is::<ScanExec>(plan) {
        return true;
    }
    let row_wise = is::<ProjectionExec>(plan)
        || is::<FilterExec>(plan)
        || is::<UnionExec>(plan)
        || is::<RepartitionExec>(plan)
        || is::<CoalescePartitionsExec>(plan);
    row_wise && plan.children().into_iter().all(splits_by_segment)
}

/// The segments the scans under `plan` read, by id.
fn segments_read(plan: &Arc<dyn ExecutionPlan>, out: &mut BTreeMap<u64, Arc<Segment>>) {
    match downcast::<ScanExec>(plan) {
        Some(scan) => out.extend(
            scan.snapshot()
                .segments
                .iter()
                .map(|s| (s.meta.id, s.clone())),
        ),
        None => plan
            .children()
            .into_iter()
            .for_each(|c| segments_read(c, out)),
    }
}

/// What the subtree computes, whatever the segments: the nodes' own text, with each scan's
/// reading in place of its files.
fn subtree_text(plan: &Arc<dyn ExecutionPlan>, out: &mut String) {
    if let Some(scan) = downcast::<ScanExec>(plan) {
        out.push_str("scan ");
        out.push_str(&scan.reading());
        out.push('\n');
        return;
    }
    // Repartitioning moves rows between partitions; their counts follow the file count. A
    // filter right above a scan holds the scan's own filters (offered to it as inexact and
    // applied again), which its reading already says; a projection that only picks columns
    // changes no value. Left out, so the text follows what is computed, not where.
    let scans_filter = is::<FilterExec>(plan) && is::<ScanExec>(plan.children()[0]);
    let picks_columns = downcast::<ProjectionExec>(plan).is_some_and(|p| {
        p.expr().iter().all(|e| {
            (e.expr.as_ref() as &dyn Any)
                .downcast_ref::<Column>()
                .is_some_and(|c| c.name() == e.alias)
        })
    });
    if is::<RepartitionExec>(plan)
        || is::<CoalescePartitionsExec>(plan)
        || scans_filter
        || picks_columns
    {
        plan.children()
            .into_iter()
            .for_each(|c| subtree_text(c, out));
        return;
    }
    without_column_indexes(&displayable(plan.as_ref()).one_line().to_string(), out);
    out.push('(');
    plan.children()
        .into_iter()
        .for_each(|c| subtree_text(c, out));
    out.push(')');
}

/// `text` with each column's index (`pod@3`) left out: where DataFusion put a filter (above a
/// scan or inside it) moves the columns of the nodes above, not their meaning. Names are
/// unique in the schemas of these row-wise nodes.
fn without_column_indexes(text: &str, out: &mut String) {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '@' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
}

/// `text` with the names DataFusion's optimizer makes up (`__common_expr_8`,
/// `__datafusion_extracted_6`: numbered by a counter that runs across plannings) numbered
/// again in order of first appearance, so the same subtree has the same text each time.
fn with_generated_names_renumbered(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rest = text;
    while let Some(at) = rest.find("__") {
        out.push_str(&rest[..at]);
        let name_len = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at);
        let name = &rest[at..at + name_len];
        match name.rfind('_') {
            Some(cut)
                if cut + 1 < name.len() && name[cut + 1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                let next = seen.len();
                let n = *seen.entry(name).or_insert(next);
                out.push_str(&name[..=cut]);
                out.push_str(&format!("#{n}"));
            }
            _ => out.push_str(name),
        }
        rest = &rest[at + name_len..];
    }
    out.push_str(rest);
    out
}

/// Schema metadata key of a state file: the subtree text the states are of.
const STATES_OF: &str = "ktrail.partial_aggregate_of";

/// The file, in a segment's cache directory, of the states of the subtree `text`. A hash
/// names it (xxh3, which is specified: std's `DefaultHasher` may change with the toolchain,
/// and the files outlive the binary); the text itself is in the file and compared on reading.
fn state_file_name(text: &str) -> String {
    format!(
        "partial-{:016x}.arrow",
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    )
}

/// The states kept in `file`, if it holds those of `text` with `schema`'s columns. A file
/// that cannot be read is reported and computed again (it is a cache, not evidence).
fn read_states(file: &Path, text: &str, schema: &SchemaRef) -> Option<Vec<RecordBatch>> {
    let opened = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %file.display(), error = %e, "unreadable partial aggregate cache; computing it again");
            return None;
        }
    };
    let read = || -> Result<Option<Vec<RecordBatch>>> {
        let reader = FileReader::try_new(std::io::BufReader::new(opened), None)?;
        if reader
            .schema()
            .metadata()
            .get(STATES_OF)
            .map(String::as_str)
            != Some(text)
        {
            return Ok(None);
        }
        let mut states = Vec::new();
        for batch in reader {
            states.push(RecordBatch::try_new(
                schema.clone(),
                batch?.columns().to_vec(),
            )?);
        }
        Ok(Some(states))
    };
    read().unwrap_or_else(|e| {
        tracing::warn!(path = %file.display(), error = %e, "corrupt partial aggregate cache; computing it again");
        None
    })
}

/// Writes `states` to `file` (through a temporary file and a rename: a reader sees a whole
/// file or none). Failing to write only costs a recomputation later, so it is reported and
/// the query goes on.
fn write_states(file: &Path, text: &str, schema: &SchemaRef, states: &[RecordBatch]) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = file.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> Result<()> {
        std::fs::create_dir_all(file.parent().expect("in a directory"))?;
        let mut metadata = schema.metadata().clone();
        metadata.insert(STATES_OF.into(), text.into());
        let with_text = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
        let mut writer = FileWriter::try_new(std::fs::File::create(&tmp)?, &with_text)?;
        for batch in states {
            writer.write(&RecordBatch::try_new(
                with_text.clone(),
                batch.columns().to_vec(),
            )?)?;
        }
        writer.finish()?;
        std::fs::rename(&tmp, file)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::warn!(path = %file.display(), error = %e, "could not keep a partial aggregate");
        let _ = std::fs::remove_file(&tmp);
    }
}

/// A part of the input: one segment, or the memtable.
#[derive(Debug)]
enum Part {
    Segment(Arc<Segment>),
    Memtable,
}

/// `plan` (a partial aggregate over scans) reading only `part` of each scan.
fn restricted(plan: &Arc<dyn ExecutionPlan>, part: &Part) -> Result<Arc<dyn ExecutionPlan>> {
    plan.clone()
        .transform_up(|node| {
            let Some(scan) = downcast::<ScanExec>(&node) else {
                return Ok(Transformed::no(node));
            };
            // A scan whose snapshot lacks the segment reads none of its files.
            let file = match part {
                Part::Segment(segment) => scan
                    .snapshot()
                    .segments
                    .iter()
                    .any(|s| s.meta.id == segment.meta.id)
                    .then(|| segment.path.file_name())
                    .flatten()
                    .map(|n| n.to_string_lossy().into_owned()),
                Part::Memtable => None,
            };
            let input = scan.children()[0].clone().transform_up(|leaf| {
                let Some(source) = downcast::<DataSourceExec>(&leaf) else {
                    return Ok(Transformed::no(leaf));
                };
                let data = source.data_source().as_ref() as &dyn Any;
                if let Some(config) = data.downcast_ref::<FileScanConfig>() {
                    let groups: Vec<FileGroup> = config
                        .file_groups
                        .iter()
                        .map(|g| {
                            g.iter()
                                .filter(|f| {
                                    file.is_some()
                                        && f.object_meta.location.filename() == file.as_deref()
                                })
                                .cloned()
                                .collect::<Vec<_>>()
                        })
                        .filter(|g| !g.is_empty())
                        .map(FileGroup::new)
                        .collect();
                    if groups.is_empty() {
                        return Ok(Transformed::yes(Arc::new(EmptyExec::new(leaf.schema()))));
                    }
                    let mut config = config.clone();
                    config.file_groups = groups;
                    let exec: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
                    return Ok(Transformed::yes(exec));
                }
                if data.is::<MemorySourceConfig>() && matches!(part, Part::Segment(_)) {
                    return Ok(Transformed::yes(Arc::new(EmptyExec::new(leaf.schema()))));
                }
                Ok(Transformed::no(leaf))
            })?;
            replace_children_if_necessary(node, vec![input.data]).map(Transformed::yes)
        })
        .map(|t| t.data)
}

/// A partial aggregate over `events` answered part by part: kept states for segments it has
/// seen, fresh ones for new segments (then kept) and for the memtable (never kept).
#[derive(Debug)]
struct SegmentPartialsExec {
    partial: Arc<dyn ExecutionPlan>,
    /// The partial aggregate's subtree as text: the cache key with a segment id.
    text: Arc<str>,
    cache: Arc<PartialCache>,
    properties: Arc<PlanProperties>,
}

impl SegmentPartialsExec {
    fn new(partial: Arc<dyn ExecutionPlan>, cache: Arc<PartialCache>) -> Self {
        // The versions first: a function's text may stay when its meaning or its state's
        // layout changes with DataFusion's version, and kept files outlive the binary.
        let mut text = format!(
            "ktrail {} datafusion {}\n",
            env!("CARGO_PKG_VERSION"),
            datafusion::DATAFUSION_VERSION
        );
        subtree_text(&partial, &mut text);
        let text = with_generated_names_renumbered(&text);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(partial.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            partial,
            text: text.into(),
            cache,
            properties: Arc::new(properties),
        }
    }

    /// Every part's states: the segments any scan reads, then the memtable.
    async fn states(
        partial: Arc<dyn ExecutionPlan>,
        text: Arc<str>,
        cache: Arc<PartialCache>,
        ctx: Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let mut segments = BTreeMap::new();
        segments_read(&partial, &mut segments);
        let parallel = ctx.session_config().target_partitions().max(1);
        let parts = segments
            .into_values()
            .map(Part::Segment)
            .chain([Part::Memtable]);
        let states: Vec<Arc<Vec<RecordBatch>>> = futures::stream::iter(parts)
            .map(|part| {
                let (partial, text, cache, ctx) =
                    (partial.clone(), text.clone(), cache.clone(), ctx.clone());
                // A task per part: a segment's scan is one partition, and the parts are
                // what spreads the work over the cores.
                let task = SpawnedTask::spawn(async move {
                    let Part::Segment(segment) = &part else {
                        return Ok(Arc::new(collect(restricted(&partial, &part)?, ctx).await?));
                    };
                    let key = (text.clone(), segment.meta.id);
                    if let Some(kept) = cache.get(&key) {
                        return Ok(kept);
                    }
                    // One computation per part at a time: a query that needs a part another
                    // one (the server's preparation) is computing waits for it.
                    let turn = cache.turn(&key);
                    let _turn = turn.lock().await;
                    if let Some(kept) = cache.get(&key) {
                        return Ok(kept);
                    }
                    let file = segment.cache_dir.join(state_file_name(&text));
                    let schema = partial.schema();
                    if let Some(states) = read_states(&file, &text, &schema) {
                        let states = Arc::new(states);
                        cache.put(key, states.clone(), false);
                        return Ok(states);
                    }
                    let states = Arc::new(collect(restricted(&partial, &part)?, ctx).await?);
                    cache.put(key, states.clone(), true);
                    write_states(&file, &text, &schema, &states);
                    Ok::<_, DataFusionError>(states)
                });
                async move {
                    task.join_unwind()
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?
                }
            })
            .buffered(parallel)
            .try_collect()
            .await?;
        tracing::debug!(
            parts = states.len(),
            computed_so_far = cache.entries.lock().expect("not poisoned").computed,
            text = %text,
            "derived table partials"
        );
        Ok(states
            .iter()
            .flat_map(|b| b.iter().cloned())
            .filter(|b| b.num_rows() > 0)
            .collect())
    }
}

impl DisplayAs for SegmentPartialsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SegmentPartialsExec")
    }
}

impl ExecutionPlan for SegmentPartialsExec {
    fn name(&self) -> &str {
        "SegmentPartialsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // A leaf: the partial aggregate below is run part by part, never as one plan.
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
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let states = Self::states(
            self.partial.clone(),
            self.text.clone(),
            self.cache.clone(),
            context,
        );
        let stream = futures::stream::once(states)
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.partial.schema(),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_numbered_by_first_appearance() {
        let a = "max(ts) FILTER (WHERE __common_expr_8 AS kind = x) as __common_expr_8, \
                 __datafusion_extracted_6, __common_expr_9, plain_name_2, __x";
        let b = "max(ts) FILTER (WHERE __common_expr_20 AS kind = x) as __common_expr_20, \
                 __datafusion_extracted_7, __common_expr_21, plain_name_2, __x";
        assert_eq!(
            with_generated_names_renumbered(a),
            with_generated_names_renumbered(b)
        );
        assert_eq!(
            with_generated_names_renumbered(a),
            "max(ts) FILTER (WHERE __common_expr_#0 AS kind = x) as __common_expr_#0, \
             __datafusion_extracted_#1, __common_expr_#2, plain_name_2, __x"
        );
    }
}
