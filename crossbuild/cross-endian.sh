#!/usr/bin/env bash
# cross-endian.sh [TARGET] -- the format is independent of byte order and architecture, for
# real: a repository written by the native (x86_64, little-endian) ferry is restored by the
# TARGET build (default s390x, big-endian) under qemu, and one written by the TARGET build is
# restored natively; both restores are verified (--verify) and compared with the source (diff -r).
# Needs crossbuild/install.sh (toolchain, qemu) and a native `cargo build -p ferry-agent`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WS="$(dirname "$HERE")"
case "${1:-s390x}" in
  s390x) T=s390x-unknown-linux-gnu; Q="qemu-s390x-static -L /usr/s390x-linux-gnu" ;;
  arm64|aarch64) T=aarch64-unknown-linux-gnu; Q="qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
  ppc64le) T=powerpc64le-unknown-linux-gnu; Q="qemu-ppc64le-static -L /usr/powerpc64le-linux-gnu" ;;
  *) echo "cross-endian.sh: unknown target $1" >&2; exit 2 ;;
esac
cd "$WS"
cargo build -q -p ferry-agent
( export PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$WS/target/cross"
  /usr/bin/cargo build -q --target "$T" --config "$HERE/cargo-config.toml" -p ferry-agent )
NATIVE="$WS/target/debug/ferry"
CROSS="$Q $WS/target/cross/$T/debug/ferry"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export FERRY_PASSWORD=cross-endian FERRY_CACHE_DIR="$W/cache"
unset FERRY_REPOSITORY FERRY_PASSWORD_FILE
mkdir -p "$W/src/dir"
head -c 3000000 /dev/urandom > "$W/src/dir/random.bin"
for i in $(seq 1 50); do printf 'line %s\n' $(seq 1 $i) > "$W/src/dir/text-$i.txt"; done
truncate -s 20M "$W/src/sparse.img"; printf 'data' | dd of="$W/src/sparse.img" bs=1 seek=10000000 conv=notrunc 2>/dev/null
ln -s dir/text-1.txt "$W/src/link"
passed=0 failed=0
check() { # NAME WRITER READER
  local name=$1 writer=$2 reader=$3 repo="$W/repo-$1" out="$W/out-$1"
  if $writer -q -r "$repo" init --kdf-memory 64 --kdf-iterations 1 \
     && $writer -q -r "$repo" backup "$W/src" \
     && $reader -q -r "$repo" restore latest --target "$out" --verify \
     && diff -r --no-dereference "$W/src" "$out"; then
    echo "cross-endian: $name ok"; passed=$((passed + 1))
  else
    echo "cross-endian: $name FAILED"; failed=$((failed + 1))
  fi
}
check "x86_64-to-$T" "$NATIVE" "$CROSS"
check "$T-to-x86_64" "$CROSS" "$NATIVE"
echo "cross-endian: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
