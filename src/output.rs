//! Result formats of `ktrail sql`.

use std::io::Write;

use clap::ValueEnum;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// Aligned table with a row count.
    Table,
    /// CSV with a header row; lists (`k8s_groups`, `tags`, ...) as their JSON text.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Writes one statement's result as it streams in and returns its row count. CSV and JSON
/// go out batch by batch, so exporting the whole store takes no more memory than a batch; the
/// table waits for every row (it needs the column widths).
pub async fn write(
    out: &mut dyn Write,
    format: OutputFormat,
    mut stream: SendableRecordBatchStream,
) -> Result<u64, DataFusionError> {
    let schema = stream.schema();
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch?);
            }
            rows = batches.iter().map(|b| b.num_rows() as u64).sum();
            if batches.iter().any(|b| b.num_columns() > 0) {
                writeln!(out, "{}", pretty_format_batches(&batches)?)?;
            }
            writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })?;
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = query::csv_export::nested_as_json(&batch?)?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            drop(w);
            if rows == 0 && !schema.fields().is_empty() {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}", names.join(","))?;
            }
        }
        OutputFormat::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            // Writes `[]` for no rows too.
            w.finish()?;
            writeln!(out)?;
        }
        OutputFormat::Ndjson => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.finish()?;
        }
    }
    out.flush()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, ListBuilder, RecordBatch, StringBuilder};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    #[tokio::test]
    async fn csv_writes_lists_as_json_text() {
        let mut groups = ListBuilder::new(StringBuilder::new());
        groups.values().append_value("system:masters");
        groups.values().append_value("a \"quoted\", name");
        groups.append(true);
        groups.append_null();
        groups.append(true);
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            ("k8s_groups", Arc::new(groups.finish()) as _),
        ])
        .unwrap();
        let schema = batch.schema();
        let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)]));
        let mut out = Vec::new();
        let rows = write(&mut out, OutputFormat::Csv, Box::pin(stream))
            .await
            .unwrap();
        assert_eq!(rows, 3);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "n,k8s_groups\n1,\"[\"\"system:masters\"\",\"\"a \\\"\"quoted\\\"\", name\"\"]\"\n2,\n3,[]\n"
        );
    }
}
