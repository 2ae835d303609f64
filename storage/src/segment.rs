//! Immutable Parquet segments: written once (temp → fsync → rename → fsync dir), never changed,
//! deleted only after the manifest stopped listing them and no reader holds them.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{SortOptions, interleave_record_batch};
use datafusion::arrow::datatypes::TimestampNanosecondType;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::metadata::{KeyValue, SortingColumn};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use crate::archive::{Archive, IndexCache};
use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;
use crate::index::{SegmentIndex, SegmentIndexBuilder};
use crate::manifest::SegmentMeta;
use crate::merkle::RootBuilder;

/// Sort order of every segment: rows of one pod's container are contiguous and in time order,
/// so pod lookups touch few pages and the index holds few runs.
pub const SORT_COLUMNS: &[&str] = &["namespace", "pod", "container_id", "ts"];
/// Direction of every [`SORT_COLUMNS`] column.
pub const SORT_OPTIONS: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

/// Rows' [`SORT_COLUMNS`] values in Arrow's row format, which compares bytewise in segment
/// order.
pub struct SortKey {
    converter: RowConverter,
}

impl SortKey {
    pub fn new() -> Result<Self> {
        let schema = model::events_schema();
        let fields = SORT_COLUMNS
            .iter()
            .map(|c| {
                let f = schema.field_with_name(c).expect("sort column");
                SortField::new_with_options(f.data_type().clone(), SORT_OPTIONS)
            })
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
        })
    }

    /// The sort keys of `batch`'s rows (comparable with those of any batch of this key).
    pub fn rows(&self, batch: &RecordBatch) -> Result<Rows> {
        let columns: Vec<_> = SORT_COLUMNS
            .iter()
            .map(|c| batch.column_by_name(c).expect("sort column").clone())
            .collect();
        Ok(self.converter.convert_columns(&columns)?)
    }
}
/// Equality columns with many distinct values get Parquet bloom filters (`parent_exec_id`:
/// an exec session's process tree is found level by level, children by their parents' ids).
pub const BLOOM_COLUMNS: &[&str] = &[
    "dst_ip",
    "container_id",
    "exec_id",
    "parent_exec_id",
    "audit_id",
];
/// Rows per data page (best effort).
const PAGE_ROWS: usize = 8 * 1024;
/// Above this many distinct pods a segment's summary does not list them.
const MAX_LISTED_PODS: usize = 4096;
const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

/// Layout of segment files.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of the column chunks.
    pub zstd_level: i32,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            row_group_rows: 128 * 1024,
            zstd_level: 3,
        }
    }
}

/// The hour bucket of a timestamp (hours since the epoch).
pub fn hour_of(ts: i64) -> i64 {
    ts.div_euclid(NANOS_PER_HOUR)
}

/// `segments/dt=YYYY-MM-DD/hour=HH`: Hive-style partitions, readable by DuckDB and Spark.
pub fn partition_dir(hour: i64) -> String {
    let dt = chrono::DateTime::from_timestamp(hour * 3600, 0).expect("hour in range");
    format!(
        "segments/dt={}/hour={}",
        dt.format("%Y-%m-%d"),
        dt.format("%H")
    )
}

/// Most bytes of string data in one sorted chunk. Arrow's `Utf8` arrays have 32-bit offsets
/// (under 2 GiB of text each), and a memtable or a compaction group can hold more than that
/// in `raw` alone, so sorted rows are never concatenated into one batch.
pub const CHUNK_BYTES: usize = 256 << 20;

/// Sorts the rows of `batches` by hour bucket, then [`SORT_COLUMNS`] (ties keep their input
/// order), into consecutive chunks of one hour and at most [`CHUNK_BYTES`] of string data each.
pub fn sort_rows(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    sort_rows_into(batches, CHUNK_BYTES)
}

