//! From selected rows to a Parquet access plan: which row groups to skip, scan whole, or read
//! through a row selection.

use std::ops::Range;

use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use roaring::RoaringBitmap;

/// Shortest gap worth skipping. Shorter gaps between hits are read and left to the scan's
/// filter: a kind interleaved row by row with others is cheaper to decode whole than to
/// select (Parquet would turn that selection into a mask over every row anyway, after we
/// built it selector by selector), while a pod's rows, contiguous in the segment's sort
/// order, still come as one run.
const MIN_SKIP: u32 = 64;

/// Turns a row bitmap into a per-row-group plan: skip groups without hits, scan groups where
/// at least half the rows are hits, and select the runs of hits in the others (gaps under
/// [`MIN_SKIP`] read through).
pub(crate) fn access_plan(row_groups: &[u64], rows: &RoaringBitmap) -> ParquetAccessPlan {
    let mut plan = ParquetAccessPlan::new_all(row_groups.len());
    let mut start = 0u64;
    for (i, &n) in row_groups.iter().enumerate() {
        let range = start as u32..(start + n) as u32;
        start += n;
        // Counted from the bitmap's containers: empty and full groups need no walk of rows.
        match rows.range_cardinality(range.clone()) {
            0 => plan.skip(i),
            // Dense hits: skipping the rest saves less than half the group's decoding, and
            // finding the gaps worth skipping walks every hit (`kind = ..`: millions).
            hits if hits * 2 >= n => {}
            _ => match runs(rows, range.clone()).as_slice() {
                [only] if *only == range => {}
                runs => plan.set(i, RowGroupAccess::Selection(selection(runs, range))),
            },
        }
    }
    plan
}

/// The rows of `rows` within `range` as runs, gaps shorter than [`MIN_SKIP`] (and those to
/// the group's ends) closed.
fn runs(rows: &RoaringBitmap, range: Range<u32>) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    // Run by run of consecutive hits, not hit by hit.
    let mut hits = rows.range(range.clone());
    while let Some(hit) = hits.next_range() {
        let (start, end) = (*hit.start(), *hit.end() + 1);
        let from = runs.last().map_or(range.start, |last| last.end);
        match runs.last_mut() {
            Some(last) if start - from < MIN_SKIP => last.end = end,
            None if start - from < MIN_SKIP => runs.push(range.start..end),
            _ => runs.push(start..end),
        }
    }
    if let Some(last) = runs.last_mut()
        && range.end - last.end < MIN_SKIP
    {
        last.end = range.end;
    }
    runs
}

fn selection(runs: &[Range<u32>], range: Range<u32>) -> RowSelection {
    let mut selectors = Vec::with_capacity(2 * runs.len() + 1);
    let mut pos = range.start;
    for run in runs {
        if run.start > pos {
            selectors.push(RowSelector::skip((run.start - pos) as usize));
        }
        selectors.push(RowSelector::select((run.end - run.start) as usize));
        pos = run.end;
    }
    if range.end > pos {
        selectors.push(RowSelector::skip((range.end - pos) as usize));
    }
    RowSelection::from(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_plan_skips_selects_and_scans() {
        let mut rows = RoaringBitmap::new();
        rows.insert_range(110..120); // group 0 partially
        rows.insert_range(400..500); // group 1 fully
        let plan = access_plan(&[400, 100, 100], &rows);
        assert_eq!(plan.row_group_indexes(), vec![0, 1]);
        let sel = match &plan.inner()[0] {
            RowGroupAccess::Selection(s) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sel.row_count(), 10);
        assert!(matches!(plan.inner()[1], RowGroupAccess::Scan));
        assert!(matches!(plan.inner()[2], RowGroupAccess::Skip));
        // Hits on half a group or more: the group is scanned, its long gap included.
        let rows: RoaringBitmap = (0..60).chain(200..240).collect();
        let plan = access_plan(&[200, 100], &rows);
        assert!(matches!(plan.inner()[0], RowGroupAccess::Selection(_)));
        assert!(matches!(plan.inner()[1], RowGroupAccess::Scan));
    }

    #[test]
    fn short_gaps_are_read_through() {
        // Every other row (a kind interleaved with others): the whole group.
        let rows: RoaringBitmap = (0..1000).step_by(2).collect();
        assert!(matches!(
            access_plan(&[1000], &rows).inner()[0],
            RowGroupAccess::Scan
        ));
        // Every other row of one pod's run: that run, start to end.
        let rows: RoaringBitmap = (300..400).step_by(2).collect();
        let pod_runs = runs(&rows, 0..1000);
        assert_eq!((pod_runs.len(), &pod_runs[0]), (1, &(300..399)));
        let sel = match &access_plan(&[1000], &rows).inner()[0] {
            RowGroupAccess::Selection(s) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sel.row_count(), 99);
        // Gaps of MIN_SKIP rows are skipped; shorter ones at the group's ends are not.
        let rows: RoaringBitmap = [10, 11, 11 + MIN_SKIP + 1, 990].into_iter().collect();
        assert_eq!(runs(&rows, 0..1000), [0..12, 76..77, 990..1000]);
    }
}
