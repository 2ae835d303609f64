//! CSV with nested values as their JSON text.
//!
//! CSV has no nested values, and arrow's CSV writer refuses a list, struct or map column:
//! `COPY (SELECT * FROM events) TO 'x.csv'` failed on `k8s_groups`. Every CSV ktrail writes
//! (SQL `COPY … TO '….csv'`, the shell's `\copy`, `ktrail sql --format csv`) writes each
//! nested value as its JSON text (`["a","b"]`), which a reader can take apart again, unlike a
//! table's `[a, b]`. A null stays an empty field.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
use datafusion::catalog::Session;
use datafusion::common::{GetExt, Statistics};
use datafusion::datasource::file_format::csv::CsvFormatFactory;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory, FileMeta};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::{LexOrdering, LexRequirement, PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::projection::ProjectionExec;
use object_store::{ObjectMeta, ObjectStore};

/// `batch` with each list, struct or map column replaced by a string column of its values'
/// JSON text, for a CSV writer.
pub fn nested_as_json(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if field.data_type().is_nested() {
            fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
            columns.push(json_text(field, column.as_ref())?);
        } else {
            fields.push(field.clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Each value of `column` as its JSON text; nulls stay null.
fn json_text(field: &FieldRef, column: &dyn Array) -> Result<ArrayRef, ArrowError> {
    let options = EncoderOptions::default();
    let mut encoder = make_encoder(field, column, &options)?;
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
    Ok(Arc::new(text.finish()))
}

/// DataFusion's CSV format, registered in its place on ktrail's sessions, whose writer first
/// turns nested columns into their JSON text. Reading CSV is DataFusion's, unchanged.
#[derive(Debug, Default)]
pub struct CsvWithJsonFactory(CsvFormatFactory);

impl GetExt for CsvWithJsonFactory {
    fn get_ext(&self) -> String {
        self.0.get_ext()
    }
}

impl FileFormatFactory for CsvWithJsonFactory {
    fn create(
        &self,
        state: &dyn Session,
        format_options: &HashMap<String, String>,
    ) -> Result<Arc<dyn FileFormat>> {
        Ok(Arc::new(CsvWithJson(self.0.create(state, format_options)?)))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(CsvWithJson(self.0.default()))
    }
}

/// A CSV [`FileFormat`] that delegates everything but the writer's input.
#[derive(Debug)]
struct CsvWithJson(Arc<dyn FileFormat>);

#[async_trait]
impl FileFormat for CsvWithJson {
    fn get_ext(&self) -> String {
        self.0.get_ext()
    }

    fn get_ext_with_compression(&self, compression: &FileCompressionType) -> Result<String> {
        self.0.get_ext_with_compression(compression)
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        self.0.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> Result<SchemaRef> {
        self.0.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Statistics> {
        self.0.infer_stats(state, store, table_schema, object).await
    }

    async fn infer_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Option<LexOrdering>> {
        self.0
            .infer_ordering(state, store, table_schema, object)
            .await
    }

    async fn infer_stats_and_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<FileMeta> {
        self.0
            .infer_stats_and_ordering(state, store, table_schema, object)
            .await
    }

    async fn create_physical_plan(
        &self,
        state: &dyn Session,
        conf: FileScanConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.create_physical_plan(state, conf).await
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        state: &dyn Session,
        mut conf: FileSinkConfig,
        order_requirements: Option<LexRequirement>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = input.schema();
        if schema.fields().iter().any(|f| f.data_type().is_nested()) {
            let to_json = Arc::new(ScalarUDF::new_from_impl(JsonText::default()));
            let config = Arc::new(state.config_options().clone());
            let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::new();
            // Same names at the same positions, so the sink's partition columns and the
            // order requirements still point where they did.
            for (i, field) in schema.fields().iter().enumerate() {
                let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), i));
                let expr: Arc<dyn PhysicalExpr> = if field.data_type().is_nested() {
                    Arc::new(ScalarFunctionExpr::try_new(
                        Arc::clone(&to_json),
                        vec![column],
                        &schema,
                        Arc::clone(&config),
                    )?)
                } else {
                    column
                };
                exprs.push((expr, field.name().clone()));
            }
            let projected: Arc<dyn ExecutionPlan> =
                Arc::new(ProjectionExec::try_new(exprs, input)?);
            conf.output_schema = projected.schema();
            return self
                .0
                .create_writer_physical_plan(projected, state, conf, order_requirements)
                .await;
        }
        self.0
            .create_writer_physical_plan(input, state, conf, order_requirements)
            .await
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        self.0.file_source(table_schema)
    }
}

/// A value's JSON text; used by [`CsvWithJson`]'s writer only, not registered as a function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonText {
    signature: Signature,
}

impl Default for JsonText {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonText {
    fn name(&self) -> &str {
        "json_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let values = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(json_text(
            &args.arg_fields[0],
            values.as_ref(),
        )?))
    }
}
