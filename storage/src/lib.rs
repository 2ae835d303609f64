//! ktrail's storage: a durable WAL, an in-memory memtable, immutable indexed Parquet segments and
//! the manifest that lists them.
//!
//! Invariants this crate owns (see `ARCHITECTURE.md`):
//! - [`Store::append`] (or [`PendingAppend::wait`] after [`Store::submit`]) returns only after
//!   the events are fsynced in the WAL; from then on they are visible to [`Store::snapshot`]
//!   and survive a crash.
//! - Segments are immutable; a segment exists for readers iff the manifest lists it.
//! - Row `i` of a segment's index is row `i` of its Parquet file.
//! - The WAL is trimmed only after the manifest recording the flush is durable.

mod compaction;
mod error;
pub mod fsutil;
pub mod index;
pub mod manifest;
mod repair;
pub mod segment;
pub mod wal;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Int64Type, TimestampNanosecondType};
use parking_lot::{Condvar, Mutex, RwLock};

pub use error::{Result, StorageError};
pub use index::{INDEXED_COLUMNS, SegmentIndex};
pub use manifest::{Manifest, SegmentMeta};
pub use repair::{RepairReport, repair};
pub use segment::{Segment, SegmentOptions};
pub use wal::{ReplayReport, WalOptions};

use error::IoContext;
use wal::Wal;

/// Tuning of a store. [`StoreOptions::default`] is what the binary uses.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub wal: WalOptions,
    pub segment: SegmentOptions,
    /// Flush the memtable into segments once it holds this many rows, or this many bytes of
    /// Arrow buffers (records with large `raw` fill memory long before the row count)…
    pub memtable_max_rows: usize,
    pub memtable_max_bytes: usize,
    /// …or once its oldest row is this old.
    pub memtable_max_age: Duration,
    /// Merge the segments of an hour and size tier once at least this many of them fit
    /// together in…
    pub compaction_min_segments: usize,
    /// …this many rows (the size compaction aims for).
    pub compaction_target_rows: u64,
    /// Segments of an hour under this many rows share one size tier, whatever their sizes.
    pub compaction_small_rows: u64,
    /// Run flushes and compactions on a background thread.
    pub background: bool,
    /// zstd level of WAL payloads (0: uncompressed).
    pub wal_zstd_level: i32,
    /// Event ids the deduplication keeps in memory (about 10 bytes each): past it, the hours
    /// used least recently are dropped and read again from their segments when a batch
    /// touches them again.
    pub dedup_max_ids: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            wal: WalOptions::default(),
            segment: SegmentOptions::default(),
            memtable_max_rows: 1 << 20,
            memtable_max_bytes: 512 << 20,
            memtable_max_age: Duration::from_secs(60),
            compaction_min_segments: 4,
            compaction_target_rows: 8 << 20,
            compaction_small_rows: 128 << 10,
            background: true,
            // zstd's fast mode: measured 1.07 M events/s durable vs 0.89 M at level 1.
            wal_zstd_level: -3,
            // 16 M ids: about 160 MiB, more than a day of a busy node's events.
            dedup_max_ids: 16 << 20,
        }
    }
}

/// What [`Store::append`] did with a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Rows now durable.
    pub accepted: usize,
    /// Rows dropped because an event with the same `event_id` is already stored.
    pub duplicates: usize,
}

/// A batch handed to the WAL by [`Store::submit`], not yet acknowledged.
///
/// It holds a handle of the store, so it can be waited for on another thread or task (the
/// gRPC service keeps two in flight per stream).
#[must_use = "a batch is acknowledged only when wait() returns"]
pub struct PendingAppend {
    store: Store,
    outcome: AppendOutcome,
    /// `None` when nothing is to be waited for: no row accepted and no duplicate counted
    /// against a batch not yet durable.
    durable: Option<wal::Pending>,
}

impl PendingAppend {
    /// Blocks until the batch is durable. **When this returns `Ok`, the accepted rows are
    /// durable** and visible to every later [`Store::snapshot`], exactly as after
    /// [`Store::append`].
    pub fn wait(self) -> Result<AppendOutcome> {
        if let Some(durable) = self.durable {
            durable.wait()?;
            if self.outcome.accepted > 0 {
                self.store.after_append();
            }
        }
        Ok(self.outcome)
    }
}

/// Appends a stream of batches with up to [`AppendPipeline::IN_FLIGHT`] of them submitted and
/// not yet durable, so that a reader parses its next batch while the WAL syncs the last one
/// (one thread otherwise spends every fsync idle). Each batch's outcome goes to `on_durable`,
/// in order, once the batch is durable. Dropped without [`finish`](Self::finish), the batches
/// still in flight may become durable but are never acknowledged.
pub struct AppendPipeline<'a, T> {
    store: &'a Store,
    in_flight: std::collections::VecDeque<(T, PendingAppend)>,
    on_durable: &'a mut dyn FnMut(T, AppendOutcome),
}

impl<'a, T> AppendPipeline<'a, T> {
    /// Batches submitted and not yet waited for. Two let parsing overlap the sync of the
    /// previous batch; more would only hold more memory outside the memtable's accounting.
    pub const IN_FLIGHT: usize = 2;

