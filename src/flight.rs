//! Arrow Flight SQL on the gRPC port (`serve --grpc`), for incident tooling (ADBC, JDBC,
//! pyarrow): statement queries, prepared statements with parameters, catalog metadata
//! (`GetCatalogs`, `GetDbSchemas`, `GetTables`, `GetTableTypes`, `GetSqlInfo`), results
//! streamed as Arrow batches.
//!
//! The service is stateless: a statement's ticket and a prepared statement's handle carry the
//! SQL (and, once bound, the parameters as Arrow IPC), so any number of clients need no server
//! memory between calls. Every query follows [`query::remote`]: read-only (checked on the
//! statement and on the plan), its own memory pool and a deadline. Substrait plans,
//! updates and transactions are refused. Bearer-token auth is the gRPC interceptor's.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{LogicalPlan, TableType};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use prost::Message;
use query::limits::{self, QueryLimits};
use query::read_only;
use tonic::{Request, Response, Status, Streaming};

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

pub struct FlightSql {
    /// The limited session every query plans in (its catalogs are the server's).
    state: SessionState,
    limits: QueryLimits,
    info: SqlInfoData,
    /// Queries running or streaming at once (`--max-connections`): calls share HTTP/2
    /// connections, so the cap is on queries; one over it is refused, not queued.
    running: Arc<tokio::sync::Semaphore>,
    max_running: usize,
}

