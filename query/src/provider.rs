//! The `events` table: a snapshot of the store's segments (pruned by the manifest's summaries,
//! narrowed by the sidecar indexes) unioned with its memtable.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetAccessPlan, RowGroupAccess,
};
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column as PhysicalColumn, InListExpr, LikeExpr, Literal,
};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use futures::FutureExt;
use futures::future::BoxFuture;
use roaring::RoaringBitmap;
use storage::{INDEXED_COLUMNS, Segment, SegmentIndex, Snapshot, Store};

use crate::QueryError;
use crate::scan_exec::{ScanExec, ScanReading, ScanStats};

/// Whether scans consult the sidecar indexes (off only to compare against full scans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUse {
    On,
    Off,
}

/// How much decoded segment metadata (Parquet footers and page indexes) a table keeps. A
/// segment of the 10 M-event benchmark store took about 0.7 MB of resident memory (RSS after
/// one query over its 26 segments, against footers alone): some 350 segments' worth.
pub const SEGMENT_METADATA_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Reads segments through the metadata cache, asking for the page index with every footer.
/// DataFusion's opener asks for the footer alone, prunes row groups, then loads the page
/// index itself, outside the cache: every query decoded every scanned segment's page index
/// again (28 % of a warm bloom-filter lookup's samples). Asked for here, it is decoded once
/// and cached with the footer, and the opener finds it there.
#[derive(Debug)]
struct PageIndexedReaderFactory(CachedParquetFileReaderFactory);

impl ParquetFileReaderFactory for PageIndexedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let inner = self
            .0
            .create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(PageIndexedReader(inner)))
    }
}

struct PageIndexedReader(Box<dyn AsyncFileReader + Send>);

impl AsyncFileReader for PageIndexedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let options = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.0.get_metadata(Some(&options)).await }.boxed()
    }
}

/// The `events` table provider.
pub struct EventsTable {
    store: Store,
    index: IndexUse,
    /// Decoded footers and page indexes of the segments scanned so far, least recently used
    /// evicted first. Kept by the table, not by a query's runtime: a Postgres query runs in a
    /// runtime of its own, and would otherwise decode every segment's metadata again. Segments
    /// are immutable and a path is never reused for other contents within a process (segment
    /// ids only grow), so an entry never goes stale; a compacted segment's ages out.
    metadata: Arc<FileMetadataCache>,
}

impl std::fmt::Debug for EventsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsTable")
            .field("store", &self.store)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl EventsTable {
    pub fn new(store: Store, index: IndexUse) -> Self {
        Self {
            store,
            index,
            metadata: Arc::new(
                DefaultCache::new(SEGMENT_METADATA_CACHE_BYTES)
                    .with_name("ktrail segment metadata"),
            ),
        }
    }

    /// The segment metadata this table has cached (tests look inside).
    #[cfg(test)]
    pub(crate) fn metadata_cache(&self) -> &Arc<FileMetadataCache> {
        &self.metadata
    }
}

