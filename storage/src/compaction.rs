//! Compaction: which segments of an hour to merge, and merging them.
//!
//! Choosing: size-tiered. Segments of an hour are bucketed by size (all small ones together,
//! otherwise each bucket spans at most a factor of [`TIER_RATIO`]), and a bucket is merged once
//! it holds `compaction_min_segments`. A merged segment is several times larger than what it
//! replaced, so it joins a higher bucket and is not rewritten with every new small segment:
//! a row is rewritten about once per tier, not once per flush of its hour.
//!
//! Merging: every segment is already sorted, so a group is a k-way merge streamed from the
//! segments' Parquet readers into the new segment's writer. Memory is a batch per input and
//! the writer's row group, whatever the group's size, and nothing is sorted again.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::row::OwnedRow;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, UnboundedMemoryPool};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::expressions::col;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::error::{Result, StorageError};
use crate::segment::{self, SORT_COLUMNS, SORT_OPTIONS, Segment, SegmentWriter, SortKey};

/// Segments within this factor of their bucket's smallest share a bucket.
pub const TIER_RATIO: u64 = 2;
/// Rows per batch read from each input and written to the output.
const MERGE_BATCH_ROWS: usize = 8 * 1024;

/// The groups of segments worth merging among `segments` (any hours): per hour and size
/// bucket, the smallest members up to `target_rows` together, when they are at least
/// `min_segments`. Segments under `small_rows` share one bucket per hour whatever their
/// sizes, so a few tiny segments do not linger beside each flush's. Each group is in
/// segment-id order (the order ties keep in the merge).
pub fn plan(
    segments: &[Arc<Segment>],
    min_segments: usize,
    target_rows: u64,
    small_rows: u64,
) -> Vec<Vec<Arc<Segment>>> {
    let mut by_hour: HashMap<i64, Vec<Arc<Segment>>> = HashMap::new();
    // A damaged segment stays as it is, for evidence and for a restore; an archived one is
    // not rewritten where it is.
    for s in segments
        .iter()
        .filter(|s| s.damage().is_none() && s.archive().is_none())
    {
        by_hour
            .entry(segment::hour_of(s.meta.min_ts))
            .or_default()
            .push(s.clone());
    }
    let mut hours: Vec<_> = by_hour.into_iter().collect();
    hours.sort_by_key(|(hour, _)| *hour);
    let mut groups = Vec::new();
    for (_, mut segments) in hours {
        segments.sort_by_key(|s| (s.meta.rows, s.meta.id));
        let mut buckets: Vec<Vec<Arc<Segment>>> = Vec::new();
        for s in segments {
            let joins = buckets.last().is_some_and(|b| {
                let smallest = b[0].meta.rows;
                s.meta.rows < small_rows || s.meta.rows <= smallest.max(1) * TIER_RATIO
            });
            match buckets.last_mut() {
                Some(b) if joins => b.push(s),
                _ => buckets.push(vec![s]),
            }
        }
        for bucket in buckets {
            let mut total = 0u64;
            let mut group: Vec<Arc<Segment>> = bucket
                .into_iter()
                .take_while(|s| {
                    total += s.meta.rows;
                    total <= target_rows
                })
                .collect();
            if group.len() >= min_segments.max(2) {
                group.sort_by_key(|s| s.meta.id);
                groups.push(group);
            }
        }
    }
    groups
}

/// Merges `group` (sorted segments of one hour) into `out`, in [`SORT_COLUMNS`] order; rows
/// that tie keep the group's order. A segment whose rows are out of that order is reported
/// as corruption (the merge's output would silently be out of order too).
pub fn merge_into(group: &[Arc<Segment>], out: &mut SegmentWriter) -> Result<()> {
    let schema = model::events_schema();
    let ordering = LexOrdering::new(
        SORT_COLUMNS
            .iter()
            .map(|c| PhysicalSortExpr::new(col(c, &schema).expect("sort column"), SORT_OPTIONS)),
    )
    .expect("sort columns");
    let mut streams = Vec::with_capacity(group.len());
    for s in group {
        let reader = s.reader(MERGE_BATCH_ROWS)?.build()?;
        let mut check = OrderCheck::new(s)?;
        let batches = reader.map(move |b| {
            let b = b.map_err(StorageError::from)?;
            check.next(&b)?;
            Ok::<_, StorageError>(b)
        });
        let stream = futures::stream::iter(
            batches.map(|b| b.map_err(|e| DataFusionError::External(Box::new(e)))),
        );
        streams.push(Box::pin(RecordBatchStreamAdapter::new(schema.clone(), stream)) as _);
    }
    let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
    let mut merged = StreamingMergeBuilder::new()
        .with_streams(streams)
        .with_schema(schema.clone())
        .with_expressions(&ordering)
        .with_metrics(BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0))
        .with_batch_size(MERGE_BATCH_ROWS)
        .with_reservation(MemoryConsumer::new("compaction").register(&pool))
        // Ties go to the earlier input, so a merge's output is a function of its inputs.
        .with_round_robin_tie_breaker(false)
        .build()
        .map_err(from_datafusion)?;
    // Every input is a synchronous Parquet reader: the merge never waits on anything but
    // them, so polling it to completion on this thread is a plain loop.
    futures::executor::block_on(async {
        while let Some(batch) = merged.next().await {
            out.write(&batch.map_err(from_datafusion)?)?;
        }
        Ok(())
    })
}

