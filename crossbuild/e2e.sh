#!/usr/bin/env bash
# e2e.sh TARGET -- the real `ferry` binary of another architecture through the end-to-end tests:
# the native (x86_64) test binaries run as usual, and every `ferry` they start is TARGET's debug
# build under qemu-user (FERRY_TEST_BIN points at a wrapper that execs it). So arm64, ppc64le and
# s390x builds meet the same checks as the native one, on real files, real loop devices and
# ext4, without cross-compiling the test binaries themselves. The set (what CI runs per target,
# about 3 minutes each under qemu): backup/restore fidelity (every file type and metadata), the
# hostile-snapshot, hostile-repository and hostile-target tests (but the key-file flood, which
# tests Argon2 costs, not the architecture), and two disk round trips (ext4 on a loop device to
# another device with fsck, 256 MiB instead of the native run's 1 GiB; a partitioned raw image
# bit for bit).
#   TARGET: s390x arm64 ppc64le.  Needs crossbuild/install.sh; run as root (loop devices).
#   FERRY_E2E_ALL=1 runs every cli test whose name has fidelity or hostile, and every disk test
#   (the 16 GiB sparse image takes several minutes under qemu).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WS="$(dirname "$HERE")"
. "$HERE/targets.sh"
case "${1:-}" in amd64|x86_64|"") false ;; *) cross_target "$1" ;; esac ||
  { echo "usage: e2e.sh s390x|arm64|ppc64le" >&2; exit 2; }
cd "$WS"
# The same build as crossbuild/prebuild.sh's (which tests/run.sh starts early, in the background).
cross_cargo build -q --target "$T" $(cross_pkgs all) --bin ferry
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
printf '#!/bin/sh\nexec %s %s "$@"\n' "$QEMU" "$(cross_dir)/$T/debug/ferry" > "$W/ferry"
chmod +x "$W/ferry"
"$W/ferry" version >&2
unset FERRY_UNDER_QEMU FERRY_QEMU_RUNNER
export FERRY_TEST_BIN="$W/ferry"
rc=0
# --workspace: reuses tests/run.sh's test build (targets.sh, native_tests).
if [ "${FERRY_E2E_ALL:-0}" = 1 ]; then
  cargo test --workspace --test cli -- fidelity:: hostile || rc=$?
  cargo test --workspace --test disk || rc=$?
else
  cargo test --workspace --test cli -- fidelity::fidelity_round_trip hostile \
    --skip planted_key_files_cost_bounded_time_and_memory || rc=$?
  cargo test --workspace --test disk -- ext4_on_a_loop_device_round_trips_to_another_device \
    raw_image_with_partition_table_round_trips_bit_for_bit || rc=$?
fi
echo "e2e.sh: $T finished with exit $rc" >&2
exit "$rc"
