#!/usr/bin/env bash
# Archive figures: `ktrail archive` throughput to an S3 server on loopback (moto), and three
# queries over the same store local and archived (a new process per query, then one shell
# process running each three times). Run from the repository root after `cargo build`:
#   benches/archive.sh [EVENTS]        (default 500000; KTRAIL=path/to/ktrail to choose one)
# Needs target/test-venv (made by `.ci/run` or the tests) for moto_server.
set -euo pipefail
events=${1:-500000}
K=${KTRAIL:-$PWD/target/debug/ktrail}
venv=$PWD/target/test-venv/bin
work=$(mktemp -d)
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
port=$("$venv/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/moto_server" -H 127.0.0.1 -p "$port" > moto.log 2>&1 &
moto=$!
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$port/bench" -o /dev/null
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench

"$K" gen --events "$events" -o input > /dev/null
"$K" --data local ingest input > /dev/null
"$K" --data local compact > /dev/null
cp -a local archived
"$K" --data archived archive --to s3://bench/store --older-than 0s

queries=(
  "SELECT count(*) FROM events WHERE raw LIKE '%cards.db%'"
  "SELECT count(*) FROM egress_unknown('billing')"
  "SELECT ts, kind, exe FROM events WHERE exe = '/usr/bin/tcpdump' ORDER BY ts"
)
run() { # store query -> seconds, the rows in out.STORE
  local start; start=$(date +%s.%N)
  "$K" --data "$1" sql --format csv "$2" > "out.$1"
  printf '%.2f' "$(echo "$(date +%s.%N) - $start" | bc)"
}
for q in "${queries[@]}"; do
  echo "== $q"
  echo "local:                     $(run local "$q") $(run local "$q") $(run local "$q") s"
  rm -rf archived/archive-cache
  echo "archived, no index cache:  $(run archived "$q") s"
  echo "archived, index cache:     $(run archived "$q") $(run archived "$q") s"
  cmp -s out.local out.archived && echo "same rows" || echo "ROWS DIFFER"
done
echo "index cache: $(du -sh archived/archive-cache | cut -f1)"
echo "== one shell process each: the first run, then two more"
for q in "${queries[@]}"; do
  for store in local archived; do
    [ "$store" = archived ] && rm -rf archived/archive-cache
    printf '\\timing on\n%s;\n%s;\n%s;\n' "$q" "$q" "$q" | "$K" --data "$store" shell 2>&1 \
      | grep '^Time' | tr '\n' ' '
    echo "<- $store: $q"
  done
done