    pub fn new(store: &'a Store, on_durable: &'a mut dyn FnMut(T, AppendOutcome)) -> Self {
        Self {
            store,
            in_flight: std::collections::VecDeque::with_capacity(Self::IN_FLIGHT + 1),
            on_durable,
        }
    }

    /// Submits `batch` (labelled `tag` for `on_durable`); first waits for the oldest batch
    /// when [`IN_FLIGHT`](Self::IN_FLIGHT) are pending. An error is the first failed append:
    /// nothing submitted after a failure is acknowledged.
    pub fn push(&mut self, tag: T, batch: RecordBatch) -> Result<()> {
        if self.in_flight.len() >= Self::IN_FLIGHT {
            self.wait_oldest()?;
        }
        let pending = self.store.submit(batch)?;
        self.in_flight.push_back((tag, pending));
        Ok(())
    }

    /// Waits for every batch submitted. **When this returns `Ok`, every batch pushed is
    /// durable.**
    pub fn finish(mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        if let Some((tag, pending)) = self.in_flight.pop_front() {
            let outcome = pending.wait()?;
            (self.on_durable)(tag, outcome);
        }
        Ok(())
    }
}

/// A consistent view for readers: the segments listed at one instant and the memtable rows not
/// yet in them. Holding it keeps the segments' files alive.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub segments: Vec<Arc<Segment>>,
    pub memtable: Vec<RecordBatch>,
}

impl Snapshot {
    /// Every event id in the snapshot, segments' then the memtable's, in no given order.
    pub fn event_ids(&self) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(self.rows() as usize);
        for s in &self.segments {
            ids.extend(segment::event_ids(s)?);
        }
        for b in &self.memtable {
            ids.extend_from_slice(ids_and_times(b).0);
        }
        Ok(ids)
    }

    /// Rows in the snapshot.
    pub fn rows(&self) -> u64 {
        self.segments.iter().map(|s| s.meta.rows).sum::<u64>()
            + self
                .memtable
                .iter()
                .map(|b| b.num_rows() as u64)
                .sum::<u64>()
    }
}

struct State {
    manifest: Manifest,
    segments: Vec<Arc<Segment>>,
    /// Durable rows not yet in segments, with their WAL sequence numbers, in sequence order.
    memtable: Vec<(u64, RecordBatch)>,
    memtable_rows: usize,
    memtable_bytes: usize,
    memtable_since: Option<Instant>,
    /// WAL sequence number of the last batch appended (or replayed): the content's version.
    last_seq: u64,
}

/// Event ids already stored, by hour bucket; an hour is loaded from its segments on first use.
/// At most `max_ids` ids are kept (plus the hours one batch touches): the hour used least
/// recently goes first, once no record that reserved ids in it is still on its way to the WAL
/// (its set is then exactly its segments' and the memtable's ids, so reading it again gives
/// the same set).
#[derive(Default)]
struct Dedup {
    hours: HashMap<i64, HourIds>,
    ids: usize,
    /// Counts reservations, for least-recently-used.
    clock: u64,
}

struct HourIds {
    ids: IdSet,
    last_used: u64,
    /// The WAL ticket ([`wal::Wal::submitted`]) of the last record that reserved ids here.
    last_ticket: u64,
}

/// A batch's `event_id` and `ts` values (the schema is checked before any batch gets here).
fn ids_and_times(batch: &RecordBatch) -> (&[i64], &[i64]) {
    let ids = batch
        .column_by_name(model::col::EVENT_ID)
        .expect("schema checked")
        .as_primitive::<Int64Type>()
        .values();
    let ts = batch
        .column(0)
        .as_primitive::<TimestampNanosecondType>()
        .values();
    (ids, ts)
}

impl Dedup {
    /// Drops least recently used hours (none of `keep`) until at most `max_ids` ids are held;
    /// an hour with records still in the WAL's queue (ticket above `processed`) stays.
    fn evict(&mut self, max_ids: usize, keep: &[i64], processed: u64) {
        while self.ids > max_ids {
            let victim = self
                .hours
                .iter()
                .filter(|(h, e)| !keep.contains(h) && e.last_ticket <= processed)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(h, _)| *h);
            let Some(hour) = victim else { return };
            let gone = self.hours.remove(&hour).expect("found above");
            self.ids -= gone.ids.len();
        }
    }

    /// Forgets the ids of `batch`, reserved by an append that failed, so a retry stores them.
    fn release(&mut self, batch: &RecordBatch) {
        let (ids, ts) = ids_and_times(batch);
        for (id, t) in ids.iter().zip(ts.iter()) {
            if let Some(hour) = self.hours.get_mut(&segment::hour_of(*t))
                && hour.ids.remove(id)
            {
                self.ids -= 1;
            }
        }
    }
}

/// Event ids of one hour. aHash, not the standard SipHash: hashing was most of the
/// deduplication's time (perf, `ingest_durable/grpc_arrow_ipc_no_raw`), and aHash is still
/// randomly keyed per process against ids chosen to collide.
type IdSet = HashSet<i64, ahash::RandomState>;

