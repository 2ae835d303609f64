//! Flushes (memtable → segments, then WAL trim) and compactions, on the caller's thread or
//! the background thread. One writer of the manifest at a time (`Inner::maintenance`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::append::memory_of;
use crate::error::IoContext;
use crate::manifest::Damage;
use crate::segment::{self, Segment};
use crate::{Inner, Manifest, Result, SegmentMeta, StorageError, compaction, recovery};

/// The threads that flush, compact and scrub while the store is open; dropping it stops them.
pub(crate) struct BackgroundThread {
    inner: Arc<Inner>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl BackgroundThread {
    pub(crate) fn spawn(inner: Arc<Inner>) -> Self {
        let looping = inner.clone();
        let mut handles = vec![
            std::thread::Builder::new()
                .name("ktrail-maintenance".into())
                .spawn(move || looping.background_loop())
                .expect("spawn maintenance thread"),
        ];
        // Its own thread: a scrub reads every segment, and flushes must not wait for it.
        if let Some(every) = inner.options.scrub_interval {
            let scrubbing = inner.clone();
            handles.push(
                std::thread::Builder::new()
                    .name("ktrail-scrub".into())
                    .spawn(move || scrubbing.scrub_loop(every))
                    .expect("spawn scrub thread"),
            );
        }
        if let Some(digests) = &inner.options.digests {
            let every = digests.interval;
            let signing = inner.clone();
            handles.push(
                std::thread::Builder::new()
                    .name("ktrail-digest".into())
                    .spawn(move || signing.digest_loop(every))
                    .expect("spawn digest thread"),
            );
        }
        Self {
            inner,
            handles: Mutex::new(handles),
        }
    }
}

impl Drop for BackgroundThread {
    fn drop(&mut self) {
        *self.inner.wake_lock.lock() = true;
        self.inner.wake.notify_all();
        for h in self.handles.lock().drain(..) {
            let _ = h.join();
        }
    }
}

impl Inner {
    pub(crate) fn flush(&self) -> Result<()> {
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
            save_manifest(&self.dir, &mut manifest)
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
    pub(crate) fn compact(&self, how: Compaction) -> Result<usize> {
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
        // Damage readers found is recorded first: the plan leaves those segments out.
        self.quarantine_damaged()?;
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
            let merged = self.merge_groups(groups, threads);
            // Damage found by the merge's checks is recorded before the next plan leaves the
            // segment out; a merge failing for it is not the run's failure.
            self.quarantine_damaged()?;
            replaced += merged?;
        }
    }

    /// Records in the manifest the damage found in this process (by readers, merges or the
    /// scrub) and moves those segments' files to `quarantine/`: the manifest first, so a crash
    /// between leaves files at their listed paths, which the next open moves. The caller holds
    /// the maintenance lock. Returns how many segments it recorded.
    pub(crate) fn quarantine_damaged(&self) -> Result<usize> {
        let found: Vec<(Arc<Segment>, String)> = self
            .state
            .read()
            .segments
            .iter()
            .filter(|s| s.meta.damaged.is_none())
            .filter_map(|s| s.damage().map(|d| (s.clone(), d.to_string())))
            .collect();
        if found.is_empty() {
            return Ok(0);
        }
        let mut manifest = self.state.read().manifest.clone();
        let mut moves = Vec::new();
        let found_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for (segment, reason) in &found {
            let mut quarantined = Vec::new();
            // An archived segment's files are not here to move; the finding is recorded.
            let local = segment.archive().is_none();
            for from in [&segment.path, &segment.index_path]
                .into_iter()
                .filter(|_| local)
            {
                let to = recovery::quarantine_destination(&self.dir, from);
                quarantined.push(
                    to.strip_prefix(&self.dir)
                        .expect("in the store")
                        .to_string_lossy()
                        .into_owned(),
                );
                moves.push((from.clone(), to));
            }
            let meta = manifest
                .segments
                .iter_mut()
                .find(|m| m.id == segment.meta.id)
                .expect("a live segment is listed");
            meta.damaged = Some(Damage {
                reason: reason.clone(),
                found_at: found_at.clone(),
                quarantined,
            });
        }
        manifest.save(&self.dir)?;
        {
            let mut st = self.state.write();
            for s in st.segments.iter_mut() {
                if let Some(meta) = manifest.segments.iter().find(|m| m.id == s.meta.id)
                    && meta.damaged.is_some()
                    && s.meta.damaged.is_none()
                {
                    *s = Arc::new(self.handle(meta.clone())?);
                }
            }
            st.manifest = manifest;
        }
        for (from, to) in moves {
            match std::fs::metadata(&from) {
                Ok(_) => recovery::move_durably(&from, &to)?,
                // Gone already: that was the damage.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&from),
            }
            tracing::warn!(from = %from.display(), to = %to.display(), "a damaged segment's file was moved to quarantine");
        }
        Ok(found.len())
    }

    /// [`quarantine_damaged`](Self::quarantine_damaged) under the maintenance lock.
    pub(crate) fn quarantine_damaged_now(&self) -> Result<usize> {
        let _m = self.maintenance.lock();
        self.quarantine_damaged()
    }

