//! `ktrail serve`: the listeners over one store. HTTP (`--http`) carries the ingest webhooks of
//! the contract; gRPC (`--grpc`, [`crate::grpc`]) the native ingest stream and health checks.
//!
//! - `POST /v1/ingest/{k8s-audit,falco,tetragon,tracee,k8s-objects}`: the body as the producer sends
//!   it (an audit `EventList` from the apiserver webhook, one Falco alert or JSON lines from
//!   `http_output` / falcosidekick, Tetragon JSON lines, a `kubectl get -o json` list).
//!   200 only once every accepted event is durable (the store's `append` returned); the reply
//!   counts accepted, rejected and duplicate events and names the first rejections.
//! - `GET /healthz`.
//!
//! Bounded memory: at most `max_inflight` bodies (each at most `max_body_bytes`) are being
//! parsed or stored at once; a request beyond that is answered 429 with `Retry-After` at once
//! instead of queueing. Shutdown (SIGINT / SIGTERM) stops accepting, lets the requests in
//! flight finish (each is acked only after its append), then closes the store (flush).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ingest::Format;
use parking_lot::Mutex;
use storage::Store;
use tokio::sync::Semaphore;

use load::DeadLetter;

use crate::auth;

/// Listeners, limits and credentials.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    /// Bearer token every HTTP ingest request and gRPC call must carry, when configured.
    pub token: Option<String>,
    pub max_body_bytes: usize,
    pub max_inflight: usize,
    pub batch_rows: usize,
    /// Postgres wire, read-only SQL.
    pub pg: Option<crate::pg::PgOptions>,
    /// Every remote query's memory and time.
    pub limits: query::limits::QueryLimits,
    /// Flight SQL queries running at once (Postgres caps its connections in `pg`).
    pub max_queries: usize,
    /// PEM certificate and key for gRPC (ingest, Flight SQL, health): TLS only, once set.
    pub grpc_tls: Option<(PathBuf, PathBuf)>,
}

struct AppState {
    store: Store,
    token: Option<String>,
    permits: Semaphore,
    max_body_bytes: usize,
    batch_rows: usize,
    dead_letter: Mutex<DeadLetter>,
}

/// Serves until SIGINT/SIGTERM, then closes the store. Prints `listening <proto> ADDR` per
/// listener when ready.
pub async fn run(store: Store, data: PathBuf, options: ServeOptions) -> Result<(), String> {
    for addr in options.http.iter().chain(&options.grpc) {
        if options.token.is_none() && !addr.ip().is_loopback() {
            return Err(format!(
                "refusing to serve on {addr} without --token-file: only loopback may go without a token"
            ));
        }
    }
    let state = Arc::new(AppState {
        store: store.clone(),
        token: options.token.clone(),
        permits: Semaphore::new(options.max_inflight.max(1)),
        max_body_bytes: options.max_body_bytes,
        batch_rows: options.batch_rows.max(1),
        dead_letter: Mutex::new(DeadLetter::new(&data.join("dead-letter.jsonl"))),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    if let Some(addr) = options.http {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/v1/ingest/{format}", post(ingest_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        announce("http", listener.local_addr().map_err(|e| e.to_string())?);
        let stop = stopped(stop_rx.clone());
        servers.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|e| format!("http: {e}"))
        });
    }
    // One session for the query listeners (Flight SQL, Postgres): each query derives its own
    // limited state from it.
    let remote = if options.grpc.is_some() || options.pg.is_some() {
        let ctx = query::session(&store, query::IndexUse::On)
            .await
            .map_err(|e| e.to_string())?;
        crate::session::register_analyses(&ctx).map_err(|e| e.to_string())?;
        Some(ctx)
    } else {
        None
    };
    if let Some(ctx) = remote.clone() {
        // The derived tables are computed in the background (or read from the segments'
        // caches), so the first query that reads one does not wait for the whole history.
        tokio::spawn(async move {
            if let Err(e) = query::prepare_derived(&ctx).await {
                tracing::warn!(error = %e, "could not prepare the derived tables");
            }
        });
    }
    if let Some(addr) = options.grpc {
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = &options.grpc_tls {
            // A certificate that does not load stops the server: no plaintext fallback.
            let read = |p: &PathBuf, flag: &str| {
                std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
            };
            let identity = tonic::transport::Identity::from_pem(
                read(cert, "--grpc-tls-cert")?,
                read(key, "--grpc-tls-key")?,
            );
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| format!("--grpc TLS: {e}"))?;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<proto::v1::ingest_server::IngestServer<crate::grpc::IngestService>>()
            .await;
        let ingest = crate::grpc::IngestService::new(store.clone(), options.max_inflight)
            .into_server(options.token.clone());
        let ctx = remote.clone().expect("made for the query listeners");
        let flight = arrow_flight::flight_service_server::FlightServiceServer::with_interceptor(
            crate::flight::FlightSql::new(ctx, options.limits.clone(), options.max_queries)
                .map_err(|e| format!("Flight SQL session: {e}"))?,
            auth::grpc_bearer(options.token.clone()),
        );
        announce("grpc", listener.local_addr().map_err(|e| e.to_string())?);
        let stop = stopped(stop_rx.clone());
        servers.spawn(async move {
            builder
                .add_service(health)
                .add_service(ingest)
                .add_service(flight)
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY every small response waits out the peer's delayed
                    // ACK: a 40 ms floor under each Flight SQL query on loopback.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop,
                )
                .await
                .map_err(|e| format!("grpc: {e}"))
        });
    }
    if let Some(pg) = options.pg {
        let ctx = remote.clone().expect("made for the query listeners");
        let server = crate::pg::PgServer::bind(ctx, pg, options.limits.clone()).await?;
        announce("pg", server.local_addr().map_err(|e| e.to_string())?);
        let stop = stop_rx.clone();
        servers.spawn(async move {
            server.run(stop).await;
            Ok(())
        });
    }
    // Run until a signal, or until a listener fails.
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        Some(r) = servers.join_next() => Some(r.map_err(|e| e.to_string()).and_then(|r| r).err()
            .unwrap_or_else(|| "a listener stopped".into())),
    };
    let _ = stop_tx.send(true);
    // Requests in flight finish (each acked only after its append); then nothing holds the store.
    while let Some(r) = servers.join_next().await {
        if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
            tracing::warn!("{e}");
        }
    }
    state
        .dead_letter
        .lock()
        .finish()
        .map_err(|e| e.to_string())?;
    drop(state);
    store.close().map_err(|e| e.to_string())?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn announce(proto: &str, addr: SocketAddr) {
    use std::io::Write;
    println!("listening {proto} {addr}");
    let _ = std::io::stdout().flush();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth::bearer_matches(state.token.as_deref(), given)
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, format!("{body}\n")).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 200 `ok` while the store takes writes; 503 with the reason while it refuses them (a full
/// disk: it takes them again once there is room).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.write_refusal() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "refusing writes", "reason": reason}),
        ),
    }
}

