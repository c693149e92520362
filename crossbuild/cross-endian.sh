#!/usr/bin/env bash
# cross-endian.sh [TARGET] -- the format is independent of byte order and architecture, for
# real: a repository written by the native (x86_64, little-endian) ferry is restored by the
# TARGET build (default s390x, big-endian) under qemu, and one written by the TARGET build is
# restored natively; both restores are verified (--verify) and compared with the source by the
# end-to-end tests' comparator (agent/tests/common/tree.rs): names, types, modes, owners, mtimes
# in ns, symlink targets, xattrs of every namespace (user, trusted, security, ACLs), content,
# hardlinks and sparseness. The source is the fidelity test's tree plus an xattr subtree, built
# natively by the cli test binary (`fidelity::cross_endian_build_tree`). Run as root (owners,
# devices, trusted.* xattrs). Needs crossbuild/install.sh (toolchain, qemu). TARGET `native`
# exchanges between two runs of the native build: a check of this script without the toolchain.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WS="$(dirname "$HERE")"
. "$HERE/targets.sh"
case "${1:-s390x}" in
  native) T=native; QEMU="" ;;
  amd64|x86_64) echo "cross-endian.sh: amd64 is the native side (use native)" >&2; exit 2 ;;
  *) cross_target "${1:-s390x}" || { echo "cross-endian.sh: unknown target $1" >&2; exit 2; } ;;
esac
cd "$WS"
# --workspace: reuses tests/run.sh's test build, which also makes the native ferry binary
# (target/debug/ferry) the exchange runs (targets.sh, native_tests).
cargo test -q --workspace --test cli --no-run
# The native cli test binary's tools: build the source tree, compare two trees. Exactly one
# test must have run and passed (a renamed tool must not pass by matching nothing).
cli_tool() { # NAME (environment passed through)
  if cargo test -q --workspace --test cli -- --ignored --exact --nocapture "fidelity::$1" >"$W/tool.log" 2>&1 &&
     grep -q '^test result: ok\. 1 passed' "$W/tool.log"; then
    return 0
  fi
  echo "cross-endian: fidelity::$1 failed:" >&2; cat "$W/tool.log" >&2; return 1
}
NATIVE="${CARGO_TARGET_DIR:-$WS/target}/debug/ferry"
if [ "$T" = native ]; then
  CROSS="$NATIVE"
else
  # The same build as crossbuild/prebuild.sh's and e2e.sh's.
  cross_cargo build -q --target "$T" $(cross_pkgs all) --bin ferry
  CROSS="$QEMU $(cross_dir)/$T/debug/ferry"
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export FERRY_PASSWORD=cross-endian FERRY_CACHE_DIR="$W/cache"
unset FERRY_REPOSITORY FERRY_PASSWORD_FILE
FERRY_TREE="$W/src" cli_tool cross_endian_build_tree
passed=0 failed=0
check() { # NAME WRITER READER
  local name=$1 writer=$2 reader=$3 repo="$W/repo-$1" out="$W/out-$1"
  if $writer -q -r "$repo" init --kdf-memory 64 --kdf-iterations 1 \
     && $writer -q -r "$repo" backup "$W/src" \
     && $reader -q -r "$repo" restore latest --target "$out" --verify --allow-devices --keep-setuid \
     && FERRY_TREE_A="$W/src" FERRY_TREE_B="$out" cli_tool cross_endian_compare_trees; then
    echo "cross-endian: $name ok"; passed=$((passed + 1))
  else
    echo "cross-endian: $name FAILED"; failed=$((failed + 1))
  fi
}
check "x86_64-to-$T" "$NATIVE" "$CROSS"
check "$T-to-x86_64" "$CROSS" "$NATIVE"
echo "cross-endian: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
