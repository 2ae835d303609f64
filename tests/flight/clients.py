"""ADBC's Flight SQL driver against `ktrail serve --grpc`: statement queries, prepared
statements with parameters (table function arguments included), catalog metadata, the
bearer token, read-only refusals. Prints one line per check; exits non-zero on the first
failure.

Usage: clients.py URI TOKEN [CA_CERT_PEM]
"""
import sys

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

uri, token = sys.argv[1], sys.argv[2]
ca = open(sys.argv[3]).read() if len(sys.argv) > 3 else None
SESSION = "9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c"


def check(name, got, want):
    if got != want:
        print(f"FAIL {name}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {name}")


def connect(tok):
    options = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {tok}"}
    if ca:
        options[DatabaseOptions.TLS_ROOT_CERTS.value] = ca
    return flight_sql.connect(uri, db_kwargs=options)


with connect(token) as conn:
    cur = conn.cursor()
    cur.execute("SELECT namespace, pod FROM pods WHERE namespace = 'billing' ORDER BY pod")
    table = cur.fetch_arrow_table()
    check("statement rows", table.num_rows, 3)
    check("statement column", table.column("pod").to_pylist()[0], "invoice-api-7d9f8b6c5-abc12")

    # Prepared with parameters: a plain filter and a table function argument.
    cur.execute("SELECT count(*) AS n FROM exec_sessions WHERE k8s_user = ?",
                parameters=("mallory@example.com",))
    check("prepared parameter", cur.fetchone()[0], 1)
    cur.execute("SELECT what FROM exec_trace(?) WHERE kind = 'process_exec'",
                parameters=(SESSION,))
    check("prepared table function", cur.fetchone()[0], "exec /bin/sh")

    # Catalog metadata.
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = {t["table_name"]: t["table_type"]
              for c in objects for s in c["catalog_db_schemas"] or []
              for t in s["db_schema_tables"] or []}
    check("GetTables events", tables.get("events"), "TABLE")
    check("GetTables pods", tables.get("pods"), "VIEW")
    check("GetCatalogs", "ktrail" in [c["catalog_name"] for c in objects], True)
    schema = conn.adbc_get_table_schema("events")
    check("table schema", schema.field("ts").type.tz, "UTC")
    info = conn.adbc_get_info()
    check("GetSqlInfo name", info.get("vendor_name"), "ktrail")

    # Read-only.
    for statement in ["CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                      "COPY (SELECT 1) TO '/tmp/ktrail-flight-test.csv'",
                      "CREATE VIEW v AS SELECT 1"]:
        try:
            cur.execute(statement)
            cur.fetchall()
            check(f"refused {statement}", "ran", "refused")
        except Exception as e:  # the driver's ProgrammingError/OperationalError
            check(f"refused {statement}", "read-only" in str(e), True)
    cur.close()

try:
    with connect("wrong-token") as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
    check("wrong token", "accepted", "refused")
except Exception as e:
    check("wrong token", "Unauthenticated" in str(e) or "bearer" in str(e), True)

print("all ok")
