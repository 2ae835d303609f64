//! Flushes (memtable → segments, then WAL trim) and compactions, on the caller's thread or
//! the background thread. One writer of the manifest at a time (`Inner::maintenance`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::append::memory_of;
use crate::segment::{self, Segment};
use crate::{Inner, Manifest, Result, SegmentMeta, StorageError, compaction};

/// The thread that flushes and compacts while the store is open; dropping it stops it.
pub(crate) struct BackgroundThread {
    inner: Arc<Inner>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl BackgroundThread {
    pub(crate) fn spawn(inner: Arc<Inner>) -> Self {
        let looping = inner.clone();
        let handle = std::thread::Builder::new()
            .name("ktrail-maintenance".into())
            .spawn(move || looping.background_loop())
            .expect("spawn maintenance thread");
        Self {
            inner,
            handle: Mutex::new(Some(handle)),
        }
    }
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
    manifest: &Manifest,
) -> std::result::Result<(), SaveFailure> {
    manifest.save(dir).map_err(|e| match Manifest::load(dir) {
        Ok(Some(on_disk)) if on_disk == *manifest => SaveFailure::OnDisk(e),
        _ => SaveFailure::NotSaved(e),
    })
}
