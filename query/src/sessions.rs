//! `exec_sessions`: one row per `kubectl exec` / `attach` request, with the processes and
//! connections of that session, attributed at query time so the answer does not depend on the
//! order the audit log and the runtime data arrived in.
//!
//! Attribution: an audit `pods/exec` or `pods/attach` request (verb `create` or `get`) is
//! matched to the process the runtime started for it in that pod (and container, when the
//! request names one): its parent is the runtime (containerd shim, runc, crun, conmon), its argv
//! equals the request's `command=` list, and it started within [`MATCH_WINDOW`] of the request.
//! Every descendant (by `exec_id` lineage) and each of their connections belong to the session.
//! Several requests that could own the same process (or one that could own several) are
//! paired in time order and their `confidence` is lowered to 1/candidates; nothing is picked at
//! random. Without runtime process data, Falco's shell-in-container alerts in the pod in the
//! window stand in, with confidence at most 0.5.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit, TimestampNanosecondType,
};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

/// How far a runtime process may start from its exec request (clock skew between the
/// apiserver and the node, plus the kubelet → runtime path).
pub const MATCH_WINDOW_BEFORE_NS: i64 = 2_000_000_000;
pub const MATCH_WINDOW_AFTER_NS: i64 = 10_000_000_000;
/// Falco raises its shell alert after the shell starts; allow it a little longer.
const FALCO_WINDOW_AFTER_NS: i64 = 60_000_000_000;

/// Kinds of the runtime activity a session can own: every kind but the API's own records.
fn runtime_kinds() -> impl Iterator<Item = &'static str> {
    model::KINDS
        .iter()
        .copied()
        .filter(|k| !matches!(*k, "k8s_audit" | "k8s_object" | "other"))
}

/// Columns of `exec_sessions` that filters may be pushed through (they mean the same on the
/// request's audit rows; `session_id` is the request's `audit_id`).
const PUSHABLE: &[&str] = &["namespace", "pod", "k8s_user", "session_id", "audit_id"];

pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new("session_id", DataType::Utf8, false),
        Field::new("ts", ts.clone(), false),
        Field::new("ts_end", ts, true),
        Field::new("k8s_user", DataType::Utf8, true),
        Field::new("impersonated_user", DataType::Utf8, true),
        Field::new("source_ips", list.clone(), true),
        Field::new("namespace", DataType::Utf8, true),
        Field::new("pod", DataType::Utf8, true),
        Field::new("container_name", DataType::Utf8, true),
        Field::new("subresource", DataType::Utf8, true),
        Field::new("command", DataType::Utf8, true),
        Field::new("audit_id", DataType::Utf8, false),
        Field::new("response_code", DataType::Int32, true),
        Field::new("confidence", DataType::Float64, false),
        Field::new("root_exec_id", DataType::Utf8, true),
        Field::new("exec_ids", list.clone(), true),
        Field::new("processes", list.clone(), true),
        Field::new("connections", list, true),
        Field::new("process_count", DataType::Int64, false),
        Field::new("connection_count", DataType::Int64, false),
    ]))
}

/// The `exec_sessions` table.
#[derive(Debug, Default)]
pub struct ExecSessionsTable;

#[async_trait]
impl TableProvider for ExecSessionsTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match pushable(f) {
                true => TableProviderFilterPushDown::Inexact,
                false => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .expect("ktrail sessions are SessionStates")
            .clone();
        let ctx = SessionContext::new_with_state(state);
        let batch = compute(&ctx, filters).await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema(),
            projection.cloned(),
        )?)
    }
}

fn pushable(e: &Expr) -> bool {
    only_columns(e, PUSHABLE)
}

