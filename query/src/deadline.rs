//! A time limit for queries: a physical optimizer rule puts [`DeadlineExec`] at the root of
//! every plan of a limited session; its stream fails with "statement timeout" once the limit
//! has passed since the plan started executing, however the rows are consumed (collected,
//! streamed to a client, or not read at all). Dropping the stream cancels the query's tasks.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// The message a query over its time limit fails with.
pub fn timeout_message(limit: Duration) -> String {
    format!(
        "canceling statement due to statement timeout ({:.0} s)",
        limit.as_secs_f64()
    )
}

/// Wraps the root of every plan in a [`DeadlineExec`].
#[derive(Debug)]
pub struct DeadlineRule {
    pub limit: Duration,
}

impl PhysicalOptimizerRule for DeadlineRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if (plan.as_ref() as &dyn Any).is::<DeadlineExec>() {
            return Ok(plan);
        }
        Ok(Arc::new(DeadlineExec {
            input: plan,
            limit: self.limit,
        }))
    }

    fn name(&self) -> &str {
        "ktrail_deadline"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[derive(Debug)]
pub struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    limit: Duration,
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeadlineExec: limit={:?}", self.limit)
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(DeadlineExec {
            input: children.pop().expect("one child"),
            limit: self.limit,
        }))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let limit = self.limit;
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let stream = futures::stream::unfold(Some(input), move |state| async move {
            let mut input = state?;
            match tokio::time::timeout_at(deadline, input.next()).await {
                Ok(Some(Ok(batch))) => Some((Ok(batch), Some(input))),
                Ok(Some(Err(e))) => Some((Err(e), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(DataFusionError::ResourcesExhausted(timeout_message(limit))),
                    None,
                )),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }
}