impl FlightSql {
    /// A service over `ctx`'s tables and functions, running at most `max_running` queries at
    /// once. Fails only if the limited session cannot be built.
    pub fn new(
        ctx: SessionContext,
        limits: QueryLimits,
        max_running: usize,
    ) -> datafusion::error::Result<Self> {
        // Built once: every query plans in it, and each executes under a memory pool of its
        // own (`limits::execute_limited`).
        let state = limits::limited_state(&ctx.state(), &limits)?;
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "ktrail");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        let max_running = max_running.max(1);
        Ok(FlightSql {
            state,
            limits,
            info: info.build().expect("static SqlInfo"),
            running: Arc::new(tokio::sync::Semaphore::new(max_running)),
            max_running,
        })
    }

    /// The plan of `sql` with `params` bound, checked as remote SQL, in the limited session.
    async fn plan(&self, sql: &str, params: &[ScalarValue]) -> Result<LogicalPlan, Status> {
        let mut statements = DFParser::parse_sql(sql).map_err(invalid)?;
        if statements.len() != 1 {
            return Err(Status::invalid_argument(format!(
                "expected one statement, got {}",
                statements.len()
            )));
        }
        let mut statement = statements.pop_front().expect("one");
        if let Some(refusal) = read_only::remote_refusal_df(&statement) {
            return Err(Status::permission_denied(refusal));
        }
        if !params.is_empty() {
            let DFStatement::Statement(s) = &mut statement else {
                return Err(Status::invalid_argument("parameters need a query"));
            };
            read_only::bind_placeholders(s, params).map_err(invalid)?;
        }
        let plan = self
            .state
            .statement_to_plan(statement)
            .await
            .map_err(invalid)?;
        read_only::check_remote_plan(&plan)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(plan)
    }

    async fn execute(&self, sql: &str, params: &[ScalarValue]) -> Result<DoGetStream, Status> {
        // Held until the client has read the last row (or dropped the stream).
        let permit = self.running.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many Flight SQL queries at once (--max-connections {}); retry later",
                self.max_running
            ))
        })?;
        let plan = self.plan(sql, params).await?;
        // The schema advertised in FlightInfo (the logical one): strict clients compare them.
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let timeout = self.limits.timeout;
        let batches = tokio::time::timeout(
            timeout,
            limits::execute_limited(&self.state, plan, &self.limits),
        )
        .await
        .map_err(|_| Status::deadline_exceeded(limits::timeout_error(&self.limits).to_string()))?
        .map_err(internal)?;
        let batches = batches.map_err(|e| FlightError::ExternalError(Box::new(e)));
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(move |e| {
                let _running = &permit;
                Status::from(e)
            });
        Ok(Box::pin(flight))
    }

    async fn schema_of(&self, sql: &str, params: &[ScalarValue]) -> Result<SchemaRef, Status> {
        let plan = self.plan(sql, params).await?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// A prepared statement's handle: the SQL, then the bound parameters as an Arrow IPC stream.
fn encode_handle(sql: &str, params: Option<&RecordBatch>) -> Result<Vec<u8>, Status> {
    let mut out = (sql.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(sql.as_bytes());
    if let Some(batch) = params {
        let mut w = StreamWriter::try_new(&mut out, batch.schema_ref()).map_err(internal)?;
        w.write(batch).map_err(internal)?;
        w.finish().map_err(internal)?;
    }
    Ok(out)
}

fn decode_handle(handle: &[u8]) -> Result<(String, Vec<ScalarValue>), Status> {
    let bad = || Status::invalid_argument("malformed prepared statement handle");
    let len = u32::from_le_bytes(
        handle
            .get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let sql = std::str::from_utf8(handle.get(4..4 + len).ok_or_else(bad)?).map_err(|_| bad())?;
    let rest = &handle[4 + len..];
    let mut params = Vec::new();
    if !rest.is_empty() {
        let reader =
            datafusion::arrow::ipc::reader::StreamReader::try_new(rest, None).map_err(|_| bad())?;
        if let Some(batch) = reader.into_iter().next() {
            let batch = batch.map_err(|_| bad())?;
            if batch.num_rows() != 1 {
                return Err(Status::invalid_argument(
                    "bind exactly one row of parameters",
                ));
            }
            for column in batch.columns() {
                params.push(ScalarValue::try_from_array(column, 0).map_err(internal)?);
            }
        }
    }
    Ok((sql.to_string(), params))
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(internal)?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

fn one_batch(schema: SchemaRef, batch: Result<RecordBatch, Status>) -> DoGetStream {
    let batch = batch.map_err(|s| FlightError::Tonic(Box::new(s)));
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream::once(async { batch }))
            .map_err(Status::from),
    )
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The bearer token goes in every call's `authorization` header (checked by the
        // interceptor before any call gets here); there is nothing to exchange.
        let response = HandshakeResponse::default();
        Ok(Response::new(Box::pin(stream::once(async {
            Ok(response)
        }))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.schema_of(&query.query, &[]).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        flight_info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = std::str::from_utf8(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("malformed ticket"))?;
        Ok(Response::new(self.execute(sql, &[]).await?))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        // Planned now, so a statement that may not run is refused when prepared.
        let plan = self.plan(&query.query, &[]).await?;
        let schema = plan.schema().as_arrow().clone();
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(internal)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: encode_handle(&query.query, None)?.into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Stateless handles: nothing to free.
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let (sql, _) = decode_handle(&query.prepared_statement_handle)?;
        let data = request
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data);
        let mut params = None;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| Status::invalid_argument(e.to_string()))?;
            if batch.num_rows() > 0 {
                if params.is_some() {
                    return Err(Status::invalid_argument(
                        "bind exactly one row of parameters",
                    ));
                }
                params = Some(batch);
            }
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(encode_handle(&sql, params.as_ref())?.into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sql, params) = decode_handle(&cmd.prepared_statement_handle)?;
        let schema = self.schema_of(&sql, &params).await?;
        flight_info(&schema, cmd.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (sql, params) = decode_handle(&query.prepared_statement_handle)?;
        Ok(Response::new(self.execute(&sql, &params).await?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.state.catalog_list().catalog_names() {
            builder.append(catalog);
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch(
            schema,
            builder.build().map_err(internal),
        )))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.state.catalog_list().catalog_names() {
            if let Some(c) = self.state.catalog_list().catalog(&catalog) {
                for schema in c.schema_names() {
                    builder.append(&catalog, schema);
                }
            }
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch(
            schema,
            builder.build().map_err(internal),
        )))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.state.catalog_list().catalog_names() {
            let Some(c) = self.state.catalog_list().catalog(&catalog) else {
                continue;
            };
            for schema_name in c.schema_names() {
                let Some(s) = c.schema(&schema_name) else {
                    continue;
                };
                for table in s.table_names() {
                    let Some(provider) = s.table(&table).await.map_err(internal)? else {
                        continue;
                    };
                    let kind = match provider.table_type() {
                        TableType::View => "VIEW",
                        TableType::Temporary => "LOCAL TEMPORARY",
                        TableType::Base => "TABLE",
                    };
                    builder
                        .append(&catalog, &schema_name, &table, kind, &provider.schema())
                        .map_err(internal)?;
                }
            }
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch(
            schema,
            builder.build().map_err(internal),
        )))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for kind in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(kind);
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch(
            schema,
            builder.build().map_err(internal),
        )))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        flight_info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&self.info);
        let schema = builder.schema();
        Ok(Response::new(one_batch(
            schema,
            builder.build().map_err(internal),
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    #[test]
    fn prepared_handles_carry_sql_and_parameters() {
        let (sql, params) =
            decode_handle(&encode_handle("SELECT * FROM exec_trace($1)", None).unwrap()).unwrap();
        assert_eq!(sql, "SELECT * FROM exec_trace($1)");
        assert!(params.is_empty());
        let batch = RecordBatch::try_from_iter([
            (
                "0",
                Arc::new(StringArray::from(vec!["abc"])) as datafusion::arrow::array::ArrayRef,
            ),
            ("1", Arc::new(Int64Array::from(vec![7]))),
        ])
        .unwrap();
        let (_, params) =
            decode_handle(&encode_handle("SELECT $1, $2", Some(&batch)).unwrap()).unwrap();
        assert_eq!(
            params,
            [ScalarValue::from("abc"), ScalarValue::Int64(Some(7))]
        );
        assert!(decode_handle(b"\xff\xff\xff\xffxx").is_err());
    }

    #[tokio::test]
    async fn queries_over_the_cap_are_refused_until_one_is_read() {
        let service = FlightSql::new(SessionContext::new(), QueryLimits::default(), 2).unwrap();
        let first = service.execute("SELECT 1", &[]).await.unwrap();
        let second = service.execute("SELECT 2", &[]).await.unwrap();
        let refused = service.execute("SELECT 3", &[]).await.err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("--max-connections 2"),
            "{refused}"
        );
        // A query read to its end (its stream then dropped, as tonic does) gives its place back.
        let read: Vec<_> = first.collect().await;
        assert!(read.iter().all(Result::is_ok));
        let third = service.execute("SELECT 3", &[]).await.unwrap();
        drop((second, third));
        // So does a stream the client dropped.
        let _fourth = service.execute("SELECT 4", &[]).await.unwrap();
    }
}
