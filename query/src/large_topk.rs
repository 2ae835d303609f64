//! A large `ORDER BY .. LIMIT n` sorted as a sort that can spill.
//!
//! DataFusion runs a sort with a fetch as a top-k: it keeps the best `n` rows in memory, and a
//! top-k cannot spill. With a large `n` over wide rows (`SELECT * FROM events ORDER BY ts LIMIT
//! 1000000`, about 1.4 KB of `raw` per event) it failed with "Resources exhausted" in the
//! query's memory pool, where the same query without the limit, sorted with spilling, answers.
//! [`LargeTopKRule`] turns a sort whose fetch is over [`MAX_TOPK_ROWS`] into the full sort
//! with the limit above it.

use std::any::Any;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;

/// Largest fetch left to a top-k. Below it, the rows kept are few enough that a top-k's speed
/// (it never sorts the rest) is worth its memory.
pub const MAX_TOPK_ROWS: usize = 100_000;

/// Replaces each sort with a fetch over [`MAX_TOPK_ROWS`] by the sort without it under a limit.
/// It runs before the filter pushdown that hands a top-k's dynamic filter to the scans, so no
/// scan is left evaluating a filter that no top-k tightens.
#[derive(Debug, Default)]
pub struct LargeTopKRule;

impl PhysicalOptimizerRule for LargeTopKRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(sort) = (node.as_ref() as &dyn Any).downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(fetch) = sort.fetch().filter(|&n| n > MAX_TOPK_ROWS) else {
                return Ok(Transformed::no(node));
            };
            let full = Arc::new(sort.with_fetch(None));
            let limited: Arc<dyn ExecutionPlan> = if sort.preserve_partitioning() {
                // One sorted run per partition; the merge above keeps its own fetch.
                Arc::new(LocalLimitExec::new(full, fetch))
            } else {
                Arc::new(GlobalLimitExec::new(full, 0, Some(fetch)))
            };
            Ok(Transformed::yes(limited))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "ktrail_large_topk"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
