//! `ktrail serve --grpc`: the native `ktrail.v1.Ingest` service and gRPC health checking.
//!
//! A client streams `EventBatch`es (proto events, or Arrow IPC in the `events` schema, the fast
//! path); each batch is handed to the store as it arrives (the next is read while the last is
//! synced) and the single `IngestAck` is sent when the stream ends and all are durable, so an
//! ack means every accepted event of the stream is durable. A bad event is counted and named
//! in the ack; the rest of the stream goes on. At most `max_streams` streams are served at
//! once; one more is refused with `RESOURCE_EXHAUSTED`.

use std::sync::Arc;

use proto::v1::ingest_server::{Ingest, IngestServer};
use proto::v1::{EventBatch, IngestAck};
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
        IngestServer::with_interceptor(self, crate::auth::grpc_bearer(token))
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
        let store = self.store.clone();
        let runtime = tokio::runtime::Handle::current();
        // On a blocking thread: the store's appends wait for fsyncs; the next message is
        // received while the last batch is synced (`load::load_stream`).
        let loaded = tokio::task::spawn_blocking(move || {
            load::load_stream(&store, MAX_ERRORS, &mut || {
                let Some(batch) = runtime.block_on(stream.message())? else {
                    return Ok(None);
                };
                let mut rejected = Vec::new();
                let batch = ingest::proto_events::to_record_batch(batch, &mut rejected)
                    .unwrap_or_else(|e| {
                        rejected.push(e);
                        None
                    });
                Ok(Some(load::Message { batch, rejected }))
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match loaded {
            Ok(loaded) => Ok(Response::new(IngestAck {
                accepted: loaded.counts.accepted,
                rejected: loaded.counts.rejected,
                duplicates: loaded.counts.duplicates,
                errors: loaded.errors,
            })),
            Err(load::StreamError::Store(e)) => Err(store_error(e)),
            Err(load::StreamError::Source(status)) => Err(status),
        }
    }
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
