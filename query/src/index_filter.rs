//! The index-filter algebra: which conjunctions, disjunctions and negations of column
//! tests a segment's inverted index answers (exactly, or as a superset the scan re-checks),
//! and the rows they select.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column as PhysicalColumn, InListExpr, Literal,
};
use roaring::RoaringBitmap;
use storage::{INDEXED_COLUMNS, Segment, SegmentIndex};

use crate::QueryError;
use crate::prune::scalar_str;

/// What the sidecar index can tell about the rows a predicate keeps: equality and `IN` tests
/// of indexed columns, combined as the predicate combines them (`AND` → intersection, `OR` →
/// union). The index only ever narrows to a superset of the matching rows; DataFusion applies
/// the predicate again to what is read.
#[derive(Debug, Clone)]
pub(crate) enum IndexFilter {
    Lookup {
        column: String,
        values: Vec<String>,
    },
    /// Any other deterministic test of one indexed column, false or NULL for a NULL value:
    /// `test` reads that column as column 0 and is evaluated over the segment's distinct values.
    Matching {
        column: String,
        test: Arc<dyn PhysicalExpr>,
    },
    All(Vec<IndexFilter>),
    Any(Vec<IndexFilter>),
}

/// How a predicate is read into an [`IndexFilter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A superset of the rows: a conjunct the index cannot read is left to the scan.
    Narrowing,
    /// Exactly the rows ([`IndexFilter::exact_rows`]): a part it cannot read refuses the whole.
    Exact,
}