/// [`sort_rows`] with chunks of at most `chunk_bytes` of string data (a row larger than that
/// is a chunk of its own).
pub(crate) fn sort_rows_into(
    batches: &[RecordBatch],
    chunk_bytes: usize,
) -> Result<Vec<RecordBatch>> {
    // Arrow's row format turns the four-column comparison into one memcmp per pair: several
    // times faster than a lexicographic sort over string columns. One key for every batch,
    // so rows of different batches compare.
    let key = SortKey::new()?;
    let keys = batches
        .iter()
        .map(|b| key.rows(b))
        .collect::<Result<Vec<_>>>()?;
    // The hour leads the order, so no chunk spans two hours and splitting a memtable into
    // its hours' segments copies nothing: filtering the sorted rows by hour copied every
    // column (`raw` included) a second time, into freshly faulted pages (perf, `ktrail ingest`).
    let mut order: Vec<(i64, usize, usize)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| {
            let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
            ts.values()
                .iter()
                .enumerate()
                .map(move |(r, t)| (hour_of(*t), b, r))
        })
        .collect();
    order.sort_unstable_by(|&(ha, ba, ra), &(hb, bb, rb)| {
        ha.cmp(&hb)
            .then_with(|| keys[ba].row(ra).cmp(&keys[bb].row(rb)))
            .then((ba, ra).cmp(&(bb, rb)))
    });
    drop(keys);
    let (hours, order): (Vec<i64>, Vec<(usize, usize)>) =
        order.into_iter().map(|(h, b, r)| (h, (b, r))).unzip();

    let strings: Vec<Vec<&datafusion::arrow::array::StringArray>> = batches
        .iter()
        .map(|b| {
            b.columns()
                .iter()
                .filter_map(|c| c.as_string_opt::<i32>())
                .collect()
        })
        .collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, &(b, r)) in order.iter().enumerate() {
        let row_bytes: usize = strings[b].iter().map(|s| s.value_length(r) as usize).sum();
        if i > start && (hours[i] != hours[start] || bytes.saturating_add(row_bytes) > chunk_bytes)
        {
            chunks.push(interleave_record_batch(&refs, &order[start..i])?);
            start = i;
            bytes = 0;
        }
        bytes += row_bytes;
    }
    if start < order.len() {
        chunks.push(interleave_record_batch(&refs, &order[start..])?);
    }
    Ok(chunks)
}

/// Groups the chunks of [`sort_rows`], one hour each and in hour order, by that hour (the
/// partition a segment belongs to).
pub fn split_by_hour(chunks: &[RecordBatch]) -> Vec<(i64, Vec<RecordBatch>)> {
    let mut hours: Vec<(i64, Vec<RecordBatch>)> = Vec::new();
    for chunk in chunks.iter().filter(|c| c.num_rows() > 0) {
        let ts = chunk.column(0).as_primitive::<TimestampNanosecondType>();
        let hour = hour_of(ts.value(0));
        debug_assert_eq!(hour, hour_of(ts.value(ts.len() - 1)), "a chunk spans hours");
        match hours.last_mut() {
            Some((h, group)) if *h == hour => group.push(chunk.clone()),
            _ => hours.push((hour, vec![chunk.clone()])),
        }
    }
    hours
}

struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `sorted` (chunks already in [`SORT_COLUMNS`] order, one hour) as segment `id` under `dir`,
/// with its index, durably; returns its manifest entry. Nothing is listed anywhere yet: the
/// caller publishes it by saving a manifest that contains it.
pub fn write_segment(
    dir: &Path,
    id: u64,
    hour: i64,
    level: u32,
    sorted: &[RecordBatch],
    options: &SegmentOptions,
) -> Result<SegmentMeta> {
    let rows = sorted.iter().map(|c| c.num_rows()).sum();
    let mut writer = SegmentWriter::create(dir, id, hour, level, rows, options)?;
    for chunk in sorted {
        writer.write(chunk)?;
    }
    writer.finish()
}

/// Deletes what writing segment `id` of `hour` left (its files and their temp files) after
/// the write or its publication failed: files of this process's own, listed nowhere.
pub fn discard_unpublished(dir: &Path, id: u64, hour: i64) {
    let rel_dir = partition_dir(hour);
    for ext in ["parquet", "idx"] {
        let path = dir.join(&rel_dir).join(format!("{id:016x}.{ext}"));
        for p in [fsutil::tmp_path(&path), path] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "could not delete an unpublished segment file")
                }
            }
        }
    }
}