struct Inner {
    dir: PathBuf,
    options: StoreOptions,
    state: Arc<RwLock<State>>,
    dedup: Arc<Mutex<Dedup>>,
    /// Held from reserving a batch's ids to handing it to the WAL, so batches reach the WAL
    /// in the order their ids were reserved (see [`Store::submit`]).
    submit_order: Mutex<()>,
    /// Serialises flushes and compactions (the manifest has one writer).
    maintenance: Mutex<()>,
    wal: Wal<RecordBatch>,
    wake: Condvar,
    wake_lock: Mutex<bool>,
    _lock: File,
}

/// The store in one directory. Cheap to clone; one process owns a directory at a time.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    background: Option<Arc<BackgroundThread>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

struct BackgroundThread {
    inner: Arc<Inner>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for BackgroundThread {
    fn drop(&mut self) {
        *self.inner.wake_lock.lock() = true;
        self.inner.wake.notify_all();
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

/// What [`Store::open`] found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub wal: ReplayReport,
    /// Files left over from a crash that were deleted: temp files, and segment files of a
    /// flush or compaction that never reached the manifest (ids it had not handed out yet).
    pub removed_orphans: Vec<PathBuf>,
    /// Segment files the manifest does not account for, moved to `quarantine/` (never
    /// deleted): where each was and where it is now.
    pub quarantined: Vec<(PathBuf, PathBuf)>,
}

/// Directory of a store where files it cannot account for are moved, never deleted.
pub const QUARANTINE_DIR: &str = "quarantine";

impl Store {
    /// Opens or creates the store in `dir`: takes the directory lock, loads the manifest, checks
    /// that every listed file is there, deletes crash leftovers and replays the WAL.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<(Store, OpenReport)> {
        let dir = dir.as_ref().to_path_buf();
        fsutil::create_dir_durable(&dir)?;
        let dir = dir.canonicalize().at(&dir)?;
        let lock = lock_dir(&dir)?;

        let manifest = match Manifest::load(&dir) {
            Ok(Some(m)) => m,
            Ok(None) => {
                // A new store saves its manifest before anything else, so a segment file
                // without one means the manifest was lost, not that the store is new.
                if let Some(found) = first_segment_file(&dir)? {
                    return Err(StorageError::ManifestLost {
                        path: dir.join(manifest::MANIFEST_FILE),
                        reason: format!("missing, but {} exists", found.display()),
                    });
                }
                let m = Manifest {
                    schema_version: model::SCHEMA_VERSION,
                    next_segment_id: 1,
                    ..Default::default()
                };
                m.save(&dir)?;
                m
            }
            Err(StorageError::Corruption { path, reason, .. }) => {
                return Err(StorageError::ManifestLost { path, reason });
            }
            Err(e) => return Err(e),
        };
        let mut report = OpenReport::default();
        check_listed_files(&dir, &manifest)?;
        remove_orphans(&dir, &manifest, &mut report)?;

        let segments: Vec<Arc<Segment>> = manifest
            .segments
            .iter()
            .map(|m| Arc::new(Segment::new(&dir, m.clone())))
            .collect();
        let last_seq = manifest.flushed_seq;
        let state = Arc::new(RwLock::new(State {
            manifest,
            segments,
            memtable: Vec::new(),
            memtable_rows: 0,
            memtable_bytes: 0,
            memtable_since: None,
            last_seq,
        }));
        let sink_state = state.clone();
        let sink: wal::DurableSink<RecordBatch> = Arc::new(move |seq, batch: RecordBatch| {
            let mut st = sink_state.write();
            st.memtable_rows += batch.num_rows();
            st.memtable_bytes += memory_of(&batch);
            st.memtable_since.get_or_insert_with(Instant::now);
            st.last_seq = seq;
            st.memtable.push((seq, batch));
        });
        let dedup = Arc::new(Mutex::new(Dedup::default()));
        let failed_dedup = dedup.clone();
        let failed: wal::FailedSink<RecordBatch> =
            Arc::new(move |batch: RecordBatch| failed_dedup.lock().release(&batch));
        let flushed_seq = state.read().manifest.flushed_seq;
        let wal_dir = dir.join("wal");
        let mut replayed = Vec::new();
        let (wal, wal_report) = Wal::open(
            &wal_dir,
            flushed_seq,
            options.wal.clone(),
            sink,
            failed,
            |seq, payload| {
                let batch =
                    wal::decode_batch(payload).map_err(|reason| StorageError::Corruption {
                        path: wal_dir.clone(),
                        offset: 0,
                        reason: format!("WAL record {seq}: {reason}"),
                    })?;
                replayed.push((seq, batch));
                Ok(())
            },
        )?;
        {
            let mut st = state.write();
            for (seq, batch) in replayed {
                st.memtable_rows += batch.num_rows();
                st.memtable_bytes += memory_of(&batch);
                st.last_seq = seq;
                st.memtable.push((seq, batch));
            }
            if st.memtable_rows > 0 {
                st.memtable_since = Some(Instant::now());
            }
        }
        report.wal = wal_report;

        let inner = Arc::new(Inner {
            dir,
            options,
            state,
            dedup,
            submit_order: Mutex::new(()),
            maintenance: Mutex::new(()),
            wal,
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
            _lock: lock,
        });
        let background = inner.options.background.then(|| {
            let bg = inner.clone();
            let handle = std::thread::Builder::new()
                .name("ktrail-maintenance".into())
                .spawn(move || bg.background_loop())
                .expect("spawn maintenance thread");
            Arc::new(BackgroundThread {
                inner: inner.clone(),
                handle: Mutex::new(Some(handle)),
            })
        });
        Ok((Store { inner, background }, report))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends a batch of `events`: rows whose `event_id` is already stored are dropped, the rest
    /// are written to the WAL. **When this returns `Ok`, the accepted rows are durable** (fsynced)
    /// and visible to every later [`snapshot`](Self::snapshot).
    pub fn append(&self, batch: RecordBatch) -> Result<AppendOutcome> {
        self.submit(batch)?.wait()
    }

    /// [`append`](Self::append) in two steps: the batch is deduplicated, encoded and handed to
    /// the WAL here, and is acknowledged only when [`PendingAppend::wait`] returns `Ok`. The
    /// caller may prepare its next batch meanwhile (see [`AppendPipeline`]). Batches become
    /// durable in the order they are submitted.
    pub fn submit(&self, batch: RecordBatch) -> Result<PendingAppend> {
        check_schema(&batch)?;
        self.make_room()?;
        let level = self.inner.options.wal_zstd_level;
        // Encoded before the order lock (most batches have no duplicate), so appenders
        // encode in parallel.
        let mut payload = (batch.num_rows() > 0)
            .then(|| wal::encode_batch(&batch, level))
            .transpose()?;
        let mut outcome = AppendOutcome::default();
        let _order = self.inner.submit_order.lock();
        // The WAL's failure count before any id is reserved: a duplicate may be counted
        // against a batch submitted earlier and not yet durable, so this batch is
        // acknowledged only if no write failed since (else that event could be in neither).
        let guard = self.inner.wal.failures();
        // An empty batch reserves nothing and accepts nothing: no WAL record is written.
        let fresh = self.inner.reserve_ids(&batch)?;
        outcome.duplicates = fresh.len() - fresh.true_count();
        let batch = if outcome.duplicates == 0 {
            batch
        } else {
            let kept = filter_record_batch(&batch, &fresh)?;
            payload = (kept.num_rows() > 0)
                .then(|| wal::encode_batch(&kept, level))
                .transpose()
                .inspect_err(|_| self.inner.dedup.lock().release(&kept))?;
            kept
        };
        outcome.accepted = batch.num_rows();
        let guard = (outcome.duplicates > 0).then_some(guard);
        let durable = match (payload, guard) {
            (Some(payload), guard) => Some(self.inner.wal.submit_guarded(payload, batch, guard)?),
            (None, Some(guard)) => Some(self.inner.wal.barrier(guard)?),
            (None, None) => None,
        };
        Ok(PendingAppend {
            store: self.clone(),
            outcome,
            durable,
        })
    }

    /// Bounds the memtable when flushes fail: at twice its limit the appender flushes
    /// itself, and while that fails appends are refused (the flush's error says why; they
    /// resume once one succeeds) instead of growing the memtable without end.
    fn make_room(&self) -> Result<()> {
        if self.inner.memtable_fill() < 2.0 {
            return Ok(());
        }
        self.inner
            .flush()
            .map_err(|e| StorageError::FlushFailing(Box::new(e)))
    }

    /// Why the store refuses appends now, if it does: the last WAL write found no space (it
    /// takes appends again once one fits), or a write failure poisoned it.
    pub fn write_refusal(&self) -> Option<String> {
        self.inner.wal.refusing()
    }

    fn after_append(&self) {
        let fill = self.inner.memtable_fill();
        if fill >= 2.0 || (fill >= 1.0 && self.background.is_none()) {
            // Back-pressure: the writer that overfills the memtable flushes it.
            if let Err(e) = self.inner.flush() {
                tracing::error!(error = %e, "flush failed");
            }
        } else if fill >= 1.0 {
            self.inner.wake.notify_all();
        }
    }

    /// A consistent view of everything acknowledged so far.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.inner.state.read();
        Snapshot {
            dir: self.inner.dir.clone(),
            segments: st.segments.clone(),
            memtable: st.memtable.iter().map(|(_, b)| b.clone()).collect(),
        }
    }

    /// The version of the store's content: it changes when events are appended, and only
    /// then (flushes and compactions move rows, they do not change them). Equal versions of
    /// one open store mean equal query answers, so results derived from the whole history can
    /// be kept until it changes.
    pub fn version(&self) -> u64 {
        self.inner.state.read().last_seq
    }

    /// A copy of the current manifest.
    pub fn manifest(&self) -> Manifest {
        self.inner.state.read().manifest.clone()
    }

    /// Writes the memtable into segments, publishes them in the manifest and trims the WAL.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Merges segments of each hour that are of one size tier (what the background thread
    /// does after flushes); returns how many segments were replaced.
    pub fn compact(&self) -> Result<usize> {
        self.inner.compact(Compaction::Tiered)
    }

    /// Merges each hour's segments into as few as `compaction_target_rows` allows, whatever
    /// their sizes (`ktrail compact`: fewer files per query, at the cost of rewriting them);
    /// returns how many segments were replaced.
    pub fn compact_major(&self) -> Result<usize> {
        self.inner.compact(Compaction::Major)
    }

    /// Recomputes the SHA-256 of every segment and index file and compares it with the manifest.
    pub fn verify(&self) -> Result<usize> {
        let segments = self.snapshot().segments;
        for s in &segments {
            s.verify()?;
        }
        Ok(segments.len())
    }

    /// True when an input with this fingerprint was ingested completely before.
    pub fn has_fingerprint(&self, fingerprint: &str) -> bool {
        self.inner
            .state
            .read()
            .manifest
            .fingerprints
            .contains(fingerprint)
    }

    /// Records that the input with this fingerprint is ingested completely (call after its
    /// events were appended). Durable when it returns.
    pub fn record_fingerprint(&self, fingerprint: &str) -> Result<()> {
        let _m = self.inner.maintenance.lock();
        let mut manifest = self.inner.state.read().manifest.clone();
        if manifest.fingerprints.insert(fingerprint.to_string()) {
            manifest.save(&self.inner.dir)?;
            self.inner.state.write().manifest = manifest;
        }
        Ok(())
    }

    /// Stops the background thread, flushes the memtable and compacts what became small.
    pub fn close(self) -> Result<()> {
        drop(self.background);
        self.inner.flush()?;
        self.inner.compact(Compaction::Tiered).map(|_| ())
    }
}

/// The memory `batch` holds: each allocation behind its buffers counted once.
///
/// Arrow's `get_array_memory_size` counts a buffer's whole allocation for every buffer, and a
/// batch read from Arrow IPC (a WAL record, a gRPC message) has all its buffers sliced from one
/// message allocation: a 1.3 MB stream of 5 000 events reported 178 MB, so the memtable looked
/// full after a few such batches.
fn memory_of(batch: &RecordBatch) -> usize {
    use datafusion::arrow::array::{Array, ArrayData};
    fn walk(data: &ArrayData, seen: &mut HashSet<usize>, total: &mut usize) {
        let nulls = data.nulls().map(|n| n.buffer());
        for b in data.buffers().iter().chain(nulls) {
            if seen.insert(b.data_ptr().as_ptr() as usize) {
                *total += b.capacity();
            }
        }
        for child in data.child_data() {
            walk(child, seen, total);
        }
    }
    let (mut seen, mut total) = (HashSet::new(), 0);
    for column in batch.columns() {
        walk(&column.to_data(), &mut seen, &mut total);
    }
    total
}

impl Inner {
    /// How full the memtable is: 1.0 at its row or byte limit, whichever comes first.
    fn memtable_fill(&self) -> f64 {
        let st = self.state.read();
        let rows = st.memtable_rows as f64 / self.options.memtable_max_rows.max(1) as f64;
        let bytes = st.memtable_bytes as f64 / self.options.memtable_max_bytes.max(1) as f64;
        rows.max(bytes)
    }

