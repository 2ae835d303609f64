\?
\dt
\d known_networks
SELECT namespace, pod, workload_name, live
FROM pods
WHERE namespace = 'billing'   -- a comment; with a semicolon
ORDER BY pod;
\x
SELECT k8s_user, command, process_count, connection_count, confidence FROM exec_sessions ORDER BY ts LIMIT 1;
\x off
SELECT 1 AS a, 'two;' AS b; SELECT NULL AS empty, 3.5 AS x;
\timing on
SELECT count(*) AS n FROM events WHERE kind = 'process_exec';
\timing off
SELEC 1;
SELECT nope FROM events;
\d no_such_table
\df
\df json_get_*
\bogus
SELECT kind, what FROM exec_trace('9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c') WHERE kind <> 'k8s_audit'
