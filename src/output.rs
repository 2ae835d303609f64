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
    /// CSV with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Writes one statement's result as it streams in. CSV and JSON go out batch by batch, so
/// exporting the whole store takes no more memory than a batch; the table waits for every row
/// (it needs the column widths).
pub async fn write(
    out: &mut dyn Write,
    format: OutputFormat,
    mut stream: SendableRecordBatchStream,
) -> Result<(), DataFusionError> {
    let schema = stream.schema();
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch?);
            }
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if batches.iter().any(|b| b.num_columns() > 0) {
                writeln!(out, "{}", pretty_format_batches(&batches)?)?;
            }
            writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })?;
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut rows = 0;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
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
                w.write(&batch?)?;
            }
            // Writes `[]` for no rows too.
            w.finish()?;
            writeln!(out)?;
        }
        OutputFormat::Ndjson => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(batch) = stream.next().await {
                w.write(&batch?)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}
