//! Deduplication by `event_id`: the ids already stored, by hour, loaded from an hour's
//! segments on first use and bounded in memory.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, TimestampNanosecondType};

use crate::segment::{self, Segment};
use crate::{Inner, Result, StorageError};

/// Event ids already stored, by hour bucket; an hour is loaded from its segments on first use.
/// At most `max_ids` ids are kept (plus the hours one batch touches): the hour used least
/// recently goes first, once no record that reserved ids in it is still on its way to the WAL
/// (its set is then exactly its segments' and the memtable's ids, so reading it again gives
/// the same set).
#[derive(Default)]
pub(crate) struct Dedup {
    pub(crate) hours: HashMap<i64, HourIds>,
    pub(crate) ids: usize,
    /// Counts reservations, for least-recently-used.
    clock: u64,
}

pub(crate) struct HourIds {
    ids: IdSet,
    last_used: u64,
    /// The WAL ticket ([`wal::Wal::submitted`]) of the last record that reserved ids here.
    last_ticket: u64,
}

/// A batch's `event_id` and `ts` values (the schema is checked before any batch gets here).
pub(crate) fn ids_and_times(batch: &RecordBatch) -> (&[i64], &[i64]) {
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
    pub(crate) fn evict(&mut self, max_ids: usize, keep: &[i64], processed: u64) {
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
    pub(crate) fn release(&mut self, batch: &RecordBatch) {
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
pub(crate) type IdSet = HashSet<i64, ahash::RandomState>;

impl Inner {
    /// Marks each row's event id as stored; `true` for rows seen for the first time.
    pub(crate) fn reserve_ids(&self, batch: &RecordBatch) -> Result<BooleanArray> {
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
    pub(crate) fn stored_ids(&self, hour: i64) -> Result<IdSet> {
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
            match segment::event_ids(&s) {
                Ok(ids) => set.extend(ids),
                // Its ids cannot be known: an event of it sent again is stored again, which
                // is how a producer's copy replaces what was lost.
                Err(StorageError::Damaged { .. }) => {}
                Err(e) => return Err(e),
            }
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
}