/// A segment being written chunk by chunk (in [`SORT_COLUMNS`] order, one hour), so that a
/// compaction streams its merge to disk instead of holding the merged rows. The file appears
/// under its name only in [`Self::finish`]; a writer dropped before that leaves a temp file,
/// which the next open deletes.
pub struct SegmentWriter {
    dir: PathBuf,
    id: u64,
    level: u32,
    rel_path: String,
    rel_index: String,
    tmp: PathBuf,
    writer: ArrowWriter<HashingWriter>,
    index: SegmentIndexBuilder,
    rows: u64,
    min_ts: i64,
    max_ts: i64,
    /// Per `events` column: whether some row so far has a value.
    has_value: Vec<bool>,
    merkle: RootBuilder,
}

impl SegmentWriter {
    /// Starts segment `id` of `hour` under `dir`; `expected_rows` is how many rows it will
    /// hold (the index's free-text cap is a share of them).
    pub fn create(
        dir: &Path,
        id: u64,
        hour: i64,
        level: u32,
        expected_rows: usize,
        options: &SegmentOptions,
    ) -> Result<Self> {
        let rel_dir = partition_dir(hour);
        fsutil::create_dir_durable(&dir.join(&rel_dir))?;
        let rel_path = format!("{rel_dir}/{id:016x}.parquet");
        let rel_index = format!("{rel_dir}/{id:016x}.idx");
        let tmp = fsutil::tmp_path(&dir.join(&rel_path));
        let file = File::create(&tmp).at(&tmp)?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(
            sink,
            model::events_schema(),
            Some(writer_properties(options)),
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            level,
            rel_path,
            rel_index,
            tmp,
            writer,
            index: SegmentIndexBuilder::new(expected_rows),
            rows: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            has_value: vec![false; model::events_schema().fields().len()],
            merkle: RootBuilder::new(),
        })
    }

    /// Appends the segment's next rows.
    pub fn write(&mut self, chunk: &RecordBatch) -> Result<()> {
        self.writer.write(chunk)?;
        self.index.push(chunk);
        self.merkle.push_rows(chunk)?;
        let ts = chunk.column(0).as_primitive::<TimestampNanosecondType>();
        for t in ts.values() {
            self.min_ts = self.min_ts.min(*t);
            self.max_ts = self.max_ts.max(*t);
        }
        for (seen, column) in self.has_value.iter_mut().zip(chunk.columns()) {
            *seen |= column.null_count() < column.len();
        }
        self.rows += chunk.num_rows() as u64;
        Ok(())
    }

    /// Closes the Parquet file, makes it and its index durable under their names, and returns
    /// the segment's manifest entry.
    pub fn finish(mut self) -> Result<SegmentMeta> {
        let metadata = self.writer.finish()?;
        let sink = self.writer.inner_mut();
        sink.flush().at(&self.tmp)?;
        fsutil::fault_point("segment.fsync")
            .and_then(|()| sink.inner.get_ref().sync_all())
            .at(&self.tmp)?;
        let sha256 = hex::encode(sink.hasher.clone().finalize());
        let bytes = sink.bytes;
        let row_groups = metadata
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows() as u64)
            .collect();
        drop(self.writer);
        fsutil::publish(&self.tmp, &self.dir.join(&self.rel_path))?;

        let index = self.index.finish();
        let index_bytes = index.to_bytes();
        fsutil::write_atomic(&self.dir.join(&self.rel_index), &index_bytes)?;

        let (namespaces, pods, null_columns) = summaries(&index, &self.has_value);
        Ok(SegmentMeta {
            id: self.id,
            path: self.rel_path,
            index_path: self.rel_index,
            rows: self.rows,
            bytes,
            index_bytes: index_bytes.len() as u64,
            sha256,
            index_sha256: hex::encode(Sha256::digest(&index_bytes)),
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            row_groups,
            namespaces,
            pods,
            null_columns,
            level: self.level,
            merkle_root: Some(hex::encode(self.merkle.root())),
            damaged: None,
            archived: None,
        })
    }
}

