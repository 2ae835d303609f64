#!/usr/bin/env python3
"""Query latency of a running `ktrail serve` before and after new events arrive.

    python3 benches/compare/live.py --data STORE [--binary target/release/ktrail] [--appends 3]

Copies STORE (a ktrail data directory, e.g. the harness's) to a temporary directory, starts
`ktrail serve --grpc --http` on it, and for each query below prints the first run, one warm
run, then one run after each Tetragon `process_exec` POSTed to `/v1/ingest/tetragon` (200 =
durable). The queries read the derived tables (`containers`, `pods`, `pod_ips`), which follow
the store version: this is what a responder sees while the cluster keeps sending events.
Answers go through Flight SQL (ADBC), as in `compare.py`, whose virtualenv this uses.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

QUERIES = {
    "executions": "SELECT count(*) FROM executions('tcpdump')",
    "egress_unknown": "SELECT count(*) FROM egress_unknown('billing')",
    "pods": "SELECT count(*) FROM pods",
}


def tetragon_exec(i):
    """One Tetragon `process_exec` line, new each time (its own exec id and time)."""
    pod = {"container": {"id": "containerd://" + "ab" * 32, "name": "shell",
                         "image": {"name": "docker.io/library/busybox:1.36"}},
           "name": "live-check-0", "namespace": "default"}
    process = {"exec_id": f"bGl2ZS1jaGVjazp7aX0={i}", "pid": 4000 + i, "uid": 0,
               "binary": "/bin/sh", "arguments": f"-c 'echo {i}'", "cwd": "/",
               "start_time": f"2026-11-25T23:59:{i:02d}.000000000Z", "pod": pod,
               "parent_exec_id": ""}
    return {"process_exec": {"process": process}, "node_name": "worker-1",
            "time": f"2026-11-25T23:59:{i:02d}.000000000Z"}


def main():
    compare.ensure_venv(__file__)
    import adbc_driver_flightsql.dbapi as flight_sql
    from adbc_driver_flightsql import DatabaseOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--binary", type=Path, default=compare.ROOT / "target/release/ktrail")
    ap.add_argument("--appends", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=compare.ROOT / "target") as tmp:
        data = Path(tmp) / "store"
        shutil.copytree(args.data, data)
        token = "live-" + "0" * 24
        (Path(tmp) / "token").write_text(token + "\n")
        grpc, http = compare.free_port(), compare.free_port()
        with open(Path(tmp) / "serve.log", "w") as log:
            proc = subprocess.Popen(
                [args.binary, "--data", data, "serve", "--grpc", f"127.0.0.1:{grpc}",
                 "--http", f"127.0.0.1:{http}", "--token-file", Path(tmp) / "token"],
                stdout=subprocess.PIPE, stderr=log, text=True)
            try:
                for _ in range(2):
                    line = proc.stdout.readline()
                    if "listening" not in line:
                        sys.exit(f"ktrail serve did not start: {line}")
                conn = flight_sql.connect(
                    f"grpc://127.0.0.1:{grpc}",
                    db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"})

                def run(sql):
                    start = time.perf_counter()
                    cur = conn.cursor()
                    cur.execute(sql)
                    cur.fetch_arrow_table()
                    cur.close()
                    return (time.perf_counter() - start) * 1000

                sent = 0
                for name, sql in QUERIES.items():
                    first, warm = run(sql), run(sql)
                    after = []
                    for _ in range(args.appends):
                        body = (json.dumps(tetragon_exec(sent)) + "\n").encode()
                        sent += 1
                        req = urllib.request.Request(
                            f"http://127.0.0.1:{http}/v1/ingest/tetragon", data=body,
                            method="POST", headers={"Authorization": f"Bearer {token}"})
                        if urllib.request.urlopen(req).status != 200:
                            sys.exit("ingest refused the event")
                        after.append(run(sql))
                    print(f"{name}: first {first:.0f} ms, warm {warm:.1f} ms, "
                          f"after each new event {', '.join(f'{a:.0f}' for a in after)} ms")
                conn.close()
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
