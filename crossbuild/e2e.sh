#!/usr/bin/env bash
# e2e.sh TARGET -- the real `ferry` binary of another architecture through the end-to-end tests:
# the native (x86_64) test binaries run as usual, and every `ferry` they start is TARGET's debug
# build under qemu-user (FERRY_TEST_BIN points at a wrapper that execs it). So arm64, ppc64le and
# s390x builds meet the same checks as the native one, on real files, real loop devices and
# ext4, without cross-compiling the test binaries themselves. The set (what CI runs per target,
# about 3 minutes each under qemu): backup/restore fidelity (every file type and metadata), the
# hostile-snapshot, hostile-repository and hostile-target tests (but the key-file flood, which
# tests Argon2 costs, not the architecture), and two disk round trips (ext4 on a loop device to
# another device with fsck; a partitioned raw image bit for bit).
#   TARGET: s390x arm64 ppc64le.  Needs crossbuild/install.sh; run as root (loop devices).
#   FERRY_E2E_ALL=1 runs every cli test whose name has fidelity or hostile, and every disk test
#   (the 16 GiB sparse image takes several minutes under qemu).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WS="$(dirname "$HERE")"
case "${1:-}" in
  s390x) T=s390x-unknown-linux-gnu; Q="qemu-s390x-static -L /usr/s390x-linux-gnu" ;;
  arm64|aarch64) T=aarch64-unknown-linux-gnu; Q="qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
  ppc64le) T=powerpc64le-unknown-linux-gnu; Q="qemu-ppc64le-static -L /usr/powerpc64le-linux-gnu" ;;
  *) echo "usage: e2e.sh s390x|arm64|ppc64le" >&2; exit 2 ;;
esac
cd "$WS"
XDIR="${FERRY_CROSS_TARGET_DIR:-$WS/target/cross}"
( export PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$XDIR"
  unset RUSTUP_TOOLCHAIN
  /usr/bin/cargo build -q --target "$T" --config "$HERE/cargo-config.toml" -p ferry-agent --bin ferry )
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
printf '#!/bin/sh\nexec %s %s "$@"\n' "$Q" "$XDIR/$T/debug/ferry" > "$W/ferry"
chmod +x "$W/ferry"
"$W/ferry" version >&2
unset FERRY_UNDER_QEMU FERRY_QEMU_RUNNER
export FERRY_TEST_BIN="$W/ferry"
rc=0
if [ "${FERRY_E2E_ALL:-0}" = 1 ]; then
  cargo test -p ferry-agent --test cli -- fidelity:: hostile || rc=$?
  cargo test -p ferry-agent --test disk || rc=$?
else
  cargo test -p ferry-agent --test cli -- fidelity::fidelity_round_trip hostile \
    --skip planted_key_files_cost_bounded_time_and_memory || rc=$?
  cargo test -p ferry-agent --test disk -- ext4_on_a_loop_device_round_trips_to_another_device \
    raw_image_with_partition_table_round_trips_bit_for_bit || rc=$?
fi
echo "e2e.sh: $T finished with exit $rc" >&2
exit "$rc"
