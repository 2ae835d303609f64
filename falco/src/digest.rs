//! The repeated-alert digest: one row per group of a rule's alerts that differ only in what
//! varies (see [`crate::tune::groups`]), so a responder reads one line instead of nine
//! thousand. The alerts themselves stay in `falco_alerts`. As the `falco_alert_groups`
//! table, computed from the stored alerts when a query reads it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::tune::{Alert, Options, groups};

/// Name of the digest's table.
pub const TABLE: &str = "falco_alert_groups";

/// One group of repeated alerts.
#[derive(Clone, Debug, Serialize)]
pub struct AlertGroup {
    pub rule: String,
    pub count: usize,
    /// Its share of the rule's alerts (0..1).
    pub share_of_rule: f64,
    pub hosts: Vec<String>,
    pub first_ns: i64,
    pub last_ns: i64,
    /// Recurs by the tuning's measure (count and hours, or hosts).
    pub recurring: bool,
    /// What its alerts have in common (normalised output fields).
    pub key: std::collections::BTreeMap<String, String>,
    /// Fields whose values vary among its alerts (left out of the key).
    pub varying: Vec<String>,
    /// The output of its first alert.
    pub sample: String,
}

/// The digest of `alerts`, noisiest rules first and noisiest groups first within each.
pub fn digest(alerts: &[Alert], opts: &Options) -> Vec<AlertGroup> {
    let mut per_rule = std::collections::BTreeMap::<&str, usize>::new();
    for a in alerts {
        *per_rule.entry(a.rule.as_str()).or_default() += 1;
    }
    groups(alerts, opts)
        .into_iter()
        .map(|g| {
            let mut hosts: Vec<String> =
                g.members.iter().map(|&i| alerts[i].host.clone()).collect();
            hosts.sort();
            hosts.dedup();
            AlertGroup {
                share_of_rule: g.count as f64 / per_rule[g.rule.as_str()].max(1) as f64,
                sample: g
                    .members
                    .first()
                    .map(|&i| alerts[i].output.clone())
                    .unwrap_or_default(),
                rule: g.rule,
                count: g.count,
                hosts,
                first_ns: g.first_ns,
                last_ns: g.last_ns,
                recurring: g.recurring,
                key: g.key,
                varying: g.varying,
            }
        })
        .collect()
}

fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("rule", DataType::Utf8, false),
        Field::new("alerts", DataType::UInt64, false),
        Field::new("share_of_rule", DataType::Float64, false),
        Field::new("hosts", DataType::Utf8, false),
        Field::new("first_seen", ts(), false),
        Field::new("last_seen", ts(), false),
        Field::new("recurring", DataType::Boolean, false),
        Field::new("fields", DataType::Utf8, false),
        Field::new("varying", DataType::Utf8, false),
        Field::new("sample", DataType::Utf8, false),
    ]))
}

/// The digest as rows of the `falco_alert_groups` table (`fields` is a JSON object, `hosts`
/// and `varying` comma-separated).
pub fn batch(rows: &[AlertGroup]) -> RecordBatch {
    let text = |f: &dyn Fn(&AlertGroup) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|g| g.rule.clone()),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|g| g.count as u64),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|g| g.share_of_rule),
        )),
        text(&|g| g.hosts.join(",")),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(|g| g.first_ns))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(|g| g.last_ns))
                .with_timezone("UTC"),
        ),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|g| Some(g.recurring)),
        )),
        text(&|g| serde_json::to_string(&g.key).expect("strings serialise")),
        text(&|g| g.varying.join(",")),
        text(&|g| g.sample.clone()),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// The `falco_alert_groups` table: the digest of the stored alerts when a query reads it.
#[derive(Debug, Default)]
pub struct AlertGroupsTable;

#[async_trait]
impl TableProvider for AlertGroupsTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("not a SessionState".into()))?;
        let ctx = SessionContext::new_with_state(state.clone());
        let alerts = crate::recorded::stored_alerts(&ctx, None, None, &[])
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let rows = digest(&alerts, &Options::default());
        MemTable::try_new(schema(), vec![vec![batch(&rows)]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