/// Whether `e` reads no column but `names`.
fn only_columns(e: &Expr, names: &[&str]) -> bool {
    let mut ok = true;
    e.apply(|e| {
        if let Expr::Column(c) = e {
            ok &= names.contains(&c.name.as_str());
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .expect("infallible");
    ok
}

/// A filter on `exec_sessions` as a filter on the requests' audit rows.
fn to_audit_filter(e: &Expr) -> Result<Expr> {
    e.clone()
        .transform(|e| match e {
            Expr::Column(c) if c.name == "session_id" => Ok(Transformed::yes(Expr::Column(
                Column::from_name("audit_id"),
            ))),
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::from_name(c.name)))),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

/// One exec/attach request (all its stages).
#[derive(Debug, Default, Clone)]
struct Request {
    audit_id: String,
    ts: i64,
    ts_last: i64,
    user: Option<String>,
    impersonated: Option<String>,
    source_ips: Option<Vec<String>>,
    namespace: String,
    pod: String,
    container: Option<String>,
    subresource: Option<String>,
    argv: Vec<String>,
    code: Option<i32>,
}

impl Request {
    fn pod_key(&self) -> PodKey {
        (self.namespace.clone(), self.pod.clone())
    }
}

/// One runtime row of a pod (process or connection, or a Falco alert).
#[derive(Debug, Clone)]
struct Activity {
    ts: i64,
    kind: String,
    exec_id: Option<String>,
    parent_exec_id: Option<String>,
    exe: Option<String>,
    args: Option<String>,
    parent_exe: Option<String>,
    container: Option<String>,
    dst_ip: Option<String>,
    dst_port: Option<i32>,
    rule: Option<String>,
}

struct Attribution {
    root: Option<usize>,
    confidence: f64,
    /// Indexes into the pod's activity: processes, then connections.
    processes: Vec<usize>,
    connections: Vec<usize>,
    /// Last activity of the session's processes (exits included).
    last: Option<i64>,
}

/// The exec/attach requests' audit rows that pass `filters` (on `exec_sessions`' columns).
async fn exec_requests(ctx: &SessionContext, filters: &[Expr]) -> Result<Vec<Request>> {
    let mut audit = ctx.table("events").await?.filter(
        col("kind")
            .eq(lit("k8s_audit"))
            .and(col("subresource").in_list(vec![lit("exec"), lit("attach")], false))
            .and(col("verb").in_list(vec![lit("create"), lit("get")], false))
            .and(col("namespace").is_not_null())
            .and(col("pod").is_not_null()),
    )?;
    for f in filters {
        audit = audit.filter(to_audit_filter(f)?)?;
    }
    let audit = audit
        .select_columns(&[
            "audit_id",
            "ts",
            "k8s_user",
            "impersonated_user",
            "source_ips",
            "namespace",
            "pod",
            "container_name",
            "subresource",
            "exe",
            "args",
            "response_code",
        ])?
        .collect()
        .await?;
    Ok(requests(&audit))
}

/// Whether a filter leaves every request of the pods it keeps: then attribution, which only
/// compares requests into one pod, sees all it needs.
fn keeps_whole_pods(e: &Expr) -> bool {
    only_columns(e, &["namespace", "pod"])
}

/// Two requests into one pod can contend for the same runtime process or Falco alert only
/// when their match windows overlap.
const CONTENTION_NS: i64 = MATCH_WINDOW_BEFORE_NS + FALCO_WINDOW_AFTER_NS;

/// `wanted`, and the other requests into their pods that could contend with them, directly
/// or through a chain of overlapping windows: the pairing of `wanted` over these is the
/// pairing over the whole history. In time order.
fn with_rivals(all: Vec<Request>, wanted: &HashSet<String>) -> Vec<Request> {
    let mut by_pod: BTreeMap<PodKey, Vec<Request>> = BTreeMap::new();
    for r in all {
        by_pod
            .entry((r.namespace.clone(), r.pod.clone()))
            .or_default()
            .push(r);
    }
    let mut kept = Vec::new();
    for (_, rs) in by_pod {
        // `requests` sorts by time: a run of windows that chain together is one cluster.
        let mut cluster: Vec<Request> = Vec::new();
        let mut flush = |cluster: &mut Vec<Request>| {
            if cluster.iter().any(|r| wanted.contains(&r.audit_id)) {
                kept.append(cluster);
            }
            cluster.clear();
        };
        for r in rs {
            if cluster.last().is_some_and(|l| r.ts - l.ts > CONTENTION_NS) {
                flush(&mut cluster);
            }
            cluster.push(r);
        }
        flush(&mut cluster);
    }
    kept.sort_by(|a, b| (a.ts, &a.audit_id).cmp(&(b.ts, &b.audit_id)));
    kept
}

async fn compute(ctx: &SessionContext, filters: &[Expr]) -> Result<RecordBatch> {
    let mut requests = exec_requests(ctx, filters).await?;
    // A filter on the user or the session drops the other requests into the same pod, and
    // with them the ambiguity they bring: attribute over those too, answer for the wanted.
    let wanted: Option<HashSet<String>> =
        if filters.iter().all(keeps_whole_pods) || requests.is_empty() {
            None
        } else {
            let wanted: HashSet<String> = requests.iter().map(|r| r.audit_id.clone()).collect();
            let pods: HashSet<PodKey> = requests
                .iter()
                .map(|r| (r.namespace.clone(), r.pod.clone()))
                .collect();
            let pods: Vec<PodKey> = pods.into_iter().collect();
            // (Requests into other pods the filter lets through are no one's rivals: dropped.)
            requests = with_rivals(exec_requests(ctx, &[in_pods(&pods)]).await?, &wanted);
            Some(wanted)
        };
    if requests.is_empty() {
        return build(&[], &HashMap::new(), &[]);
    }
    let all_pods: HashSet<PodKey> = requests.iter().map(Request::pod_key).collect();
    let pods: Vec<PodKey> = all_pods.iter().cloned().collect();
    let start = requests.iter().map(|r| r.ts).min().unwrap_or(0) - MATCH_WINDOW_BEFORE_NS;
    // Narrow reads, not the pods' whole activity since the first request: the processes and
    // Falco alerts in the requests' windows (the candidates), the sessions' process trees
    // level by level, then their own rows.
    let candidates = pod_activity(
        ctx,
        &pods,
        in_windows(&requests),
        &["process_exec", "falco_alert"],
        None,
    )
    .await?;
    let mut by_pod = activity_by_pod(&candidates);
    // Which pods have runtime process data decides only whether Falco's alerts stand in for
    // a request that found no process: asked only for those pods.
    let paired = attribute(&requests, &by_pod, &all_pods);
    let rootless: Vec<PodKey> = paired
        .iter()
        .zip(&requests)
        .filter(|(s, _)| s.root.is_none())
        .map(|(_, r)| r.pod_key())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let with_runtime = match rootless.is_empty() {
        true => all_pods,
        false => pods_with_processes(ctx, &rootless, start).await?,
    };
    let mut roots: HashSet<ProcessKey> = HashSet::new();
    for (s, r) in paired.iter().zip(&requests) {
        let acts = by_pod.get(&r.pod_key());
        if let Some(root) = s.root.and_then(|i| acts.and_then(|a| a[i].exec_id.clone())) {
            roots.insert((r.namespace.clone(), r.pod.clone(), root));
        }
    }
    let exec_ids: HashSet<String> = process_trees(ctx, &pods, start, roots)
        .await?
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    if !exec_ids.is_empty() {
        let ids: Vec<String> = exec_ids.iter().cloned().collect();
        let kinds: Vec<&str> = runtime_kinds().collect();
        let own = pod_activity(ctx, &pods, since(start), &kinds, Some(&ids)).await?;
        // The sessions' processes were read again with their exits and connections: drop
        // the candidates' copies. Attributing again over both finds the same roots (every
        // candidate is still there), now with whole trees.
        for acts in by_pod.values_mut() {
            acts.retain(|a| !a.exec_id.as_ref().is_some_and(|e| exec_ids.contains(e)));
        }
        for (key, acts) in activity_by_pod(&own) {
            let pod = by_pod.entry(key).or_default();
            pod.extend(acts);
            pod.sort_by_key(|a| a.ts);
        }
    }
    let sessions = attribute(&requests, &by_pod, &with_runtime);
    match wanted {
        None => build(&requests, &by_pod, &sessions),
        Some(wanted) => {
            let (requests, sessions): (Vec<Request>, Vec<Attribution>) = requests
                .into_iter()
                .zip(sessions)
                .filter(|(r, _)| wanted.contains(&r.audit_id))
                .unzip();
            build(&requests, &by_pod, &sessions)
        }
    }
}

/// Rows of `pods`, and possibly of other pods that share their namespaces and names (two
/// `IN` lists: a filter of any size the index reads).
fn in_pods(pods: &[PodKey]) -> Expr {
    let namespaces: HashSet<&String> = pods.iter().map(|(n, _)| n).collect();
    let names: HashSet<&String> = pods.iter().map(|(_, p)| p).collect();
    col("namespace")
        .in_list(
            namespaces.into_iter().map(|n| lit(n.clone())).collect(),
            false,
        )
        .and(col("pod").in_list(names.into_iter().map(|p| lit(p.clone())).collect(), false))
}

/// `ts` from `start` on.
fn since(start: i64) -> Expr {
    col("ts").gt_eq(ts_lit(start))
}

/// A `ts` value (nanoseconds, UTC) as a literal.
fn ts_lit(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some(ns),
        Some("UTC".into()),
    ))
}

/// More windows than this are read as one range, from the first to the last: the predicate
/// stays bounded, and the rows between the windows are read in vain.
const MAX_WINDOWS: usize = 64;

/// `ts` within some request's match window (the Falco one, the longest), overlapping windows
/// merged. `requests` are in time order.
fn in_windows(requests: &[Request]) -> Expr {
    let mut windows: Vec<(i64, i64)> = Vec::new();
    for r in requests {
        let (from, to) = (
            r.ts - MATCH_WINDOW_BEFORE_NS,
            r.ts + MATCH_WINDOW_AFTER_NS.max(FALCO_WINDOW_AFTER_NS),
        );
        match windows.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => windows.push((from, to)),
        }
    }
    if windows.len() > MAX_WINDOWS {
        let (first, last) = (windows[0].0, windows[windows.len() - 1].1);
        windows = vec![(first, last)];
    }
    windows
        .into_iter()
        .map(|(from, to)| col("ts").between(ts_lit(from), ts_lit(to)))
        .reduce(Expr::or)
        .unwrap_or(lit(false))
}

