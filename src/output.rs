//! Result formats of `ktrail sql`.

use std::io::Write;
use std::sync::Arc;

use clap::ValueEnum;
use datafusion::arrow::array::{Array, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
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
                let batch = nested_as_json(&batch?)?;
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

/// CSV has no nested values (arrow's writer refused the whole result): each list, struct or
/// map becomes its JSON text (`["a","b"]`), which a reader can take apart again, unlike the
/// table's `[a, b]`. A null stays an empty field.
fn nested_as_json(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let options = EncoderOptions::default();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            fields.push(field.clone());
            columns.push(column.clone());
            continue;
        }
        let mut encoder = make_encoder(field, column.as_ref(), &options)?;
        let mut text = StringBuilder::new();
        let mut json = Vec::new();
        for row in 0..column.len() {
            if column.is_null(row) {
                text.append_null();
                continue;
            }
            json.clear();
            encoder.encode(row, &mut json);
            text.append_value(String::from_utf8_lossy(&json));
        }
        fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
        columns.push(Arc::new(text.finish()));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, ListBuilder};
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