    /// Marks each row's event id as stored; `true` for rows seen for the first time.
    fn reserve_ids(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let (ids, ts) = ids_and_times(batch);
        // A batch's rows come in runs of one hour (producers write in time order), so an
        // hour's set is looked up and grown once per run, not rehashed as it fills.
        let mut runs: Vec<(i64, std::ops::Range<usize>)> = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            let hour = segment::hour_of(*t);
            match runs.last_mut() {
                Some((h, r)) if *h == hour => r.end = i + 1,
                _ => runs.push((hour, i..i + 1)),
            }
        }
        let mut dedup = self.dedup.lock();
        let dedup = &mut *dedup;
        // Every hour's set is loaded before any id is marked, so a failed load leaves no id
        // of this (rejected) batch marked as stored.
        for (hour, _) in &runs {
            if let Entry::Vacant(e) = dedup.hours.entry(*hour) {
                let ids = self.stored_ids(*hour)?;
                dedup.ids += ids.len();
                e.insert(HourIds {
                    ids,
                    last_used: 0,
                    last_ticket: 0,
                });
            }
        }
        // The caller holds `submit_order` and hands this batch to the WAL next: its ticket.
        let ticket = self.wal.submitted() + 1;
        dedup.clock += 1;
        let mut fresh = BooleanBufferBuilder::new(ids.len());
        for (hour, rows) in &runs {
            let entry = dedup.hours.get_mut(hour).expect("loaded above");
            entry.last_used = dedup.clock;
            entry.last_ticket = ticket;
            let before = entry.ids.len();
            entry.ids.reserve(rows.len());
            for id in &ids[rows.clone()] {
                fresh.append(entry.ids.insert(*id));
            }
            dedup.ids += entry.ids.len() - before;
        }
        let touched: Vec<i64> = runs.iter().map(|(h, _)| *h).collect();
        dedup.evict(self.options.dedup_max_ids, &touched, self.wal.processed());
        Ok(BooleanArray::new(fresh.finish(), None))
    }

