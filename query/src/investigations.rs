//! Ready-made investigations as table functions: `egress_unknown`, `exec_trace`, `executions`,
//! `pod_timeline`. Each is a SQL query over the views with `$n` parameters, planned once when
//! the session opens; a call binds its constant arguments (cast to the parameter's type) and
//! plans it as its own query, so the filters reach the `events` scan exactly as if the user had
//! written the query by hand. The plan is not inlined into the caller's (a view's would be, and
//! its ORDER BY dropped): a timeline comes back in time order, and the caller's `ORDER BY ts`
//! costs nothing.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::TimestampNanosecondType;
use datafusion::catalog::Session;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{Result, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::execution::SessionState;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{Expr, SessionContext, col, lit};

use crate::{QueryError, sessions};

/// A parameter: its name (for error messages) and the value used when the caller omits it.
struct Param {
    name: &'static str,
    default: Option<fn() -> ScalarValue>,
}

const fn required(name: &'static str) -> Param {
    Param {
        name,
        default: None,
    }
}

const EGRESS_UNKNOWN: &[Param] = &[
    required("namespace"),
    Param {
        name: "from",
        default: Some(earliest),
    },
    Param {
        name: "to",
        default: Some(latest),
    },
];
const EXEC_TRACE: &[Param] = &[required("session_id")];
const EXECUTIONS: &[Param] = &[required("binary_name")];
const POD_TIMELINE: &[Param] = &[required("namespace"), required("pod")];

fn earliest() -> ScalarValue {
    ScalarValue::TimestampNanosecond(Some(i64::MIN), Some("UTC".into()))
}

fn latest() -> ScalarValue {
    ScalarValue::TimestampNanosecond(Some(i64::MAX), Some("UTC".into()))
}

struct Investigation {
    name: &'static str,
    params: &'static [Param],
    /// How a call runs; the SQL always gives the columns and the parameters' types.
    runs: Runs,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Runs {
    /// The SQL with the arguments bound.
    Sql,
    /// [`exec_trace_plan`]: the same rows as the SQL, found in two steps.
    ExecTrace,
}

/// What a row of a timeline says, in one line a person reads.
const WHAT: &str = "
  CASE kind
    WHEN 'process_exec' THEN 'exec ' || coalesce(exe, binary_name, '?') || coalesce(' ' || nullif(args, ''), '')
    WHEN 'process_exit' THEN 'exit ' || coalesce(exe, binary_name, '?')
    WHEN 'network_connect' THEN 'connect ' || coalesce(protocol || ' ', '') || coalesce(dst_ip, '?')
      || coalesce(':' || CAST(dst_port AS VARCHAR), '')
    WHEN 'network_accept' THEN 'accept ' || coalesce(protocol || ' ', '') || 'from ' || coalesce(src_ip, '?')
      || coalesce(':' || CAST(src_port AS VARCHAR), '')
    WHEN 'network_listen' THEN 'listen ' || coalesce(protocol || ' ', '') || coalesce(src_ip, '')
      || coalesce(':' || CAST(src_port AS VARCHAR), '')
    WHEN 'network_close' THEN 'close ' || coalesce(dst_ip, '?') || coalesce(':' || CAST(dst_port AS VARCHAR), '')
    WHEN 'file_access' THEN 'file ' || coalesce(args, '?')
    WHEN 'k8s_audit' THEN coalesce(verb, '?') || ' ' || coalesce(resource, '?') || coalesce('/' || subresource, '')
      || coalesce(' ' || object_name, '') || ' by ' || coalesce(k8s_user, '?')
      || coalesce(' (as ' || impersonated_user || ')', '') || coalesce(' -> ' || CAST(response_code AS VARCHAR), '')
      || coalesce(' [' || stage || ']', '')
    WHEN 'falco_alert' THEN 'falco ' || coalesce(priority, '?') || ': ' || coalesce(rule, '?')
    WHEN 'k8s_object' THEN 'inventory ' || coalesce(resource, '?') || ' ' || coalesce(object_name, '')
    ELSE kind
  END";

/// Ties in time: an audit request's stages in the order the apiserver goes through them.
const STAGE_ORDER: &str = "CASE stage WHEN 'RequestReceived' THEN 0 WHEN 'ResponseStarted' THEN 1 \
    WHEN 'ResponseComplete' THEN 2 WHEN 'Panic' THEN 3 END";

/// The columns of a timeline row (over `events`-shaped input).
fn timeline_columns() -> String {
    format!(
        "ts, kind, source, node, namespace, pod, container_name, k8s_user, pid, ppid, \
         binary_name, exe, args, exec_id, parent_exec_id, protocol, src_ip, src_port, dst_ip, \
         dst_port, rule, priority, audit_id, stage, {WHAT} AS what"
    )
}

fn investigations() -> Vec<(Investigation, String)> {
    let cols = timeline_columns();
    let defs = [
        (
            Investigation {
                name: "egress_unknown",
                params: EGRESS_UNKNOWN,
                runs: Runs::Sql,
            },
            "SELECT ts, namespace, pod, workload_kind, workload_name, node, container_name, \
             binary_name, exe, args, pid, exec_id, session_id, protocol, src_ip, src_port, \
             dst_ip, dst_port, dst_label, dst_class \
             FROM egress \
             WHERE namespace = $1 AND ts >= $2 AND ts < $3 AND dst_class = 'unknown' \
             ORDER BY ts"
                .to_string(),
        ),
        (
            Investigation {
                name: "exec_trace",
                params: EXEC_TRACE,
                runs: Runs::ExecTrace,
            },
            format!(
                "SELECT session_id, {cols} FROM session_events \
                 WHERE session_id = $1 ORDER BY ts, kind, {STAGE_ORDER}, what"
            ),
        ),
        (
            Investigation {
                name: "executions",
                params: EXECUTIONS,
                runs: Runs::Sql,
            },
            // Runtime exec events, and Falco alerts about the binary (the only trace of it
            // where no runtime sensor runs); the alert's short container id finds its workload.
            "WITH runs AS (
               SELECT ts, node, namespace, pod, workload_kind, workload_name, container_id,
                 container_name, binary_name, exe, args, uid, pid, exec_id, parent_exe,
                 source, CAST(NULL AS VARCHAR) AS rule
               FROM events WHERE binary_name = $1 AND kind = 'process_exec'
               UNION ALL
               SELECT ts, node, namespace, pod, workload_kind, workload_name, container_id,
                 container_name, binary_name, exe, args, uid, pid, exec_id, parent_exe,
                 source, rule
               FROM events WHERE binary_name = $1 AND kind = 'falco_alert')
             SELECT r.ts, coalesce(r.node, c.node) AS node,
               coalesce(r.namespace, c.namespace) AS namespace, coalesce(r.pod, c.pod) AS pod,
               coalesce(r.workload_kind, c.workload_kind) AS workload_kind,
               coalesce(r.workload_name, c.workload_name) AS workload_name,
               coalesce(r.container_name, c.container_name) AS container_name,
               r.binary_name, r.exe, r.args, r.uid, r.pid, r.exec_id, r.parent_exe, r.source,
               r.rule
             FROM runs r
             LEFT JOIN containers c ON r.workload_name IS NULL
               AND c.short_id = substr(r.container_id, 1, 12)
             ORDER BY r.ts"
                .to_string(),
        ),
        (
            Investigation {
                name: "pod_timeline",
                params: POD_TIMELINE,
                runs: Runs::Sql,
            },
            // The pod's own events, connections made to it while it held its IP, and its
            // deletion; `relation` says which.
            format!(
                "SELECT * FROM (
                   SELECT 'own' AS relation, {cols} FROM events
                   WHERE namespace = $1 AND pod = $2
                   UNION ALL
                   SELECT 'inbound' AS relation, {cols} FROM (
                     SELECT e.* FROM events e
                     JOIN pod_ips l ON l.ip = e.dst_ip AND e.ts >= l.first_seen
                       AND (l.held_until IS NULL OR e.ts <= l.held_until)
                     WHERE l.namespace = $1 AND l.pod = $2 AND e.kind = 'network_connect'
                       AND (coalesce(e.namespace, '') <> $1 OR coalesce(e.pod, '') <> $2))
                   UNION ALL
                   SELECT 'deleted' AS relation, deleted_at AS ts, 'pod_deleted' AS kind,
                     'ktrail' AS source, node, namespace, pod,
                     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                     NULL, NULL, NULL, NULL, NULL, 'pod deleted' AS what
                   FROM pods WHERE namespace = $1 AND pod = $2 AND deleted_at IS NOT NULL)
                 ORDER BY ts, relation = 'deleted', relation, kind, {STAGE_ORDER}, what"
            ),
        ),
    ];
    defs.into()
}