/// A segment's summaries for the manifest: its namespaces, its pods (`None` past
/// [`MAX_LISTED_PODS`]) and the columns without a value (`has_value` per `events` column).
fn summaries(
    index: &SegmentIndex,
    has_value: &[bool],
) -> (Vec<String>, Option<Vec<String>>, Vec<String>) {
    let namespaces: Vec<String> = index.values("namespace").map(str::to_string).collect();
    let pods: BTreeSet<&str> = index.values("pod").collect();
    let schema = model::events_schema();
    let mut null_columns: Vec<String> = schema
        .fields()
        .iter()
        .zip(has_value)
        .filter(|(_, seen)| !**seen)
        .map(|(f, _)| f.name().clone())
        .collect();
    null_columns.sort();
    let pods =
        (pods.len() <= MAX_LISTED_PODS).then(|| pods.into_iter().map(str::to_string).collect());
    (namespaces, pods, null_columns)
}

/// The manifest entry of segment `id` from its files alone (`ktrail repair`), after checking
/// them: the Parquet file reads whole with the `events` schema, in segment order, and the
/// index file is whole (its checksum) and equal to the index built again from those rows.
/// Any failure is [`StorageError::Corruption`] naming the file. `level` is not recorded in
/// the files: it is 0.
pub fn meta_from_files(
    dir: &Path,
    id: u64,
    rel_path: &str,
    rel_index: &str,
) -> Result<SegmentMeta> {
    let path = dir.join(rel_path);
    let index_path = dir.join(rel_index);
    let corrupt = |p: &Path, reason: String| StorageError::Corruption {
        path: p.to_path_buf(),
        offset: 0,
        reason,
    };
    let bytes = fs::read(&path).at(&path)?;
    let index_bytes = fs::read(&index_path).at(&index_path)?;
    let index = SegmentIndex::from_bytes(&index_path, &index_bytes)?;
    let in_file = |e: StorageError| match e {
        StorageError::Parquet(e) => corrupt(&path, e.to_string()),
        StorageError::Arrow(e) => corrupt(&path, e.to_string()),
        e => e,
    };
    let file = File::open(&path).at(&path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| in_file(e.into()))?;
    if builder.schema().fields() != model::events_schema().fields() {
        return Err(corrupt(&path, "not the events schema".into()));
    }
    let row_groups: Vec<u64> = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows() as u64)
        .collect();
    let rows: u64 = row_groups.iter().sum();
    let mut rebuilt = SegmentIndexBuilder::new(rows as usize);
    let mut has_value = vec![false; model::events_schema().fields().len()];
    let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
    let key = SortKey::new()?;
    let mut last_row: Option<Vec<u8>> = None;
    let mut merkle = RootBuilder::new();
    for batch in builder.build().map_err(|e| in_file(e.into()))? {
        let batch = batch.map_err(|e| in_file(e.into()))?;
        let batch = RecordBatch::try_new(model::events_schema(), batch.columns().to_vec())
            .map_err(|e| in_file(e.into()))?;
        let sort_rows = key.rows(&batch)?;
        for row in sort_rows.iter() {
            if last_row.as_deref().is_some_and(|prev| prev > row.as_ref()) {
                return Err(corrupt(&path, "rows out of segment order".into()));
            }
            last_row = Some(row.as_ref().to_vec());
        }
        rebuilt.push(&batch);
        merkle.push_rows(&batch)?;
        for t in batch
            .column(0)
            .as_primitive::<TimestampNanosecondType>()
            .values()
        {
            min_ts = min_ts.min(*t);
            max_ts = max_ts.max(*t);
        }
        for (seen, column) in has_value.iter_mut().zip(batch.columns()) {
            *seen |= column.null_count() < column.len();
        }
    }
    if rebuilt.finish() != index {
        return Err(corrupt(
            &index_path,
            format!("does not index the rows of {rel_path}"),
        ));
    }
    if rows > 0 && hour_of(min_ts) != hour_of(max_ts) {
        return Err(corrupt(&path, "rows of more than one hour".into()));
    }
    let expected = format!("{}/{id:016x}.parquet", partition_dir(hour_of(min_ts)));
    if rows > 0 && rel_path != expected {
        return Err(corrupt(&path, format!("its rows belong in {expected}")));
    }
    let (namespaces, pods, null_columns) = summaries(&index, &has_value);
    Ok(SegmentMeta {
        id,
        path: rel_path.to_string(),
        index_path: rel_index.to_string(),
        rows,
        bytes: bytes.len() as u64,
        index_bytes: index_bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        index_sha256: hex::encode(Sha256::digest(&index_bytes)),
        min_ts,
        max_ts,
        row_groups,
        namespaces,
        pods,
        null_columns,
        level: 0,
        merkle_root: Some(hex::encode(merkle.root())),
        damaged: None,
        archived: None,
    })
}