    /// Ids of events of one hour already in segments or the memtable.
    fn stored_ids(&self, hour: i64) -> Result<IdSet> {
        let (segments, memtable) = {
            let st = self.state.read();
            let segs: Vec<Arc<Segment>> = st
                .segments
                .iter()
                .filter(|s| segment::hour_of(s.meta.min_ts) == hour)
                .cloned()
                .collect();
            let mem: Vec<RecordBatch> = st.memtable.iter().map(|(_, b)| b.clone()).collect();
            (segs, mem)
        };
        let mut set = IdSet::default();
        for s in segments {
            s.verify_once()?;
            set.extend(segment::event_ids(&s)?);
        }
        for b in memtable {
            let ids = b
                .column_by_name(model::col::EVENT_ID)
                .expect("schema")
                .as_primitive::<Int64Type>();
            let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
            for (id, t) in ids.values().iter().zip(ts.values().iter()) {
                if segment::hour_of(*t) == hour {
                    set.insert(*id);
                }
            }
        }
        Ok(set)
    }

    fn flush(&self) -> Result<()> {
        let _m = self.maintenance.lock();
        // Everything appended so far goes to closed WAL files, which trim can then delete.
        self.wal.rotate()?;
        let (batches, upto_seq) = {
            let st = self.state.read();
            let Some(&(last, _)) = st.memtable.last() else {
                return Ok(());
            };
            (
                st.memtable
                    .iter()
                    .map(|(_, b)| b.clone())
                    .collect::<Vec<_>>(),
                last,
            )
        };
        let sorted = segment::sort_rows(&batches)?;
        let mut manifest = self.state.read().manifest.clone();
        let mut new_segments = Vec::new();
        let mut written = Vec::new();
        let published = (|| {
            for (hour, rows) in segment::split_by_hour(&sorted) {
                let id = manifest.next_segment_id;
                manifest.next_segment_id += 1;
                written.push((id, hour));
                let meta =
                    segment::write_segment(&self.dir, id, hour, 0, &rows, &self.options.segment)
                        .map_err(SaveFailure::NotSaved)?;
                manifest.segments.push(meta.clone());
                new_segments.push(Arc::new(Segment::new(&self.dir, meta)));
            }
            manifest.flushed_seq = upto_seq;
            save_manifest(&self.dir, &manifest)
        })();
        let saved_anyway = match published {
            Ok(()) => None,
            Err(SaveFailure::NotSaved(e)) => {
                // Files of this flush alone, listed nowhere: they would only hold the space
                // a full disk needs back (the rows stay in the memtable and the WAL).
                for (id, hour) in written {
                    segment::discard_unpublished(&self.dir, id, hour);
                }
                return Err(e);
            }
            Err(SaveFailure::OnDisk(e)) => Some(e),
        };
        {
            let mut st = self.state.write();
            st.manifest = manifest;
            st.segments.extend(new_segments);
            st.memtable.retain(|(seq, _)| *seq > upto_seq);
            st.memtable_rows = st.memtable.iter().map(|(_, b)| b.num_rows()).sum();
            st.memtable_bytes = st.memtable.iter().map(|(_, b)| memory_of(b)).sum();
            st.memtable_since = (st.memtable_rows > 0).then(Instant::now);
        }
        if let Some(e) = saved_anyway {
            // The new manifest is in place but its directory sync failed: its segments stay
            // and are listed; the WAL keeps the records until a later save is durable.
            return Err(e);
        }
        // Only now, with the manifest durable, may the WAL forget these records.
        self.wal.trim(upto_seq)?;
        Ok(())
    }