/// The table functions' names.
pub fn names() -> impl Iterator<Item = &'static str> {
    investigations().into_iter().map(|(inv, _)| inv.name)
}

/// Registers the investigations as table functions of `ctx` (after the views they use).
pub async fn register(ctx: &SessionContext) -> Result<(), QueryError> {
    for (inv, sql) in investigations() {
        let plan = ctx.state().create_logical_plan(&sql).await?;
        let types = plan.get_parameter_types()?;
        let mut param_types = Vec::with_capacity(inv.params.len());
        for i in 1..=inv.params.len() {
            let t = types
                .get(&format!("${i}"))
                .cloned()
                .flatten()
                .ok_or_else(|| {
                    plan_datafusion_err!("{}: parameter ${i} has no inferred type", inv.name)
                })?;
            param_types.push(t);
        }
        ctx.register_udtf(
            inv.name,
            Arc::new(SqlTableFunction {
                name: inv.name,
                params: inv.params,
                param_types,
                runs: inv.runs,
                plan,
            }),
        );
    }
    Ok(())
}

/// A table function defined by a parameterised query.
struct SqlTableFunction {
    name: &'static str,
    params: &'static [Param],
    param_types: Vec<datafusion::arrow::datatypes::DataType>,
    runs: Runs,
    plan: LogicalPlan,
}

