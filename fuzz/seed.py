#!/usr/bin/env python3
"""Builds the fuzz targets' seed corpora in fuzz/corpus/<target>/.

From ../shared/samples (real producers' records, rules and manifests; see its README for
provenance) and from what a ktrail binary writes: `ktrail gen` output, and the MANIFEST, WAL
files and index files of a store it ingests that output into.

usage: fuzz/seed.py KTRAIL_BINARY SAMPLES_DIR
"""

import hashlib
import pathlib
import re
import struct
import subprocess
import sys
import socket
import tempfile
import time
import urllib.request

ktrail, samples = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2]).resolve()
corpus = pathlib.Path(__file__).resolve().parent / "corpus"
# libFuzzer mutates small inputs best; a seed above this is cut into records or skipped.
MAX_SEED = 64 * 1024


def add(target, data):
    if isinstance(data, str):
        data = data.encode()
    if not data or len(data) > MAX_SEED:
        return
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def lines(path, limit=200):
    out = [l for l in path.read_text().splitlines() if l.strip()]
    return out[:limit]


with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    gen = tmp / "gen"
    subprocess.run([ktrail, "gen", "--events", "3000", "--out", gen], check=True,
                   capture_output=True)

    # Producers' records.
    for f in sorted((samples / "k8s-audit").rglob("*.json")):
        add("audit", f.read_bytes())
    for l in lines(gen / "audit.log") if (gen / "audit.log").exists() else []:
        add("audit", l)
    for l in lines(gen / "falco.jsonl"):
        add("falco_alert", l)
    for l in lines(samples / "tetragon" / "testdata_events.jsonl") + lines(gen / "tetragon.jsonl"):
        add("tetragon", l)
    add("tetragon", (samples / "tetragon" / "docs_filename-access_process_kprobe.json").read_bytes())
    for f in sorted((samples / "tracee").glob("*.json")):
        add("tracee", f.read_bytes())
    for f in sorted(gen.glob("inventory-*.json")):
        text = f.read_text()
        add("k8s_objects", text if len(text) <= MAX_SEED else text[: MAX_SEED // 2])
    for target in ["audit", "falco_alert", "tetragon", "tracee", "k8s_objects"]:
        for seed in sorted((corpus / target).iterdir())[:40]:
            add("any_record", seed.read_bytes())

    # Rules, conditions and manifests.
    for f in sorted((samples / "falco-rules").glob("*.yaml")):
        text = f.read_text()
        # Whole files are too big to mutate well: one seed per top-level item too.
        for item in re.split(r"\n(?=- )", text):
            add("falco_rules", item)
        for cond in re.findall(r"condition: >?\s*\n?((?:.+\n)+?)(?=\s*\w+:|\Z)", text):
            add("falco_condition", " ".join(cond.split()))
    for f in sorted((samples / "manifests").rglob("*.yaml")):
        add("policy_manifest", f.read_bytes())
        add("k8s_objects", f.read_bytes())

    # A store's own files: its WAL before a flush, its MANIFEST and index files after one.
    data = tmp / "data"
    subprocess.run([ktrail, "ingest", "--data", data, gen], check=True, capture_output=True)
    add("manifest", (data / "MANIFEST").read_bytes())
    add("chain_file", (data / "CHAIN").read_bytes())
    for f in sorted((data / "segments").rglob("*")):
        if f.is_file() and not f.name.endswith(".parquet"):
            add("segment_index", f.read_bytes())
    # The WAL holds records only until a flush: post to a server and kill it before one.
    wal_data = tmp / "wal-data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([ktrail, "--data", wal_data, "serve", "--http", f"127.0.0.1:{port}",
                               "--grpc", "127.0.0.1:0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        for name, kind in [("falco.jsonl", "falco"), ("tetragon.jsonl", "tetragon")]:
            records = lines(gen / name, 300)
            # Small batches: each is one WAL record, small enough to seed the IPC targets.
            for i in range(0, len(records), 15):
                body = "\n".join(records[i : i + 15]).encode()
                url = f"http://127.0.0.1:{port}/v1/ingest/{kind}"
                urllib.request.urlopen(url, body, timeout=30)
    finally:
        server.kill()
        server.wait()
    for f in sorted((wal_data / "wal").glob("*")):
        raw = f.read_bytes()
        add("wal_file", raw[:MAX_SEED])
        off = 16
        while off + 16 <= len(raw):
            flen = struct.unpack_from("<I", raw, off)[0]
            payload = raw[off + 16 : off + 16 + flen]
            off += 16 + flen
            add("wal_payload", payload)
            if payload[:1] == b"\x01":
                ipc = subprocess.run(["zstd", "-dc"], input=payload[9:], check=True,
                                     capture_output=True).stdout
                add("arrow_ipc", ipc)
                add("wal_payload", b"\x00" + ipc)

for d in sorted(corpus.iterdir()):
    print(f"{d.name}: {len(list(d.iterdir()))} seeds")