    /// Merges segments (see [`compaction::plan`]) until no group is left worth merging;
    /// returns how many segments were replaced.
    fn compact(&self, how: Compaction) -> Result<usize> {
        let _m = self.maintenance.lock();
        let (min_segments, small_rows, threads) = match how {
            // Beside ingest: one thread, the other core parses.
            Compaction::Tiered => (
                self.options.compaction_min_segments,
                self.options.compaction_small_rows,
                1,
            ),
            // Every segment of an hour in one tier: any two that fit the target are merged.
            // Nothing else runs (`ktrail compact`), so every core merges.
            Compaction::Major => (
                2,
                u64::MAX,
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        };
        let mut replaced = 0;
        loop {
            let groups = compaction::plan(
                &self.state.read().segments,
                min_segments,
                self.options.compaction_target_rows,
                small_rows,
            );
            if groups.is_empty() {
                return Ok(replaced);
            }
            let segments: usize = groups.iter().map(Vec::len).sum();
            self.merge_groups(groups, threads)?;
            replaced += segments;
        }
    }

    /// Merges each group (disjoint sets of segments) into a new segment on up to `threads`
    /// threads, publishing each new segment as soon as it is written. The caller holds the
    /// maintenance lock, so nothing else changes the manifest meanwhile.
    fn merge_groups(&self, groups: Vec<Vec<Arc<Segment>>>, threads: usize) -> Result<()> {
        let first_id = self.state.read().manifest.next_segment_id;
        let threads = threads.min(groups.len()).max(1);
        // Popped from the back: in id order.
        let mut work: Vec<(u64, Vec<Arc<Segment>>)> = (first_id..).zip(groups).collect();
        work.reverse();
        let queue = Mutex::new(work);
        let publishing = Mutex::new(());
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let Some((id, group)) = queue.lock().pop() else {
                                return Ok(());
                            };
                            let merged = self.write_merged(id, &group).and_then(|meta| {
                                let _p = publishing.lock();
                                self.publish_merged(&group, meta)
                            });
                            if merged.is_err() {
                                // The first failure ends the run; its error is the answer.
                                queue.lock().clear();
                                return merged;
                            }
                        }
                    })
                })
                .collect();
            // The scope joins any worker left when an error returns early.
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("compaction worker panicked"))
        })
    }

    /// Writes `group`'s rows, merged, as segment `id` (not yet listed).
    fn write_merged(&self, id: u64, group: &[Arc<Segment>]) -> Result<SegmentMeta> {
        // A merge writes a fresh checksum over whatever it read: damage must stop it here,
        // or the new segment would carry it under a valid hash and the originals be deleted.
        for s in group {
            s.verify()?;
        }
        let hour = segment::hour_of(group[0].meta.min_ts);
        let level = group.iter().map(|s| s.meta.level).max().unwrap_or(0) + 1;
        let rows = group.iter().map(|s| s.meta.rows as usize).sum();
        let mut writer = segment::SegmentWriter::create(
            &self.dir,
            id,
            hour,
            level,
            rows,
            &self.options.segment,
        )?;
        compaction::merge_into(group, &mut writer)
            .and_then(|()| writer.finish())
            .inspect_err(|_| segment::discard_unpublished(&self.dir, id, hour))
    }

    /// Lists `merged` in place of `group`, durably, and retires the group's segments.
    fn publish_merged(&self, group: &[Arc<Segment>], merged: SegmentMeta) -> Result<()> {
        let mut manifest = self.state.read().manifest.clone();
        manifest.next_segment_id = manifest.next_segment_id.max(merged.id + 1);
        let old: HashSet<u64> = group.iter().map(|s| s.meta.id).collect();
        manifest.segments.retain(|s| !old.contains(&s.id));
        manifest.segments.push(merged.clone());
        let saved_anyway = match save_manifest(&self.dir, &manifest) {
            Ok(()) => None,
            Err(SaveFailure::NotSaved(e)) => {
                segment::discard_unpublished(&self.dir, merged.id, segment::hour_of(merged.min_ts));
                return Err(e);
            }
            Err(SaveFailure::OnDisk(e)) => Some(e),
        };
        let mut st = self.state.write();
        st.manifest = manifest;
        st.segments.retain(|s| !old.contains(&s.meta.id));
        st.segments.push(Arc::new(Segment::new(&self.dir, merged)));
        for s in group {
            s.retire();
        }
        saved_anyway.map_or(Ok(()), Err)
    }

    fn background_loop(&self) {
        loop {
            {
                let mut stop = self.wake_lock.lock();
                if *stop {
                    return;
                }
                let tick = (self.options.memtable_max_age / 2)
                    .clamp(Duration::from_millis(10), Duration::from_millis(500));
                self.wake.wait_for(&mut stop, tick);
                if *stop {
                    return;
                }
            }
            let due = self.memtable_fill() >= 1.0
                || self
                    .state
                    .read()
                    .memtable_since
                    .is_some_and(|t| t.elapsed() >= self.options.memtable_max_age);
            if due {
                if let Err(e) = self.flush() {
                    tracing::error!(error = %e, "background flush failed");
                    continue;
                }
                if let Err(e) = self.compact(Compaction::Tiered) {
                    tracing::error!(error = %e, "background compaction failed");
                }
            }
        }
    }
}