fn writer_properties(options: &SegmentOptions) -> WriterProperties {
    let schema = model::events_schema();
    let sorting = SORT_COLUMNS
        .iter()
        .map(|c| SortingColumn {
            column_idx: schema.index_of(c).expect("sort column") as i32,
            descending: SORT_OPTIONS.descending,
            nulls_first: SORT_OPTIONS.nulls_first,
        })
        .collect();
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(options.zstd_level).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(options.row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Small pages: a row selection of one pod decodes a few thousand rows per column, not
        // a whole 1 MiB page.
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "ktrail.schema_version".to_string(),
            model::SCHEMA_VERSION.to_string(),
        )]));
    for c in BLOOM_COLUMNS {
        b = b.set_column_bloom_filter_enabled(ColumnPath::from(*c), true);
    }
    // Timestamps ascend within a pod's run: deltas are small. Event ids are random: a
    // dictionary only costs time before Parquet falls back to plain.
    b = b
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_column_encoding(ColumnPath::from("ts"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(ColumnPath::from(model::col::EVENT_ID), false)
        .set_column_encoding(ColumnPath::from(model::col::EVENT_ID), Encoding::PLAIN);
    b.build()
}

/// Directory of the store in `dir` holding the per-segment caches.
pub const CACHE_DIR: &str = "cache";

/// The cache directory of segment `id` in the store in `dir`.
pub fn cache_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(CACHE_DIR).join(format!("{id:016x}"))
}

/// A live segment as readers see it. Dropping the last handle of a segment that compaction
/// replaced deletes its files, so a running query never loses a file under it.
#[derive(Debug)]
pub struct Segment {
    pub meta: SegmentMeta,
    /// Absolute path of the Parquet file.
    pub path: PathBuf,
    /// Absolute path of the index file.
    pub index_path: PathBuf,
    /// Where the query layer keeps results derived from this segment alone (a cache: never
    /// evidence, rebuilt when missing), `cache/<id>/`. Deleted with the segment.
    pub cache_dir: PathBuf,
    index: OnceLock<Arc<SegmentIndex>>,
    /// Set once a check found the files as the manifest says (cleared by nothing: a file
    /// changed later is the scrub's to find).
    verified: OnceLock<()>,
    /// What a check in this process found wrong, until the manifest records it
    /// (`meta.damaged`).
    damage: OnceLock<String>,
    retired: AtomicU8,
    /// Set for a segment whose files are in an archive: `path` and `index_path` are then
    /// where they were in the store, and the index is read through the archive's cache.
    archive: Option<(Arc<Archive>, Arc<IndexCache>)>,
}

/// [`Segment::retired`]: live; replaced (files and cache go with the last handle); moved to
/// an archive (its local files go, the cache stays with the archived handle).
const LIVE: u8 = 0;
const REPLACED: u8 = 1;
const MOVED: u8 = 2;

impl Segment {
    /// A handle for a listed segment of the store in `dir`.
    pub fn new(dir: &Path, meta: SegmentMeta) -> Self {
        Self {
            path: dir.join(&meta.path),
            index_path: dir.join(&meta.index_path),
            cache_dir: cache_dir(dir, meta.id),
            meta,
            index: OnceLock::new(),
            verified: OnceLock::new(),
            damage: OnceLock::new(),
            retired: AtomicU8::new(LIVE),
            archive: None,
        }
    }

    /// A handle for a listed segment whose files are in `archive`. Its files were read back
    /// and checked there before the manifest recorded it, so a first read does not fetch
    /// them all again; [`verify`](Self::verify) does.
    pub fn archived(
        dir: &Path,
        meta: SegmentMeta,
        archive: Arc<Archive>,
        cache: Arc<IndexCache>,
    ) -> Self {
        let mut s = Self::new(dir, meta);
        s.index_path = cache.path(s.meta.id);
        s.archive = Some((archive, cache));
        let _ = s.verified.set(());
        s
    }

