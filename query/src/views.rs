//! The contract's views over `events`, as SQL, registered in order (later views use earlier
//! ones). Correlation that only needs a join is done here, at query time, so it is complete
//! whatever order the producers' data arrived in.

/// Plain filters over `events`: pruning applies through them.
pub const BASE_VIEWS: &[(&str, &str)] = &[
    (
        "process_events",
        "SELECT * FROM events WHERE kind IN ('process_exec', 'process_exit')",
    ),
    (
        "network_events",
        "SELECT * FROM events WHERE kind IN ('network_connect', 'network_accept', 'network_listen', 'network_close')",
    ),
    ("k8s_audit", "SELECT * FROM events WHERE kind = 'k8s_audit'"),
    (
        "falco_alerts",
        "SELECT * FROM events WHERE kind = 'falco_alert'",
    ),
];

/// Every sighting of a pod: inventory rows, audit requests on it that succeeded, and runtime
/// events in it. `created` / `deleting` come from the inventory's object metadata: only the
/// inventory rows read `raw` (the largest column by far), the runtime rows never do.
const POD_SIGHTINGS: &str = "
SELECT namespace, pod, pod_uid, node, workload_kind, workload_name, container_id, ts, kind, verb,
  src_ip AS ip,
  to_timestamp_nanos(json_get_str(raw, 'metadata', 'creationTimestamp')) AS created,
  to_timestamp_nanos(json_get_str(raw, 'metadata', 'deletionTimestamp')) AS deleting
FROM events
WHERE kind = 'k8s_object' AND resource = 'pods' AND pod IS NOT NULL AND namespace IS NOT NULL
UNION ALL
SELECT namespace, pod, pod_uid, node, workload_kind, workload_name, container_id, ts, kind, verb,
  CASE WHEN kind = 'network_connect' THEN src_ip END AS ip,
  CAST(NULL AS TIMESTAMP) AS created,
  CAST(NULL AS TIMESTAMP) AS deleting
FROM events
WHERE kind <> 'k8s_object' AND pod IS NOT NULL AND namespace IS NOT NULL
  AND (kind <> 'k8s_audit' OR (resource = 'pods' AND (response_code IS NULL OR response_code < 400)))";

/// One row per pod ever seen. `deleted_at`: an audit `delete` after the pod's last sign of life,
/// else the inventory's `deletionTimestamp`, else the first inventory of its namespace that no
/// longer lists it. `live`: listed by the latest inventory of its namespace and not deleted.
const PODS: &str = "
WITH s AS (SELECT * FROM pod_sightings),
snap AS (SELECT DISTINCT namespace, ts FROM events WHERE kind = 'k8s_object' AND resource = 'pods'),
agg AS (
  SELECT namespace, pod,
    last_value(pod_uid ORDER BY ts) FILTER (WHERE pod_uid IS NOT NULL) AS pod_uid,
    last_value(node ORDER BY ts) FILTER (WHERE node IS NOT NULL) AS node,
    last_value(workload_kind ORDER BY ts) FILTER (WHERE workload_kind IS NOT NULL) AS workload_kind,
    last_value(workload_name ORDER BY ts) FILTER (WHERE workload_name IS NOT NULL) AS workload_name,
    last_value(ip ORDER BY ts) FILTER (WHERE ip IS NOT NULL) AS pod_ip,
    least(min(ts), min(created)) AS first_seen,
    max(ts) AS last_seen,
    max(ts) FILTER (WHERE kind = 'k8s_audit' AND verb = 'delete') AS audit_delete,
    max(ts) FILTER (WHERE (kind = 'k8s_object' AND deleting IS NULL)
                       OR (kind = 'k8s_audit' AND verb = 'create')) AS last_alive,
    min(deleting) AS deleting,
    max(ts) FILTER (WHERE kind = 'k8s_object') AS last_inventory,
    array_sort(array_agg(DISTINCT container_id) FILTER (WHERE container_id IS NOT NULL)) AS container_ids
  FROM s GROUP BY namespace, pod
),
gone AS (
  SELECT agg.namespace, agg.pod, min(snap.ts) AS gone_at
  FROM agg JOIN snap ON snap.namespace = agg.namespace AND snap.ts > agg.last_inventory
  GROUP BY agg.namespace, agg.pod
)
SELECT agg.namespace, agg.pod, pod_uid, node, workload_kind, workload_name, pod_ip,
  first_seen, last_seen,
  coalesce(
    CASE WHEN audit_delete >= coalesce(last_alive, audit_delete) THEN audit_delete END,
    deleting, gone_at) AS deleted_at,
  container_ids,
  (last_inventory IS NOT NULL AND gone_at IS NULL AND deleting IS NULL
    AND (audit_delete IS NULL OR audit_delete < last_alive)) AS live
FROM agg LEFT JOIN gone ON gone.namespace = agg.namespace AND gone.pod = agg.pod";

/// Which pod held which IP when: from the pod's first sighting with the IP (or its creation)
/// until it was deleted; open-ended (`held_until` NULL) while the pod is live; else until its
/// last sighting. Leases of one IP never overlap: a lease ends where the next one starts
/// (contradictory sightings resolve to the newer pod), so joining on them never duplicates.
/// Node addresses are excluded (host-network pods share them). The sightings are aggregated
/// before the join with `pods` (one row per pod), so that aggregate reads `events` alone and
/// its per-segment partials are kept (see `partials.rs`).
const POD_IPS: &str = "
WITH held AS (
  SELECT namespace, pod, ip, least(min(ts), min(created)) AS first_seen, max(ts) AS last_seen
  FROM pod_sightings WHERE ip IS NOT NULL
  GROUP BY namespace, pod, ip),