/// The body is read only after the token and an in-flight permit are checked, so a client
/// without the token holds no memory, and at most `max_inflight` bodies are held at once.
async fn ingest_handler(
    State(state): State<Arc<AppState>>,
    Path(format): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&state, &headers) {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "missing or wrong bearer token"}),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let format = match Format::from_name(&format) {
        Some(
            f @ (Format::K8sAudit
            | Format::Falco
            | Format::Tetragon
            | Format::Tracee
            | Format::K8sObjects),
        ) => f,
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": format!("no ingest endpoint for {format:?}; use k8s-audit, falco, tetragon, tracee or k8s-objects")}),
            );
        }
    };
    // Backpressure: no queue beyond the permits; the producer retries later.
    let Ok(permit) = state.permits.try_acquire() else {
        let mut r = reply(
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({"error": "ingest is behind; retry later"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let body = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            // `to_bytes` fails for a body over the limit or a connection that broke.
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let (status, msg) = match over {
                true => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body over --max-body-bytes ({})", state.max_body_bytes),
                ),
                false => (StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
            };
            return reply(status, serde_json::json!({"error": msg}));
        }
    };
    let worker = state.clone();
    let result = tokio::task::spawn_blocking(move || store_body(&worker, format, body)).await;
    drop(permit);
    match result {
        Ok(Ok(report)) => report,
        // Nothing after the failure is acknowledged: the producer sends the body again (its
        // events already stored count as duplicates then).
        Ok(Err(load::LoadError::Store(e))) => store_refused(&e),
        Ok(Err(e)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": e.to_string()}),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// 507 + `Retry-After` for a full disk (writes resume by themselves once there is room), 503
/// + `Retry-After` for another passing refusal, 503 for a store that needs a restart.
fn store_refused(e: &storage::StorageError) -> Response {
    let (status, retry) = if e.is_no_space() {
        (StatusCode::INSUFFICIENT_STORAGE, Some("10"))
    } else if e.is_transient() {
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, None)
    };
    let mut r = reply(status, serde_json::json!({"error": e.to_string()}));
    if let Some(secs) = retry {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    }
    r
}

/// Parses and stores one body (see [`load::load_body`]); the reply counts what it did.
fn store_body(state: &AppState, format: Format, body: Bytes) -> Result<Response, load::LoadError> {
    let loaded = load::load_body(
        &state.store,
        format!("http:{}", format.name()),
        format,
        Arc::from(body.as_ref()),
        state.batch_rows,
        &state.dead_letter,
    )?;
    let rejected = loaded.rejections.len() as u64;
    let status = if loaded.records > 0 && rejected == loaded.records {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let errors: Vec<String> = loaded
        .rejections
        .iter()
        .take(10)
        .map(|r| r.to_string())
        .collect();
    Ok(reply(
        status,
        serde_json::json!({
            "accepted": loaded.accepted,
            "duplicates": loaded.duplicates,
            "rejected": rejected,
            "errors": errors,
        }),
    ))
}
