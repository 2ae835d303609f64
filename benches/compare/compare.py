#!/usr/bin/env python3
"""ktrail side by side with DuckDB and ClickHouse (chDB), on one generated history, in one run.

From the repository root (makes its own virtualenv under target/ on first use):

    python3 benches/compare/compare.py --events 10000000

1. builds `target/release/ktrail` and generates the history in the producers' formats
   (`ktrail gen`: Tetragon, Falco, audit log, inventories);
2. ingests those files into ktrail (durable: `ktrail ingest` returns when they are fsynced),
   then exports ktrail's `events` table as NDJSON: the common input every engine loads the same
   way (ktrail `ingest --format native`, DuckDB `read_json` into a native table sorted by
   (namespace, pod, ts), chDB `file(..., JSONEachRow)` into a MergeTree ORDER BY
   (namespace, pod, ts));
3. times each load, measures bytes on disk per event, runs the fixed query set on every engine
   (first run after the engine opened the data, then --runs warm runs: p50/p95) and checks that
   every engine returned the same rows;
4. writes the section between the `compare` markers of BENCHMARKS.md and the raw figures
   to benches/compare/results.json.

ktrail answers through its real remote surface (Arrow Flight SQL over loopback, via ADBC), the
peers in process; each engine uses both cores its own way.
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = ROOT / "target" / "compare-venv"
REQUIREMENTS = HERE / "requirements.txt"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"

# The demo's allow-list: destinations there are `allowlisted`, not `unknown`.
KNOWN_NETWORKS = [("192.0.2.0/24", "payment-gateway"), ("52.216.0.0/15", "object-storage")]
# What ktrail's egress classification calls private, metadata or allowlisted (IPv4), as the
# ranges a DuckDB or ClickHouse user writes by hand.
NOT_UNKNOWN_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
                  "169.254.0.0/16", "100.64.0.0/10", "100.100.100.200/32"] + [
    c for c, _ in KNOWN_NETWORKS]
RUNTIME_PARENTS = ["containerd-shim", "runc", "crun", "conmon"]


def ensure_venv(script=__file__):
    """Re-runs `script` in target/compare-venv, made from requirements.txt when missing."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    marker = VENV / ".ktrail-ready"
    wanted = REQUIREMENTS.read_text()
    if not (marker.exists() and marker.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "-r", str(REQUIREMENTS)],
                       check=True)
        marker.write_text(wanted)
    python = str(VENV / "bin" / "python")
    os.execv(python, [python, str(script), *sys.argv[1:]])


def log(msg):
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


