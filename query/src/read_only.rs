//! What a remote session (Postgres wire, Flight SQL) may run.
//!
//! Invariants:
//! - Remote SQL is read-only: queries, `EXPLAIN`, `SHOW`, cursors over queries, transaction
//!   bookkeeping and the client's own connection parameters. DDL (incl. `CREATE EXTERNAL TABLE`,
//!   which would read any file the server can), DML, `COPY`, `SET` of engine settings and every
//!   other statement are refused before planning ([`remote_refusal`]), and the plan is checked
//!   again ([`check_remote_plan`]) so a statement that plans into DDL/DML cannot slip through.
//! - No function registered in a ktrail session reads or writes the server's filesystem; the
//!   only ways to files are the statements refused here.

use std::ops::ControlFlow;

use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::lit;
use datafusion::logical_expr::{LogicalPlan, Statement as PlanStatement};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Query, Set, SetExpr, Statement, Value, visit_expressions_mut,
};
use datafusion::sql::unparser::Unparser;

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
    // Leaves damaged segments out of this client's answers: what it reads, never the store.
    crate::ALLOW_DAMAGED,
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use datafusion::sql::parser::DFParser;
    use datafusion::sql::sqlparser::dialect::{GenericDialect, PostgreSqlDialect};
    use datafusion::sql::sqlparser::parser::Parser;

    fn refusal(sql: &str) -> Option<String> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        remote_refusal(&statements[0])
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
}
