//! A query's answer as JSON objects, for the analyses that read rows one by one.

use datafusion::prelude::SessionContext;

use crate::QueryError;

/// The rows of `sql` as JSON objects (column → value; a NULL column is left out, as arrow's
/// JSON writer does).
pub async fn rows_json(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<serde_json::Value>, QueryError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        writer
            .write(b)
            .map_err(datafusion::error::DataFusionError::from)?;
    }
    writer
        .finish()
        .map_err(datafusion::error::DataFusionError::from)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)).into())
}