class Timed:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def run_measured(cmd, stdout=None):
    """Runs cmd under /usr/bin/time: (wall s, peak RSS MiB, CPU s, captured stdout)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", tf.name, *map(str, cmd)]
        out = subprocess.run(full, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        if out.returncode != 0:
            sys.exit(f"failed ({out.returncode}): {' '.join(map(str, cmd))}\n{out.stderr[-4000:]}")
        wall, rss_kb, user, sys_ = tf.read().split()[-4:]
        return float(wall), int(rss_kb) / 1024, float(user) + float(sys_), out.stdout


def dir_bytes(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# The common table, as each peer declares it.

def events_columns(ktrail, store):
    """(name, Arrow type string) of ktrail's `events`, as exported."""
    out = subprocess.run([ktrail, "--data", store, "sql", "--format", "json",
                          "SELECT column_name, data_type FROM information_schema.columns "
                          "WHERE table_name = 'events' ORDER BY ordinal_position"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"could not read the events schema: {out.stderr}")
    return [(r["column_name"], r["data_type"]) for r in json.loads(out.stdout)]


# Columns that repeat few values: dictionary-encoded in ClickHouse (its best layout).
LOW_CARDINALITY = {"kind", "source", "node", "cluster", "namespace", "pod", "container_name",
                   "image", "workload_kind", "workload_name", "exe", "binary_name", "parent_exe",
                   "protocol", "k8s_user", "verb", "resource", "subresource", "object_namespace",
                   "user_agent", "stage", "rule", "priority", "cwd"}
SORT_KEY = ("namespace", "pod", "ts")


def duckdb_type(arrow):
    if arrow.startswith("Timestamp"):
        return "TIMESTAMP_NS"
    if arrow.startswith("List"):
        return "VARCHAR[]"
    return {"Utf8": "VARCHAR", "Int64": "BIGINT", "Int32": "INTEGER", "Float64": "DOUBLE",
            "Boolean": "BOOLEAN"}[arrow]


def clickhouse_type(name, arrow):
    if arrow.startswith("Timestamp"):
        return "DateTime64(9, 'UTC') CODEC(Delta, ZSTD(3))"
    if arrow.startswith("List"):
        return "Array(String)"
    if arrow == "Utf8":
        if name in SORT_KEY:
            return "LowCardinality(String)"
        if name in LOW_CARDINALITY:
            return "LowCardinality(Nullable(String))"
        return "Nullable(String) CODEC(ZSTD(3))"
    base = {"Int64": "Int64", "Int32": "Int32", "Float64": "Float64", "Boolean": "Bool"}[arrow]
    return f"Nullable({base})"


# ---------------------------------------------------------------------------------------------
# The query set. `{...}` are filled from the generator's known answers.

def ip4_ranges(cidrs):
    out = []
    for c in cidrs:
        addr, bits = c.split("/")
        a, b, c_, d = (int(x) for x in addr.split("."))
        lo = (a << 24) | (b << 16) | (c_ << 8) | d
        hi = lo | ((1 << (32 - int(bits))) - 1)
        out.append((lo, hi))
    return out


def not_unknown(expr):
    return " OR ".join(f"{expr} BETWEEN {lo} AND {hi}" for lo, hi in ip4_ranges(NOT_UNKNOWN_V4))


DUCK_IP4 = ("(TRY_CAST(split_part(dst_ip, '.', 1) AS BIGINT) * 16777216 + "
            "TRY_CAST(split_part(dst_ip, '.', 2) AS BIGINT) * 65536 + "
            "TRY_CAST(split_part(dst_ip, '.', 3) AS BIGINT) * 256 + "
            "TRY_CAST(split_part(dst_ip, '.', 4) AS BIGINT))")
CH_IP4 = "toUInt32(IPv4StringToNumOrNull(dst_ip))"


def session_trace_sql(interval):
    """The exec session's processes and connections, the way a SQL user finds them without
    ktrail: the request's audit row, the process the runtime started in that pod within the
    window, its descendants by exec_id lineage (a recursive CTE), their events."""
    parents = " OR ".join(f"e.parent_exe LIKE '%{p}%'" for p in RUNTIME_PARENTS)
    return f"""
WITH RECURSIVE req AS (
  SELECT min(ts) AS ts, min(object_namespace) AS ns, min(object_name) AS pod
  FROM events WHERE kind = 'k8s_audit' AND audit_id = '{{session_id}}'),
tree AS (
  SELECT e.exec_id AS exec_id FROM events e, req
  WHERE e.kind = 'process_exec' AND e.namespace = req.ns AND e.pod = req.pod
    AND e.ts >= req.ts - {interval(2)} AND e.ts <= req.ts + {interval(10)} AND ({parents})
  UNION ALL
  SELECT e.exec_id AS exec_id FROM events e JOIN tree t ON e.parent_exec_id = t.exec_id
  WHERE e.kind = 'process_exec' AND e.namespace = '{{namespace}}' AND e.pod = '{{pod}}')
SELECT ts, kind, exec_id, exe, dst_ip, dst_port FROM events
WHERE namespace = '{{namespace}}' AND pod = '{{pod}}' AND exec_id IN (SELECT exec_id FROM tree)
ORDER BY ts, kind"""


def egress_sql(ip_expr):
    return f"""
SELECT ts, pod, dst_ip, dst_port FROM events
WHERE kind = 'network_connect' AND namespace = '{{namespace}}'
  AND ts >= {{day_from}} AND ts < {{day_to}}
  AND {ip_expr} IS NOT NULL AND NOT ({not_unknown(ip_expr)})
ORDER BY ts"""


POD_TIMELINE = ("SELECT ts, kind, exe, args, dst_ip, dst_port FROM events "
                "WHERE namespace = '{namespace}' AND pod = '{pod}' ORDER BY ts, kind")


TOP_TALKERS = """
SELECT namespace, pod, n FROM (
  SELECT namespace, pod, n,
    row_number() OVER (PARTITION BY namespace ORDER BY n DESC, pod) AS r
  FROM (SELECT namespace, pod, count(*) AS n FROM events
        WHERE kind = 'network_connect' AND namespace <> '' AND pod <> ''
        GROUP BY namespace, pod) t) u
WHERE r <= 3 ORDER BY namespace, r"""

IP_LOOKUP = ("SELECT ts, kind, namespace, pod, src_ip, dst_ip, dst_port FROM events "
             "WHERE dst_ip = '{ip}' OR src_ip = '{ip}' ORDER BY ts, kind")

CMDLINE = ("SELECT ts, namespace, pod, exe, args FROM events "
           "WHERE kind = 'process_exec' AND args LIKE '%{needle}%' ORDER BY ts")

EXECUTIONS_PEER = ("SELECT ts, namespace, pod, exe, args FROM events "
                   "WHERE binary_name = '{binary}' AND kind IN ('process_exec', 'falco_alert') "
                   "ORDER BY ts")


def everywhere(sql):
    """The same SQL for every engine."""
    return {"ktrail": sql, "duckdb": sql, "chdb": sql}


def queries():
    """(id, what it asks, kind, {engine: SQL})."""
    duck_iv = lambda s: f"INTERVAL {s} SECOND"  # noqa: E731
    ch_iv = lambda s: f"toIntervalSecond({s})"  # noqa: E731
    return [
        ("pod_timeline", "one pod's timeline (every event of the exec'd billing pod)", "selective",
         everywhere(POD_TIMELINE)),
        ("exec_session", "the exec session's processes and connections", "selective",
         {"ktrail": "SELECT ts, kind, exec_id, exe, dst_ip, dst_port FROM exec_trace('{session_id}') "
                    "WHERE kind <> 'k8s_audit' ORDER BY ts, kind",
          "duckdb": session_trace_sql(duck_iv), "chdb": session_trace_sql(ch_iv)}),
        ("ip_lookup", "every event to or from one IP (the unknown destination)", "selective",
         everywhere(IP_LOOKUP)),
        ("executions_tcpdump", "who ran tcpdump, where (`executions('tcpdump')`)", "selective",
         {"ktrail": "SELECT ts, namespace, pod, exe, args FROM executions('{binary}') ORDER BY ts",
          "duckdb": EXECUTIONS_PEER, "chdb": EXECUTIONS_PEER}),
        ("egress_unknown_day", "billing's connections to unknown IPs over the day", "namespace-wide",
         {"ktrail": "SELECT ts, pod, dst_ip, dst_port FROM egress_unknown('{namespace}', "
                    "{day_from}, {day_to}) ORDER BY ts",
          "duckdb": egress_sql(DUCK_IP4), "chdb": egress_sql(CH_IP4)}),
        ("top_talkers", "top 3 pods by connections, per namespace", "namespace-wide",
         everywhere(TOP_TALKERS)),
        ("cmdline_search", "command lines containing a substring (`.pcap`)", "scan",
         everywhere(CMDLINE)),
    ]


def params(incident, engine):
    day_from, day_to = "2026-11-25 00:00:00", "2026-11-26 00:00:00"
    ts = {"ktrail": "TIMESTAMP '{}'", "duckdb": "TIMESTAMP_NS '{}'",
          "chdb": "toDateTime64('{}', 9, 'UTC')"}[engine]
    return {"namespace": incident["namespace"], "pod": incident["pod"],
            "session_id": incident["session_id"], "ip": incident["unknown_ip"],
            "binary": "tcpdump", "needle": ".pcap",
            "day_from": ts.format(day_from), "day_to": ts.format(day_to)}


def normalise(table):
    """Rows as sorted tuples of strings: timestamps as epoch nanoseconds, NULL as ''."""
    import pyarrow as pa
    import pyarrow.compute as pc
    cols = []
    for col in table.columns:
        if pa.types.is_timestamp(col.type):
            col = pc.cast(col, pa.timestamp("ns")).cast(pa.int64())
        cols.append(["" if v is None else str(v) for v in col.to_pylist()])
    rows = sorted(zip(*cols)) if cols else []
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return len(rows), digest, rows


# ---------------------------------------------------------------------------------------------
# Engines: open → run(sql) returns a pyarrow Table.

class Ktrail:
    name = "ktrail"

    def __init__(self, binary, data, work):
        port = free_port()
        token = work / "token"
        token.write_text("compare-" + hashlib.sha256(os.urandom(16)).hexdigest() + "\n")
        self.proc = subprocess.Popen(
            [binary, "--data", data, "serve", "--grpc", f"127.0.0.1:{port}",
             "--token-file", token], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "listening grpc" not in line:
            sys.exit(f"ktrail serve did not start: {line}{self.proc.stderr.read()}")
        import adbc_driver_flightsql.dbapi as flight_sql
        from adbc_driver_flightsql import DatabaseOptions
        self.conn = flight_sql.connect(
            f"grpc://127.0.0.1:{port}",
            db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value:
                       f"Bearer {token.read_text().strip()}"})

    def run(self, sql):
        cur = self.conn.cursor()
        cur.execute(sql)
        table = cur.fetch_arrow_table()
        cur.close()
        return table

    def close(self):
        self.conn.close()
        self.proc.terminate()
        self.proc.wait()


class DuckDb:
    name = "duckdb"

    def __init__(self, path):
        import duckdb
        self.conn = duckdb.connect(str(path), read_only=True)

    def run(self, sql):
        return self.conn.execute(sql).to_arrow_table()

    def close(self):
        self.conn.close()


class ChDb:
    name = "chdb"

    def __init__(self, path):
        from chdb import session
        self.session = session.Session(str(path))

    def run(self, sql):
        return self.session.query(sql, "ArrowTable")

    def close(self):
        self.session.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Loads.

def load_duckdb(path, ndjson, columns, threads):
    import duckdb
    spec = "{" + ", ".join(f"'{n}': '{duckdb_type(t)}'" for n, t in columns) + "}"
    conn = duckdb.connect(str(path))
    conn.execute(f"SET threads = {threads}")
    with Timed() as t:
        conn.execute(
            f"CREATE TABLE events AS SELECT * FROM read_json('{ndjson}', "
            f"format = 'newline_delimited', columns = {spec}) ORDER BY namespace, pod, ts")
        conn.execute("CHECKPOINT")
    rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    return t.seconds, rows


def load_chdb(path, ndjson, columns):
    from chdb import session
    s = session.Session(str(path))
    ddl = ", ".join(f"`{n}` {clickhouse_type(n, t)}" for n, t in columns)
    structure = ", ".join(f"`{n}` {clickhouse_type(n, t).split(' CODEC')[0]}" for n, t in columns)
    structure = structure.replace("'", "\\'")
    s.query(f"CREATE TABLE default.events ({ddl}) ENGINE = MergeTree "
            f"ORDER BY ({', '.join(SORT_KEY)})")
    with Timed() as t:
        s.query(f"INSERT INTO default.events SELECT * FROM file('{ndjson}', 'JSONEachRow', "
                f"'{structure}') SETTINGS date_time_input_format = 'best_effort'")
    with Timed() as opt:
        s.query("OPTIMIZE TABLE default.events FINAL")
    rows = int(s.query("SELECT count() FROM default.events", "CSV").bytes().strip())
    s.close()
    return t.seconds, opt.seconds, rows


# ---------------------------------------------------------------------------------------------

def time_queries(engine, incident, runs):
    results = {}
    # The floor under every query: one round trip of a query that reads nothing. ktrail's
    # goes through Flight SQL to another process; the peers run in this one.
    floor = []
    for _ in range(runs + 1):
        with Timed() as t:
            engine.run("SELECT 1")
        floor.append(t.seconds)
    results["round_trip"] = {"p50_ms": statistics.median(floor[1:]) * 1e3}
    log(f"  {engine.name} SELECT 1: p50 {results['round_trip']['p50_ms']:.2f} ms")
    for qid, _, _, sqls in queries():
        sql = sqls[engine.name].format(**params(incident, engine.name))
        with Timed() as first:
            table = engine.run(sql)
        warm = []
        for _ in range(runs):
            with Timed() as t:
                engine.run(sql)
            warm.append(t.seconds)
        warm.sort()
        rows, digest, data = normalise(table)
        results[qid] = {"first_ms": first.seconds * 1e3,
                        "p50_ms": statistics.median(warm) * 1e3,
                        "p95_ms": warm[min(len(warm) - 1, round(0.95 * (len(warm) - 1)))] * 1e3,
                        "rows": rows, "digest": digest, "sample": data[:3]}
        log(f"  {engine.name} {qid}: {rows} rows, first {first.seconds * 1e3:.1f} ms, "
            f"p50 {results[qid]['p50_ms']:.2f} ms")
    return results


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo")
               if line.startswith("MemTotal")) / 1024 / 1024
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "kernel": platform.release(), "rustc": rustc, "ktrail_commit": rev}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=10, help="warm runs per query")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "compare")
    ap.add_argument("--ktrail", type=Path, help="a built ktrail binary (default: cargo build --release)")
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md and results.json alone")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--rewrite", action="store_true",
                    help="only render BENCHMARKS.md again from results.json")
    args = ap.parse_args()
    if args.rewrite:
        figures = json.loads((HERE / "results.json").read_text())
        args.events, args.seed, args.runs = (figures["events_requested"], figures["seed"],
                                             figures["runs"])
        write_markdown(figures, args)
        return

    import chdb
    import duckdb

    if args.ktrail:
        ktrail = args.ktrail.resolve()
    else:
        log("cargo build --release --bin ktrail")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "ktrail"], cwd=ROOT,
                       check=True)
        ktrail = ROOT / "target" / "release" / "ktrail"
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    figures = {"events_requested": args.events, "seed": args.seed, "runs": args.runs,
               "machine": machine(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "versions": {"duckdb": duckdb.__version__, "chdb": chdb.__version__}}

    log(f"ktrail gen --events {args.events}")
    wall, rss, cpu, out = run_measured([ktrail, "gen", "--events", args.events, "--seed", args.seed,
                                        "-o", work / "input", "--incident", work / "incident.json"])
    files = out.split()
    incident = json.loads((work / "incident.json").read_text())
    input_bytes = sum(Path(f).stat().st_size for f in files)
    figures["generate"] = {"seconds": wall, "peak_rss_mib": rss, "records": incident["records"],
                           "bytes": input_bytes}
    log(f"  {incident['records']} records, {input_bytes / 1e9:.2f} GB in {wall:.1f} s, peak {rss:.0f} MiB")

    store = work / "ktrail"
    log("ktrail ingest (producer formats)")
    wall, rss, cpu, _ = run_measured([ktrail, "--data", store, "ingest", *files])
    for cidr, label in KNOWN_NETWORKS:
        run_measured([ktrail, "--data", store, "networks", "add", cidr, label])
    cwall, _, _, _ = run_measured([ktrail, "--data", store, "compact"])
    count = int(run_measured([ktrail, "--data", store, "sql", "--format", "csv",
                              "SELECT count(*) AS n FROM events"])[3].split()[1])
    figures["ktrail_producer_ingest"] = {
        "seconds": wall, "cpu_seconds": cpu, "peak_rss_mib": rss, "events": count,
        "events_per_s": count / wall, "compact_seconds": cwall, "bytes": dir_bytes(store)}
    log(f"  {count} events in {wall:.1f} s ({count / wall:,.0f}/s), compact {cwall:.1f} s")

    columns = events_columns(ktrail, store)
    # The producer files are no longer needed; the NDJSON is written zstd-compressed (every
    # engine reads `.zst` itself): uncompressed, 10 M events with `raw` are about 27 GB.
    shutil.rmtree(work / "input")
    ndjson = work / "events.ndjson.zst"
    log("export events as NDJSON, zstd -1 (the common input)")
    with Timed() as t:
        export = subprocess.Popen([ktrail, "--data", store, "sql", "--format", "ndjson",
                                   "SELECT * FROM events"], stdout=subprocess.PIPE)
        subprocess.run(["zstd", "-1", "-q", "-T0", "-f", "-o", ndjson], stdin=export.stdout,
                       check=True)
        export.stdout.close()
        if export.wait() != 0:
            sys.exit("the NDJSON export failed")
    figures["export"] = {"seconds": t.seconds, "bytes": ndjson.stat().st_size}

    loads = {}
    native = work / "ktrail-native"
    log("ktrail ingest --format native (the NDJSON)")
    wall, rss, cpu, _ = run_measured([ktrail, "--data", native, "ingest", "--format", "native", ndjson])
    cwall, _, _, _ = run_measured([ktrail, "--data", native, "compact"])
    loads["ktrail"] = {"seconds": wall, "cpu_seconds": cpu, "peak_rss_mib": rss,
                       "finish_seconds": cwall, "bytes": dir_bytes(native), "rows": count}
    shutil.rmtree(native)

    log("DuckDB: CREATE TABLE AS read_json(...) ORDER BY namespace, pod, ts")
    duck = work / "duck.db"
    seconds, rows = load_duckdb(duck, ndjson, columns, os.cpu_count())
    loads["duckdb"] = {"seconds": seconds, "finish_seconds": 0.0, "bytes": dir_bytes(duck),
                       "rows": rows}
    log("chDB: INSERT INTO MergeTree SELECT * FROM file(..., JSONEachRow)")
    ch = work / "chdb"
    seconds, opt, rows = load_chdb(ch, ndjson, columns)
    loads["chdb"] = {"seconds": seconds, "finish_seconds": opt, "bytes": dir_bytes(ch), "rows": rows}
    for name, load in loads.items():
        load["events_per_s"] = load["rows"] / load["seconds"]
        load["bytes_per_event"] = load["bytes"] / load["rows"]
        log(f"  {name}: {load['rows']} rows in {load['seconds']:.1f} s "
            f"({load['events_per_s']:,.0f}/s), {load['bytes_per_event']:.1f} B/event")
        if load["rows"] != count:
            sys.exit(f"{name} loaded {load['rows']} rows, ktrail has {count}")
    figures["load"] = loads

    answers = {}
    for name, opener in [("ktrail", lambda: Ktrail(ktrail, store, work)),
                         ("duckdb", lambda: DuckDb(duck)), ("chdb", lambda: ChDb(ch))]:
        log(f"queries on {name}")
        engine = opener()
        try:
            answers[name] = time_queries(engine, incident, args.runs)
        finally:
            engine.close()
    figures["queries"] = answers

    disagreements = []
    for qid, _, _, _ in queries():
        got = {e: (a[qid]["rows"], a[qid]["digest"]) for e, a in answers.items()}
        if len(set(got.values())) != 1:
            disagreements.append(f"{qid}: " + ", ".join(f"{e} {r} rows #{d}" for e, (r, d) in got.items()))
        elif got["ktrail"][0] == 0:
            disagreements.append(f"{qid}: every engine returned no rows (the query set is wrong)")
    figures["disagreements"] = disagreements
    for d in disagreements:
        log(f"DISAGREE {d}")

    if not args.no_write:
        (HERE / "results.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
        write_markdown(figures, args)
        log("wrote BENCHMARKS.md and benches/compare/results.json")
    if not args.keep:
        shutil.rmtree(work)
    sys.exit(1 if disagreements else 0)


def write_markdown(f, args):
    m = f["machine"]
    q = f["queries"]
    load = f["load"]
    lines = [
        BEGIN,
        "## Side by side: ktrail, DuckDB, ClickHouse (chDB)",
        "",
        "Produced in one run by the harness (it makes its virtualenv under `target/` first):",
        "",
        "```sh",
        f"python3 benches/compare/compare.py --events {args.events} --seed {args.seed} --runs {args.runs}",
        "```",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"{m['rustc']}; ktrail {m['ktrail_commit']} (release); DuckDB {f['versions']['duckdb']}; "
        f"chDB {f['versions']['chdb']}. Run {f['when']}. Raw figures: "
        "`benches/compare/results.json`.",
        "",
        f"Data: `ktrail gen --events {args.events} --seed {args.seed}` wrote "
        f"{f['generate']['records']:,} records ({f['generate']['bytes'] / 1e9:.2f} GB of Tetragon, "
        f"Falco, audit and inventory JSON) in {f['generate']['seconds']:.0f} s with a peak RSS of "
        f"{f['generate']['peak_rss_mib']:.0f} MiB; ktrail ingested them into "
        f"{f['ktrail_producer_ingest']['events']:,} events. Those events, exported as NDJSON "
        f"(`raw` included; {f['export']['bytes'] / 1e9:.2f} GB as zstd -1, which every engine "
        "decompresses itself), are what every engine loads.",
        "",
        "### Loading the same NDJSON",
        "",
        "| engine | how | load | events/s | then | bytes/event on disk |",
        "|---|---|---|---|---|---|",
        f"| ktrail | `ingest --format native` (fsynced before it returns) | "
        f"{load['ktrail']['seconds']:.1f} s | {load['ktrail']['events_per_s']:,.0f} | "
        f"`compact` {load['ktrail']['finish_seconds']:.1f} s | {load['ktrail']['bytes_per_event']:.1f} |",
        f"| DuckDB | `CREATE TABLE AS read_json ORDER BY namespace, pod, ts` + `CHECKPOINT` | "
        f"{load['duckdb']['seconds']:.1f} s | {load['duckdb']['events_per_s']:,.0f} | — | "
        f"{load['duckdb']['bytes_per_event']:.1f} |",
        f"| chDB | `INSERT INTO` MergeTree `ORDER BY (namespace, pod, ts)` from `file(JSONEachRow)` | "
        f"{load['chdb']['seconds']:.1f} s | {load['chdb']['events_per_s']:,.0f} | `OPTIMIZE FINAL` "
        f"{load['chdb']['finish_seconds']:.1f} s | {load['chdb']['bytes_per_event']:.1f} |",
        "",
        f"ktrail from the producers' own files (`ktrail ingest` of the generated Tetragon, Falco, "
        f"audit and inventory files: parse, recognise, deduplicate, fsync): "
        f"{f['ktrail_producer_ingest']['seconds']:.1f} s = "
        f"{f['ktrail_producer_ingest']['events_per_s']:,.0f} events/s "
        f"({f['ktrail_producer_ingest']['cpu_seconds']:.0f} CPU s), then `compact` "
        f"{f['ktrail_producer_ingest']['compact_seconds']:.1f} s; the peers have no reader for "
        "those formats.",
        "",
        "### Queries",
        "",
        f"Milliseconds; first = the first run after the engine opened the data, p50/p95 over "
        f"{args.runs} warm runs. ktrail ÷ peer = ktrail's p50 over the peer's (below 1: ktrail "
        "is faster).",
        "",
        "| query | kind | rows | ktrail first | ktrail p50 / p95 | DuckDB first | DuckDB p50 / p95 "
        "| chDB first | chDB p50 / p95 | ktrail ÷ DuckDB | ktrail ÷ chDB | same answer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for qid, what, kind, _ in queries():
        k, d, c = q["ktrail"][qid], q["duckdb"][qid], q["chdb"][qid]
        same = "yes" if len({(x["rows"], x["digest"]) for x in (k, d, c)}) == 1 else "**no**"
        lines.append(
            f"| `{qid}`: {what} | {kind} | {k['rows']} | {k['first_ms']:.1f} | "
            f"{k['p50_ms']:.1f} / {k['p95_ms']:.1f} | {d['first_ms']:.1f} | "
            f"{d['p50_ms']:.1f} / {d['p95_ms']:.1f} | {c['first_ms']:.1f} | "
            f"{c['p50_ms']:.1f} / {c['p95_ms']:.1f} | {k['p50_ms'] / d['p50_ms']:.2g}× | "
            f"{k['p50_ms'] / c['p50_ms']:.2g}× | {same} |")
    floor = {e: q[e]["round_trip"]["p50_ms"] for e in ("ktrail", "duckdb", "chdb")}
    lines += ["", "The SQL each engine ran is in `benches/compare/compare.py` (`queries()`).",
              "",
              f"The floor under every query, one round trip of `SELECT 1` (p50): ktrail "
              f"{floor['ktrail']:.2f} ms (Flight SQL through the ADBC driver, to another process), "
              f"DuckDB {floor['duckdb']:.2f} ms, chDB {floor['chdb']:.2f} ms (both in the "
              "harness's own process).", END]
    md = ROOT / "BENCHMARKS.md"
    text = md.read_text()
    section = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    md.write_text(text)


if __name__ == "__main__":
    ensure_venv()
    main()