#[async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        model::events_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: we use filters to skip data, DataFusion still applies them to what remains.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = model::events_schema();
        let snapshot = self.store.snapshot();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let predicate = conjunction(filters.iter().cloned())
            .map(|e| state.create_physical_expr(e, &df_schema))
            .transpose()?;

        let mut stats = ScanStats {
            segments_total: snapshot.segments.len(),
            row_groups_total: snapshot
                .segments
                .iter()
                .map(|s| s.meta.row_groups.len())
                .sum(),
            memtable_rows: snapshot.memtable.iter().map(|b| b.num_rows()).sum(),
            index: self.index == IndexUse::On,
            ..Default::default()
        };
        let keep = prune_segments(&snapshot.segments, predicate.as_ref(), &schema);
        let filter = match (&predicate, self.index) {
            (Some(p), IndexUse::On) => index_filter(p),
            _ => None,
        };

        let mut files = Vec::new();
        for (segment, keep) in snapshot.segments.iter().zip(keep) {
            if !keep {
                continue;
            }
            let path = segment.path.to_string_lossy().into_owned();
            let mut file = PartitionedFile::new(path, segment.meta.bytes);
            if let Some(filter) = &filter {
                let index = segment_index(segment)?;
                let rows = index_rows(&index, segment.meta.rows as u32, filter);
                let plan = access_plan(&segment.meta.row_groups, &rows);
                let scanned = plan.row_group_indexes().len();
                if scanned == 0 {
                    continue;
                }
                stats.rows_selected_by_index += rows.len();
                stats.row_groups_scanned += scanned;
                file = file.with_extension(plan);
            } else {
                stats.row_groups_scanned += segment.meta.row_groups.len();
            }
            // The first read of a segment in this process checks its SHA-256s: a damaged
            // segment fails the query naming it, never serves rows.
            segment.verify_once().map_err(|e| {
                datafusion::error::DataFusionError::External(Box::new(QueryError::from(e)))
            })?;
            stats.segments_scanned += 1;
            files.push(file);
        }

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !files.is_empty() {
            let url = ObjectStoreUrl::local_filesystem();
            let runtime = state.runtime_env();
            let reader = PageIndexedReaderFactory(CachedParquetFileReaderFactory::new(
                runtime.object_store(&url)?,
                self.metadata.clone(),
            ));
            let mut source = ParquetSource::new(schema.clone())
                .with_parquet_file_reader_factory(Arc::new(reader))
                .with_enable_page_index(true)
                // Late materialisation for substring searches and identifier lookups, which no
                // index narrows: the predicate runs while decoding, so the other columns are
                // decoded for the matching rows only. Elsewhere it measured slower (the index
                // already selected the rows, and filtering while decoding costs an extra pass).
                .with_pushdown_filters(
                    predicate
                        .as_ref()
                        .is_some_and(|p| has_text_search(p) || has_identifier_lookup(p)),
                )
                .with_reorder_filters(true)
                // Bloom filters only exist on a few columns; reading them for any other
                // predicate costs time and proves nothing.
                .with_bloom_filter_on_read(uses_bloom_columns(predicate.as_ref()));
            if let Some(p) = &predicate {
                source = source.with_predicate(p.clone());
            }
            let partitions = state.config().target_partitions().max(1);
            // Fewer row groups than partitions: DataFusion would cut the files into byte
            // ranges, and a range without a selected row group still opens its file (the
            // one segment of `executions('tcpdump')` was opened twice per scan). Declaring the
            // partitioning keeps each file whole.
            let groups = split_files(files, partitions);
            let whole_files = (stats.row_groups_scanned < partitions)
                .then(|| Partitioning::UnknownPartitioning(groups.len()));
            let config = FileScanConfigBuilder::new(url, Arc::new(source))
                .with_output_partitioning(whole_files)
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if stats.memtable_rows > 0 || inputs.is_empty() {
            inputs.push(memtable_exec(&snapshot, projection.cloned(), limit)?);
        }
        let union = UnionExec::try_new(inputs)?;
        let reading = ScanReading {
            projection: projection.cloned(),
            filters: filters.to_vec(),
            limit,
        };
        Ok(Arc::new(ScanExec::new(union, stats, snapshot, reading)))
    }
}

/// The memtable's rows of `snapshot` as a plan (`projection` of the `events` columns).
pub(crate) fn memtable_exec(
    snapshot: &Snapshot,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mem = MemorySourceConfig::try_new(
        std::slice::from_ref(&snapshot.memtable),
        model::events_schema(),
        projection,
    )?
    .with_limit(limit);
    Ok(DataSourceExec::from_data_source(mem))
}

