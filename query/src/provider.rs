//! The `events` table: a snapshot of the store's segments (pruned by the manifest's summaries,
//! narrowed by the sidecar indexes) unioned with its memtable.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
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
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column as PhysicalColumn, InListExpr, LikeExpr, Literal,
};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use futures::FutureExt;
use futures::future::BoxFuture;
use storage::{Snapshot, Store};

use crate::QueryError;
use crate::access_plan::access_plan;
use crate::index_filter::{index_filter, index_rows, segment_index};
use crate::prune::prune_segments;
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
        let mut snapshot = self.store.snapshot();
        let allow_damaged = state
            .config_options()
            .extensions
            .get::<crate::KtrailOptions>()
            .is_some_and(|o| o.allow_damaged);
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
        let mut archived = std::collections::BTreeMap::new();
        for (segment, keep) in snapshot.segments.iter().zip(keep) {
            if !keep {
                continue;
            }
            // The first read of a segment in this process checks its SHA-256s, before its
            // index is trusted: a damaged segment fails the query naming it, never serves rows.
            match segment.verify_once() {
                Err(storage::StorageError::Damaged {
                    id,
                    rows,
                    from,
                    to,
                    reason,
                    ..
                }) if allow_damaged => {
                    tracing::warn!(segment = id, events = rows, %from, %to, %reason, "skipped a damaged segment ({})", crate::ALLOW_DAMAGED);
                    stats.damaged_segments_skipped += 1;
                    stats.damaged_rows_skipped += rows;
                    continue;
                }
                Err(e) => {
                    return Err(datafusion::error::DataFusionError::External(Box::new(
                        QueryError::from(e),
                    )));
                }
                Ok(()) => {}
            }
            let path = match segment.archive() {
                Some(archive) => archive.key(&segment.meta.path).to_string(),
                None => segment.path.to_string_lossy().into_owned(),
            };
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
            stats.segments_scanned += 1;
            match segment.archive() {
                Some(archive) => {
                    stats.archived_segments_scanned += 1;
                    archived
                        .entry(archive.url().to_string())
                        .or_insert_with(|| (archive.clone(), Vec::new()))
                        .1
                        .push(file);
                }
                None => files.push(file),
            }
        }

        let mut sources = Vec::new();
        if !files.is_empty() {
            let url = ObjectStoreUrl::local_filesystem();
            let store = state.runtime_env().object_store(&url)?;
            sources.push((url, store, files));
        }
        for (archive, files) in archived.into_values() {
            let url = ObjectStoreUrl::parse(archive.store_url())?;
            // The plan's file opener looks the store up by URL; the reader below reads.
            state
                .runtime_env()
                .register_object_store(url.as_ref(), archive.object_store());
            sources.push((url, archive.object_store(), files));
        }
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for (url, store, files) in sources {
            let reader = PageIndexedReaderFactory(CachedParquetFileReaderFactory::new(
                store,
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
        // What plans built on this scan read (grouped counts from the indexes) leaves out the
        // damaged segments: skipped above, or pruned (none of their rows can match).
        snapshot.segments.retain(|s| s.damage().is_none());
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