impl std::fmt::Debug for SqlTableFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTableFunction")
            .field("name", &self.name)
            .finish()
    }
}

impl SqlTableFunction {
    fn signature(&self) -> String {
        let names: Vec<String> = self
            .params
            .iter()
            .map(|p| match p.default {
                Some(_) => format!("[{}]", p.name),
                None => p.name.to_string(),
            })
            .collect();
        format!("{}({})", self.name, names.join(", "))
    }

    /// The arguments as values of the parameters' types; omitted trailing ones take their default.
    fn bind(&self, args: &TableFunctionArgs) -> Result<Vec<ScalarValue>> {
        let exprs = args.exprs();
        let min = self.params.iter().filter(|p| p.default.is_none()).count();
        if exprs.len() < min || exprs.len() > self.params.len() {
            return plan_err!(
                "{} takes {} argument(s), got {}",
                self.signature(),
                if min == self.params.len() {
                    min.to_string()
                } else {
                    format!("{min} to {}", self.params.len())
                },
                exprs.len()
            );
        }
        // Constant expressions such as `now() - INTERVAL '1 day'` fold to literals.
        let start = args.session().execution_props().query_execution_start_time;
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_query_execution_start_time(start)
                .build(),
        );
        let mut values = Vec::with_capacity(self.params.len());
        for (i, (param, ty)) in self.params.iter().zip(&self.param_types).enumerate() {
            let value = match exprs.get(i) {
                None => (param
                    .default
                    .expect("only trailing parameters are optional"))(),
                Some(e) => match simplifier.simplify(e.clone())? {
                    Expr::Literal(v, _) => v,
                    other => {
                        return plan_err!(
                            "{}: argument {} ({}) must be a constant, got {other}",
                            self.signature(),
                            i + 1,
                            param.name
                        );
                    }
                },
            };
            let value = value.cast_to(ty).map_err(|e| {
                plan_datafusion_err!(
                    "{}: argument {} ({}) is not a {ty}: {e}",
                    self.signature(),
                    i + 1,
                    param.name
                )
            })?;
            values.push(value);
        }
        Ok(values)
    }
}

impl TableFunctionImpl for SqlTableFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        // A prepared statement's `$n` argument: the statement can be described (its columns
        // are known) but runs only once the surface has bound the value into the SQL text
        // (`read_only::bind_placeholders`), which calls this again with a constant.
        if args
            .exprs()
            .iter()
            .any(|e| matches!(e, Expr::Placeholder(_)))
        {
            return Ok(Arc::new(BoundQuery {
                name: self.name,
                schema: Arc::new(self.plan.schema().as_arrow().clone()),
                body: Body::Unbound,
            }));
        }
        let values = self.bind(&args)?;
        let (schema, body) = match self.runs {
            Runs::Sql => {
                let plan = self.plan.clone().with_param_values(values)?;
                (plan.schema().as_arrow().clone(), Body::Plan(plan))
            }
            // Its plan is made when it runs; the rows have the SQL's columns.
            Runs::ExecTrace => (
                self.plan.schema().as_arrow().clone(),
                Body::ExecTrace(values.into_iter().next().expect("one argument")),
            ),
        };
        let schema = Arc::new(schema);
        Ok(Arc::new(BoundQuery {
            name: self.name,
            schema,
            body,
        }))
    }
}

