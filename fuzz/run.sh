#!/usr/bin/env bash
# Builds the fuzz targets, seeds their corpora (fuzz/seed.py) and runs each for SECONDS,
# printing its exec count; a crash, leak, timeout or out-of-memory fails the run and leaves
# its input in fuzz/artifacts/TARGET/.
#
# usage: fuzz/run.sh SECONDS [TARGET...]   (all targets when none is named)
# Needs a nightly toolchain, cargo-fuzz and a built ktrail binary (target/debug/ktrail, or
# $KTRAIL_BIN) for the seeds.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
ktrail=${KTRAIL_BIN:-../target/debug/ktrail}
samples=${KTRAIL_SAMPLES:-../../shared/samples}

# Unoptimised and without AddressSanitizer: Rust's own checks (bounds, overflow, debug
# assertions) stay on, and the build is the debug build's size, not the 60-minute
# sanitized release build of all of DataFusion on two cores. `FUZZ_FLAGS` changes it.
flags=(${FUZZ_FLAGS:---dev -s none})
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz build: $(du -sh target | cut -f1) in fuzz/target, $(df -h --output=avail . | tail -1 | tr -d ' ') free"
[ -d corpus ] || python3 seed.py "$ktrail" "$samples"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  # -timeout: one input over 10 s is a hang; -rss_limit_mb: over 2 GiB is a failure.
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" -- -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    # The cause first (a backtrace pushes it out of the tail), then the tail.
    grep -m3 -A2 -E 'panicked at|memory allocation of|ERROR: libFuzzer|ERROR: AddressSanitizer' "$log" | cut -c1-400 || true
    tail -40 "$log" | cut -c1-400
    echo "fuzz $t: FAILED (input in fuzz/artifacts/$t/)"
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "fuzz $t: $execs execs in ${seconds}s, 0 crashes, corpus $(ls "corpus/$t" | wc -l)"
  rm -f "$log"
done