/// Rows of `kinds` in `pods` that pass `time` (of those exec ids only, when given), as
/// [`activity_by_pod`] reads them.
async fn pod_activity(
    ctx: &SessionContext,
    pods: &[PodKey],
    time: Expr,
    kinds: &[&str],
    exec_ids: Option<&[String]>,
) -> Result<Vec<RecordBatch>> {
    let mut filter = in_pods(pods)
        .and(col("kind").in_list(kinds.iter().map(|k| lit(*k)).collect(), false))
        .and(time);
    if let Some(ids) = exec_ids {
        filter =
            filter.and(col("exec_id").in_list(ids.iter().map(|i| lit(i.clone())).collect(), false));
    }
    ctx.table("events")
        .await?
        .filter(filter)?
        .select_columns(&[
            "namespace",
            "pod",
            "ts",
            "kind",
            "exec_id",
            "parent_exec_id",
            "exe",
            "args",
            "parent_exe",
            "container_name",
            "dst_ip",
            "dst_port",
            "rule",
        ])?
        .collect()
        .await
}

/// Process starts in `pods` from `start` on.
fn processes_since(pods: &[PodKey], start: i64) -> Expr {
    in_pods(pods)
        .and(col("kind").eq(lit("process_exec")))
        .and(since(start))
}

