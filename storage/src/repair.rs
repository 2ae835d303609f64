//! `ktrail repair`: a store whose manifest is missing or unreadable gets one again, rebuilt
//! from the segment files after each is checked ([`segment::meta_from_files`]). Nothing is
//! deleted: an unreadable manifest and every file that does not check out go to
//! `quarantine/`. The WAL's events that no checked segment holds are written as new segments
//! listed in the same manifest, so they are neither lost nor stored twice, and a repair
//! killed at any point can simply be run again. With a readable manifest, a repair takes back
//! the damaged segments whose good copies were put back at their paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::HashSet;

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;

use crate::archive::{Archive, IndexCache};
use crate::error::{IoContext, Result, StorageError};
use crate::manifest::{Archived, MANIFEST_FILE, Manifest};
use crate::{StoreOptions, quarantine, segment, wal};

/// What [`repair`] did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// False when the manifest was readable: nothing was changed.
    pub rebuilt: bool,
    /// Segments listed in the new manifest, and their rows.
    pub segments: usize,
    pub rows: u64,
    /// Files moved to `quarantine/` (the old manifest among them), each with the reason.
    pub quarantined: Vec<(PathBuf, String)>,
    /// WAL records read, and the events of them written as new segments (the rest were in
    /// segments already).
    pub wal_records: u64,
    pub wal_events_stored: usize,
    /// Segments recorded as damaged whose files at their listed paths match the manifest
    /// again (a good copy was put back): listed as whole once more.
    pub restored: Vec<u64>,
    /// Segments still damaged, with the path a good copy of the Parquet file goes to.
    pub still_damaged: Vec<(u64, PathBuf)>,
    /// Archived segments listed again from the archives' manifest entries, after their
    /// copies there checked out.
    pub archived: usize,
    /// Archive entries not listed: the entry's key and why (files missing or different).
    pub archive_findings: Vec<(String, String)>,
}

/// For each segment the readable `manifest` records as damaged: when good copies of its
/// files are back at their listed paths, the record is cleared (the quarantined files stay).
fn restore_damaged(dir: &Path, mut manifest: Manifest, report: &mut RepairReport) -> Result<()> {
    for meta in manifest.segments.iter_mut().filter(|m| m.damaged.is_some()) {
        let mut whole = meta.clone();
        whole.damaged = None;
        let candidate = segment::Segment::new(dir, whole);
        match candidate.verify() {
            Ok(()) => {
                meta.damaged = None;
                report.restored.push(meta.id);
            }
            Err(StorageError::Damaged { .. }) => {
                report.still_damaged.push((meta.id, candidate.path.clone()));
            }
            Err(e) => return Err(e),
        }
    }
    if !report.restored.is_empty() {
        manifest.save(dir)?;
    }
    Ok(())
}

