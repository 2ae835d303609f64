//! The limits every query of a session runs under: its own memory pool (spilling, then
//! failing alone), a share of the server-wide pool, a deadline. Remote sessions (Postgres
//! wire, Flight SQL) and the local shell use them alike.
//!
//! Invariant: each query gets its own memory pool ([`limited_context`], [`execute_limited`]):
//! one over its limit spills, then fails alone; the others keep theirs.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::SessionContext;

use crate::deadline::{DeadlineRule, timeout_message};

/// Limits of one remote query.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory a query's operators may hold before spilling to disk, then failing.
    pub memory_bytes: usize,
    /// Wall time from planning to the last row sent.
    pub timeout: Duration,
    /// Memory all queries under these limits hold together (the server's, [`server_pool`]):
    /// each query's own pool draws on it, so many queries cannot add up past it. `None`:
    /// only each query's own limit.
    pub shared: Option<Arc<dyn MemoryPool>>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            memory_bytes: 4 << 30,
            timeout: Duration::from_secs(300),
            shared: None,
        }
    }
}

/// The pool of `bytes` that every remote query of a server draws on (see
/// [`QueryLimits::shared`]).
pub fn server_pool(bytes: usize) -> Arc<dyn MemoryPool> {
    Arc::new(GreedyMemoryPool::new(bytes))
}

/// One query's memory: at most `limit` bytes of its own, each byte also taken from the
/// server's `shared` pool; the first of the two to run out refuses (its operators spill or
/// the query fails with `ResourcesExhausted`).
#[derive(Debug)]
struct QueryPool {
    shared: Arc<dyn MemoryPool>,
    /// What `with_memory_limit` builds: its errors name the largest consumers.
    own: TrackConsumersPool<GreedyMemoryPool>,
}

impl QueryPool {
    fn new(shared: Arc<dyn MemoryPool>, limit: usize) -> Self {
        QueryPool {
            shared,
            own: TrackConsumersPool::new(
                GreedyMemoryPool::new(limit),
                NonZeroUsize::new(5).expect("5 is not 0"),
            ),
        }
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.own.register(consumer);
        self.shared.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.own.unregister(consumer);
        self.shared.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.own.grow(reservation, additional);
        self.shared.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.own.shrink(reservation, shrink);
        self.shared.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.own.try_grow(reservation, additional)?;
        self.shared
            .try_grow(reservation, additional)
            .inspect_err(|_| self.own.shrink(reservation, additional))
            .map_err(|e| match e {
                DataFusionError::ResourcesExhausted(m) => DataFusionError::ResourcesExhausted(
                    format!("the server's memory for all queries is in use: {m}"),
                ),
                e => e,
            })
    }

    fn reserved(&self) -> usize {
        self.own.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.own.memory_limit()
    }
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "query({}, server: {})", self.own, self.shared)
    }
}

/// A session state for one remote query: the session's tables, views and functions over a
/// memory pool of its own (spilling to the OS temp directory before it fails), every plan
/// under the time limit.
pub fn limited_state(base: &SessionState, limits: &QueryLimits) -> Result<SessionState> {
    let runtime = query_runtime(limits)?;
    let mut rules = base.physical_optimizers().to_vec();
    rules.push(Arc::new(DeadlineRule {
        limit: limits.timeout,
    }));
    Ok(SessionStateBuilder::new_from_existing(base.clone())
        .with_runtime_env(runtime)
        .with_physical_optimizer_rules(rules)
        .build())
}

/// The runtime of one remote query: a memory pool of its own, spilling to the OS temp
/// directory before it fails.
fn query_runtime(limits: &QueryLimits) -> Result<Arc<RuntimeEnv>> {
    match &limits.shared {
        None => RuntimeEnvBuilder::new().with_memory_limit(limits.memory_bytes, 1.0),
        Some(shared) => RuntimeEnvBuilder::new().with_memory_pool(Arc::new(QueryPool::new(
            shared.clone(),
            limits.memory_bytes,
        ))),
    }
    .build_arc()
}