/// Which segments [`Inner::compact`] merges.
#[derive(Debug, Clone, Copy)]
enum Compaction {
    /// Those of one hour and size tier (see [`compaction::plan`]).
    Tiered,
    /// All of an hour's, up to the target size.
    Major,
}

fn check_schema(batch: &RecordBatch) -> Result<()> {
    let expected = model::events_schema();
    if batch.schema().fields() != expected.fields() {
        return Err(StorageError::SchemaMismatch(format!(
            "got columns {:?}",
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// Every file the manifest lists must exist with the listed size; anything else is corruption
/// (checksums are checked by `verify`, which reads everything).
fn check_listed_files(dir: &Path, manifest: &Manifest) -> Result<()> {
    for s in &manifest.segments {
        for (rel, size) in [(&s.path, s.bytes), (&s.index_path, s.index_bytes)] {
            let p = dir.join(rel);
            let len = fs::metadata(&p)
                .map(|m| m.len())
                .map_err(|e| StorageError::Corruption {
                    path: p.clone(),
                    offset: 0,
                    reason: format!("listed in the manifest but unreadable: {e}"),
                })?;
            if len != size {
                return Err(StorageError::Corruption {
                    path: p,
                    offset: len.min(size),
                    reason: format!("size {len} differs from the manifest's {size}"),
                });
            }
        }
    }
    Ok(())
}

/// A manifest save that failed: before the new manifest replaced the old one (the files
/// only it lists may go), or after (the rename happened, the directory sync failed: the new
/// one may be what a restart reads, so everything it lists must stay).
enum SaveFailure {
    NotSaved(StorageError),
    OnDisk(StorageError),
}

fn save_manifest(dir: &Path, manifest: &Manifest) -> std::result::Result<(), SaveFailure> {
    manifest.save(dir).map_err(|e| match Manifest::load(dir) {
        Ok(Some(on_disk)) if on_disk == *manifest => SaveFailure::OnDisk(e),
        _ => SaveFailure::NotSaved(e),
    })
}

/// Takes the store directory's lock (`LOCK`, `flock`): held while the file stays open.
fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .at(&lock_path)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(e).at(&lock_path),
    }
}

/// Files under `segments/` that the manifest does not list: temp files and segment files
/// with ids the manifest has not handed out yet (a flush or compaction that crashed before
/// publishing) are this store's own leftovers and are deleted; anything else is moved to
/// `quarantine/` under its path, never deleted. Then the caches of unlisted segments go.
fn remove_orphans(dir: &Path, manifest: &Manifest, report: &mut OpenReport) -> Result<()> {
    let listed: HashSet<PathBuf> = manifest
        .segments
        .iter()
        .flat_map(|s| [dir.join(&s.path), dir.join(&s.index_path)])
        .collect();
    let mut changed = HashSet::new();
    for p in files_under_segments(dir)? {
        if listed.contains(&p) {
            continue;
        }
        let name = p
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let unpublished = segment_id_of(&name).is_some_and(|id| id >= manifest.next_segment_id);
        if fsutil::is_tmp(&name) || unpublished {
            fs::remove_file(&p).at(&p)?;
            changed.insert(p.parent().expect("under segments/").to_path_buf());
            report.removed_orphans.push(p);
        } else {
            let to = quarantine(dir, &p)?;
            tracing::warn!(from = %p.display(), to = %to.display(), "a segment file the manifest does not list was moved to quarantine");
            report.quarantined.push((p, to));
        }
    }
    for d in changed {
        fsutil::sync_dir(&d)?;
    }
    remove_orphan_caches(dir, manifest, &mut report.removed_orphans)
}

/// Every file (not directory) below the store's `segments/`.
fn files_under_segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let root = dir.join("segments");
    if !root.is_dir() {
        return Ok(files);
    }
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).at(&d)? {
            let entry = entry.at(&d)?;
            let p = entry.path();
            match entry.file_type().at(&p)?.is_dir() {
                true => stack.push(p),
                false => files.push(p),
            }
        }
    }
    Ok(files)
}

