//! Opening a store: the directory lock, the manifest, the check of every listed file, crash
//! leftovers (deleted when they are the store's own, quarantined otherwise) and WAL replay.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::append::memory_of;
use crate::archive::{Archives, IndexCache};
use crate::dedup::Dedup;
use crate::error::IoContext;
use crate::maintenance::BackgroundThread;
use crate::segment::{self, Segment};
use crate::wal::{self, Wal};
use crate::{
    Inner, Manifest, ReplayReport, Result, SegmentMeta, State, StorageError, Store, StoreOptions,
    fsutil, manifest,
};

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

        let mut manifest = match Manifest::load(&dir) {
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
                let mut m = Manifest {
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
        if manifest.chain.is_none() {
            // A store from before the hash chain: its first entry lists what it holds now.
            manifest.save(&dir)?;
        }
        let mut report = OpenReport::default();
        finish_quarantines(&dir, &manifest)?;
        check_listed_files(&dir, &manifest)?;
        remove_orphans(&dir, &manifest, &mut report)?;

        let archives = Archives::default();
        let index_cache = Arc::new(IndexCache::new(&dir, options.archive_cache_bytes));
        let segments = manifest
            .segments
            .iter()
            .map(|m| {
                Ok(Arc::new(match &m.archived {
                    Some(a) => Segment::archived(
                        &dir,
                        m.clone(),
                        archives.get(&a.url)?,
                        index_cache.clone(),
                    ),
                    None => Segment::new(&dir, m.clone()),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
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
            archives,
            index_cache,
            submit_order: Mutex::new(()),
            signing: Mutex::new(()),
            maintenance: Mutex::new(()),
            wal,
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
            _lock: lock,
        });
        let background = inner
            .options
            .background
            .then(|| Arc::new(BackgroundThread::spawn(inner.clone())));
        Ok((Store { inner, background }, report))
    }
}

/// Every file the manifest lists must exist with the listed size; anything else is corruption
/// (checksums are checked by `verify`, which reads everything). A segment recorded as damaged
/// is not looked for: its files are in `quarantine/`.
fn check_listed_files(dir: &Path, manifest: &Manifest) -> Result<()> {
    let local = |s: &&SegmentMeta| s.damaged.is_none() && s.archived.is_none();
    for s in manifest.segments.iter().filter(local) {
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

/// Takes the store directory's lock (`LOCK`, `flock`): held while the file stays open.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
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
        .filter(|s| s.archived.is_none())
        .flat_map(|s| [dir.join(&s.path), dir.join(&s.index_path)])
        .collect();
    // Local copies of archived segments: the archive's copy was read back and found equal
    // before the manifest recorded it, so these are leftovers of a move a crash interrupted.
    // Files of expired segments: the manifest records their expiry.
    let accounted: HashSet<PathBuf> = manifest
        .segments
        .iter()
        .filter(|s| s.archived.is_some())
        .flat_map(|s| [dir.join(&s.path), dir.join(&s.index_path)])
        .chain(
            manifest
                .expired
                .iter()
                .flat_map(|e| [dir.join(&e.path), dir.join(&e.index_path)]),
        )
        .collect();
    let mut changed = HashSet::new();
    for p in files_under_segments(dir)? {
        if listed.contains(&p) {
            continue;
        }
        if accounted.contains(&p) {
            fs::remove_file(&p).at(&p)?;
            changed.insert(p.parent().expect("under segments/").to_path_buf());
            report.removed_orphans.push(p);
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
pub(crate) fn files_under_segments(dir: &Path) -> Result<Vec<PathBuf>> {
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
pub(crate) fn segment_id_of(name: &str) -> Option<u64> {
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
    let to = quarantine_destination(dir, path);
    move_durably(path, &to)?;
    Ok(to)
}

/// Where [`quarantine`] would put `path` now: its path under `quarantine/`, numbered when
/// that name is taken.
pub(crate) fn quarantine_destination(dir: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let mut to = dir.join(QUARANTINE_DIR).join(rel);
    let parent = to.parent().expect("a file in a directory").to_path_buf();
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
    to
}

/// Renames `from` to `to` (creating `to`'s directory) and syncs both directories.
pub(crate) fn move_durably(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().expect("a file in a directory");
    fsutil::create_dir_durable(parent)?;
    fs::rename(from, to).at(from)?;
    fsutil::sync_dir(parent)?;
    if let Some(from_dir) = from.parent() {
        fsutil::sync_dir(from_dir)?;
    }
    Ok(())
}

/// Finishes the quarantine of damaged segments: the manifest recording the damage is saved
/// before the files move, so a crash between them leaves files at their listed paths.
fn finish_quarantines(dir: &Path, manifest: &Manifest) -> Result<()> {
    for s in &manifest.segments {
        let Some(damage) = &s.damaged else { continue };
        for (rel, to) in [&s.path, &s.index_path]
            .into_iter()
            .zip(&damage.quarantined)
        {
            let (from, to) = (dir.join(rel), dir.join(to));
            if from.exists() && !to.exists() {
                move_durably(&from, &to)?;
            }
        }
    }
    Ok(())
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