    /// The archive holding the segment's files, if it is archived.
    pub fn archive(&self) -> Option<&Arc<Archive>> {
        self.archive.as_ref().map(|(a, _)| a)
    }

    /// The segment's index, checked ([`verify_once`](Self::verify_once)) and read on first
    /// use, and cached.
    pub fn index(&self) -> Result<Arc<SegmentIndex>> {
        if let Some(i) = self.index.get() {
            return Ok(i.clone());
        }
        self.verify_once()?;
        let bytes = match &self.archive {
            Some((archive, cache)) => cache.load(archive, &self.meta)?,
            None => fs::read(&self.index_path).at(&self.index_path)?,
        };
        let index = Arc::new(SegmentIndex::from_bytes(&self.index_path, &bytes)?);
        Ok(self.index.get_or_init(|| index).clone())
    }

    /// A reader of the segment's Parquet file in batches of `batch_rows` rows, once the
    /// segment checked out ([`verify_once`](Self::verify_once)).
    pub fn reader(&self, batch_rows: usize) -> Result<ParquetRecordBatchReaderBuilder<File>> {
        self.verify_once()?;
        let file = File::open(&self.path).at(&self.path)?;
        Ok(ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(batch_rows))
    }

    /// Reads the whole segment (deduplication, tests).
    pub fn read_all(&self, projection: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
        if self.archive.is_some() {
            return Err(StorageError::Archive {
                url: self.archive().expect("archived").url().to_string(),
                key: self.meta.path.clone(),
                reason: "an archived segment is read by queries, not read whole".into(),
            });
        }
        let mut builder = self.reader(64 * 1024)?;
        if let Some(cols) = projection {
            let schema = builder.parquet_schema();
            let indices: Vec<usize> = cols
                .iter()
                .filter_map(|c| schema.columns().iter().position(|d| d.name() == *c))
                .collect();
            let mask = datafusion::parquet::arrow::ProjectionMask::leaves(schema, indices);
            builder = builder.with_projection(mask);
        }
        builder
            .build()?
            .map(|b| b.map_err(StorageError::from))
            .collect()
    }

    /// Every row of the segment in file order, local or archived (an archived file is fetched
    /// whole and checked against the manifest's SHA-256 first), as `events` batches.
    pub fn rows_in_order(&self) -> Result<Vec<RecordBatch>> {
        let batches: Vec<RecordBatch> = match self.archive() {
            None => self.read_all(None)?,
            Some(archive) => {
                let bytes = archive.get(&self.meta.path)?;
                let actual = hex::encode(Sha256::digest(&bytes));
                if actual != self.meta.sha256 {
                    return Err(self.found_damage(format!(
                        "{} in the archive {}: SHA-256 {actual} differs from the manifest's {}",
                        archive.key(&self.meta.path),
                        archive.url(),
                        self.meta.sha256
                    )));
                }
                ParquetRecordBatchReaderBuilder::try_new(bytes)?
                    .with_batch_size(64 * 1024)
                    .build()?
                    .map(|b| b.map_err(StorageError::from))
                    .collect::<Result<_>>()?
            }
        };
        batches
            .into_iter()
            .map(|b| {
                RecordBatch::try_new(model::events_schema(), b.columns().to_vec())
                    .map_err(StorageError::from)
            })
            .collect()
    }

    /// What is wrong with the segment, if a check found anything: recorded in the manifest,
    /// or found in this process and not recorded yet.
    pub fn damage(&self) -> Option<&str> {
        self.meta
            .damaged
            .as_ref()
            .map(|d| d.reason.as_str())
            .or_else(|| self.damage.get().map(String::as_str))
    }