/// Runs a query `plan` (planned in `state`, a [`limited_state`]) under a memory pool of its
/// own: the same limits as executing it in a fresh [`limited_context`], without building a
/// session state per query (its function registries are rebuilt on every build, which cost
/// a remote `SELECT 1` most of its server time). Statement plans (transaction bookkeeping,
/// ...) go through a fresh [`limited_context`], which knows how to run them; DDL never gets
/// here ([`check_remote_plan`](crate::read_only::check_remote_plan) refuses it).
pub async fn execute_limited(
    state: &SessionState,
    plan: LogicalPlan,
    limits: &QueryLimits,
) -> Result<SendableRecordBatchStream> {
    if matches!(plan, LogicalPlan::Statement(_)) {
        let ctx = SessionContext::new_with_state(limited_state(state, limits)?);
        return ctx.execute_logical_plan(plan).await?.execute_stream().await;
    }
    let physical = state.create_physical_plan(&plan).await?;
    let task = TaskContext::from(state).with_runtime(query_runtime(limits)?);
    execute_stream(physical, Arc::new(task))
}

/// [`limited_state`] as a context.
pub fn limited_context(ctx: &SessionContext, limits: &QueryLimits) -> Result<SessionContext> {
    Ok(SessionContext::new_with_state(limited_state(
        &ctx.state(),
        limits,
    )?))
}

/// `limits.timeout` as an error DataFusion callers understand.
pub fn timeout_error(limits: &QueryLimits) -> DataFusionError {
    DataFusionError::ResourcesExhausted(timeout_message(limits.timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_draw_on_the_servers_pool_as_well_as_their_own() {
        let limits = QueryLimits {
            memory_bytes: 600,
            shared: Some(server_pool(1000)),
            ..Default::default()
        };
        let a = query_runtime(&limits).unwrap();
        let b = query_runtime(&limits).unwrap();
        let ra = MemoryConsumer::new("a").register(&a.memory_pool);
        let rb = MemoryConsumer::new("b").register(&b.memory_pool);
        assert!(ra.try_grow(700).is_err(), "over the query's own limit");
        ra.try_grow(600).unwrap();
        // Within b's own limit, but the server has only 400 left.
        let err = rb.try_grow(500).unwrap_err().to_string();
        assert!(err.contains("the server's memory for all queries"), "{err}");
        assert_eq!(b.memory_pool.reserved(), 0, "a refused grow takes nothing");
        rb.try_grow(400).unwrap();
        ra.shrink(600);
        rb.try_grow(200).unwrap();
        assert_eq!(limits.shared.as_ref().unwrap().reserved(), 600);
    }

    #[tokio::test]
    async fn a_query_over_its_memory_limit_fails_alone() {
        let ctx = SessionContext::new();
        let small = QueryLimits {
            memory_bytes: 1 << 20,
            timeout: Duration::from_secs(60),
            shared: None,
        };
        // array_agg holds every value and cannot spill: 1 M values do not fit in 1 MiB.
        let sql = "SELECT cardinality(array_agg(v)) FROM generate_series(1, 1000000) t(v)";
        let limited = limited_context(&ctx, &small).unwrap();
        let err = limited.sql(sql).await.unwrap().collect().await.unwrap_err();
        assert!(err.to_string().contains("Resources exhausted"), "{err}");
        // The same query within a sufficient limit runs.
        let roomy = limited_context(&ctx, &QueryLimits::default()).unwrap();
        roomy.sql(sql).await.unwrap().collect().await.unwrap();
        // The session itself (other queries) is unaffected.
        let quick = QueryLimits {
            memory_bytes: 1 << 30,
            timeout: Duration::from_millis(200),
            shared: None,
        };
        let slow = limited_context(&ctx, &quick)
            .unwrap()
            .sql("SELECT count(*) FROM generate_series(1, 100000000000)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(slow.to_string().contains("statement timeout"), "{slow}");
        let ok = ctx.sql("SELECT 1").await.unwrap().collect().await.unwrap();
        assert_eq!(ok[0].num_rows(), 1);
    }
}
