//! Runs the `.slt` files under `tests/slt/` against a store built from
//! `examples/quickstart.ndjson` (flushed into segments, so the provider's pruning and index
//! paths answer). Expected output is pinned in the files.

use std::path::Path;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};
use storage::{Store, StoreOptions};

struct Ktrail {
    ctx: SessionContext,
}

#[async_trait]
impl sqllogictest::AsyncDB for Ktrail {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let batches = self.ctx.sql(sql).await?.collect().await?;
        let columns = batches.first().map_or(0, RecordBatch::num_columns);
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; columns],
            rows: rows(&batches)?,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "ktrail"
    }
}

fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, DataFusionError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| {
                        let v = f.value(row).to_string();
                        if v.is_empty() {
                            "(empty)".to_string()
                        } else {
                            v
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictests() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        background: false,
        ..Default::default()
    };
    let (store, _) = Store::open(dir.path(), options).unwrap();
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.ndjson");
    let input = ingest::Input::File(quickstart);
    ingest::read_input(
        &input,
        ingest::Format::Native,
        100,
        &mut |_, batch| store.append(batch).map(|_| ()).map_err(|e| e.to_string()),
        &mut |r| panic!("quickstart rejected: {r}"),
    )
    .unwrap();
    store.flush().unwrap();

    let slt_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&slt_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let store = store.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let store = store.clone();
            async move {
                Ok(Ktrail {
                    ctx: query::session(&store, query::IndexUse::On)
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?,
                })
            }
        });
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
    }
}