    /// Checks every live segment's files against the manifest again, however long ago they
    /// were first read, and quarantines what is damaged. The reading holds no lock (flushes
    /// and appends go on); a segment compaction retires meanwhile is not a finding. Returns
    /// the damage found.
    pub(crate) fn scrub(&self) -> Result<Vec<(u64, String)>> {
        let segments: Vec<Arc<Segment>> = self.state.read().segments.clone();
        let mut found = Vec::new();
        // Archived copies are checked by `verify`, which fetches them: the scrub watches the
        // local disk.
        for s in segments
            .iter()
            .filter(|s| s.damage().is_none() && s.archive().is_none())
        {
            match s.verify() {
                Ok(()) => {}
                Err(_) if s.is_retired() => {}
                Err(StorageError::Damaged { reason, .. }) => found.push((s.meta.id, reason)),
                Err(e) => return Err(e),
            }
        }
        if !found.is_empty() {
            self.quarantine_damaged_now()?;
        }
        Ok(found)
    }

    /// Merges each group (disjoint sets of segments) into a new segment on up to `threads`
    /// threads, publishing each new segment as soon as it is written. The caller holds the
    /// maintenance lock, so nothing else changes the manifest meanwhile.
    fn merge_groups(&self, groups: Vec<Vec<Arc<Segment>>>, threads: usize) -> Result<usize> {
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
                    scope.spawn(|| -> Result<usize> {
                        let mut replaced = 0;
                        loop {
                            let Some((id, group)) = queue.lock().pop() else {
                                return Ok(replaced);
                            };
                            let merged = self.write_merged(id, &group).and_then(|meta| {
                                let _p = publishing.lock();
                                self.publish_merged(&group, meta)
                            });
                            match merged {
                                Ok(()) => replaced += group.len(),
                                // Left out of the next plan once recorded.
                                Err(StorageError::Damaged { .. }) => {}
                                Err(e) => {
                                    // The first failure ends the run; its error is the answer.
                                    queue.lock().clear();
                                    return Err(e);
                                }
                            }
                        }
                    })
                })
                .collect();
            // The scope joins any worker left when an error returns early.
            workers.into_iter().try_fold(0, |n, w| {
                Ok(n + w.join().expect("compaction worker panicked")?)
            })
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
        let saved_anyway = match save_manifest(&self.dir, &mut manifest) {
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

    /// Waits `for_at_most`; false when the store is closing.
    fn wait(&self, for_at_most: Duration) -> bool {
        let mut stop = self.wake_lock.lock();
        if !*stop {
            self.wake.wait_for(&mut stop, for_at_most);
        }
        !*stop
    }

    /// Sleeps `period` in full, whatever wakes the background meanwhile (flush requests
    /// notify the same condition); false when the store is closing.
    fn sleep(&self, period: Duration) -> bool {
        let deadline = Instant::now() + period;
        let mut stop = self.wake_lock.lock();
        while !*stop {
            if self.wake.wait_until(&mut stop, deadline).timed_out() {
                break;
            }
        }
        !*stop
    }

    fn scrub_loop(&self, every: Duration) {
        while self.sleep(every) {
            match self.scrub() {
                Ok(found) if found.is_empty() => tracing::info!("scrub: every segment checks out"),
                Ok(found) => tracing::error!(damaged = found.len(), "scrub found damaged segments"),
                Err(e) => tracing::error!(error = %e, "scrub failed"),
            }
        }
    }

    fn digest_loop(&self, every: Duration) {
        while self.sleep(every) {
            match self.write_digest() {
                Ok(Some(name)) => tracing::info!(digest = %name, "signed the chain's head"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "signing a digest failed"),
            }
        }
    }

    fn background_loop(&self) {
        loop {
            let tick = (self.options.memtable_max_age / 2)
                .clamp(Duration::from_millis(10), Duration::from_millis(500));
            if !self.wait(tick) {
                return;
            }
            let unrecorded = self
                .state
                .read()
                .segments
                .iter()
                .any(|s| s.meta.damaged.is_none() && s.damage().is_some());
            if unrecorded && let Err(e) = self.quarantine_damaged_now() {
                tracing::error!(error = %e, "recording a damaged segment failed");
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
pub(crate) enum Compaction {
    /// Those of one hour and size tier (see [`compaction::plan`]).
    Tiered,
    /// All of an hour's, up to the target size.
    Major,
}

/// A manifest save that failed: before the new manifest replaced the old one (the files
/// only it lists may go), or after (the rename happened, the directory sync failed: the new
/// one may be what a restart reads, so everything it lists must stay).
pub(crate) enum SaveFailure {
    NotSaved(StorageError),
    OnDisk(StorageError),
}

pub(crate) fn save_manifest(
    dir: &Path,
    manifest: &mut Manifest,
) -> std::result::Result<(), SaveFailure> {
    manifest.save(dir).map_err(|e| match Manifest::load(dir) {
        Ok(Some(on_disk)) if on_disk == *manifest => SaveFailure::OnDisk(e),
        _ => SaveFailure::NotSaved(e),
    })
}