/// The id in a segment file's name (`<id:016x>.parquet` or `.idx`).
fn segment_id_of(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix(".parquet")
        .or_else(|| name.strip_suffix(".idx"))?;
    (stem.len() == 16)
        .then(|| u64::from_str_radix(stem, 16).ok())
        .flatten()
}

/// Moves `path` (inside the store in `dir`) to `quarantine/` under the same relative path,
/// durably; a name already taken there gets a numbered suffix. Returns where it went.
pub fn quarantine(dir: &Path, path: &Path) -> Result<PathBuf> {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let mut to = dir.join(QUARANTINE_DIR).join(rel);
    let parent = to.parent().expect("a file in a directory").to_path_buf();
    fsutil::create_dir_durable(&parent)?;
    let name = to
        .file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned();
    let mut n = 1;
    while to.exists() {
        to = parent.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(path, &to).at(path)?;
    fsutil::sync_dir(&parent)?;
    if let Some(from_dir) = path.parent() {
        fsutil::sync_dir(from_dir)?;
    }
    Ok(to)
}

/// A segment or index file under `segments/` (not a temp file), if there is any.
fn first_segment_file(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(files_under_segments(dir)?
        .into_iter()
        .find(|p| !fsutil::is_tmp(&p.file_name().expect("a file").to_string_lossy())))
}

/// Deletes the caches of segments the manifest does not list (a segment retired while the
/// store was closed keeps none). Caches are never evidence: no directory sync is needed.
fn remove_orphan_caches(dir: &Path, manifest: &Manifest, removed: &mut Vec<PathBuf>) -> Result<()> {
    let listed: HashSet<PathBuf> = manifest
        .segments
        .iter()
        .map(|s| segment::cache_dir(dir, s.id))
        .collect();
    let root = dir.join(segment::CACHE_DIR);
    if !root.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(&root).at(&root)? {
        let p = entry.at(&root)?.path();
        if !listed.contains(&p) {
            // A stray file there is no segment's cache either.
            match p.is_dir() {
                true => fs::remove_dir_all(&p).at(&p)?,
                false => fs::remove_file(&p).at(&p)?,
            }
            removed.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
