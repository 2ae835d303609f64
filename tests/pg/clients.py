"""Real Postgres drivers against `ktrail serve --pg`: psycopg 3 (text protocol, parameters,
prepared statements, server-side cursors) and asyncpg (binary results, portal paging with
max_rows). Prints one line per check; exits non-zero on the first failure.

Usage: clients.py HOST PORT PASSWORD
"""
import asyncio
import sys

import asyncpg
import psycopg

host, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dsn = dict(host=host, port=port, user="ktrail", password=password, dbname="ktrail",
           sslmode="disable")

SESSION = "9b3c6a1e-0f43-4d7e-a5c2-1d8e7f6a5b4c"


def check(name, got, want):
    if got != want:
        print(f"FAIL {name}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {name}")


with psycopg.connect(**dsn, autocommit=True) as conn:
    # Parameters go through the extended protocol (Parse/Bind/Execute).
    rows = conn.execute(
        "SELECT pod, workload_name FROM pods WHERE namespace = %s AND live = %s ORDER BY pod",
        ("billing", True),
    ).fetchall()
    check("psycopg parameters", [r[0] for r in rows][:2],
          ["invoice-api-7d9f8b6c5-abc12", "ledger-0"])
    # A named prepared statement, executed twice with different values.
    for user, n in [("mallory@example.com", 1), ("bob@example.com", 1), ("eve@example.com", 0)]:
        got = conn.execute(
            "SELECT count(*) FROM exec_sessions WHERE k8s_user = %s", (user,), prepare=True
        ).fetchone()[0]
        check(f"psycopg prepared {user}", got, n)
    # Table functions with parameters.
    whats = [r[0] for r in conn.execute(
        "SELECT what FROM exec_trace(%s) WHERE kind = 'process_exec'", (SESSION,)).fetchall()]
    check("psycopg exec_trace", whats[0], "exec /bin/sh")
    # Types arrive as Python values.
    ts, n, tags = conn.execute(
        "SELECT ts, pid, source_ips FROM events WHERE kind = 'k8s_audit' ORDER BY ts LIMIT 1"
    ).fetchone()
    check("psycopg timestamp type", type(ts).__name__, "datetime")
    # Read-only: refused, and the connection stays usable.
    try:
        conn.execute("CREATE VIEW v AS SELECT 1")
        check("psycopg read-only", "allowed", "refused")
    except psycopg.Error as e:
        check("psycopg read-only sqlstate", e.sqlstate, "25006")
    check("psycopg after refusal", conn.execute("SELECT 1").fetchone()[0], 1)

# A server-side cursor (DECLARE/FETCH) pages through a result in a transaction.
with psycopg.connect(**dsn) as conn:
    with conn.cursor(name="pages") as cur:
        cur.itersize = 2
        cur.execute("SELECT ts, kind FROM events ORDER BY ts, event_id")
        first = cur.fetchmany(2)
        rest = cur.fetchall()
        total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        check("psycopg server cursor page", len(first), 2)
        check("psycopg server cursor rows", len(first) + len(rest), total)
        check("psycopg server cursor types", type(first[0][0]).__name__, "datetime")


async def binary_and_paging():
    conn = await asyncpg.connect(host=host, port=port, user="ktrail", password=password,
                                 database="ktrail", ssl=False)
    try:
        # Binary result format with a parameter.
        rows = await conn.fetch(
            "SELECT pod, pid FROM process_events WHERE binary_name = $1 AND kind = 'process_exec' ORDER BY ts", "tcpdump")
        check("asyncpg binary", [(r["pod"], r["pid"]) for r in rows],
              [("invoice-api-7d9f8b6c5-abc12", 5020)])
        # A portal read 3 rows at a time: Execute with max_rows, PortalSuspended, resumed.
        total = (await conn.fetchrow("SELECT count(*) AS n FROM events"))["n"]
        async with conn.transaction():
            cur = await conn.cursor("SELECT event_id FROM events ORDER BY ts, event_id")
            pages = []
            while True:
                page = await cur.fetch(3)
                if not page:
                    break
                pages.append(len(page))
        check("asyncpg max_rows pages", max(pages), 3)
        check("asyncpg max_rows total", sum(pages), total)
    finally:
        await conn.close()


asyncio.run(binary_and_paging())
print("all ok")
