#!/usr/bin/env bash
# run.sh -- every test of the project, on a fresh machine of this kind (Debian, root):
# installs what is missing, then runs formatting and lint checks, the whole workspace test suite
# (unit, property, golden-fixture, storage-conformance against a local directory, moto (S3) and
# Azurite (Azure Blob) on loopback, and end-to-end tests of the real binary),
# the libFuzzer targets of every decoder for a few seconds each (tests/fuzz.sh), and the
# cross-architecture builds and tests under qemu with rustc 1.85: s390x (big-endian, plus
# the cross-endian repository exchange), arm64 and ppc64le.
#   FERRY_CROSS  targets to cross-test (default "s390x arm64 ppc64le"; e.g. "s390x"; "none")
#   FUZZ_SECONDS seconds per fuzz target (default 10)
#   STAGE_TIMEOUT_TEST / _FUZZ / _CROSS  seconds a stage may take (defaults 2400 / 1800 / 1500; the
#                fuzz stage runs at low priority beside the tests, so its wall time includes waiting)
# Every stage runs even when one before it failed (a stage that does not compile or times out
# counts as a failure); the summary at the end lists each stage's time and exit status, the
# tests passed, failed and skipped, and the script exits non-zero if anything failed.
# On 2 cores, time is won by overlapping: installing the servers (network, and building
# kube-apiserver with Go) and the cross toolchain runs in the background beside clippy; the
# fuzz stage and the cross builds (crossbuild/prebuild.sh) run at a lower priority while the
# native tests run, which leave CPU idle. Their own times are listed as "background" stages.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
t0=$(date +%s)
stage_start=$t0
stage_name=""
stages=()
step() {
  local now; now=$(date +%s)
  [ -n "$stage_name" ] && stages+=("$(printf '%-48s %5d s' "$stage_name" $(( now - stage_start )))")
  stage_name="$*"; stage_start=$now
  echo; echo "=== $* ($(( now - t0 )) s)"
}
# failed_stage NAME RC: a stage's command failed as a whole (did not build, timed out, crashed).
stage_failures=0
failed_stage() { echo "run.sh: $1 exited $2 (124: timed out)"; stage_failures=$((stage_failures + 1)); }

step "toolchain"
command -v cargo >/dev/null || { echo "run.sh: cargo (rustup) is needed" >&2; exit 1; }
cargo --version
# C compiler (zstd, SQLite), and the tools the disk tests drive: losetup, mkfs.ext4, fsck, sfdisk;
# prlimit caps the memory of the hostile-repository tests.
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v losetup >/dev/null || need+=(util-linux)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v prlimit >/dev/null || need+=(util-linux)
command -v pgrep >/dev/null || need+=(procps)
# The TLS end-to-end test makes its throwaway CA and server certificate with openssl.
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# Background jobs: bg NAME NICE CMD... runs CMD at nice NICE with its output in $BG/NAME.log,
# then writes its time and exit status ($BG/NAME.time, $BG/NAME.rc); await NAME waits for it,
# prints its log and returns its exit status.
BG=$(mktemp -d /tmp/ferry-run.XXXXXX)
bg_pids=()
# A background job and everything it started (a chain's cargo build would outlive its shell).
# The parent first, so it starts nothing more; its children were listed before.
kill_tree() {
  local c kids
  kids=$(pgrep -P "$1" || true)
  kill "$1" 2>/dev/null || true
  for c in $kids; do kill_tree "$c"; done
}
cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill_tree "$p"; done
  bash tests/servers.sh stop >/dev/null 2>&1 || true
  rm -rf "$BG" # the jobs' logs were printed when awaited (12 runs' directories had piled up)
}
trap cleanup EXIT
run_logged() { # NAME NICE CMD...
  local name=$1 nice=$2 s rc=0; shift 2
  : >"$BG/$name.started"
  s=$(date +%s)
  nice -n "$nice" "$@" >"$BG/$name.log" 2>&1 || rc=$?
  echo $(( $(date +%s) - s )) >"$BG/$name.time"
  echo "$rc" >"$BG/$name.rc"
}
bg() { : >"$BG/$1.started"; run_logged "$@" & bg_pids+=($!); }
await() { # NAME
  [ -f "$BG/$1.started" ] || { echo "run.sh: no background job $1 was started"; return 127; }
  while [ ! -f "$BG/$1.rc" ]; do sleep 2; done
  [ -f "$BG/$1.awaited" ] && return "$(cat "$BG/$1.rc")" # listed once
  : >"$BG/$1.awaited"
  cat "$BG/$1.log"
  stages+=("$(printf '%-48s %5d s' "(background) $1" "$(cat "$BG/$1.time")")")
  return "$(cat "$BG/$1.rc")"
}