/// The pods among `pods` with runtime process data from `start` on: Falco alerts stand in
/// for it only where there is none.
async fn pods_with_processes(
    ctx: &SessionContext,
    pods: &[PodKey],
    start: i64,
) -> Result<HashSet<PodKey>> {
    let batches = ctx
        .table("events")
        .await?
        .filter(processes_since(pods, start))?
        .aggregate(vec![col("namespace"), col("pod")], vec![])?
        .collect()
        .await?;
    let mut out = HashSet::new();
    for b in &batches {
        for (ns, pod) in strings(b, "namespace").into_iter().zip(strings(b, "pod")) {
            if let (Some(ns), Some(pod)) = (ns, pod) {
                out.insert((ns, pod));
            }
        }
    }
    Ok(out)
}

/// A process: its pod and exec id.
type ProcessKey = (String, String, String);

/// `roots` and every process below them in their pods (by `exec_id` lineage, from `start`
/// on), found a level at a time: the children of the last level's processes. The segments'
/// bloom filters on `parent_exec_id` keep each level's read to the hours that hold children,
/// so the cost follows the trees' depth, not the pods' history (a pod's whole process list
/// since the request was 40 ms of a 10 M-event store's session lookup).
async fn process_trees(
    ctx: &SessionContext,
    pods: &[PodKey],
    start: i64,
    roots: HashSet<ProcessKey>,
) -> Result<HashSet<ProcessKey>> {
    let mut found = roots.clone();
    let mut level = roots;
    while !level.is_empty() {
        let parents: HashSet<&str> = level.iter().map(|(_, _, id)| id.as_str()).collect();
        let batches = ctx
            .table("events")
            .await?
            .filter(
                processes_since(pods, start).and(col("parent_exec_id").in_list(
                    parents.into_iter().map(|p| lit(p.to_string())).collect(),
                    false,
                )),
            )?
            .select_columns(&["namespace", "pod", "parent_exec_id", "exec_id"])?
            .collect()
            .await?;
        let mut next = HashSet::new();
        for b in &batches {
            let ns = strings(b, "namespace");
            let pod = strings(b, "pod");
            let parent = strings(b, "parent_exec_id");
            let id = strings(b, "exec_id");
            for i in 0..b.num_rows() {
                let (Some(ns), Some(pod), Some(parent), Some(id)) =
                    (&ns[i], &pod[i], &parent[i], &id[i])
                else {
                    continue;
                };
                // A child of a process of this level in the same pod (the IN list is of every
                // pod's ids).
                let key = (ns.clone(), pod.clone(), parent.clone());
                if level.contains(&key) {
                    let child = (ns.clone(), pod.clone(), id.clone());
                    if found.insert(child.clone()) {
                        next.insert(child);
                    }
                }
            }
        }
        level = next;
    }
    Ok(found)
}

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let a = b.column_by_name(name).expect("selected column");
    let a = datafusion::arrow::compute::cast(a, &DataType::Utf8).expect("string column");
    a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

