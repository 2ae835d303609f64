//! `serve --pg`: the Postgres wire protocol, for psql and the usual drivers.
//!
//! Built on `datafusion-postgres` (pgwire, `pg_catalog` for psql's `\d` and drivers'
//! introspection). ktrail adds what a forensic store needs around it:
//! - SCRAM-SHA-256 password authentication for user `ktrail` on every connection;
//! - TLS from a configured certificate, required once configured: a certificate that cannot
//!   be loaded stops the server from starting, and a plaintext client is refused (the library
//!   alone would fall back to plaintext with a warning);
//! - read-only sessions and per-query limits ([`query::remote`]): statements are checked when
//!   parsed and again as plans; queries run in their own memory pool, under a deadline that
//!   covers streaming the rows;
//! - results stream batch by batch; the portal honours the client's `max_rows` (pgwire
//!   suspends the portal and resumes it on the next `Execute`), and `DECLARE ... CURSOR` runs
//!   under the same limits with a describable result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Declare, DeclareType, Expr as SqlExpr, Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{MemPortalStore, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::tokio_rustls::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::types::format::FormatOptions;
use query::limits::{self, QueryLimits};
use query::read_only;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The one Postgres user.
pub const USER: &str = "ktrail";
const SCRAM_ITERATIONS: usize = 4096;

#[derive(Clone)]
pub struct PgOptions {
    pub addr: SocketAddr,
    /// Connections open at once; the next is refused with SQLSTATE 53300.
    pub max_connections: usize,
    pub password: String,
    /// PEM certificate chain and private key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("addr", &self.addr)
            .field("password", &"<redacted>")
            .field("tls", &self.tls)
            .finish()
    }
}

/// A bound Postgres listener, ready to serve.
pub struct PgServer {
    listener: TcpListener,
    connections: Arc<tokio::sync::Semaphore>,
    tls: Option<TlsAcceptor>,
    handlers: Arc<Handlers>,
}

