//! Segment pruning before any file is opened: the manifest's per-segment statistics
//! (time range, pods, namespaces, kinds) against the query's filters.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, ScalarValue};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use storage::Segment;

/// Which segments may hold a matching row, from the manifest's per-segment summaries.
pub(crate) fn prune_segments(
    segments: &[Arc<Segment>],
    predicate: Option<&Arc<dyn PhysicalExpr>>,
    schema: &SchemaRef,
) -> Vec<bool> {
    let all = vec![true; segments.len()];
    let Some(predicate) = predicate else {
        return all;
    };
    let Some(pruning) = PruningPredicateBuilder::new()
        .with_file_schema(schema.clone())
        .build(predicate.clone())
    else {
        return all;
    };
    match pruning.prune(&SegmentSummaries(segments)) {
        Ok(keep) => keep,
        Err(e) => {
            tracing::debug!(error = %e, "segment pruning not possible; scanning all segments");
            all
        }
    }
}

/// Per-segment statistics from the manifest: `ts` min/max, `namespace` / `pod` membership, and
/// the columns without a value.
struct SegmentSummaries<'a>(&'a [Arc<Segment>]);

impl PruningStatistics for SegmentSummaries<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        (column.name == "ts").then(|| {
            let v: TimestampNanosecondArray = self.0.iter().map(|s| Some(s.meta.min_ts)).collect();
            Arc::new(v.with_timezone("UTC")) as ArrayRef
        })
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        (column.name == "ts").then(|| {
            let v: TimestampNanosecondArray = self.0.iter().map(|s| Some(s.meta.max_ts)).collect();
            Arc::new(v.with_timezone("UTC")) as ArrayRef
        })
    }

    fn num_containers(&self) -> usize {
        self.0.len()
    }

    /// A segment's row count for the columns it has no value in (a test of a value there
    /// can match nothing); unknown for the others.
    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let v: UInt64Array = self
            .0
            .iter()
            .map(|s| {
                s.meta
                    .null_columns
                    .binary_search(&column.name)
                    .is_ok()
                    .then_some(s.meta.rows)
            })
            .collect();
        (v.null_count() < v.len()).then(|| Arc::new(v) as ArrayRef)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let v: UInt64Array = self.0.iter().map(|s| Some(s.meta.rows)).collect();
        Some(Arc::new(v))
    }

    #[allow(clippy::mutable_key_type)]
    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        let wanted: Vec<&str> = values.iter().filter_map(scalar_str).collect();
        if wanted.len() != values.len() {
            return None;
        }
        let lists: Vec<Option<&Vec<String>>> = match column.name.as_str() {
            "namespace" => self.0.iter().map(|s| Some(&s.meta.namespaces)).collect(),
            "pod" => self.0.iter().map(|s| s.meta.pods.as_ref()).collect(),
            _ => return None,
        };
        // false = the segment holds none of the values (skip it); null = unknown.
        Some(
            lists
                .into_iter()
                .map(|l| {
                    let l = l?;
                    if wanted
                        .iter()
                        .any(|w| l.binary_search_by(|x| x.as_str().cmp(w)).is_ok())
                    {
                        None
                    } else {
                        Some(false)
                    }
                })
                .collect(),
        )
    }
}

pub(crate) fn scalar_str(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s),
        _ => None,
    }
}
