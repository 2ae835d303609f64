//! ktrail's own gRPC batches (`ktrail.v1.EventBatch`): proto events, or an Arrow IPC stream in
//! the `events` schema (the fast path, read by [`crate::arrow_ipc`]).

use model::{Event, EventBatchBuilder, RecordBatch};
use proto::v1::{EventBatch, event_batch};

/// One message as a record batch of the `events` schema; bad events are named in `errors` and
/// left out.
pub fn to_record_batch(
    batch: EventBatch,
    errors: &mut Vec<String>,
) -> Result<Option<RecordBatch>, String> {
    match batch.payload {
        None => Ok(None),
        Some(event_batch::Payload::ArrowIpc(bytes)) => crate::arrow_ipc::read_stream(bytes),
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

/// One proto event as an [`Event`], validated; without a producer id, its id is a hash of
/// its encoding.
pub fn from_proto(p: proto::v1::Event) -> Result<Event, String> {
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