impl PgServer {
    /// Loads the TLS certificate (an error, never a plaintext fallback), prepares the session
    /// and binds the address.
    pub async fn bind(
        ctx: SessionContext,
        options: PgOptions,
        limits: QueryLimits,
    ) -> Result<Self, String> {
        let tls = match &options.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        setup_pg_catalog(&ctx, "ktrail", EmptyContextProvider)
            .map_err(|e| format!("--pg: pg_catalog: {e}"))?;
        let ctx = Arc::new(ctx);
        let inner = Arc::new(DfSessionService::new(ctx.clone()));
        let connections = Arc::new(ConnectionManager::new());
        let handlers = Arc::new(Handlers {
            service: Arc::new(Service {
                ctx,
                parser: Arc::new(ReadOnlyParser {
                    inner: inner.query_parser(),
                    sql: PostgresCompatibilityParser::new(),
                }),
                inner,
                limits,
            }),
            passwords: Arc::new(Passwords {
                password: options.password,
            }),
            require_tls: tls.is_some(),
            connections: connections.clone(),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        });
        let listener = TcpListener::bind(options.addr)
            .await
            .map_err(|e| format!("--pg {}: {e}", options.addr))?;
        Ok(PgServer {
            listener,
            connections: Arc::new(tokio::sync::Semaphore::new(options.max_connections)),
            tls,
            handlers,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` turns true; connections in progress finish on
    /// their own tasks.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        // Small query responses must not wait for the client's delayed ACK.
                        if let Err(e) = socket.set_nodelay(true) {
                            tracing::debug!("pg connection from {peer}: TCP_NODELAY: {e}");
                        }
                        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                            tokio::spawn(refuse_connection(socket));
                            continue;
                        };
                        let tls = self.tls.clone();
                        let handlers = self.handlers.clone();
                        tokio::spawn(async move {
                            if let Err(e) =
                                pgwire::tokio::process_socket(socket, tls, handlers).await
                            {
                                tracing::debug!("pg connection from {peer}: {e}");
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => tracing::warn!("pg accept: {e}"),
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Answers a connection over `--max-connections` as Postgres does: one FATAL ErrorResponse
/// (53300 too_many_connections), which libpq reports whether it asked for TLS first or not.
async fn refuse_connection(mut socket: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', "sorry, too many clients already"),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    let _ = socket.write_all(&message).await;
    let _ = socket.shutdown().await;
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("--pg-tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("--pg-tls-cert {}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--pg-tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| format!("--pg TLS: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

fn read_only_error(message: String) -> PgWireError {
    // SQLSTATE 25006: read_only_sql_transaction.
    user_error("25006", message)
}

fn df_error(e: datafusion::error::DataFusionError) -> PgWireError {
    match e {
        datafusion::error::DataFusionError::ResourcesExhausted(m) => {
            // 53200 out_of_memory; 57014 query_canceled for the deadline.
            if m.contains("statement timeout") {
                user_error("57014", m)
            } else {
                user_error("53200", m)
            }
        }
        e => PgWireError::ApiError(Box::new(e)),
    }
}

/// The password of user `ktrail`, salted per login as SCRAM wants it.
#[derive(Debug)]
struct Passwords {
    password: String,
}

#[async_trait]
impl AuthSource for Passwords {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() != Some(USER) {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_string(),
                "28P01".to_string(),
                format!(
                    "password authentication failed for user \"{}\"",
                    login.user().unwrap_or("")
                ),
            ))));
        }
        let salt: [u8; 16] = getrandom_salt();
        let salted = gen_salted_password(&self.password, &salt, SCRAM_ITERATIONS);
        Ok(Password::new(Some(salt.to_vec()), salted))
    }
}

fn getrandom_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    // The OS generator; a failure here leaves a fixed salt, which SCRAM tolerates (the salt
    // is public) but we would rather know about.
    if let Err(e) = getrandom::fill(&mut salt) {
        tracing::warn!("salt: {e}");
    }
    salt
}

/// SCRAM, after refusing a plaintext connection when TLS is configured.
struct Startup {
    require_tls: bool,
    sasl: SASLAuthStartupHandler<DefaultServerParameterProvider>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.require_tls && !client.is_secure() {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_string(),
                "28000".to_string(),
                "this server requires TLS (sslmode=require)".to_string(),
            ))));
        }
        self.sasl.on_startup(client, message).await
    }
}

struct Handlers {
    service: Arc<Service>,
    passwords: Arc<Passwords>,
    require_tls: bool,
    connections: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    /// One per connection: the SASL exchange keeps its state in it.
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let mut scram = ScramAuth::new(self.passwords.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        Arc::new(Startup {
            require_tls: self.require_tls,
            sasl: SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
                .with_scram(scram)
                .with_connection_manager(self.connections.clone()),
        })
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Queries run here under the limits; everything else the remote rules allow (`SET` of client
/// parameters, `SHOW`, transactions, cursors) goes to `datafusion-postgres`.
struct Service {
    ctx: Arc<SessionContext>,
    inner: Arc<DfSessionService>,
    parser: Arc<ReadOnlyParser>,
    limits: QueryLimits,
}

type DfStatementPlan = (String, Option<(Statement, LogicalPlan)>);

fn is_query(statement: &Statement) -> bool {
    matches!(statement, Statement::Query(_) | Statement::Explain { .. })
}

impl Service {
    /// Plans are checked, run in their own memory pool, and streamed under the deadline
    /// (planning included).
    async fn run_query(
        &self,
        settings: &ConnectionSettings,
        plan: LogicalPlan,
        format: &Format,
        format_options: Arc<FormatOptions>,
    ) -> PgWireResult<Response> {
        read_only::check_remote_plan(&plan).map_err(|e| read_only_error(e.to_string()))?;
        let limits = &settings.limits(&self.limits);
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let limited = SessionContext::new_with_state(
            limits::limited_state(&settings.state(&self.ctx), limits).map_err(df_error)?,
        );
        let df = tokio::time::timeout_at(deadline, limited.execute_logical_plan(plan))
            .await
            .map_err(|_| df_error(limits::timeout_error(limits)))?
            .map_err(df_error)?;
        let fields = Arc::new(arrow_schema_to_pg_fields(
            df.schema().as_arrow(),
            format,
            Some(format_options),
        )?);
        let batches = tokio::time::timeout_at(deadline, df.execute_stream())
            .await
            .map_err(|_| df_error(limits::timeout_error(limits)))?
            .map_err(df_error)?;
        // The plan's root enforces the deadline while rows stream (limits::limited_context).
        let batches = batches.map(|b| b.map_err(df_error));
        let row_fields = fields.clone();
        let rows = batches.flat_map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch {
                Ok(b) => encode_recordbatch(row_fields.clone(), b),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            stream::iter(rows)
        });
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }
}

/// Where a connection keeps its own settings: in its client metadata, which lives and dies
/// with the connection. Nothing a client sets reaches the shared session.
const META_TIME_ZONE: &str = "ktrail.time_zone";
const META_STATEMENT_TIMEOUT_MS: &str = "ktrail.statement_timeout_ms";
const META_ALLOW_DAMAGED: &str = query::ALLOW_DAMAGED;

/// One connection's `SET TIME ZONE`, `SET statement_timeout` and `SET ktrail.allow_damaged`.
struct ConnectionSettings {
    time_zone: Option<String>,
    statement_timeout: Option<std::time::Duration>,
    allow_damaged: bool,
}

impl ConnectionSettings {
    fn of<C: ClientInfo + ?Sized>(client: &C) -> Self {
        let meta = client.metadata();
        ConnectionSettings {
            time_zone: meta.get(META_TIME_ZONE).cloned(),
            statement_timeout: meta
                .get(META_STATEMENT_TIMEOUT_MS)
                .and_then(|ms| ms.parse().ok())
                .map(std::time::Duration::from_millis),
            allow_damaged: meta.contains_key(META_ALLOW_DAMAGED),
        }
    }

    /// The shared session's state with this connection's time zone.
    fn state(&self, ctx: &SessionContext) -> datafusion::execution::SessionState {
        let mut state = ctx.state();
        if self.allow_damaged {
            let _ = state
                .config_mut()
                .options_mut()
                .set(query::ALLOW_DAMAGED, "true");
        }
        if let Some(tz) = &self.time_zone {
            state.config_mut().options_mut().execution.time_zone = Some(tz.clone());
            // Functions that read the time zone (`now()`, ...) take it when registered, as
            // DataFusion's own `SET` does.
            let updated: Vec<_> = state
                .scalar_functions()
                .values()
                .filter_map(|f| f.inner().with_updated_config(state.config().options()))
                .collect();
            for f in updated {
                let _ =
                    datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::new(f));
            }
        }
        state
    }

    /// The server's limits, with the deadline shortened to `statement_timeout` if it is less.
    fn limits(&self, server: &QueryLimits) -> QueryLimits {
        let mut limits = server.clone();
        if let Some(t) = self.statement_timeout {
            limits.timeout = limits.timeout.min(t);
        }
        limits
    }
}

/// `statement_timeout` as Postgres reads it: milliseconds, or a number with `ms`, `s`, `min`
/// or `h`; 0 turns it off (`None`).
fn parse_statement_timeout(text: &str) -> Option<Option<std::time::Duration>> {
    let text = text.trim().trim_matches('\'').trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => number,
        "s" => number * 1e3,
        "min" => number * 60e3,
        "h" => number * 3600e3,
        _ => return None,
    };
    (ms.is_finite() && ms >= 0.0)
        .then(|| (ms >= 1.0).then(|| std::time::Duration::from_millis(ms as u64)))
}

impl Service {
    /// `SET`/`SHOW` of the time zone and `statement_timeout`, kept per connection; `None` for
    /// any other statement (datafusion-postgres answers it). Its own handling of `SET TIME
    /// ZONE` changes the shared session, so every connection's time zone.
    async fn session_statement<C>(
        &self,
        client: &mut C,
        statement: &Statement,
    ) -> PgWireResult<Option<Response>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let unquote = |e: &SqlExpr| {
            let t = e.to_string();
            t.trim_matches('\'').trim_matches('"').to_string()
        };
        match statement {
            Statement::Set(Set::SetTimeZone { value, .. }) => {
                self.set_time_zone(client, &unquote(value)).await.map(Some)
            }
            Statement::Set(Set::SingleAssignment {
                variable, values, ..
            }) => {
                let name = variable.to_string().to_ascii_lowercase();
                let value = values.first().map(unquote).unwrap_or_default();
                match name.as_str() {
                    "timezone" | "time zone" => self.set_time_zone(client, &value).await.map(Some),
                    "statement_timeout" => {
                        let timeout = parse_statement_timeout(&value).ok_or_else(|| {
                            user_error(
                                "22023",
                                format!(
                                    "invalid value for parameter \"statement_timeout\": \"{value}\""
                                ),
                            )
                        })?;
                        let meta = client.metadata_mut();
                        match timeout {
                            Some(t) => meta.insert(
                                META_STATEMENT_TIMEOUT_MS.into(),
                                t.as_millis().to_string(),
                            ),
                            None => meta.remove(META_STATEMENT_TIMEOUT_MS),
                        };
                        Ok(Some(Response::Execution(Tag::new("SET"))))
                    }
                    query::ALLOW_DAMAGED => {
                        let allow = match value.to_ascii_lowercase().as_str() {
                            "true" | "on" | "1" | "yes" => true,
                            "false" | "off" | "0" | "no" => false,
                            _ => {
                                return Err(user_error(
                                    "22023",
                                    format!(
                                        "parameter \"{name}\" requires a Boolean value, not \"{value}\""
                                    ),
                                ));
                            }
                        };
                        let meta = client.metadata_mut();
                        match allow {
                            true => meta.insert(META_ALLOW_DAMAGED.into(), "on".into()),
                            false => meta.remove(META_ALLOW_DAMAGED),
                        };
                        Ok(Some(Response::Execution(Tag::new("SET"))))
                    }
                    _ => Ok(None),
                }
            }
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(" ");
                let settings = ConnectionSettings::of(client);
                let (column, value) = match name.as_str() {
                    "timezone" | "time zone" => (
                        "TimeZone",
                        settings.time_zone.unwrap_or_else(|| "UTC".into()),
                    ),
                    "statement_timeout" => (
                        "statement_timeout",
                        settings
                            .statement_timeout
                            .map_or("0".into(), |t| format!("{}ms", t.as_millis())),
                    ),
                    query::ALLOW_DAMAGED => (
                        query::ALLOW_DAMAGED,
                        if settings.allow_damaged { "on" } else { "off" }.into(),
                    ),
                    _ => return Ok(None),
                };
                let fields = Arc::new(vec![FieldInfo::new(
                    column.into(),
                    None,
                    None,
                    Type::VARCHAR,
                    pgwire::api::results::FieldFormat::Text,
                )]);
                let mut encoder = pgwire::api::results::DataRowEncoder::new(fields.clone());
                encoder.encode_field(&Some(value))?;
                let row = encoder.take_row();
                Ok(Some(Response::Query(QueryResponse::new(
                    fields,
                    stream::iter([Ok(row)]),
                ))))
            }
            _ => Ok(None),
        }
    }

    async fn set_time_zone<C>(&self, client: &mut C, tz: &str) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let tz = if tz.eq_ignore_ascii_case("local") || tz.eq_ignore_ascii_case("default") {
            "UTC"
        } else {
            tz
        };
        if tz
            .parse::<datafusion::arrow::array::timezone::Tz>()
            .is_err()
        {
            return Err(user_error(
                "22023",
                format!("invalid value for parameter \"TimeZone\": \"{tz}\""),
            ));
        }
        client
            .metadata_mut()
            .insert(META_TIME_ZONE.into(), tz.to_string());
        client
            .send(PgWireBackendMessage::ParameterStatus(
                pgwire::messages::startup::ParameterStatus::new("TimeZone".into(), tz.into()),
            ))
            .await?;
        Ok(Response::Execution(Tag::new("SET")))
    }
}