# Background, beside fmt and clippy: the servers, then the cross toolchain, then each cross
# target's builds. The servers first: the native tests need them. Priorities follow need: the
# servers' install as the foreground (it builds kube-apiserver at nice 10 itself), fuzz at
# 15, the cross builds at 19 (their results are needed last).
cross_targets=${FERRY_CROSS-s390x arm64 ppc64le}
[ "$cross_targets" = none ] && cross_targets=""
# The 1.85 cross builds keep their target directory across runs on this machine (like the
# servers under /var/cache): cargo rebuilds what changed, and a second run costs minutes, not
# the half hour of compiling every dependency for three targets. FERRY_CROSS_TARGET_DIR=""
# builds inside the clone instead. One directory per checkout path: cargo trusts file times for
# the workspace's own crates, so a directory shared with another checkout that built later would
# pass off that checkout's build-script output (or objects) as this one's.
cross_key=$(pwd -P | sha256sum | cut -c1-12)
export FERRY_CROSS_TARGET_DIR=${FERRY_CROSS_TARGET_DIR-/var/cache/ferry-build/cross-$cross_key}
[ -n "$FERRY_CROSS_TARGET_DIR" ] && mkdir -p "$FERRY_CROSS_TARGET_DIR"
# The native builds the same way (clippy's, the tests', and the fuzz targets' own, which use
# other compiler flags): in a fresh clone they cost about 11 minutes of the critical path and
# 10 of background CPU. FERRY_TARGET_DIR="" builds inside the clone.
FERRY_TARGET_DIR=${FERRY_TARGET_DIR-/var/cache/ferry-build/native-$cross_key}
if [ -n "$FERRY_TARGET_DIR" ]; then
  mkdir -p "$FERRY_TARGET_DIR/fuzz"
  export CARGO_TARGET_DIR=$FERRY_TARGET_DIR FERRY_FUZZ_TARGET_DIR=$FERRY_TARGET_DIR/fuzz
fi
# s390x (big-endian) runs the engine's unit tests too; the little-endian targets run the
# library's suite only (the format's code paths). crossbuild/test.sh's FERRY_CROSS_SCOPE and
# crossbuild/prebuild.sh's part.
cross_scope() { if [ "$1" = s390x ]; then echo all; else echo lib; fi; }
# Every job of the chain is registered before it starts (so it can be awaited at once), and
# every one ends with a status, run or not. Order = the order the stages below need them:
# s390x's library and binary, then every other target's library, then their binaries.
chain_jobs="servers-install"
cross_builds=""
for t in $cross_targets; do
  cross_builds+=" lib-$t"
  [ "$t" != s390x ] || cross_builds+=" bin-$t"