fn int32s(b: &RecordBatch, name: &str) -> Vec<Option<i32>> {
    b.column_by_name(name)
        .expect("selected column")
        .as_primitive::<Int32Type>()
        .iter()
        .collect()
}

fn timestamps(b: &RecordBatch) -> Vec<i64> {
    b.column_by_name("ts")
        .expect("ts")
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .to_vec()
}

fn requests(batches: &[RecordBatch]) -> Vec<Request> {
    let mut by_id: BTreeMap<String, Request> = BTreeMap::new();
    for b in batches {
        let ids = strings(b, "audit_id");
        let ts = timestamps(b);
        let user = strings(b, "k8s_user");
        let imp = strings(b, "impersonated_user");
        let ns = strings(b, "namespace");
        let pod = strings(b, "pod");
        let container = strings(b, "container_name");
        let sub = strings(b, "subresource");
        let exe = strings(b, "exe");
        let args = strings(b, "args");
        let codes = int32s(b, "response_code");
        let ips = b
            .column_by_name("source_ips")
            .expect("source_ips")
            .as_list::<i32>()
            .clone();
        for i in 0..b.num_rows() {
            let Some(id) = ids[i].clone() else { continue };
            let r = by_id.entry(id.clone()).or_insert_with(|| Request {
                audit_id: id,
                ts: ts[i],
                ts_last: ts[i],
                ..Default::default()
            });
            r.ts = r.ts.min(ts[i]);
            r.ts_last = r.ts_last.max(ts[i]);
            r.user = r.user.take().or(user[i].clone());
            r.impersonated = r.impersonated.take().or(imp[i].clone());
            r.namespace = ns[i].clone().unwrap_or_default();
            r.pod = pod[i].clone().unwrap_or_default();
            r.container = r.container.take().or(container[i].clone());
            r.subresource = r.subresource.take().or(sub[i].clone());
            if let Some(c) = codes[i] {
                r.code = Some(r.code.map_or(c, |old| old.max(c)));
            }
            if r.source_ips.is_none() && !ips.is_null(i) {
                let v = ips.value(i);
                r.source_ips = Some(
                    v.as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::to_string)
                        .collect(),
                );
            }
            if r.argv.is_empty()
                && let Some(e) = &exe[i]
            {
                // Ingest put the request's `command=` argv in exe + args.
                r.argv = std::iter::once(e.clone())
                    .chain(args[i].iter().flat_map(|a| tokens(a)))
                    .collect();
            }
        }
    }
    let mut v: Vec<Request> = by_id.into_values().collect();
    v.sort_by(|a, b| (a.ts, &a.audit_id).cmp(&(b.ts, &b.audit_id)));
    v
}

