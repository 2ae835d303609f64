//! What a remote session (Postgres wire, Flight SQL) may do, and the limits every one of its
//! queries runs under.
//!
//! Invariants:
//! - Remote SQL is read-only: queries, `EXPLAIN`, `SHOW`, cursors over queries, transaction
//!   bookkeeping and the client's own connection parameters. DDL (incl. `CREATE EXTERNAL TABLE`,
//!   which would read any file the server can), DML, `COPY`, `SET` of engine settings and every
//!   other statement are refused before planning ([`remote_refusal`]), and the plan is checked
//!   again ([`check_remote_plan`]) so a statement that plans into DDL/DML cannot slip through.
//! - No function registered in a ktrail session reads or writes the server's filesystem; the
//!   only ways to files are the statements refused here.
//! - Each query gets its own memory pool ([`limited_context`], [`execute_limited`]): one over
//!   its limit spills, then fails alone; the others keep theirs.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::lit;
use datafusion::logical_expr::{LogicalPlan, Statement as PlanStatement};
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Query, Set, SetExpr, Statement, Value, visit_expressions_mut,
};
use datafusion::sql::unparser::Unparser;

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

/// Connection parameters a client may set (drivers and poolers set these on connect); they
/// change how results are presented to that client, not what the engine may do.
const CLIENT_PARAMETERS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
];

/// Why `statement` may not run in a remote session; `None` when it may.
pub fn remote_refusal(statement: &Statement) -> Option<String> {
    let allowed = match statement {
        Statement::Query(q) => query_is_read_only(q),
        Statement::Explain { statement, .. } => return remote_refusal(statement),
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowSchemas { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. } => true,
        Statement::Declare { stmts } => stmts
            .iter()
            .all(|d| d.for_query.as_ref().is_none_or(|q| query_is_read_only(q))),
        Statement::Set(set) => match set {
            Set::SingleAssignment { variable, .. } => {
                let name = variable.to_string().to_ascii_lowercase();
                if !CLIENT_PARAMETERS.contains(&name.as_str()) {
                    return Some(format!(
                        "remote sessions are read-only: SET {name} is not allowed \
                         (only client parameters: {})",
                        CLIENT_PARAMETERS.join(", ")
                    ));
                }
                true
            }
            Set::SetTimeZone { .. } | Set::SetNames { .. } => true,
            _ => false,
        },
        _ => false,
    };
    if allowed {
        None
    } else {
        Some(format!(
            "remote sessions are read-only: {} is not allowed",
            statement_kind(statement)
        ))
    }
}

/// [`remote_refusal`] for a statement of DataFusion's own parser, which adds `CREATE EXTERNAL
/// TABLE`, `COPY ... TO` and `RESET`.
pub fn remote_refusal_df(statement: &DFStatement) -> Option<String> {
    match statement {
        DFStatement::Statement(s) => remote_refusal(s),
        DFStatement::Explain(e) => remote_refusal_df(&e.statement),
        DFStatement::CreateExternalTable(_) => {
            Some("remote sessions are read-only: CREATE EXTERNAL TABLE is not allowed".into())
        }
        DFStatement::CopyTo(_) => Some("remote sessions are read-only: COPY is not allowed".into()),
        DFStatement::Reset(_) => Some("remote sessions are read-only: RESET is not allowed".into()),
    }
}

/// The statement's leading keywords, for the refusal message.
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let upper: Vec<&str> = words
        .iter()
        .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .copied()
        .collect();
    if upper.is_empty() {
        "this statement".to_string()
    } else {
        upper.join(" ")
    }
}

fn query_is_read_only(q: &Query) -> bool {
    let ctes_ok = q
        .with
        .as_ref()
        .is_none_or(|w| w.cte_tables.iter().all(|c| query_is_read_only(&c.query)));
    ctes_ok && set_expr_is_read_only(&q.body)
}

fn set_expr_is_read_only(e: &SetExpr) -> bool {
    match e {
        SetExpr::Select(s) => s.into.is_none(),
        SetExpr::Query(q) => query_is_read_only(q),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr_is_read_only(left) && set_expr_is_read_only(right)
        }
        SetExpr::Values(_) | SetExpr::Table(_) => true,
        _ => false,
    }
}