/// Rebuilds the manifest of the store in `dir` when it is missing or unreadable (see the
/// module docs). A readable one is kept; only its damaged segments whose good copies were put
/// back are listed as whole again. The segments of `archives` are listed again from their
/// manifest entries there, once their copies check out. The store must not be open elsewhere.
pub fn repair(
    dir: &Path,
    options: StoreOptions,
    archives: &[Arc<Archive>],
) -> Result<RepairReport> {
    let dir = dir.canonicalize().at(dir)?;
    let mut report = RepairReport::default();
    let _lock = crate::recovery::lock_dir(&dir)?;
    match Manifest::load(&dir) {
        Ok(Some(manifest)) => {
            restore_damaged(&dir, manifest, &mut report)?;
            return Ok(report);
        }
        Ok(None) => {}
        Err(e @ (StorageError::Corruption { .. } | StorageError::UnsupportedVersion { .. })) => {
            let path = dir.join(MANIFEST_FILE);
            quarantine(&dir, &path)?;
            report.quarantined.push((path, e.to_string()));
        }
        Err(e) => return Err(e),
    }
    report.rebuilt = true;
    let mut manifest = Manifest {
        schema_version: model::SCHEMA_VERSION,
        next_segment_id: 1,
        ..Default::default()
    };
    for (id, files) in segment_files(&dir)? {
        let checked = match (&files.parquet, &files.index) {
            (Some(p), Some(i)) => segment::meta_from_files(&dir, id, &rel(&dir, p), &rel(&dir, i)),
            (p, i) => Err(StorageError::Corruption {
                path: p.clone().or(i.clone()).expect("one of them"),
                offset: 0,
                reason: "its Parquet file or index file is missing".into(),
            }),
        };
        match checked {
            Ok(meta) => {
                manifest.next_segment_id = manifest.next_segment_id.max(id + 1);
                report.rows += meta.rows;
                manifest.segments.push(meta);
            }
            Err(e) => {
                for p in files.parquet.iter().chain(&files.index) {
                    quarantine(&dir, p)?;
                    report.quarantined.push((p.clone(), e.to_string()));
                }
            }
        }
    }
    let recovered_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for archive in archives {
        let entries = archive.entries()?;
        report.archive_findings.extend(entries.findings);
        for mut meta in entries.whole {
            // A local copy that checked out is listed as local; the archive's is the same
            // segment (an upload the lost manifest had not recorded yet).
            if manifest.segments.iter().any(|m| m.id == meta.id) {
                continue;
            }
            meta.archived = Some(Archived {
                url: archive.url().to_string(),
                at: recovered_at.clone(),
            });
            manifest.next_segment_id = manifest.next_segment_id.max(meta.id + 1);
            report.rows += meta.rows;
            report.archived += 1;
            manifest.segments.push(meta);
        }
    }
    manifest.segments.sort_by_key(|m| m.id);

    // The WAL's records from its first file on: which of their events are in a segment is
    // not known any more, so each is looked up among the checked segments' ids.
    let wal_dir = dir.join("wal");
    let first = wal::first_seq_on_disk(&wal_dir)?;
    let mut batches = Vec::new();
    let (reader, replay) = wal::Wal::<()>::open(
        &wal_dir,
        first.map_or(0, |s| s.saturating_sub(1)),
        wal::WalOptions::default(),
        Arc::new(|_, ()| {}),
        Arc::new(|()| {}),
        |seq, payload| {
            let batch = wal::decode_batch(payload).map_err(|reason| StorageError::Corruption {
                path: wal_dir.clone(),
                offset: 0,
                reason: format!("WAL record {seq}: {reason}"),
            })?;
            batches.push(batch);
            Ok(())
        },
    )?;
    drop(reader);
    report.wal_records = replay.replayed;
    let mut stored: HashSet<i64> = HashSet::new();
    let cache = Arc::new(IndexCache::new(&dir, options.archive_cache_bytes));
    // Only when the WAL has records to place: archived segments' ids are remote reads.
    for meta in manifest.segments.iter().filter(|_| !batches.is_empty()) {
        let handle = match &meta.archived {
            Some(a) => {
                let archive = archives
                    .iter()
                    .find(|x| x.url() == a.url)
                    .expect("listed from one of them");
                segment::Segment::archived(&dir, meta.clone(), archive.clone(), cache.clone())
            }
            None => segment::Segment::new(&dir, meta.clone()),
        };
        stored.extend(segment::event_ids(&handle)?);
    }
    let mut unstored = Vec::new();
    for batch in batches {
        let ids = batch
            .column_by_name(model::col::EVENT_ID)
            .expect("events schema")
            .as_primitive::<Int64Type>();
        let keep: BooleanArray = ids
            .values()
            .iter()
            .map(|id| Some(stored.insert(*id)))
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        if kept.num_rows() > 0 {
            unstored.push(kept);
        }
    }
    report.wal_events_stored = unstored.iter().map(|b| b.num_rows()).sum();
    if !unstored.is_empty() {
        let sorted = segment::sort_rows(&unstored)?;
        for (hour, rows) in segment::split_by_hour(&sorted) {
            let id = manifest.next_segment_id;
            manifest.next_segment_id += 1;
            let meta = segment::write_segment(&dir, id, hour, 0, &rows, &options.segment)?;
            report.rows += meta.rows;
            manifest.segments.push(meta);
        }
    }
    report.segments = manifest.segments.len();
    // Every WAL record is in a listed segment now: none is replayed at the next open.
    manifest.flushed_seq = replay.last_seq;
    manifest.save(&dir)?;
    Ok(report)
}

#[derive(Default)]
struct SegmentFiles {
    parquet: Option<PathBuf>,
    index: Option<PathBuf>,
}

/// Segment and index files under `segments/` by segment id (other files are left to the next
/// open, which quarantines them).
fn segment_files(dir: &Path) -> Result<BTreeMap<u64, SegmentFiles>> {
    let mut out: BTreeMap<u64, SegmentFiles> = BTreeMap::new();
    for p in crate::recovery::files_under_segments(dir)? {
        let name = p
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let Some(id) = crate::recovery::segment_id_of(&name) else {
            continue;
        };
        let files = out.entry(id).or_default();
        match name.ends_with(".parquet") {
            true => files.parquet = Some(p),
            false => files.index = Some(p),
        }
    }
    Ok(out)
}

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir)
        .expect("found under the store")
        .to_string_lossy()
        .into_owned()
}