/// Argument tokens, quotes removed (Tetragon quotes arguments that contain spaces).
fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|t| t.trim_matches(|c| c == '"' || c == '\'').to_string())
        .collect()
}

type PodKey = (String, String);

fn activity_by_pod(batches: &[RecordBatch]) -> HashMap<PodKey, Vec<Activity>> {
    let mut out: HashMap<PodKey, Vec<Activity>> = HashMap::new();
    for b in batches {
        let ns = strings(b, "namespace");
        let pod = strings(b, "pod");
        let ts = timestamps(b);
        let kind = strings(b, "kind");
        let exec_id = strings(b, "exec_id");
        let parent = strings(b, "parent_exec_id");
        let exe = strings(b, "exe");
        let args = strings(b, "args");
        let parent_exe = strings(b, "parent_exe");
        let container = strings(b, "container_name");
        let dst_ip = strings(b, "dst_ip");
        let rule = strings(b, "rule");
        let port = int32s(b, "dst_port");
        for i in 0..b.num_rows() {
            let (Some(n), Some(p)) = (ns[i].clone(), pod[i].clone()) else {
                continue;
            };
            out.entry((n, p)).or_default().push(Activity {
                ts: ts[i],
                kind: kind[i].clone().unwrap_or_default(),
                exec_id: exec_id[i].clone(),
                parent_exec_id: parent[i].clone(),
                exe: exe[i].clone(),
                args: args[i].clone(),
                parent_exe: parent_exe[i].clone(),
                container: container[i].clone(),
                dst_ip: dst_ip[i].clone(),
                dst_port: port[i],
                rule: rule[i].clone(),
            });
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|a| a.ts);
    }
    out
}

fn base_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Whether a process's parent is the container runtime (so it was started by exec, or is the
/// container's first process).
fn parent_is_runtime(parent_exe: Option<&str>) -> bool {
    let Some(p) = parent_exe else { return false };
    let b = base_name(p);
    [
        "containerd-shim",
        "runc",
        "crun",
        "conmon",
        "docker-containerd-shim",
    ]
    .iter()
    .any(|r| b.starts_with(r))
}

fn argv_matches(req: &[String], a: &Activity) -> bool {
    let (Some(cmd), Some(exe)) = (req.first(), a.exe.as_deref()) else {
        return false;
    };
    if cmd != exe && base_name(cmd) != base_name(exe) {
        return false;
    }
    let want: Vec<String> = req[1..].iter().flat_map(|s| tokens(s)).collect();
    let got = a.args.as_deref().map(tokens).unwrap_or_default();
    want == got
}

fn in_window(req: &Request, ts: i64, after: i64) -> bool {
    ts >= req.ts - MATCH_WINDOW_BEFORE_NS && ts <= req.ts + after
}

fn container_ok(req: &Request, a: &Activity) -> bool {
    match (&req.container, &a.container) {
        (Some(r), Some(c)) => r == c,
        _ => true,
    }
}

