#!/usr/bin/env bash
# fuzz.sh -- the libFuzzer targets of repo-format/fuzz (one per decoder of stored bytes): installs
# cargo-fuzz if missing, builds every target (AddressSanitizer, debug assertions, optimized), and
# runs each in turn, one process at a time, for a bounded time from its seeds and working corpus.
#   FUZZ_SECONDS  seconds per target (default 20)
#   FUZZ_RUNS     also stop a target after this many executions (default -1: no limit)
#   FUZZ_TARGETS  targets to run (default: every target of the fuzz crate)
#   FERRY_FUZZ_TARGET_DIR  build directory (default repo-format/fuzz/target)
#   FUZZ_LOGS     keep each target's libFuzzer output as $FUZZ_LOGS/<target>.log (default: not kept)
# Prints one line per target (executions, exec/s, coverage) and `N passed, N failed`. Exits
# non-zero if any target crashed, failed an assertion, timed out or went over the memory limits;
# the input that did it is kept in repo-format/fuzz/artifacts/<target>/. New corpus entries
# accumulate in repo-format/fuzz/corpus/<target>/ (not committed).
set -euo pipefail
logs=${FUZZ_LOGS:+$(mkdir -p "$FUZZ_LOGS" && cd "$FUZZ_LOGS" && pwd)}
cd "$(dirname "$0")/../repo-format"
export CARGO_TERM_COLOR=never
# cargo-fuzz passes -Z flags (sanitizers, coverage instrumentation): allowed on the stable toolchain.
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-20}
runs=${FUZZ_RUNS:--1}
# 0.13.2 builds with the rustc 1.95 installed here; pinned so the flags below stay valid.
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
  cargo install --locked "cargo-fuzz@$cargo_fuzz_version"
fi
build=(-O -a) # release, with debug assertions and overflow checks; AddressSanitizer is the default
[ -z "${FERRY_FUZZ_TARGET_DIR:-}" ] || build+=(--target-dir "$FERRY_FUZZ_TARGET_DIR")
nice -n 10 cargo fuzz build "${build[@]}"
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
if [ -n "$logs" ]; then
  log=$logs
else
  log=$(mktemp -d)
  trap 'rm -rf "$log"' EXIT
fi
passed=0
failed=0
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  # -rss_limit_mb / -malloc_limit_mb: a decoder that allocates far more than its input justifies
  # is a finding (the targets also bound each decode's peak heap against its input length).
  status=0
  nice -n 10 cargo fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -runs="$runs" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10 \
    -print_final_stats=1 >"$log/$t.log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log/$t.log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log/$t.log" | tail -1)
  # (no match must not end the script under pipefail: a target that dies at once is a finding)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log/$t.log" | tail -1 || true)
  if [ "$status" = 0 ]; then
    passed=$((passed + 1))
    echo "$t: ok, ${execs:-?} executions, ${speed:-?} exec/s, ${cov:-cov: ?}"
  else
    failed=$((failed + 1))
    echo "$t: FAILED (exit $status), ${execs:-?} executions, ${cov:-cov: ?}"
    # What went wrong (the panic message follows its location), and where the input was kept.
    grep -A1 -E 'panicked at' "$log/$t.log" | head -2 | sed 's/^/  /'
    grep -E '^==[0-9]+== ?ERROR|^SUMMARY: |Test unit written to' "$log/$t.log" | head -4 | sed 's/^/  /'
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