/// True when some node of the predicate passes `test`.
fn contains(
    predicate: &Arc<dyn PhysicalExpr>,
    test: impl Fn(&Arc<dyn PhysicalExpr>) -> bool,
) -> bool {
    let mut found = false;
    let _ = predicate.apply(|e| {
        found = test(e);
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// True when the predicate has a `LIKE` / `ILIKE` or a regular-expression match.
fn has_text_search(predicate: &Arc<dyn PhysicalExpr>) -> bool {
    contains(predicate, |e| {
        e.downcast_ref::<LikeExpr>().is_some()
            || e.downcast_ref::<BinaryExpr>().is_some_and(|b| {
                matches!(
                    b.op(),
                    Operator::RegexMatch
                        | Operator::RegexIMatch
                        | Operator::LikeMatch
                        | Operator::ILikeMatch
                )
            })
    })
}

/// Identifiers no sidecar index holds (each value is on a handful of rows, so an index would
/// grow like the column): an equality on one keeps few of the rows the other filters leave.
const IDENTIFIER_COLUMNS: &[&str] = &[
    "exec_id",
    "parent_exec_id",
    "audit_id",
    "session_id",
    "event_id",
];

/// True when the predicate has `identifier = literal` or `identifier IN (literals)`.
fn has_identifier_lookup(predicate: &Arc<dyn PhysicalExpr>) -> bool {
    let identifier = |e: &Arc<dyn PhysicalExpr>| {
        e.downcast_ref::<PhysicalColumn>()
            .is_some_and(|c| IDENTIFIER_COLUMNS.contains(&c.name()))
    };
    contains(predicate, |e| {
        e.downcast_ref::<BinaryExpr>().is_some_and(|b| {
            b.op() == &Operator::Eq
                && ((identifier(b.left()) && b.right().downcast_ref::<Literal>().is_some())
                    || (identifier(b.right()) && b.left().downcast_ref::<Literal>().is_some()))
        }) || e
            .downcast_ref::<InListExpr>()
            .is_some_and(|l| !l.negated() && identifier(l.expr()))
    })
}

/// True when the predicate references a column the segments carry bloom filters for.
fn uses_bloom_columns(predicate: Option<&Arc<dyn PhysicalExpr>>) -> bool {
    predicate.is_some_and(|p| {
        datafusion::physical_expr::utils::collect_columns(p)
            .iter()
            .any(|c| storage::segment::BLOOM_COLUMNS.contains(&c.name()))
    })
}

/// Splits files over partitions round-robin, keeping each file whole.
fn split_files(files: Vec<PartitionedFile>, partitions: usize) -> Vec<FileGroup> {
    let n = partitions.min(files.len()).max(1);
    let mut groups: Vec<Vec<PartitionedFile>> = (0..n).map(|_| Vec::new()).collect();
    for (i, f) in files.into_iter().enumerate() {
        groups[i % n].push(f);
    }
    groups.into_iter().map(FileGroup::new).collect()
}

/// Which segments may hold a matching row, from the manifest's per-segment summaries.
fn prune_segments(
    segments: &[Arc<Segment>],
    predicate: Option<&Arc<dyn PhysicalExpr>>,
    schema: &SchemaRef,
) -> Vec<bool> {
    let all = vec![true; segments.len()];
    let Some(predicate) = predicate else {
        return all;
    };
    let Some(pruning) = PruningPredicateBuilder::new()
        .with_file_schema(schema.clone())
        .build(predicate.clone())
    else {
        return all;
    };
    match pruning.prune(&SegmentSummaries(segments)) {
        Ok(keep) => keep,
        Err(e) => {
            tracing::debug!(error = %e, "segment pruning not possible; scanning all segments");
            all
        }
    }
}

/// Per-segment statistics from the manifest: `ts` min/max, `namespace` / `pod` membership, and
/// the columns without a value.
struct SegmentSummaries<'a>(&'a [Arc<Segment>]);

impl PruningStatistics for SegmentSummaries<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        (column.name == "ts").then(|| {
            let v: TimestampNanosecondArray = self.0.iter().map(|s| Some(s.meta.min_ts)).collect();
            Arc::new(v.with_timezone("UTC")) as ArrayRef
        })
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        (column.name == "ts").then(|| {
            let v: TimestampNanosecondArray = self.0.iter().map(|s| Some(s.meta.max_ts)).collect();
            Arc::new(v.with_timezone("UTC")) as ArrayRef
        })
    }

    fn num_containers(&self) -> usize {
        self.0.len()
    }

    /// A segment's row count for the columns it has no value in (a test of a value there
    /// can match nothing); unknown for the others.
    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let v: UInt64Array = self
            .0
            .iter()
            .map(|s| {
                s.meta
                    .null_columns
                    .binary_search(&column.name)
                    .is_ok()
                    .then_some(s.meta.rows)
            })
            .collect();
        (v.null_count() < v.len()).then(|| Arc::new(v) as ArrayRef)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let v: UInt64Array = self.0.iter().map(|s| Some(s.meta.rows)).collect();
        Some(Arc::new(v))
    }

    #[allow(clippy::mutable_key_type)]
    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        let wanted: Vec<&str> = values.iter().filter_map(scalar_str).collect();
        if wanted.len() != values.len() {
            return None;
        }
        let lists: Vec<Option<&Vec<String>>> = match column.name.as_str() {
            "namespace" => self.0.iter().map(|s| Some(&s.meta.namespaces)).collect(),
            "pod" => self.0.iter().map(|s| s.meta.pods.as_ref()).collect(),
            _ => return None,
        };
        // false = the segment holds none of the values (skip it); null = unknown.
        Some(
            lists
                .into_iter()
                .map(|l| {
                    let l = l?;
                    if wanted
                        .iter()
                        .any(|w| l.binary_search_by(|x| x.as_str().cmp(w)).is_ok())
                    {
                        None
                    } else {
                        Some(false)
                    }
                })
                .collect(),
        )
    }
}

