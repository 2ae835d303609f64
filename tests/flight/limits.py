"""ADBC's Flight SQL driver against a `ktrail serve --grpc` with small query limits:
- `memory` (`--query-memory 2M`): a query over its memory limit fails with the reason while a
  query started before it on another connection streams to its correct answer;
- `time` (`--query-timeout 1`): a query over its time limit fails with the reason.
Either way the server then answers the next query. Prints one line per check; exits non-zero
on the first failure.

Usage: limits.py URI TOKEN memory|time
"""
import sys
import threading

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

uri, token, limit = sys.argv[1], sys.argv[2], sys.argv[3]


def check(name, got, want):
    if got != want:
        print(f"FAIL {name}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {name}")


def connect():
    options = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    return flight_sql.connect(uri, db_kwargs=options)


def error_of(conn, sql):
    cur = conn.cursor()
    try:
        cur.execute(sql)
        cur.fetchall()
        return "ran"
    except Exception as e:  # the driver's OperationalError/InternalError
        return str(e)
    finally:
        cur.close()


# Counts 30 M generated rows: seconds of work in little memory, on its own connection.
concurrent = {}


def count_rows():
    with connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) AS n FROM generate_series(1, 30000000)")
        concurrent["n"] = cur.fetchone()[0]
        cur.close()


with connect() as conn:
    if limit == "memory":
        t = threading.Thread(target=count_rows)
        t.start()
        hungry = "SELECT cardinality(array_agg(v)) AS n FROM generate_series(1, 2000000) t(v)"
        e = error_of(conn, hungry)
        check("over the memory limit", "allocation failed" in e, True)
        t.join()
        check("concurrent query", concurrent.get("n"), 30000000)
    else:
        slow = "SELECT count(*) FROM generate_series(1, 100000000000)"
        e = error_of(conn, slow)
        check("over the time limit", "statement timeout (1 s)" in e, True)
    cur = conn.cursor()
    cur.execute("SELECT count(*) AS n FROM pods WHERE namespace = 'billing'")
    check("next query", cur.fetchone()[0], 3)
    cur.close()

print("all ok")