impl Service {
    /// `DECLARE name CURSOR FOR query`: the query runs under the limits like any other and its
    /// plan is kept with the cursor, so a client can describe the cursor's columns before it
    /// fetches (psycopg's server-side cursors do). `FETCH` and `CLOSE` are datafusion-postgres's.
    async fn declare<C>(
        &self,
        client: &C,
        declarations: &[Declare],
        format_options: Arc<FormatOptions>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore,
        C::PortalStore: PortalStore,
    {
        let store = client
            .portal_store()
            .as_any()
            .downcast_ref::<MemPortalStore<DfStatementPlan>>()
            .ok_or_else(|| user_error("XX000", "cursor store unavailable".into()))?;
        for declaration in declarations {
            let (Some(DeclareType::Cursor), Some(name), Some(query)) = (
                &declaration.declare_type,
                declaration.names.first(),
                &declaration.for_query,
            ) else {
                return Err(user_error(
                    "42601",
                    "only DECLARE name CURSOR FOR query is supported".into(),
                ));
            };
            let statement = Statement::Query(query.clone());
            let settings = ConnectionSettings::of(client);
            let plan = settings
                .state(&self.ctx)
                .statement_to_plan(DFStatement::Statement(Box::new(statement.clone())))
                .await
                .map_err(df_error)?;
            let Response::Query(rows) = self
                .run_query(
                    &settings,
                    plan.clone(),
                    &Format::UnifiedText,
                    format_options.clone(),
                )
                .await?
            else {
                unreachable!("run_query answers rows");
            };
            let stored = Arc::new(StoredStatement::new(
                name.value.clone(),
                (query.to_string(), Some((statement, plan))),
                vec![],
            ));
            let portal = Portal::new_cursor(name.value.clone(), stored);
            portal.start(rows).await;
            store.put_portal(Arc::new(portal));
        }
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }
}

#[async_trait]
impl SimpleQueryHandler for Service {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self
            .parser
            .sql
            .parse(query)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            if let Some(refusal) = read_only::remote_refusal(&statement) {
                return Err(read_only_error(refusal));
            }
            if let Statement::Declare { stmts } = &statement {
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                responses.push(self.declare(client, stmts, options).await?);
            } else if is_query(&statement) {
                let settings = ConnectionSettings::of(client);
                let plan = settings
                    .state(&self.ctx)
                    .statement_to_plan(DFStatement::Statement(Box::new(statement)))
                    .await
                    .map_err(df_error)?;
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                responses.push(
                    self.run_query(&settings, plan, &Format::UnifiedText, options)
                        .await?,
                );
            } else if let Some(r) = self.session_statement(client, &statement).await? {
                responses.push(r);
            } else {
                let mut r =
                    SimpleQueryHandler::do_query(&*self.inner, client, &statement.to_string())
                        .await?;
                responses.append(&mut r);
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Service {
    type Statement = DfStatementPlan;
    type QueryParser = ReadOnlyParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, parsed) = &portal.statement.statement;
        let Some((statement, plan)) = parsed else {
            return Ok(Response::EmptyQuery);
        };
        if let Statement::Declare { stmts } = statement {
            let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
            return self.declare(client, stmts, options).await;
        }
        if !is_query(statement) {
            if let Some(r) = self.session_statement(client, statement).await? {
                return Ok(r);
            }
            return ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows).await;
        }
        let settings = ConnectionSettings::of(client);
        // Parameters are bound into the statement and it is planned again with constants:
        // that reaches table function arguments too, which plan parameters do not. A
        // connection with its own time zone plans again in it.
        let plan = if portal.parameters.is_empty() && settings.time_zone.is_none() {
            plan.clone()
        } else if portal.parameters.is_empty() {
            settings
                .state(&self.ctx)
                .statement_to_plan(DFStatement::Statement(Box::new(statement.clone())))
                .await
                .map_err(df_error)?
        } else {
            let types = plan.get_parameter_types().map_err(df_error)?;
            let inferred: Vec<Option<DataType>> = (1..=portal.parameters.len())
                .map(|i| types.get(&format!("${i}")).cloned().flatten())
                .collect();
            let inferred: Vec<Option<&DataType>> = inferred.iter().map(Option::as_ref).collect();
            let params = deserialize_parameters(portal, &inferred)?;
            let values: Vec<ScalarValue> = match params {
                ParamValues::List(list) => list.into_iter().map(|v| v.value).collect(),
                ParamValues::Map(_) => {
                    return Err(user_error(
                        "08P01",
                        "named parameters are not supported".into(),
                    ));
                }
            };
            let mut bound = statement.clone();
            read_only::bind_placeholders(&mut bound, &values).map_err(df_error)?;
            settings
                .state(&self.ctx)
                .statement_to_plan(DFStatement::Statement(Box::new(bound)))
                .await
                .map_err(df_error)?
        };
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        self.run_query(&settings, plan, &portal.result_column_format, options)
            .await
    }
}

/// Refuses what a remote session may not do when the statement is parsed, before anything is
/// planned; the rest is `datafusion-postgres`'s parser.
struct ReadOnlyParser {
    inner: Arc<Parser>,
    sql: PostgresCompatibilityParser,
}

#[async_trait]
impl QueryParser for ReadOnlyParser {
    type Statement = DfStatementPlan;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = self
            .sql
            .parse(sql)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        if let Some(refusal) = statements.iter().find_map(read_only::remote_refusal) {
            return Err(read_only_error(refusal));
        }
        self.inner.parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}
