//! `ktrail serve --grpc`: the native `ktrail.v1.Ingest` service and gRPC health checking.
//!
//! A client streams `EventBatch`es (proto events, or Arrow IPC in the `events` schema, the fast
//! path); each batch is handed to the store as it arrives (the next is read while the last is
//! synced) and the single `IngestAck` is sent when the stream ends and all are durable, so an
//! ack means every accepted event of the stream is durable. A bad event is counted and named
//! in the ack; the rest of the stream goes on. At most `max_streams` streams are served at
//! once; one more is refused with `RESOURCE_EXHAUSTED`.

use std::sync::Arc;

use model::{Event, EventBatchBuilder, RecordBatch};
use proto::v1::ingest_server::{Ingest, IngestServer};
use proto::v1::{EventBatch, IngestAck, event_batch};
use storage::Store;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

/// How many errors an ack names (the count covers all of them).
const MAX_ERRORS: usize = 20;

pub struct IngestService {
    store: Store,
    streams: Arc<Semaphore>,
}

impl IngestService {
    pub fn new(store: Store, max_streams: usize) -> Self {
        Self {
            store,
            streams: Arc::new(Semaphore::new(max_streams.max(1))),
        }
    }

    /// The tonic service, behind a bearer-token check when `token` is set.
    pub fn into_server(
        self,
        token: Option<String>,
    ) -> tonic::service::interceptor::InterceptedService<
        IngestServer<IngestService>,
        impl tonic::service::Interceptor + Clone,
    > {
        IngestServer::with_interceptor(self, bearer(token))
    }
}

/// Every gRPC call must carry `authorization: Bearer TOKEN` when a token is configured.
pub fn bearer(
    token: Option<String>,
) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static {
    move |req: Request<()>| -> Result<Request<()>, Status> {
        let Some(token) = &token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if crate::serve::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn ingest(
        &self,
        request: Request<Streaming<EventBatch>>,
    ) -> Result<Response<IngestAck>, Status> {
        let Ok(_permit) = self.streams.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted("ingest is behind; retry later"));
        };
        let mut stream = request.into_inner();
        let mut ack = IngestAck::default();
        // Batches handed to the WAL and not yet durable: the next message is received and
        // decoded while the WAL syncs the last (as `storage::AppendPipeline` does for files).
        let mut in_flight = std::collections::VecDeque::new();
        let mut n = 0u64;
        while let Some(batch) = stream.message().await? {
            n += 1;
            let mut errors = Vec::new();
            let batch = match to_record_batch(batch, &mut errors) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
            ack.rejected += errors.len() as u64;
            for e in errors {
                if ack.errors.len() < MAX_ERRORS {
                    ack.errors.push(format!("batch {n}: {e}"));
                }
            }
            let Some(batch) = batch else { continue };
            if in_flight.len() >= storage::AppendPipeline::<()>::IN_FLIGHT {
                let oldest = in_flight.pop_front().expect("a batch in flight");
                count_durable(&mut ack, oldest).await?;
            }
            let store = self.store.clone();
            in_flight.push_back(
                tokio::task::spawn_blocking(move || store.submit(batch))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(store_error)?,
            );
        }
        while let Some(pending) = in_flight.pop_front() {
            count_durable(&mut ack, pending).await?;
        }
        Ok(Response::new(ack))
    }
}

/// Waits (off the async threads) until `pending` is durable and counts it in `ack`.
async fn count_durable(ack: &mut IngestAck, pending: storage::PendingAppend) -> Result<(), Status> {
    let out = tokio::task::spawn_blocking(move || pending.wait())
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_error)?;
    ack.accepted += out.accepted as u64;
    ack.duplicates += out.duplicates as u64;
    Ok(())
}

/// A failed append: nothing after it is acknowledged; the client resends the stream.
fn store_error(e: storage::StorageError) -> Status {
    if e.is_no_space() {
        // A full disk: retry later; the store takes writes again once there is room.
        Status::resource_exhausted(format!("store: {e}"))
    } else {
        Status::unavailable(format!("store: {e}"))
    }
}

/// One message as a record batch of the `events` schema; bad events are named in `errors` and
/// left out.
fn to_record_batch(
    batch: EventBatch,
    errors: &mut Vec<String>,
) -> Result<Option<RecordBatch>, String> {
    match batch.payload {
        None => Ok(None),
        Some(event_batch::Payload::ArrowIpc(bytes)) => ingest::arrow_ipc::read_stream(bytes),
        Some(event_batch::Payload::Events(events)) => {
            let mut builder = EventBatchBuilder::with_capacity(events.events.len());
            for (i, pe) in events.events.into_iter().enumerate() {
                match from_proto(pe) {
                    Ok(ev) => builder.push(&ev),
                    Err(e) => errors.push(format!("event {i}: {e}")),
                }
            }
            Ok((!builder.is_empty()).then(|| builder.finish()))
        }
    }
}

fn from_proto(p: proto::v1::Event) -> Result<Event, String> {
    let list = |v: Vec<String>| (!v.is_empty()).then_some(v);
    let event_id = p.event_id.or_else(|| {
        // Without the producer's id, the event's own content is its identity.
        let bytes = prost::Message::encode_to_vec(&p);
        Some(model::event_id_of("grpc", &bytes))
    });
    let ev = Event {
        ts: p.ts_unix_nanos,
        kind: p.kind,
        source: p.source,
        event_id,
        node: p.node,
        cluster: p.cluster,
        namespace: p.namespace,
        pod: p.pod,
        pod_uid: p.pod_uid,
        container_id: p.container_id,
        container_name: p.container_name,
        image: p.image,
        workload_kind: p.workload_kind,
        workload_name: p.workload_name,
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        exe: p.exe,
        binary_name: None,
        args: p.args,
        cwd: p.cwd,
        exec_id: p.exec_id,
        parent_exec_id: p.parent_exec_id,
        parent_exe: p.parent_exe,
        protocol: p.protocol,
        src_ip: p.src_ip,
        dst_ip: p.dst_ip,
        src_port: p.src_port,
        dst_port: p.dst_port,
        k8s_user: p.k8s_user,
        impersonated_user: p.impersonated_user,
        k8s_groups: list(p.k8s_groups),
        source_ips: list(p.source_ips),
        source_ip: None,
        verb: p.verb,
        resource: p.resource,
        subresource: p.subresource,
        object_namespace: p.object_namespace,
        object_name: p.object_name,
        request_uri: p.request_uri,
        user_agent: p.user_agent,
        audit_id: p.audit_id,
        stage: p.stage,
        response_code: p.response_code,
        rule: p.rule,
        priority: p.priority,
        output: p.output,
        tags: list(p.tags),
        session_id: p.session_id,
        raw: p.raw,
    };
    ev.validate().map_err(|e| e.to_string())?;
    Ok(ev)
}