/// The plan of a remote statement: no DDL, DML, `COPY` or engine `SET` anywhere in it
/// (subqueries included).
pub fn check_remote_plan(plan: &LogicalPlan) -> Result<()> {
    let mut refusal = None;
    plan.apply_with_subqueries(|node| {
        let what = match node {
            LogicalPlan::Ddl(ddl) => Some(ddl.name().to_string()),
            LogicalPlan::Dml(dml) => Some(format!("{}", dml.op)),
            LogicalPlan::Copy(_) => Some("COPY".to_string()),
            LogicalPlan::Statement(PlanStatement::SetVariable(s)) => {
                Some(format!("SET {}", s.variable))
            }
            LogicalPlan::Statement(PlanStatement::ResetVariable(s)) => {
                Some(format!("RESET {}", s.variable))
            }
            _ => None,
        };
        Ok(match what {
            Some(w) => {
                refusal = Some(w);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    })?;
    match refusal {
        Some(what) => Err(DataFusionError::Plan(format!(
            "remote sessions are read-only: {what} is not allowed"
        ))),
        None => Ok(()),
    }
}

/// Replaces the statement's `$n` (or `?`) placeholders with the values as SQL literals, so it can be
/// planned as an ordinary statement: parameters then work everywhere, table function
/// arguments included (DataFusion binds plan parameters only in expressions, not in the
/// arguments of a table function, which are evaluated while planning).
pub fn bind_placeholders(statement: &mut Statement, values: &[ScalarValue]) -> Result<()> {
    let unparser = Unparser::default();
    let mut failure = None;
    // `?` placeholders (JDBC/ODBC style) take the values in the order they appear.
    let mut next_positional = 0;
    let _ = visit_expressions_mut(statement, |expr| {
        if let SqlExpr::Value(v) = expr
            && let Value::Placeholder(id) = &v.value
        {
            let index = if id == "?" {
                next_positional += 1;
                Some(next_positional - 1)
            } else {
                id.trim_start_matches('$')
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(1))
            };
            match index.and_then(|i| values.get(i)) {
                Some(value) => match unparser.expr_to_sql(&lit(value.clone())) {
                    Ok(literal) => *expr = literal,
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                },
                None => {
                    failure = Some(DataFusionError::Plan(format!(
                        "no value for parameter {id}"
                    )));
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
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
/// here ([`check_remote_plan`] refuses it).
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
    use datafusion::sql::parser::DFParser;
    use datafusion::sql::sqlparser::dialect::{GenericDialect, PostgreSqlDialect};
    use datafusion::sql::sqlparser::parser::Parser;

    fn refusal(sql: &str) -> Option<String> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        remote_refusal(&statements[0])
    }

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

    #[test]
    fn remote_statements_are_read_only() {
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a UNION SELECT 2",
            "EXPLAIN ANALYZE SELECT count(*) FROM events",
            "SHOW TABLES",
            "SHOW search_path",
            "BEGIN",
            "COMMIT",
            "SET application_name = 'psql'",
            "SET TIME ZONE 'UTC'",
            "DECLARE c CURSOR FOR SELECT * FROM events",
            "FETCH 10 FROM c",
            "CLOSE c",
            "DISCARD ALL",
        ] {
            assert_eq!(refusal(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("DROP VIEW pods", "DROP VIEW"),
            ("INSERT INTO t VALUES (1)", "INSERT INTO"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("SELECT * INTO t FROM events", "SELECT"),
            (
                "SET datafusion.execution.batch_size = 1",
                "SET datafusion.execution.batch_size",
            ),
            (
                "SET datafusion.runtime.memory_limit = '100G'",
                "SET datafusion.runtime.memory_limit",
            ),
            ("EXPLAIN CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            (
                "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
                "WITH",
            ),
        ] {
            let r = refusal(bad).unwrap_or_else(|| panic!("{bad} was allowed"));
            assert!(r.starts_with("remote sessions are read-only"), "{r}");
            assert!(r.contains(says), "{bad}: {r}");
        }
    }

    #[test]
    fn datafusion_statements_are_read_only() {
        for (bad, says) in [
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("COPY (SELECT 1) TO '/tmp/x.parquet'", "COPY"),
            ("EXPLAIN COPY (SELECT 1) TO '/tmp/x.parquet'", "COPY"),
            ("RESET datafusion.execution.batch_size", "RESET"),
            ("DROP TABLE events", "DROP TABLE"),
        ] {
            let statement = DFParser::parse_sql(bad).unwrap().pop_front().unwrap();
            let r = remote_refusal_df(&statement).unwrap_or_else(|| panic!("{bad} was allowed"));
            assert!(r.contains(says), "{bad}: {r}");
        }
        let ok = DFParser::parse_sql("SELECT * FROM pods")
            .unwrap()
            .pop_front()
            .unwrap();
        assert_eq!(remote_refusal_df(&ok), None);
    }

    #[test]
    fn placeholders_bind_as_literals() {
        let mut statements = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT * FROM exec_trace($1) WHERE kind = $2 AND pid > $3",
        )
        .unwrap();
        let mut s = statements.remove(0);
        bind_placeholders(
            &mut s,
            &[
                ScalarValue::from("it's"),
                ScalarValue::from("process_exec"),
                ScalarValue::Int64(Some(7)),
            ],
        )
        .unwrap();
        assert_eq!(
            s.to_string(),
            "SELECT * FROM exec_trace('it''s') WHERE kind = 'process_exec' AND pid > 7"
        );
        let mut q = Parser::parse_sql(&GenericDialect {}, "SELECT ? + ?")
            .unwrap()
            .remove(0);
        bind_placeholders(
            &mut q,
            &[ScalarValue::Int64(Some(1)), ScalarValue::Int64(Some(2))],
        )
        .unwrap();
        assert_eq!(q.to_string(), "SELECT 1 + 2");
        let err = bind_placeholders(
            &mut Parser::parse_sql(&PostgreSqlDialect {}, "SELECT $2")
                .unwrap()
                .remove(0),
            &[ScalarValue::from("x")],
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("no value for parameter $2")
        );
    }

    #[tokio::test]
    async fn plans_that_write_are_refused() {
        let ctx = SessionContext::new();
        for sql in [
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/ktrail-remote-test.csv'",
            "SET datafusion.execution.batch_size = 1",
        ] {
            let statement = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
            let plan = ctx.state().statement_to_plan(statement).await.unwrap();
            let err = check_remote_plan(&plan).unwrap_err().to_string();
            assert!(
                err.contains("remote sessions are read-only"),
                "{sql}: {err}"
            );
        }
        let statement = DFParser::parse_sql("SELECT 1")
            .unwrap()
            .pop_front()
            .unwrap();
        let plan = ctx.state().statement_to_plan(statement).await.unwrap();
        check_remote_plan(&plan).unwrap();
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
