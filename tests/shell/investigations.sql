-- The README's investigations, as an analyst types them.
SELECT ts, pod, binary_name, dst_ip, dst_port
FROM egress_unknown('billing', TIMESTAMP '2026-11-26 00:00:00', TIMESTAMP '2026-11-27 00:00:00');
SELECT node, namespace, pod, workload_kind, workload_name, args FROM executions('tcpdump');
\x on
SELECT session_id, k8s_user, source_ips, pod, command, processes, connections
FROM exec_sessions WHERE k8s_user = 'bob@example.com';
\x off
SELECT ts, kind, what FROM exec_trace('4e2d1c0b-9a87-4f65-b432-10fedcba9876');
SELECT relation, kind, what FROM pod_timeline('billing', 'ledger-0') WHERE kind <> 'k8s_object';
SELECT * FROM exec_trace();
