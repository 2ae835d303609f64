//! The append path: a batch is checked, deduplicated, encoded and handed to the WAL
//! ([`Store::submit`]), and acknowledged once durable ([`PendingAppend::wait`]).

use std::collections::HashSet;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::filter_record_batch;

use crate::wal;
use crate::{Result, StorageError, Store};

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
///
/// The first failure stops the pipeline: later pushes are refused with it, and
/// [`finish`](Self::finish) returns it.
pub struct AppendPipeline<'a, T> {
    store: &'a Store,
    in_flight: std::collections::VecDeque<(T, PendingAppend)>,
    on_durable: &'a mut dyn FnMut(T, AppendOutcome),
    failure: Option<StorageError>,
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
            failure: None,
        }
    }

    /// Submits `batch` (labelled `tag` for `on_durable`); first waits for the oldest batch
    /// when [`IN_FLIGHT`](Self::IN_FLIGHT) are pending. An error is the pipeline's first
    /// failure (this push's or an earlier one's): nothing submitted after it is acknowledged.
    pub fn push(&mut self, tag: T, batch: RecordBatch) -> std::result::Result<(), &StorageError> {
        if self.failure.is_none()
            && let Err(e) = self.submit(tag, batch)
        {
            self.failure = Some(e);
        }
        self.failure.as_ref().map_or(Ok(()), Err)
    }

    /// Waits for every batch submitted. **When this returns `Ok`, every batch pushed is
    /// durable.** An error is the first failure, whether a push or a wait met it.
    pub fn finish(mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            if let Err(e) = self.wait_oldest() {
                self.failure.get_or_insert(e);
            }
        }
        self.failure.map_or(Ok(()), Err)
    }

    fn submit(&mut self, tag: T, batch: RecordBatch) -> Result<()> {
        if self.in_flight.len() >= Self::IN_FLIGHT {
            self.wait_oldest()?;
        }
        let pending = self.store.submit(batch)?;
        self.in_flight.push_back((tag, pending));
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

impl Store {
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
    pub(crate) fn make_room(&self) -> Result<()> {
        if self.inner.memtable_fill() < 2.0 {
            return Ok(());
        }
        self.inner
            .flush()
            .map_err(|e| StorageError::FlushFailing(Box::new(e)))
    }

    pub(crate) fn after_append(&self) {
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
}

/// The memory `batch` holds: each allocation behind its buffers counted once.
///
/// Arrow's `get_array_memory_size` counts a buffer's whole allocation for every buffer, and a
/// batch read from Arrow IPC (a WAL record, a gRPC message) has all its buffers sliced from one
/// message allocation: a 1.3 MB stream of 5 000 events reported 178 MB, so the memtable looked
/// full after a few such batches.
pub(crate) fn memory_of(batch: &RecordBatch) -> usize {
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

pub(crate) fn check_schema(batch: &RecordBatch) -> Result<()> {
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