/// Checks that a segment's batches come in [`SORT_COLUMNS`] order, across batch boundaries.
struct OrderCheck {
    segment: std::path::PathBuf,
    key: SortKey,
    last: Option<OwnedRow>,
    rows_seen: u64,
}

impl OrderCheck {
    fn new(segment: &Segment) -> Result<Self> {
        Ok(Self {
            segment: segment.path.clone(),
            key: SortKey::new()?,
            last: None,
            rows_seen: 0,
        })
    }

    fn next(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = self.key.rows(batch)?;
        let previous = self.last.as_ref().map(|r| r.row());
        for i in 0..rows.num_rows() {
            let before = if i == 0 {
                previous
            } else {
                Some(rows.row(i - 1))
            };
            if before.is_some_and(|b| b > rows.row(i)) {
                return Err(StorageError::Corruption {
                    path: self.segment.clone(),
                    offset: 0,
                    reason: format!(
                        "row {} is out of the segment's sort order ({})",
                        self.rows_seen + i as u64,
                        SORT_COLUMNS.join(", ")
                    ),
                });
            }
        }
        self.last = Some(rows.row(rows.num_rows() - 1).owned());
        self.rows_seen += rows.num_rows() as u64;
        Ok(())
    }
}

/// Unwraps what the merge passed through from the inputs (a storage error stays one).
fn from_datafusion(e: DataFusionError) -> StorageError {
    match e {
        DataFusionError::External(e) => match e.downcast::<StorageError>() {
            Ok(e) => *e,
            Err(e) => StorageError::Merge(DataFusionError::External(e)),
        },
        DataFusionError::ArrowError(e, _) => StorageError::Arrow(*e),
        DataFusionError::ParquetError(e) => StorageError::Parquet(*e),
        e => StorageError::Merge(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SegmentMeta;
    use crate::segment::SegmentOptions;
    use model::{Event, batch_of};

    const HOUR: i64 = 3_600_000_000_000;

    fn segment(id: u64, hour: i64, rows: u64) -> Arc<Segment> {
        let meta = SegmentMeta {
            id,
            path: format!("{id}.parquet"),
            index_path: format!("{id}.idx"),
            rows,
            bytes: 0,
            index_bytes: 0,
            sha256: String::new(),
            index_sha256: String::new(),
            min_ts: hour * HOUR,
            max_ts: hour * HOUR + 1,
            row_groups: vec![rows],
            namespaces: Vec::new(),
            pods: None,
            null_columns: Vec::new(),
            level: 0,
            merkle_root: None,
            damaged: None,
            archived: None,
        };
        Arc::new(Segment::new(std::path::Path::new("/nonexistent"), meta))
    }

    fn ids(groups: &[Vec<Arc<Segment>>]) -> Vec<Vec<u64>> {
        groups
            .iter()
            .map(|g| g.iter().map(|s| s.meta.id).collect())
            .collect()
    }

    #[test]
    fn plan_merges_segments_of_one_hour_and_size_tier() {
        let segments = vec![
            segment(1, 7, 1000),
            segment(2, 7, 10),
            segment(3, 7, 1900),
            segment(4, 7, 12),
            segment(5, 7, 1200),
            segment(6, 7, 11),
            segment(7, 7, 5000),
            // Another hour: too few to merge.
            segment(8, 8, 10),
            segment(9, 8, 10),
        ];
        assert_eq!(
            ids(&plan(&segments, 3, 1 << 20, 0)),
            vec![vec![2, 4, 6], vec![1, 3, 5]]
        );
        // Under `small_rows` sizes do not matter.
        assert_eq!(
            ids(&plan(&segments, 3, 1 << 20, 2000)),
            vec![vec![1, 2, 3, 4, 5, 6]]
        );
        // The target caps a group: the smallest that fit together.
        assert_eq!(ids(&plan(&segments, 3, 2200, 2000)), vec![vec![1, 2, 4, 6]]);
        assert_eq!(ids(&plan(&segments, 4, 1 << 20, 0)), Vec::<Vec<u64>>::new());
    }

    #[test]
    fn a_segment_out_of_sort_order_is_corruption_not_a_merge() {
        let dir = tempfile::tempdir().unwrap();
        let write = |id: u64, ids: &[u64]| {
            let events: Vec<Event> = ids
                .iter()
                .map(|&i| crate::tests::event(i, "ns", &format!("p{i}")))
                .collect();
            let meta = segment::write_segment(
                dir.path(),
                id,
                segment::hour_of(events[0].ts),
                0,
                &[batch_of(&events)],
                &SegmentOptions::default(),
            )
            .unwrap();
            Arc::new(Segment::new(dir.path(), meta))
        };
        let sorted = write(1, &[1, 2, 3]);
        // Pods p5, p4: written as given, out of order.
        let unsorted = write(2, &[5, 4]);
        let hour = segment::hour_of(crate::tests::event(1, "ns", "p").ts);
        let mut out =
            SegmentWriter::create(dir.path(), 3, hour, 1, 5, &SegmentOptions::default()).unwrap();
        let err = merge_into(&[sorted, unsorted.clone()], &mut out).unwrap_err();
        match &err {
            StorageError::Corruption { path, reason, .. } => {
                assert_eq!(path, &unsorted.path);
                assert!(reason.contains("row 1 is out of"), "{reason}");
            }
            e => panic!("{e}"),
        }
    }
}