/// Pairs each request with its root process (and the tree below it among `by_pod`'s rows),
/// or with Falco's alerts in pods not in `with_runtime`.
fn attribute(
    requests: &[Request],
    by_pod: &HashMap<PodKey, Vec<Activity>>,
    with_runtime: &HashSet<PodKey>,
) -> Vec<Attribution> {
    let empty = Vec::new();
    // Candidate roots per request, and candidate requests per root.
    let mut candidates: Vec<Vec<usize>> = Vec::with_capacity(requests.len());
    let mut claimants: HashMap<(PodKey, usize), Vec<usize>> = HashMap::new();
    for (ri, r) in requests.iter().enumerate() {
        let key = (r.namespace.clone(), r.pod.clone());
        let acts = by_pod.get(&key).unwrap_or(&empty);
        let denied = r.code.is_some_and(|c| c >= 400);
        let c: Vec<usize> = if denied || r.subresource.as_deref() != Some("exec") {
            Vec::new()
        } else {
            acts.iter()
                .enumerate()
                .filter(|(_, a)| {
                    a.kind == "process_exec"
                        && in_window(r, a.ts, MATCH_WINDOW_AFTER_NS)
                        && container_ok(r, a)
                        && parent_is_runtime(a.parent_exe.as_deref())
                        && argv_matches(&r.argv, a)
                })
                .map(|(i, _)| i)
                .collect()
        };
        for &ai in &c {
            claimants.entry((key.clone(), ai)).or_default().push(ri);
        }
        candidates.push(c);
    }
    // Pair in time order: each request takes the earliest candidate no earlier request took.
    let mut taken: HashSet<(PodKey, usize)> = HashSet::new();
    let mut sessions = Vec::with_capacity(requests.len());
    for (ri, r) in requests.iter().enumerate() {
        let key = (r.namespace.clone(), r.pod.clone());
        let acts = by_pod.get(&key).unwrap_or(&empty);
        let choice = candidates[ri]
            .iter()
            .copied()
            .find(|&ai| !taken.contains(&(key.clone(), ai)));
        let Some(root) = choice else {
            sessions.push(falco_fallback(
                r,
                requests,
                acts,
                with_runtime.contains(&key),
            ));
            continue;
        };
        taken.insert((key.clone(), root));
        let rivals = claimants.get(&(key.clone(), root)).map_or(1, Vec::len);
        let confidence = 1.0 / candidates[ri].len().max(rivals) as f64;
        let (processes, connections, last) = descendants(acts, root);
        sessions.push(Attribution {
            root: Some(root),
            confidence,
            processes,
            connections,
            last,
        });
    }
    sessions
}

/// The root and every process below it by `exec_id` lineage, and their connections.
fn descendants(acts: &[Activity], root: usize) -> (Vec<usize>, Vec<usize>, Option<i64>) {
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, a) in acts.iter().enumerate() {
        if a.kind == "process_exec"
            && let Some(p) = a.parent_exec_id.as_deref()
        {
            children.entry(p).or_default().push(i);
        }
    }
    let mut ids: HashSet<&str> = HashSet::new();
    let mut processes = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(i) = queue.pop_front() {
        let Some(id) = acts[i].exec_id.as_deref() else {
            processes.push(i);
            continue;
        };
        if !ids.insert(id) {
            continue;
        }
        processes.push(i);
        queue.extend(children.get(id).into_iter().flatten().copied());
    }
    processes.sort_by_key(|&i| acts[i].ts);
    let connections = acts
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            a.kind.starts_with("network_") && a.exec_id.as_deref().is_some_and(|e| ids.contains(e))
        })
        .map(|(i, _)| i)
        .collect();
    let last = acts
        .iter()
        .filter(|a| a.exec_id.as_deref().is_some_and(|e| ids.contains(e)))
        .map(|a| a.ts)
        .max();
    (processes, connections, last)
}

/// Without runtime process data for the pod, Falco's shell-in-container alerts in the window.
fn falco_fallback(
    r: &Request,
    requests: &[Request],
    acts: &[Activity],
    has_runtime: bool,
) -> Attribution {
    let none = Attribution {
        root: None,
        confidence: 0.0,
        processes: Vec::new(),
        connections: Vec::new(),
        last: None,
    };
    if has_runtime || r.subresource.as_deref() != Some("exec") || r.code.is_some_and(|c| c >= 400) {
        return none;
    }
    let alerts: Vec<usize> = acts
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            a.kind == "falco_alert"
                && a.rule
                    .as_deref()
                    .is_some_and(|rule| rule.to_ascii_lowercase().contains("shell"))
                && in_window(r, a.ts, FALCO_WINDOW_AFTER_NS)
                && container_ok(r, a)
        })
        .map(|(i, _)| i)
        .collect();
    if alerts.is_empty() {
        return none;
    }
    // Other requests into the same pod in the window could own these alerts too.
    let rivals = requests
        .iter()
        .filter(|o| {
            o.namespace == r.namespace
                && o.pod == r.pod
                && (o.ts - r.ts).abs() <= FALCO_WINDOW_AFTER_NS
        })
        .count();
    Attribution {
        root: None,
        confidence: 0.5 / rivals.max(1) as f64,
        last: alerts.iter().map(|&i| acts[i].ts).max(),
        processes: alerts,
        connections: Vec::new(),
    }
}