fn scalar_str(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s),
        _ => None,
    }
}

/// What the sidecar index can tell about the rows a predicate keeps: equality and `IN` tests
/// of indexed columns, combined as the predicate combines them (`AND` → intersection, `OR` →
/// union). The index only ever narrows to a superset of the matching rows; DataFusion applies
/// the predicate again to what is read.
#[derive(Debug, Clone)]
pub(crate) enum IndexFilter {
    Lookup {
        column: String,
        values: Vec<String>,
    },
    /// Any other deterministic test of one indexed column, false or NULL for a NULL value:
    /// `test` reads that column as column 0 and is evaluated over the segment's distinct values.
    Matching {
        column: String,
        test: Arc<dyn PhysicalExpr>,
    },
    All(Vec<IndexFilter>),
    Any(Vec<IndexFilter>),
}

/// How a predicate is read into an [`IndexFilter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A superset of the rows: a conjunct the index cannot read is left to the scan.
    Narrowing,
    /// Exactly the rows ([`IndexFilter::exact_rows`]): a part it cannot read refuses the whole.
    Exact,
}

/// `None` when the index cannot narrow the rows `expr` keeps (a conjunct it cannot read is
/// left to the scan; a disjunct it cannot read makes the whole `OR` unreadable).
fn index_filter(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexFilter> {
    read_index_filter(expr, Reading::Narrowing)
}

/// `expr` as an index filter whose rows ([`IndexFilter::exact_rows`]) are exactly the rows
/// `expr` keeps; `None` when a part of it is not a test the index answers.
pub(crate) fn exact_index_filter(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexFilter> {
    read_index_filter(expr, Reading::Exact)
}

fn read_index_filter(expr: &Arc<dyn PhysicalExpr>, reading: Reading) -> Option<IndexFilter> {
    let read = |e| read_index_filter(e, reading);
    if let Some(b) = expr.downcast_ref::<BinaryExpr>() {
        return match b.op() {
            Operator::And => match (read(b.left()), read(b.right())) {
                (Some(l), Some(r)) => Some(IndexFilter::All(vec![l, r])),
                (one, None) | (None, one) if reading == Reading::Narrowing => one,
                _ => None,
            },
            Operator::Or => Some(IndexFilter::Any(vec![read(b.left())?, read(b.right())?])),
            Operator::Eq => lookup(b.left(), std::slice::from_ref(b.right()))
                .or_else(|| lookup(b.right(), std::slice::from_ref(b.left())))
                .or_else(|| matching(expr)),
            _ => matching(expr),
        };
    }
    match expr.downcast_ref::<InListExpr>() {
        Some(list) if !list.negated() => lookup(list.expr(), list.list()),
        _ => matching(expr),
    }
}

/// `expr` as a test over the distinct values of the one indexed column it reads (column 0 of
/// the test's input), when [`matching`] accepts it.
pub(crate) fn value_test(expr: &Arc<dyn PhysicalExpr>) -> Option<Arc<dyn PhysicalExpr>> {
    match matching(expr)? {
        IndexFilter::Matching { test, .. } => Some(test),
        _ => None,
    }
}

/// `expr` as a test of the distinct values of the one indexed column it reads, when that is
/// sound: it reads no other column, calls nothing volatile, and does not keep a NULL (the index
/// holds no rows for NULLs, so a test that keeps them, `args IS NULL`, cannot be answered
/// from it).
fn matching(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexFilter> {
    let columns = datafusion::physical_expr::utils::collect_columns(expr);
    let [column] = columns.iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    if !INDEXED_COLUMNS.contains(&column.name()) {
        return None;
    }
    let mut volatile = false;
    let _ = expr.apply(|e| {
        volatile = e.downcast_ref::<ScalarFunctionExpr>().is_some_and(|f| {
            f.fun().signature().volatility == datafusion::logical_expr::Volatility::Volatile
        });
        Ok(if volatile {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if volatile {
        return None;
    }
    let test = expr
        .clone()
        .transform(|e| {
            Ok(match e.downcast_ref::<PhysicalColumn>() {
                Some(c) => Transformed::yes(
                    Arc::new(PhysicalColumn::new(c.name(), 0)) as Arc<dyn PhysicalExpr>
                ),
                None => Transformed::no(e),
            })
        })
        .ok()?
        .data;
    let keeps_null = evaluate(&test, column.name(), &StringArray::new_null(1))?.value(0);
    if keeps_null {
        return None;
    }
    Some(IndexFilter::Matching {
        column: column.name().to_string(),
        test,
    })
}

/// `test` over `values` (as column `name`): true where it keeps the value; `None` when it
/// cannot be evaluated there (it is then no use to the index).
fn evaluate(
    test: &Arc<dyn PhysicalExpr>,
    name: &str,
    values: &StringArray,
) -> Option<BooleanArray> {
    let schema = Schema::new(vec![Field::new(name, DataType::Utf8, true)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(values.clone())]).ok()?;
    let result = test.evaluate(&batch).ok()?.into_array(values.len()).ok()?;
    let result = result.as_any().downcast_ref::<BooleanArray>()?;
    // NULL (unknown) does not keep a row.
    Some(match result.nulls() {
        Some(nulls) => BooleanArray::new(result.values() & nulls.inner(), None),
        None => result.clone(),
    })
}

/// `column = literal` / `column IN (literals)` on an indexed string column.
fn lookup(
    column: &Arc<dyn PhysicalExpr>,
    literals: &[Arc<dyn PhysicalExpr>],
) -> Option<IndexFilter> {
    let column = column.downcast_ref::<PhysicalColumn>()?;
    if !INDEXED_COLUMNS.contains(&column.name()) {
        return None;
    }
    let values = literals
        .iter()
        .map(|l| {
            let l = l.downcast_ref::<Literal>()?;
            scalar_str(l.value()).map(str::to_string)
        })
        .collect::<Option<Vec<_>>>()?;
    Some(IndexFilter::Lookup {
        column: column.name().to_string(),
        values,
    })
}

impl IndexFilter {
    /// Rows of a segment that may match; `None` when this index cannot narrow them (a column
    /// it does not hold).
    fn rows(&self, index: &SegmentIndex) -> Option<RoaringBitmap> {
        self.rows_within(index, None)
    }

    /// [`rows`](Self::rows), of which only those in `within` are wanted: the result may leave
    /// out others, and the caller intersects it with `within`. A test over distinct values
    /// then unions each kept value's rows among `within` (a pod's run, say), not its rows in
    /// the whole segment: `kind NOT IN (..)` next to a pod's lookup was a union of nearly
    /// every row, 61 % of such a query's samples.
    fn rows_within(
        &self,
        index: &SegmentIndex,
        within: Option<&RoaringBitmap>,
    ) -> Option<RoaringBitmap> {
        match self {
            IndexFilter::Lookup { column, values } => {
                index.lookup(column, values.iter().map(String::as_str))
            }
            IndexFilter::Matching { column, test } => {
                let (_, bitmaps, kept) = kept_values(index, column, test)?;
                // A test that keeps every value (`src_ip IS NOT NULL`) only drops NULLs, and
                // its rows would be the union of every value's, which costs more than the
                // scan saves (a run container unions with an array one value at a time).
                if kept.true_count() == kept.len() {
                    return None;
                }
                Some(union_of_kept(bitmaps, &kept, within))
            }
            IndexFilter::All(parts) => {
                // Lookups first: when they leave no row, the tests over distinct values are
                // not evaluated at all, and otherwise only over the rows they leave.
                let mut rows: Option<RoaringBitmap> = within.cloned();
                for part in lookups_first(parts) {
                    if rows.as_ref().is_some_and(RoaringBitmap::is_empty) {
                        break;
                    }
                    if let Some(part_rows) = part.rows_within(index, rows.as_ref()) {
                        rows = Some(match rows {
                            Some(r) => r & part_rows,
                            None => part_rows,
                        });
                    }
                }
                rows
            }
            IndexFilter::Any(parts) => parts.iter().try_fold(RoaringBitmap::new(), |acc, p| {
                Some(acc | p.rows_within(index, within)?)
            }),
        }
    }

    /// Exactly the rows of a segment of `rows` rows that the filter's expression keeps (it was
    /// made by [`exact_index_filter`]); `None` when the index lacks one of its columns.
    pub(crate) fn exact_rows(&self, index: &SegmentIndex, rows: u32) -> Option<RoaringBitmap> {
        self.exact_rows_within(index, rows, None)
    }

    /// [`exact_rows`](Self::exact_rows) among `within` (all of a segment's rows when `None`),
    /// as [`rows_within`](Self::rows_within) narrows: the caller intersects.
    fn exact_rows_within(
        &self,
        index: &SegmentIndex,
        rows: u32,
        within: Option<&RoaringBitmap>,
    ) -> Option<RoaringBitmap> {
        match self {
            IndexFilter::Lookup { column, values } => {
                index.lookup(column, values.iter().map(String::as_str))
            }
            IndexFilter::Matching { column, test } => {
                let (_, bitmaps, kept) = kept_values(index, column, test)?;
                let non_null: u64 = bitmaps.iter().map(|b| b.len()).sum();
                if kept.true_count() == kept.len() && non_null == u64::from(rows) {
                    // Every row, without a union of every value's rows.
                    return Some(within.cloned().unwrap_or_else(|| all_rows(rows)));
                }
                Some(union_of_kept(bitmaps, &kept, within))
            }
            IndexFilter::All(parts) => {
                let mut acc: Option<RoaringBitmap> = within.cloned();
                for p in lookups_first(parts) {
                    let r = p.exact_rows_within(index, rows, acc.as_ref())?;
                    let both = match acc {
                        Some(a) => a & r,
                        None => r,
                    };
                    if both.is_empty() {
                        return Some(both);
                    }
                    acc = Some(both);
                }
                acc
            }
            IndexFilter::Any(parts) => parts.iter().try_fold(RoaringBitmap::new(), |acc, p| {
                Some(acc | p.exact_rows_within(index, rows, within)?)
            }),
        }
    }

    /// Adds the columns the filter reads to `out`.
    pub(crate) fn columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            IndexFilter::Lookup { column, .. } | IndexFilter::Matching { column, .. } => {
                out.push(column)
            }
            IndexFilter::All(parts) | IndexFilter::Any(parts) => {
                parts.iter().for_each(|p| p.columns(out))
            }
        }
    }
}

/// Each distinct value of `column` in a segment, its rows, and whether `test` keeps it;
/// `None` when the column is not indexed or the test cannot be evaluated over its values.
pub(crate) fn kept_values<'a>(
    index: &'a SegmentIndex,
    column: &str,
    test: &Arc<dyn PhysicalExpr>,
) -> Option<(Vec<&'a str>, Vec<&'a RoaringBitmap>, BooleanArray)> {
    let (values, bitmaps): (Vec<&str>, Vec<&RoaringBitmap>) = index.entries(column)?.unzip();
    let kept = evaluate(test, column, &StringArray::from(values.clone()))?;
    Some((values, bitmaps, kept))
}

/// The rows of the values `kept` keeps (only those in `within`, when given).
fn union_of_kept(
    bitmaps: Vec<&RoaringBitmap>,
    kept: &BooleanArray,
    within: Option<&RoaringBitmap>,
) -> RoaringBitmap {
    let kept = bitmaps
        .into_iter()
        .zip(kept.values())
        .filter(|(_, keep)| *keep)
        .map(|(rows, _)| rows);
    match within {
        Some(within) => kept.fold(RoaringBitmap::new(), |acc, rows| acc | (within & rows)),
        None => kept.fold(RoaringBitmap::new(), |acc, rows| acc | rows),
    }
}

/// The parts of an `AND`, lookups (the narrowest, cheapest) before tests over distinct values.
fn lookups_first(parts: &[IndexFilter]) -> impl Iterator<Item = &IndexFilter> {
    let lookups = parts
        .iter()
        .filter(|p| !matches!(p, IndexFilter::Matching { .. }));
    let tests = parts
        .iter()
        .filter(|p| matches!(p, IndexFilter::Matching { .. }));
    lookups.chain(tests)
}

/// A segment's index (read on first use), a read failure as a query error.
pub(crate) fn segment_index(segment: &Segment) -> Result<Arc<SegmentIndex>> {
    segment
        .index()
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(QueryError::from(e))))
}

/// Rows of a segment of `rows` rows that may satisfy `filter` (all of them when the index
/// cannot tell).
fn index_rows(index: &SegmentIndex, rows: u32, filter: &IndexFilter) -> RoaringBitmap {
    filter.rows(index).unwrap_or_else(|| all_rows(rows))
}

/// Every row of a segment of `rows` rows.
pub(crate) fn all_rows(rows: u32) -> RoaringBitmap {
    let mut all = RoaringBitmap::new();
    all.insert_range(0..rows);
    all
}

/// Shortest gap worth skipping. Shorter gaps between hits are read and left to the scan's
/// filter: a kind interleaved row by row with others is cheaper to decode whole than to
/// select (Parquet would turn that selection into a mask over every row anyway, after we
/// built it selector by selector), while a pod's rows, contiguous in the segment's sort
/// order, still come as one run.
const MIN_SKIP: u32 = 64;

/// Turns a row bitmap into a per-row-group plan: skip groups without hits, scan groups where
/// at least half the rows are hits, and select the runs of hits in the others (gaps under
/// [`MIN_SKIP`] read through).
fn access_plan(row_groups: &[u64], rows: &RoaringBitmap) -> ParquetAccessPlan {
    let mut plan = ParquetAccessPlan::new_all(row_groups.len());
    let mut start = 0u64;
    for (i, &n) in row_groups.iter().enumerate() {
        let range = start as u32..(start + n) as u32;
        start += n;
        // Counted from the bitmap's containers: empty and full groups need no walk of rows.
        match rows.range_cardinality(range.clone()) {
            0 => plan.skip(i),
            // Dense hits: skipping the rest saves less than half the group's decoding, and
            // finding the gaps worth skipping walks every hit (`kind = ..`: millions).
            hits if hits * 2 >= n => {}
            _ => match runs(rows, range.clone()).as_slice() {
                [only] if *only == range => {}
                runs => plan.set(i, RowGroupAccess::Selection(selection(runs, range))),
            },
        }
    }
    plan
}

/// The rows of `rows` within `range` as runs, gaps shorter than [`MIN_SKIP`] (and those to
/// the group's ends) closed.
fn runs(rows: &RoaringBitmap, range: Range<u32>) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    // Run by run of consecutive hits, not hit by hit.
    let mut hits = rows.range(range.clone());
    while let Some(hit) = hits.next_range() {
        let (start, end) = (*hit.start(), *hit.end() + 1);
        let from = runs.last().map_or(range.start, |last| last.end);
        match runs.last_mut() {
            Some(last) if start - from < MIN_SKIP => last.end = end,
            None if start - from < MIN_SKIP => runs.push(range.start..end),
            _ => runs.push(start..end),
        }
    }
    if let Some(last) = runs.last_mut()
        && range.end - last.end < MIN_SKIP
    {
        last.end = range.end;
    }
    runs
}

fn selection(runs: &[Range<u32>], range: Range<u32>) -> RowSelection {
    let mut selectors = Vec::with_capacity(2 * runs.len() + 1);
    let mut pos = range.start;
    for run in runs {
        if run.start > pos {
            selectors.push(RowSelector::skip((run.start - pos) as usize));
        }
        selectors.push(RowSelector::select((run.end - run.start) as usize));
        pos = run.end;
    }
    if range.end > pos {
        selectors.push(RowSelector::skip((range.end - pos) as usize));
    }
    RowSelection::from(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_plan_skips_selects_and_scans() {
        let mut rows = RoaringBitmap::new();
        rows.insert_range(110..120); // group 0 partially
        rows.insert_range(400..500); // group 1 fully
        let plan = access_plan(&[400, 100, 100], &rows);
        assert_eq!(plan.row_group_indexes(), vec![0, 1]);
        let sel = match &plan.inner()[0] {
            RowGroupAccess::Selection(s) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sel.row_count(), 10);
        assert!(matches!(plan.inner()[1], RowGroupAccess::Scan));
        assert!(matches!(plan.inner()[2], RowGroupAccess::Skip));
        // Hits on half a group or more: the group is scanned, its long gap included.
        let rows: RoaringBitmap = (0..60).chain(200..240).collect();
        let plan = access_plan(&[200, 100], &rows);
        assert!(matches!(plan.inner()[0], RowGroupAccess::Selection(_)));
        assert!(matches!(plan.inner()[1], RowGroupAccess::Scan));
    }

    #[test]
    fn short_gaps_are_read_through() {
        // Every other row (a kind interleaved with others): the whole group.
        let rows: RoaringBitmap = (0..1000).step_by(2).collect();
        assert!(matches!(
            access_plan(&[1000], &rows).inner()[0],
            RowGroupAccess::Scan
        ));
        // Every other row of one pod's run: that run, start to end.
        let rows: RoaringBitmap = (300..400).step_by(2).collect();
        let pod_runs = runs(&rows, 0..1000);
        assert_eq!((pod_runs.len(), &pod_runs[0]), (1, &(300..399)));
        let sel = match &access_plan(&[1000], &rows).inner()[0] {
            RowGroupAccess::Selection(s) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sel.row_count(), 99);
        // Gaps of MIN_SKIP rows are skipped; shorter ones at the group's ends are not.
        let rows: RoaringBitmap = [10, 11, 11 + MIN_SKIP + 1, 990].into_iter().collect();
        assert_eq!(runs(&rows, 0..1000), [0..12, 76..77, 990..1000]);
    }
}
