#!/usr/bin/env bash
# Build and run the workspace test suite for one target with Debian's rustc-web 1.85.
#
#   crossbuild/test.sh TARGET [cargo test args...]
#   TARGET: amd64|x86_64  arm64|aarch64  ppc64le|ppc64el|powerpc64le  s390x
#
# amd64 is the native build with the real 1.85 toolchain (the "builds with 1.85" check);
# the others cross-compile with Debian's cross gcc and run the library's tests and the agent's
# unit tests under qemu-user-static (runner in crossbuild/cargo-config.toml); with extra cargo
# arguments, `cargo test --workspace ARGS`. s390x is big-endian.
#
# Environment:
#   WORKSPACE=/path      workspace to test (default: the repository holding this script)
#   FERRY_CROSS_TARGET_DIR or CARGO_TARGET_DIR   default: $WORKSPACE/target/cross, with one directory per target in it (kept apart
#                        from rustup builds; tests/run.sh keeps one under /var/cache across runs)
#   FERRY_*              passed through to the tests unchanged.
#   FERRY_UNDER_QEMU=1   exported by this script for emulated targets. Tests that cannot work
#                        under qemu-user (loop devices, FIFREEZE/BLK* ioctls, spawning another
#                        target binary, which needs binfmt) must check it and return early:
#                            if std::env::var_os("FERRY_UNDER_QEMU").is_some() { return; }
#   PROPTEST_CASES       48 under qemu unless set (256, proptest's default, natively).
#   FERRY_QEMU_RUNNER    exported too: the qemu command line ("qemu-s390x-static -L ...") so a
#                        test that must exec a target binary can prefix it.
# Run crossbuild/install.sh once first (as root).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKSPACE="${WORKSPACE:-$(dirname "$HERE")}"
. "$HERE/targets.sh"

usage() { sed -n '2,8p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
cross_target "$1" || usage
shift

[ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || { echo "test.sh: run crossbuild/install.sh first" >&2; exit 1; }
[ -f "$WORKSPACE/Cargo.toml" ] || { echo "test.sh: no Cargo.toml in $WORKSPACE" >&2; exit 1; }

# cross_cargo (targets.sh) runs only the Debian toolchain, in this target directory.
export FERRY_CROSS_TARGET_DIR; FERRY_CROSS_TARGET_DIR="${FERRY_CROSS_TARGET_DIR:-${CARGO_TARGET_DIR:-$WORKSPACE/target/cross}}"
# CARGO_HOME stays ~/.cargo: the registry cache is shared with rustup's cargo.
if [ -n "$QEMU" ]; then
  # Property tests look for byte-order and width mistakes, which any case shows; under emulation
  # each case costs 10-50x, so fewer cases than natively (PROPTEST_CASES overrides).
  export PROPTEST_CASES="${PROPTEST_CASES:-48}"
  export FERRY_UNDER_QEMU=1
  export FERRY_QEMU_RUNNER="$QEMU"
  export QEMU_LD_PREFIX="${QEMU#* -L }"
fi

echo "test.sh: $(/usr/bin/rustc -V) | target $T | workspace $WORKSPACE | ${QEMU:-native}" >&2
cd "$WORKSPACE"
start=$(date +%s)
rc=0
if [ -n "$QEMU" ] && [ $# -eq 0 ]; then
  # Under emulation: the whole library (units, properties, golden fixtures, concurrency) and the
  # engine's unit tests. The agent's end-to-end test binaries are not built: they start the
  # ferry binary (no binfmt here) or loop devices, so they could only skip, at the cost of
  # compiling the largest test binaries three times. The cross-endian exchange runs the binaries.
  case "$T" in s390x-* | powerpc64le-*) expect=1 ;; *) expect= ;; esac
  # FERRY_CROSS_SCOPE=lib: the library only (the format's code paths), not the engine's units.
  # One cargo run for both (scope all): the engine's units named apart would resolve the
  # dependencies' features anew and compile them again (targets.sh, cross_pkgs).
  scope=${FERRY_CROSS_SCOPE:-all}
  pkgs=$(cross_pkgs "$scope") && suite=$(cross_suite "$scope" "$WORKSPACE") || usage
  # --no-fail-fast: a failure in one test binary must not hide the others' results.
  # shellcheck disable=SC2086 # zero or more flags each (targets.sh)
  FERRY_EXPECT_KERNEL=$expect cross_cargo test --no-fail-fast --target "$T" $pkgs $suite || rc=$?
  # qemu's default CPU has the vector unit, so the suite above ran BLAKE3 through the 4-way
  # kernel and AES-GCM through csrc/gcm.c (FERRY_EXPECT_KERNEL makes the tests check that the
  # CPU check said yes); those tests again where the kernels must not be used (s390x without
  # the vector facility) and on the oldest CPU they are built for (POWER8).
  # Each entry: CPU model, then whether the kernels must be chosen on it.
  case "$T" in
    s390x-*)       cpus="max,vx=off:0" ;;
    powerpc64le-*) cpus="power8:1 power10:1" ;;
    *)             cpus="" ;;
  esac
  for entry in $cpus; do
    echo "test.sh: BLAKE3 and AES-GCM tests with QEMU_CPU=${entry%:*}" >&2
    # shellcheck disable=SC2086
    QEMU_CPU="${entry%:*}" FERRY_EXPECT_KERNEL="${entry##*:}" cross_cargo test --target "$T" \
      $pkgs --lib -- hash:: crypto:: || rc=$?
  done
else
  cross_cargo test --workspace --target "$T" "$@" || rc=$?
fi
echo "test.sh: $T finished with exit $rc in $(( $(date +%s) - start ))s" >&2
exit "$rc"