/// A table function's query with its arguments bound.
#[derive(Debug)]
struct BoundQuery {
    name: &'static str,
    schema: SchemaRef,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// A prepared statement's parameter is still unbound: the columns are known, there are no
    /// rows until it is.
    Unbound,
    Plan(LogicalPlan),
    /// `exec_trace` of this session id.
    ExecTrace(ScalarValue),
}

#[async_trait]
impl TableProvider for BoundQuery {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = match &self.body {
            Body::Unbound => {
                return plan_err!(
                    "{}: a parameter ($n) argument must be bound before the query runs",
                    self.name
                );
            }
            Body::Plan(plan) => plan.clone(),
            Body::ExecTrace(session_id) => {
                let state = state
                    .as_any()
                    .downcast_ref::<SessionState>()
                    .expect("ktrail sessions are SessionStates");
                exec_trace_plan(&SessionContext::new_with_state(state.clone()), session_id).await?
            }
        };
        let plan = match projection {
            Some(p) => {
                let columns: Vec<Expr> = p
                    .iter()
                    .map(|&i| {
                        Expr::Column(datafusion::common::Column::from(
                            plan.schema().qualified_field(i),
                        ))
                    })
                    .collect();
                LogicalPlanBuilder::from(plan).project(columns)?.build()?
            }
            None => plan,
        };
        state.create_physical_plan(&plan).await
    }
}

/// `exec_trace` in two steps. The session's pod, start and exec ids come from
/// `exec_sessions` first; then the events are read with them bound as constants: the pod's
/// rows from its start on, found through the index. (`session_events`, joining
/// `exec_sessions` to `events`, reads every segment for the exec ids.) The rows are those of
/// `session_events WHERE session_id = $1`: a session's processes start after
/// [`sessions::MATCH_WINDOW_BEFORE_NS`] before its request, and their activity after them.
async fn exec_trace_plan(ctx: &SessionContext, session_id: &ScalarValue) -> Result<LogicalPlan> {
    let sessions = ctx
        .table("exec_sessions")
        .await?
        .filter(col("session_id").eq(lit(session_id.clone())))?
        .select_columns(&["namespace", "pod", "ts", "exec_ids"])?
        .collect()
        .await?;
    let mut values = vec![session_id.clone()];
    let mut branches = vec!["SELECT * FROM events WHERE session_id = $1".to_string()];
    for b in &sessions {
        let namespaces = b.column(0).as_string::<i32>();
        let pods = b.column(1).as_string::<i32>();
        let starts = b.column(2).as_primitive::<TimestampNanosecondType>();
        let exec_ids = b.column(3).as_list::<i32>();
        for i in (0..b.num_rows()).filter(|&i| !exec_ids.is_null(i)) {
            let ids: Vec<ScalarValue> = exec_ids
                .value(i)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(|id| ScalarValue::Utf8(Some(id.to_string())))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let n = values.len();
            let list: Vec<String> = (0..ids.len()).map(|k| format!("${}", n + 4 + k)).collect();
            branches.push(format!(
                "SELECT * FROM events WHERE session_id IS NULL AND namespace = ${} AND pod = ${} \
                 AND ts >= ${} AND exec_id IN ({})",
                n + 1,
                n + 2,
                n + 3,
                list.join(", ")
            ));
            values.push(ScalarValue::Utf8(Some(namespaces.value(i).to_string())));
            values.push(ScalarValue::Utf8(Some(pods.value(i).to_string())));
            values.push(ScalarValue::TimestampNanosecond(
                Some(starts.value(i) - sessions::MATCH_WINDOW_BEFORE_NS),
                Some("UTC".into()),
            ));
            values.extend(ids);
        }
    }
    let sql = format!(
        "SELECT $1 AS session_id, {} FROM ({}) ORDER BY ts, kind, {STAGE_ORDER}, what",
        timeline_columns(),
        branches.join(" UNION ALL ")
    );
    ctx.state()
        .create_logical_plan(&sql)
        .await?
        .with_param_values(values)
}