/// `None` when the index cannot narrow the rows `expr` keeps (a conjunct it cannot read is
/// left to the scan; a disjunct it cannot read makes the whole `OR` unreadable).
pub(crate) fn index_filter(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexFilter> {
    read_index_filter(expr, Reading::Narrowing)
}

/// `expr` as an index filter whose rows ([`IndexFilter::exact_rows`]) are exactly the rows
/// `expr` keeps; `None` when a part of it is not a test the index answers.
pub(crate) fn exact_index_filter(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexFilter> {
    read_index_filter(expr, Reading::Exact)
}

fn read_index_filter(expr: &Arc<dyn PhysicalExpr>, reading: Reading) -> Option<IndexFilter> {
    let read = |e| read_index_filter(e, reading);
    if let Some(b) = expr.downcast_ref::<BinaryExpr>() {
        return match b.op() {
            Operator::And => match (read(b.left()), read(b.right())) {
                (Some(l), Some(r)) => Some(IndexFilter::All(vec![l, r])),
                (one, None) | (None, one) if reading == Reading::Narrowing => one,
                _ => None,
            },
            Operator::Or => Some(IndexFilter::Any(vec![read(b.left())?, read(b.right())?])),
            Operator::Eq => lookup(b.left(), std::slice::from_ref(b.right()))
                .or_else(|| lookup(b.right(), std::slice::from_ref(b.left())))
                .or_else(|| matching(expr)),
            _ => matching(expr),
        };
    }
    match expr.downcast_ref::<InListExpr>() {
        Some(list) if !list.negated() => lookup(list.expr(), list.list()),
        _ => matching(expr),
    }
}

/// `expr` as a test over the distinct values of the one indexed column it reads (column 0 of
/// the test's input), when [`matching`] accepts it.
pub(crate) fn value_test(expr: &Arc<dyn PhysicalExpr>) -> Option<Arc<dyn PhysicalExpr>> {
    match matching(expr)? {
        IndexFilter::Matching { test, .. } => Some(test),
        _ => None,
    }
}

/// `expr` as a test of the distinct values of the one indexed column it reads, when that is
/// sound: it reads no other column, calls nothing volatile, and does not keep a NULL (the index
/// holds no rows for NULLs, so a test that keeps them, `args IS NULL`, cannot be answered
/// from it).
fn matching(expr: &Arc<dyn PhysicalExpr>) -> Option<IndexFilter> {
    let columns = datafusion::physical_expr::utils::collect_columns(expr);
    let [column] = columns.iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    if !INDEXED_COLUMNS.contains(&column.name()) {
        return None;
    }
    let mut volatile = false;
    let _ = expr.apply(|e| {
        volatile = e.downcast_ref::<ScalarFunctionExpr>().is_some_and(|f| {
            f.fun().signature().volatility == datafusion::logical_expr::Volatility::Volatile
        });
        Ok(if volatile {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if volatile {
        return None;
    }
    let test = expr
        .clone()
        .transform(|e| {
            Ok(match e.downcast_ref::<PhysicalColumn>() {
                Some(c) => Transformed::yes(
                    Arc::new(PhysicalColumn::new(c.name(), 0)) as Arc<dyn PhysicalExpr>
                ),
                None => Transformed::no(e),
            })
        })
        .ok()?
        .data;
    let keeps_null = evaluate(&test, column.name(), &StringArray::new_null(1))?.value(0);
    if keeps_null {
        return None;
    }
    Some(IndexFilter::Matching {
        column: column.name().to_string(),
        test,
    })
}

/// `test` over `values` (as column `name`): true where it keeps the value; `None` when it
/// cannot be evaluated there (it is then no use to the index).
fn evaluate(
    test: &Arc<dyn PhysicalExpr>,
    name: &str,
    values: &StringArray,
) -> Option<BooleanArray> {
    let schema = Schema::new(vec![Field::new(name, DataType::Utf8, true)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(values.clone())]).ok()?;
    let result = test.evaluate(&batch).ok()?.into_array(values.len()).ok()?;
    let result = result.as_any().downcast_ref::<BooleanArray>()?;
    // NULL (unknown) does not keep a row.
    Some(match result.nulls() {
        Some(nulls) => BooleanArray::new(result.values() & nulls.inner(), None),
        None => result.clone(),
    })
}

/// `column = literal` / `column IN (literals)` on an indexed string column.
fn lookup(
    column: &Arc<dyn PhysicalExpr>,
    literals: &[Arc<dyn PhysicalExpr>],
) -> Option<IndexFilter> {
    let column = column.downcast_ref::<PhysicalColumn>()?;
    if !INDEXED_COLUMNS.contains(&column.name()) {
        return None;
    }
    let values = literals
        .iter()
        .map(|l| {
            let l = l.downcast_ref::<Literal>()?;
            scalar_str(l.value()).map(str::to_string)
        })
        .collect::<Option<Vec<_>>>()?;
    Some(IndexFilter::Lookup {
        column: column.name().to_string(),
        values,
    })
}

impl IndexFilter {
    /// Rows of a segment that may match; `None` when this index cannot narrow them (a column
    /// it does not hold).
    fn rows(&self, index: &SegmentIndex) -> Option<RoaringBitmap> {
        self.rows_within(index, None)
    }

    /// [`rows`](Self::rows), of which only those in `within` are wanted: the result may leave
    /// out others, and the caller intersects it with `within`. A test over distinct values
    /// then unions each kept value's rows among `within` (a pod's run, say), not its rows in
    /// the whole segment: `kind NOT IN (..)` next to a pod's lookup was a union of nearly
    /// every row, 61 % of such a query's samples.
    fn rows_within(
        &self,
        index: &SegmentIndex,
        within: Option<&RoaringBitmap>,
    ) -> Option<RoaringBitmap> {
        match self {
            IndexFilter::Lookup { column, values } => {
                index.lookup(column, values.iter().map(String::as_str))
            }
            IndexFilter::Matching { column, test } => {
                let (_, bitmaps, kept) = kept_values(index, column, test)?;
                // A test that keeps every value (`src_ip IS NOT NULL`) only drops NULLs, and
                // its rows would be the union of every value's, which costs more than the
                // scan saves (a run container unions with an array one value at a time).
                if kept.true_count() == kept.len() {
                    return None;
                }
                Some(union_of_kept(bitmaps, &kept, within))
            }
            IndexFilter::All(parts) => {
                // Lookups first: when they leave no row, the tests over distinct values are
                // not evaluated at all, and otherwise only over the rows they leave.
                let mut rows: Option<RoaringBitmap> = within.cloned();
                for part in lookups_first(parts) {
                    if rows.as_ref().is_some_and(RoaringBitmap::is_empty) {
                        break;
                    }
                    if let Some(part_rows) = part.rows_within(index, rows.as_ref()) {
                        rows = Some(match rows {
                            Some(r) => r & part_rows,
                            None => part_rows,
                        });
                    }
                }
                rows
            }
            IndexFilter::Any(parts) => parts.iter().try_fold(RoaringBitmap::new(), |acc, p| {
                Some(acc | p.rows_within(index, within)?)
            }),
        }
    }

    /// Exactly the rows of a segment of `rows` rows that the filter's expression keeps (it was
    /// made by [`exact_index_filter`]); `None` when the index lacks one of its columns.
    pub(crate) fn exact_rows(&self, index: &SegmentIndex, rows: u32) -> Option<RoaringBitmap> {
        self.exact_rows_within(index, rows, None)
    }

    /// [`exact_rows`](Self::exact_rows) among `within` (all of a segment's rows when `None`),
    /// as [`rows_within`](Self::rows_within) narrows: the caller intersects.
    fn exact_rows_within(
        &self,
        index: &SegmentIndex,
        rows: u32,
        within: Option<&RoaringBitmap>,
    ) -> Option<RoaringBitmap> {
        match self {
            IndexFilter::Lookup { column, values } => {
                index.lookup(column, values.iter().map(String::as_str))
            }
            IndexFilter::Matching { column, test } => {
                let (_, bitmaps, kept) = kept_values(index, column, test)?;
                let non_null: u64 = bitmaps.iter().map(|b| b.len()).sum();
                if kept.true_count() == kept.len() && non_null == u64::from(rows) {
                    // Every row, without a union of every value's rows.
                    return Some(within.cloned().unwrap_or_else(|| all_rows(rows)));
                }
                Some(union_of_kept(bitmaps, &kept, within))
            }
            IndexFilter::All(parts) => {
                let mut acc: Option<RoaringBitmap> = within.cloned();
                for p in lookups_first(parts) {
                    let r = p.exact_rows_within(index, rows, acc.as_ref())?;
                    let both = match acc {
                        Some(a) => a & r,
                        None => r,
                    };
                    if both.is_empty() {
                        return Some(both);
                    }
                    acc = Some(both);
                }
                acc
            }
            IndexFilter::Any(parts) => parts.iter().try_fold(RoaringBitmap::new(), |acc, p| {
                Some(acc | p.exact_rows_within(index, rows, within)?)
            }),
        }
    }

    /// Adds the columns the filter reads to `out`.
    pub(crate) fn columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            IndexFilter::Lookup { column, .. } | IndexFilter::Matching { column, .. } => {
                out.push(column)
            }
            IndexFilter::All(parts) | IndexFilter::Any(parts) => {
                parts.iter().for_each(|p| p.columns(out))
            }
        }
    }
}

/// Each distinct value of `column` in a segment, its rows, and whether `test` keeps it;
/// `None` when the column is not indexed or the test cannot be evaluated over its values.
pub(crate) fn kept_values<'a>(
    index: &'a SegmentIndex,
    column: &str,
    test: &Arc<dyn PhysicalExpr>,
) -> Option<(Vec<&'a str>, Vec<&'a RoaringBitmap>, BooleanArray)> {
    let (values, bitmaps): (Vec<&str>, Vec<&RoaringBitmap>) = index.entries(column)?.unzip();
    let kept = evaluate(test, column, &StringArray::from(values.clone()))?;
    Some((values, bitmaps, kept))
}

/// The rows of the values `kept` keeps (only those in `within`, when given).
fn union_of_kept(
    bitmaps: Vec<&RoaringBitmap>,
    kept: &BooleanArray,
    within: Option<&RoaringBitmap>,
) -> RoaringBitmap {
    let kept = bitmaps
        .into_iter()
        .zip(kept.values())
        .filter(|(_, keep)| *keep)
        .map(|(rows, _)| rows);
    match within {
        Some(within) => kept.fold(RoaringBitmap::new(), |acc, rows| acc | (within & rows)),
        None => kept.fold(RoaringBitmap::new(), |acc, rows| acc | rows),
    }
}

/// The parts of an `AND`, lookups (the narrowest, cheapest) before tests over distinct values.
fn lookups_first(parts: &[IndexFilter]) -> impl Iterator<Item = &IndexFilter> {
    let lookups = parts
        .iter()
        .filter(|p| !matches!(p, IndexFilter::Matching { .. }));
    let tests = parts
        .iter()
        .filter(|p| matches!(p, IndexFilter::Matching { .. }));
    lookups.chain(tests)
}

/// A segment's index (read on first use), a read failure as a query error.
pub(crate) fn segment_index(segment: &Segment) -> Result<Arc<SegmentIndex>> {
    segment
        .index()
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(QueryError::from(e))))
}

/// Rows of a segment of `rows` rows that may satisfy `filter` (all of them when the index
/// cannot tell).
pub(crate) fn index_rows(index: &SegmentIndex, rows: u32, filter: &IndexFilter) -> RoaringBitmap {
    filter.rows(index).unwrap_or_else(|| all_rows(rows))
}

/// Every row of a segment of `rows` rows.
pub(crate) fn all_rows(rows: u32) -> RoaringBitmap {
    let mut all = RoaringBitmap::new();
    all.insert_range(0..rows);
    all
}