fn build(
    requests: &[Request],
    by_pod: &HashMap<PodKey, Vec<Activity>>,
    sessions: &[Attribution],
) -> Result<RecordBatch> {
    let n = requests.len();
    let mut session_id = StringBuilder::new();
    let mut ts = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ts_end = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut user = StringBuilder::new();
    let mut imp = StringBuilder::new();
    let mut ips = ListBuilder::new(StringBuilder::new());
    let mut ns = StringBuilder::new();
    let mut pod = StringBuilder::new();
    let mut container = StringBuilder::new();
    let mut sub = StringBuilder::new();
    let mut command = StringBuilder::new();
    let mut audit_id = StringBuilder::new();
    let mut code = Int32Builder::new();
    let mut confidence = Float64Builder::new();
    let mut root = StringBuilder::new();
    let mut exec_ids = ListBuilder::new(StringBuilder::new());
    let mut processes = ListBuilder::new(StringBuilder::new());
    let mut connections = ListBuilder::new(StringBuilder::new());
    let mut process_count = Int64Builder::new();
    let mut connection_count = Int64Builder::new();
    let empty = Vec::new();
    for (r, s) in requests.iter().zip(sessions) {
        let acts = by_pod
            .get(&(r.namespace.clone(), r.pod.clone()))
            .unwrap_or(&empty);
        session_id.append_value(&r.audit_id);
        ts.append_value(r.ts);
        ts_end.append_option(s.last.map_or(Some(r.ts_last), |l| Some(l.max(r.ts_last))));
        user.append_option(r.user.as_deref());
        imp.append_option(r.impersonated.as_deref());
        match &r.source_ips {
            Some(v) => {
                for ip in v {
                    ips.values().append_value(ip);
                }
                ips.append(true);
            }
            None => ips.append(false),
        }
        ns.append_value(&r.namespace);
        pod.append_value(&r.pod);
        container.append_option(r.container.as_deref());
        sub.append_option(r.subresource.as_deref());
        command.append_option((!r.argv.is_empty()).then(|| r.argv.join(" ")));
        audit_id.append_value(&r.audit_id);
        code.append_option(r.code);
        confidence.append_value(s.confidence);
        root.append_option(s.root.and_then(|i| acts[i].exec_id.as_deref()));
        for &i in &s.processes {
            exec_ids.values().append_option(acts[i].exec_id.as_deref());
            let a = &acts[i];
            let line = match (&a.exe, &a.args) {
                (Some(e), Some(x)) if !x.is_empty() => format!("{e} {x}"),
                (Some(e), _) => e.clone(),
                (None, _) => String::new(),
            };
            processes.values().append_value(line);
        }
        exec_ids.append(true);
        processes.append(true);
        for &i in &s.connections {
            let a = &acts[i];
            connections
                .values()
                .append_value(match (&a.dst_ip, a.dst_port) {
                    (Some(ip), Some(p)) if ip.contains(':') => format!("[{ip}]:{p}"),
                    (Some(ip), Some(p)) => format!("{ip}:{p}"),
                    (Some(ip), None) => ip.clone(),
                    (None, _) => String::new(),
                });
        }
        connections.append(true);
        process_count.append_value(s.processes.len() as i64);
        connection_count.append_value(s.connections.len() as i64);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(session_id.finish()),
        Arc::new(ts.finish()),
        Arc::new(ts_end.finish()),
        Arc::new(user.finish()),
        Arc::new(imp.finish()),
        Arc::new(ips.finish()),
        Arc::new(ns.finish()),
        Arc::new(pod.finish()),
        Arc::new(container.finish()),
        Arc::new(sub.finish()),
        Arc::new(command.finish()),
        Arc::new(audit_id.finish()),
        Arc::new(code.finish()),
        Arc::new(confidence.finish()),
        Arc::new(root.finish()),
        Arc::new(exec_ids.finish()),
        Arc::new(processes.finish()),
        Arc::new(connections.finish()),
        Arc::new(process_count.finish()),
        Arc::new(connection_count.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_parents() {
        assert!(parent_is_runtime(Some("/usr/bin/containerd-shim-runc-v2")));
        assert!(parent_is_runtime(Some("/usr/bin/runc")));
        assert!(!parent_is_runtime(Some("/bin/bash")));
        assert!(!parent_is_runtime(None));
    }
}