    /// Recomputes both files' SHA-256 and compares them with the manifest. A difference, or a
    /// listed file gone, is damage: remembered ([`damage`](Self::damage)) and reported as
    /// [`StorageError::Damaged`] from then on, without reading again.
    pub fn verify(&self) -> Result<()> {
        if let Some(reason) = self.damage() {
            return Err(self.damaged(reason));
        }
        if let Some((archive, _)) = &self.archive {
            return self.verify_archived(archive);
        }
        for (path, expected) in [
            (&self.path, &self.meta.sha256),
            (&self.index_path, &self.meta.index_sha256),
        ] {
            let mut file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.found_damage(format!("{} is missing", path.display())));
                }
                Err(e) => return Err(e).at(path),
            };
            // Streamed: a scrub of a large segment holds a buffer, not the file.
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).at(path)?;
            let actual = hex::encode(hasher.finalize());
            if &actual != expected {
                return Err(self.found_damage(format!(
                    "{}: SHA-256 {actual} differs from the manifest's {expected}",
                    path.display()
                )));
            }
        }
        let _ = self.verified.set(());
        Ok(())
    }

    /// [`verify`](Self::verify) of the archive's copies: read back in full. An unreachable
    /// archive is an error, not damage.
    fn verify_archived(&self, archive: &Arc<Archive>) -> Result<()> {
        for (rel, expected) in [
            (&self.meta.path, &self.meta.sha256),
            (&self.meta.index_path, &self.meta.index_sha256),
        ] {
            let key = archive.key(rel);
            match archive.digest_of(rel)? {
                None => {
                    return Err(self.found_damage(format!(
                        "{key} is missing from the archive {}",
                        archive.url()
                    )));
                }
                Some((actual, _)) if &actual != expected => {
                    return Err(self.found_damage(format!(
                        "{key} in the archive {}: SHA-256 {actual} differs from the manifest's {expected}",
                        archive.url()
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// [`verify`](Self::verify) until it passes once in this process: the first reader of a
    /// segment pays for its SHA-256s, later ones do not. Damage is reported to every reader,
    /// naming the segment; nothing of a damaged segment is served.
    pub fn verify_once(&self) -> Result<()> {
        match self.verified.get() {
            Some(()) => Ok(()),
            None => self.verify(),
        }
    }

    fn found_damage(&self, reason: String) -> StorageError {
        tracing::error!(segment = self.meta.id, %reason, "damaged segment found; it is kept out of reads");
        let reason = self.damage.get_or_init(|| reason);
        self.damaged(reason)
    }

    fn damaged(&self, reason: &str) -> StorageError {
        let time = |ns: i64| {
            chrono::DateTime::from_timestamp_nanos(ns)
                .format("%Y-%m-%dT%H:%M:%S%.fZ")
                .to_string()
        };
        StorageError::Damaged {
            id: self.meta.id,
            path: self.path.clone(),
            rows: self.meta.rows,
            from: time(self.meta.min_ts),
            to: time(self.meta.max_ts),
            reason: reason.to_string(),
        }
    }

    /// True once compaction replaced the segment or it moved to an archive (its local files
    /// go with the last handle).
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst) != LIVE
    }

    /// Marks the files for deletion when the last handle goes.
    pub(crate) fn retire(&self) {
        self.retired.store(REPLACED, Ordering::SeqCst);
    }

    /// Marks the local files for deletion when the last handle goes: the segment lives on in
    /// an archive, under a new handle that keeps its cache.
    pub(crate) fn retire_moved(&self) {
        self.retired.store(MOVED, Ordering::SeqCst);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let retired = self.retired.load(Ordering::SeqCst);
        if retired != LIVE && self.archive.is_none() {
            for p in [&self.path, &self.index_path] {
                if let Err(e) = fs::remove_file(p) {
                    tracing::warn!(path = %p.display(), error = %e, "could not delete retired segment file");
                }
            }
        }
        if retired == REPLACED {
            match fs::remove_dir_all(&self.cache_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %self.cache_dir.display(), error = %e, "could not delete a retired segment's cache");
                }
                _ => {}
            }
        }
    }
}

/// The row ids of a segment's `event_id` column (for deduplication).
pub fn event_ids(segment: &Segment) -> Result<Vec<i64>> {
    if let Some(archive) = segment.archive() {
        segment.verify_once()?;
        return archive.event_ids(&segment.meta);
    }
    let mut ids = Vec::with_capacity(segment.meta.rows as usize);
    for b in segment.read_all(Some(&["event_id"]))? {
        let col = b
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        debug_assert_eq!(col.null_count(), 0);
        ids.extend_from_slice(col.values());
    }
    Ok(ids)
}