l AS (
  SELECT h.namespace, h.pod, h.ip, h.first_seen, h.last_seen,
    CASE WHEN p.live THEN NULL ELSE coalesce(p.deleted_at, h.last_seen) END AS until
  FROM held h JOIN pods p ON p.namespace = h.namespace AND p.pod = h.pod
  WHERE h.ip NOT IN (SELECT src_ip FROM events
                     WHERE kind = 'k8s_object' AND resource = 'nodes' AND src_ip IS NOT NULL)),
o AS (
  SELECT *, lead(first_seen) OVER (PARTITION BY ip ORDER BY first_seen, namespace, pod) AS next_start
  FROM l)
SELECT namespace, pod, ip, first_seen, last_seen,
  CASE
    WHEN next_start IS NULL THEN until
    WHEN until IS NULL OR until >= next_start THEN next_start - INTERVAL '1 nanosecond'
    ELSE until
  END AS held_until
FROM o";

/// Outbound connections with their destination classified, time-aware for pods. Every join is
/// on a key that is unique at the event's time, so filters on the event columns reach the scan.
const EGRESS: &str = "
WITH svc AS (
  SELECT src_ip AS ip, min(namespace || '/' || object_name) AS service
  FROM events WHERE kind = 'k8s_object' AND resource = 'services' AND src_ip IS NOT NULL
  GROUP BY src_ip),
nodes AS (
  SELECT src_ip AS ip, min(node) AS node
  FROM events WHERE kind = 'k8s_object' AND resource = 'nodes' AND src_ip IS NOT NULL
  GROUP BY src_ip),
c AS (
  SELECT c.*, l.namespace AS dst_namespace, l.pod AS dst_pod, svc.service AS dst_service,
    nodes.node AS dst_node, known_network(c.dst_ip) AS dst_label
  FROM events c
  LEFT JOIN pod_ips l ON l.ip = c.dst_ip AND c.ts >= l.first_seen
    AND (l.held_until IS NULL OR c.ts <= l.held_until)
  LEFT JOIN svc ON svc.ip = c.dst_ip
  LEFT JOIN nodes ON nodes.ip = c.dst_ip
  WHERE c.kind = 'network_connect')
SELECT *,
  CASE
    WHEN dst_pod IS NOT NULL THEN 'pod'
    WHEN dst_service IS NOT NULL THEN 'service'
    WHEN dst_node IS NOT NULL THEN 'node'
    WHEN dst_ip IN ('169.254.169.254', 'fd00:ec2::254', '100.100.100.200') THEN 'cloud_metadata'
    WHEN dst_label IS NOT NULL THEN 'allowlisted'
    WHEN is_private_ip(dst_ip) THEN 'private'
    ELSE 'unknown'
  END AS dst_class
FROM c";

/// Container → pod → workload → node, from every source that names a container with its pod:
/// the correlation table for events that carry only a container id (Falco's `container.id` is
/// the 12-character short id: join on `short_id`).
const CONTAINERS: &str = "
SELECT container_id, substr(container_id, 1, 12) AS short_id,
  last_value(namespace ORDER BY ts) AS namespace,
  last_value(pod ORDER BY ts) AS pod,
  last_value(container_name ORDER BY ts) FILTER (WHERE container_name IS NOT NULL) AS container_name,
  last_value(image ORDER BY ts) FILTER (WHERE image IS NOT NULL) AS image,
  last_value(node ORDER BY ts) FILTER (WHERE node IS NOT NULL) AS node,
  last_value(workload_kind ORDER BY ts) FILTER (WHERE workload_kind IS NOT NULL) AS workload_kind,
  last_value(workload_name ORDER BY ts) FILTER (WHERE workload_name IS NOT NULL) AS workload_name,
  min(ts) AS first_seen, max(ts) AS last_seen
FROM events
WHERE container_id IS NOT NULL AND namespace IS NOT NULL AND pod IS NOT NULL
  AND length(container_id) > 12
GROUP BY container_id";

/// Every event of every exec session, with its `session_id`: the request's audit rows (and
/// events stored with a session id), and the processes, exits and connections `exec_sessions`
/// attributes by lineage (whose stored `session_id` is empty).
const SESSION_EVENTS: &str = "
SELECT * EXCLUDE (session_id), session_id FROM events WHERE session_id IS NOT NULL
UNION ALL
SELECT e.* EXCLUDE (session_id), u.session_id
FROM (SELECT session_id, namespace, pod, unnest(exec_ids) AS exec_id FROM exec_sessions) u
JOIN events e ON e.exec_id = u.exec_id AND e.namespace = u.namespace AND e.pod = u.pod
WHERE e.session_id IS NULL";

/// Correlation views over the whole history that are computed once per store version (see
/// `derived.rs`): small, and read by `egress` and the investigations on every call.
pub const DERIVED: &[&str] = &["containers", "pods", "pod_ips"];

/// Views built on joins, in registration order.
pub const CORRELATION_VIEWS: &[(&str, &str)] = &[
    ("pod_sightings", POD_SIGHTINGS),
    ("containers", CONTAINERS),
    ("pods", PODS),
    ("pod_ips", POD_IPS),
    ("egress", EGRESS),
];

/// Views over `exec_sessions` (registered after it).
pub const SESSION_VIEWS: &[(&str, &str)] = &[("session_events", SESSION_EVENTS)];
