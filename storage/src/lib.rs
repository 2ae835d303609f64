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

mod append;
pub mod archive;
mod audit;
pub mod chain;
mod compaction;
mod dedup;
pub mod digest;
mod error;
pub mod fsutil;
pub mod index;
mod maintenance;
pub mod manifest;
pub mod merkle;
mod recovery;
mod repair;
mod retention;
pub mod segment;
pub mod wal;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use parking_lot::{Condvar, Mutex, RwLock};

pub use append::{AppendOutcome, AppendPipeline, PendingAppend};
pub use archive::{Archive, ArchiveReport};
pub use audit::{HistoryReport, check_history};
pub use error::{Result, StorageError};
pub use index::{INDEXED_COLUMNS, SegmentIndex};
pub use manifest::{Archived, Damage, Expired, Manifest, SegmentMeta};
pub use recovery::{OpenReport, QUARANTINE_DIR, quarantine};
pub use repair::{RepairReport, repair};
pub use segment::{Segment, SegmentOptions};
pub use wal::{ReplayReport, WalOptions};

use archive::{Archives, IndexCache};
use dedup::{Dedup, ids_and_times};
use maintenance::{BackgroundThread, Compaction};
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
    /// How often the background checks every segment's SHA-256s again (`None`: never). A
    /// segment is checked the first time a process reads it; the scrub finds damage in what
    /// nobody has read since.
    pub scrub_interval: Option<Duration>,
    /// Most bytes of archived segments' indexes kept in the store directory
    /// (`archive-cache/`); past it the least recently used go, and are fetched again.
    pub archive_cache_bytes: u64,
    /// Sign the chain's head on a schedule and on close (`None`: no digests).
    pub digests: Option<digest::DigestOptions>,
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
            scrub_interval: Some(Duration::from_secs(24 * 3600)),
            archive_cache_bytes: 1 << 30,
            digests: None,
        }
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
    /// Every event id in the snapshot, segments' then the memtable's, in no given order
    /// (segments recorded as damaged have none to give).
    pub fn event_ids(&self) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(self.rows() as usize);
        for s in self.segments.iter().filter(|s| s.meta.damaged.is_none()) {
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

struct Inner {
    dir: PathBuf,
    options: StoreOptions,
    state: Arc<RwLock<State>>,
    dedup: Arc<Mutex<Dedup>>,
    /// The archives archived segments live in, one client each.
    archives: Archives,
    index_cache: Arc<IndexCache>,
    /// Held from reserving a batch's ids to handing it to the WAL, so batches reach the WAL
    /// in the order their ids were reserved (see [`Store::submit`]).
    submit_order: Mutex<()>,
    /// Serialises flushes and compactions (the manifest has one writer).
    maintenance: Mutex<()>,
    /// Serialises digest writers (each names the one before), apart from `maintenance`: a
    /// digest's copy to a remote witness must not hold up flushes.
    signing: Mutex<()>,
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

impl Store {
    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Why the store refuses appends now, if it does: the last WAL write found no space (it
    /// takes appends again once one fits), or a write failure poisoned it.
    pub fn write_refusal(&self) -> Option<String> {
        self.inner.wal.refusing()
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

    /// Recomputes the SHA-256 of every segment and index file and compares it with the
    /// manifest; the first damage found is the error (see [`Store::scrub`] for all of it).
    pub fn verify(&self) -> Result<usize> {
        let segments = self.snapshot().segments;
        for s in &segments {
            s.verify()?;
        }
        Ok(segments.len())
    }

    /// Checks every segment not known to be damaged, records what is damaged in the manifest
    /// and moves its files to `quarantine/` (what the background scrub does on its schedule);
    /// returns the segments found damaged now, with the finding.
    pub fn scrub(&self) -> Result<Vec<(u64, String)>> {
        self.inner.scrub()
    }

    /// Records the damage readers of this process found in the manifest and moves those
    /// segments' files to `quarantine/` (the background thread does it within a tick; a
    /// store opened without one, after its reads). Returns how many it recorded.
    pub fn quarantine_damaged(&self) -> Result<usize> {
        self.inner.quarantine_damaged_now()
    }

    /// The listed segments recorded as damaged.
    pub fn damaged(&self) -> Vec<SegmentMeta> {
        let st = self.inner.state.read();
        st.manifest
            .segments
            .iter()
            .filter(|s| s.damaged.is_some())
            .cloned()
            .collect()
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

    /// Signs the chain's head with the configured key, unless the newest digest covers it;
    /// returns the new digest's file name.
    pub fn write_digest(&self) -> Result<Option<String>> {
        self.inner.write_digest()
    }

    /// Stops the background thread, flushes the memtable, compacts what became small and
    /// signs the chain's head.
    pub fn close(self) -> Result<()> {
        drop(self.background);
        self.inner.quarantine_damaged_now()?;
        self.inner.flush()?;
        self.inner.compact(Compaction::Tiered)?;
        self.inner.write_digest().map(|_| ())
    }
}

impl Inner {
    pub(crate) fn write_digest(&self) -> Result<Option<String>> {
        let Some(options) = &self.options.digests else {
            return Ok(None);
        };
        let _s = self.signing.lock();
        let manifest = self.state.read().manifest.clone();
        digest::write(&self.dir, &manifest, options)
    }

    /// How full the memtable is: 1.0 at its row or byte limit, whichever comes first.
    fn memtable_fill(&self) -> f64 {
        let st = self.state.read();
        let rows = st.memtable_rows as f64 / self.options.memtable_max_rows.max(1) as f64;
        let bytes = st.memtable_bytes as f64 / self.options.memtable_max_bytes.max(1) as f64;
        rows.max(bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests;