done
for t in $cross_targets; do [ "$t" = s390x ] || cross_builds+=" bin-$t"; done
[ -z "$cross_targets" ] || chain_jobs+=" cross-install$(printf ' cross-build-%s' $cross_builds)"
for j in $chain_jobs; do : >"$BG/$j.started"; done
# The little-endian targets' binaries: each costs a cold build of every dependency (about 8
# minutes on 2 cores) plus 3 minutes under qemu. Past FERRY_E2E_DEADLINE minutes into the run
# (default 45: only a machine that had to install and build everything gets there) their
# builds are not started and their stages are skipped, counted and listed, so a fresh machine
# stays near an hour; crossbuild/e2e.sh TARGET runs one by hand.
past_deadline() { [ $(( $(date +%s) - t0 )) -ge $(( ${FERRY_E2E_DEADLINE:-45} * 60 )) ]; }
setup_chain() {
  run_logged servers-install 0 bash tests/servers.sh install
  [ -n "$cross_targets" ] || return 0
  run_logged cross-install 0 bash crossbuild/install.sh
  local b part t
  for b in $cross_builds; do
    part=${b%%-*} t=${b#*-}
    [ "$part" = lib ] && part=$(cross_scope "$t")
    if [ "$part" = bin ] && [ "$t" != s390x ] && past_deadline; then
      run_logged "cross-build-$b" 0 sh -c 'echo "not built: past FERRY_E2E_DEADLINE (its stage is skipped)"'
    elif [ "$(cat "$BG/cross-install.rc")" = 0 ]; then
      # Its timeout only stops a hung build (at nice 19 its wall time is mostly waiting).
      run_logged "cross-build-$b" 19 timeout -k 30 "${STAGE_TIMEOUT_CROSS_BUILD:-3600}" \
        bash crossbuild/prebuild.sh "$t" "$part"
    else
      run_logged "cross-build-$b" 0 sh -c 'echo "not built: crossbuild/install.sh failed"; exit 1'
    fi
  done
}
setup_chain &
bg_pids+=($!)

step "cargo fmt --check"
cargo fmt --all -- --check || failed_stage "cargo fmt --check" $?

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || failed_stage "cargo clippy" $?

step "cargo test: build (workspace)"
# Built before the servers are awaited: compiling needs no server.
timeout -k 30 "${STAGE_TIMEOUT_TEST:-2400}" cargo test --workspace --no-run 2>&1 | tail -5 || true

# Every decoder of stored bytes under libFuzzer for a short, bounded time (repo-format/fuzz;
# long campaigns: FUZZ_SECONDS=900 FUZZ_RUNS=10000000 bash tests/fuzz.sh), in the background
# while the native tests run.
export FUZZ_SECONDS=${FUZZ_SECONDS:-10}
bg fuzz 15 timeout -k 30 "${STAGE_TIMEOUT_FUZZ:-1800}" bash tests/fuzz.sh

step "object-storage servers on loopback (moto for S3, Azurite for Azure Blob)"
if await servers-install && bash tests/servers.sh start; then
  set -a
  . "${FERRY_SERVERS_DIR:-/var/cache/ferry-servers}/run/env"
  set +a
else
  failed_stage "tests/servers.sh" $?
fi

# Tests that cannot run somewhere record it here (agent/tests/common/skip.rs); counted below.
export FERRY_TEST_SKIPS=/tmp/ferry-test-skips.log
rm -f "$FERRY_TEST_SKIPS"

step "cargo test (workspace)"
# --no-fail-fast: every test binary runs and counts, not only those before the first failure.
rc=0
timeout -k 30 "${STAGE_TIMEOUT_TEST:-2400}" cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/ferry-test.log || rc=$?
passed=$(awk '/^test result:/ {s+=$4} END {print s+0}' /tmp/ferry-test.log)
failed=$(awk '/^test result:/ {s+=$6} END {print s+0}' /tmp/ferry-test.log)
[ "$rc" -eq 0 ] || [ "$failed" -gt 0 ] || failed_stage "cargo test" "$rc"

step "fuzz: each decoder target for ${FUZZ_SECONDS:-10} s (ran in the background)"
await fuzz >/tmp/ferry-fuzz.log || true
cat /tmp/ferry-fuzz.log
fp=$(sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1/p' /tmp/ferry-fuzz.log | tail -1)
ff=$(sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\2/p' /tmp/ferry-fuzz.log | tail -1)
[ -n "$fp" ] || { fp=0; ff=1; echo "fuzz: no result line (build or install failed)"; }
passed=$((passed + fp)); failed=$((failed + ff))

if [ -n "$cross_targets" ]; then
  step "cross: toolchain (crossbuild/install.sh, ran in the background)"
  await cross-install || { failed_stage "crossbuild/install.sh" $?; cross_targets=""; }
fi
# await_build PART TARGET: the background build (crossbuild/prebuild.sh). Not counted if it
# failed: the scripts below build again what is missing, and a build error fails them.
await_build() {
  await "cross-build-$1-$2" ||
    echo "run.sh: the background build ($1) for $2 exited $? (124: timed out); the stage builds what is missing"
}
# count_log LOG SCRIPT: add a cross script's test results; a run without its final line failed.
count_log() {
  local p f
  p=$(awk '/^test result:/ {s+=$4} END {print s+0}' "$1")
  f=$(awk '/^test result:/ {s+=$6} END {print s+0}' "$1")
  grep -q "finished with exit 0" "$1" || f=$((f + 1))
  passed=$((passed + p)); failed=$((failed + f))
}
# e2e TARGET: the target's own ferry binary through the native end-to-end tests (fidelity,
# hostile snapshots, repositories and targets, disk round trips on loop devices), each ferry
# process under qemu-user.
e2e() {
  step "e2e: the $1 ferry binary through the native end-to-end tests"
  await_build bin "$1"
  timeout -k 30 "${STAGE_TIMEOUT_CROSS:-1500}" bash crossbuild/e2e.sh "$1" 2>&1 | tee "/tmp/ferry-e2e-$1.log" || true
  count_log "/tmp/ferry-e2e-$1.log"
}
# The library's whole suite (and on s390x the engine's unit tests) under qemu for every target
# first, s390x's binary next, the other targets' binaries last.
for target in $cross_targets; do
  step "cross: $target (rustc 1.85 + qemu)"
  await_build lib "$target"
  FERRY_CROSS_SCOPE=$(cross_scope "$target") timeout -k 30 "${STAGE_TIMEOUT_CROSS:-1500}" \
    bash crossbuild/test.sh "$target" 2>&1 | tee "/tmp/ferry-cross-$target.log" || true
  count_log "/tmp/ferry-cross-$target.log"
  [ "$target" = s390x ] || continue
  # Repositories written by one architecture, read by the other: where the byte order differs.
  step "cross-endian: x86_64 <-> $target"
  await_build bin "$target"
  if timeout -k 30 "${STAGE_TIMEOUT_CROSS:-1500}" bash crossbuild/cross-endian.sh "$target"; then
    passed=$((passed + 2))
  else
    failed=$((failed + 1))
  fi
  e2e "$target"
done
stage_skips=()
# The little-endian targets' binaries, unless past FERRY_E2E_DEADLINE (see past_deadline; a
# build already under way when the deadline passes is stopped with the other background jobs).
for target in $cross_targets; do
  [ "$target" != s390x ] || continue
  if past_deadline; then
    stage_skips+=("crossbuild/e2e.sh $target: the stage, past FERRY_E2E_DEADLINE=${FERRY_E2E_DEADLINE:-45} minutes (run it by hand)")
    echo "run.sh: ${stage_skips[-1]}"
    continue
  fi
  e2e "$target"
done

step "done"
echo "stages:"
printf '  %s\n' "${stages[@]}"
failed=$((failed + stage_failures))
skipped=0
if [ -s "$FERRY_TEST_SKIPS" ]; then
  skipped=$(wc -l < "$FERRY_TEST_SKIPS")
  echo "skipped tests (counted as passed by cargo, listed here):"
  sort "$FERRY_TEST_SKIPS" | uniq -c | sed 's/^/  /'
fi
passed=$((passed - skipped))
if [ ${#stage_skips[@]} -gt 0 ]; then
  echo "skipped stages (each counted as one skipped):"
  printf '  %s\n' "${stage_skips[@]}"
  skipped=$((skipped + ${#stage_skips[@]}))
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
