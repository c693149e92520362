#!/usr/bin/env bash
# Release build of the `ferry` binary (package `agent`) for one target with Debian's rustc-web 1.85.
#
#   crossbuild/build-release.sh TARGET [VARIANT] [extra cargo build args, e.g. --locked]
#
#   TARGET   VARIANTS (tuned builds; the plain build runs on every CPU of that architecture)
#   amd64    -
#   arm64    crypto   -C target-feature=+aes,+sha2,+sha3 (ARMv8 crypto extensions; Graviton,
#                     Ampere, Neoverse. `crypto` itself is not a rustc 1.85 feature name)
#   ppc64le  power9   -C target-cpu=pwr9      power10  -C target-cpu=pwr10
#   s390x    z14      -C target-cpu=z14       z15      -C target-cpu=z15
#
# Output: $WORKSPACE/dist/ferry-<target>[-<variant>]   (e.g. dist/ferry-s390x-z15)
# Environment: WORKSPACE (default: the repository holding this script), CARGO_TARGET_DIR
# (default: target/cross for plain builds, target/cross-<variant> for tuned ones, so that
# switching variants does not rebuild everything), FERRY_BIN (default: ferry).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKSPACE="${WORKSPACE:-$(dirname "$HERE")}"
CONFIG="$HERE/cargo-config.toml"
BIN="${FERRY_BIN:-ferry}"

usage() { sed -n '2,15p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in
  amd64|x86_64)                ARCH=amd64;   T=x86_64-unknown-linux-gnu ;;
  arm64|aarch64)               ARCH=arm64;   T=aarch64-unknown-linux-gnu ;;
  ppc64le|ppc64el|powerpc64le) ARCH=ppc64le; T=powerpc64le-unknown-linux-gnu ;;
  s390x)                       ARCH=s390x;   T=s390x-unknown-linux-gnu ;;
  *) usage ;;
esac
shift
VARIANT=""
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then VARIANT="$1"; shift; fi

FLAGS=()
case "$ARCH:$VARIANT" in
  *:)               ;;
  arm64:crypto)     FLAGS=(-C "target-feature=+aes,+sha2,+sha3") ;;
  ppc64le:power9)   FLAGS=(-C target-cpu=pwr9) ;;
  ppc64le:power10)  FLAGS=(-C target-cpu=pwr10) ;;
  s390x:z14)        FLAGS=(-C target-cpu=z14) ;;
  s390x:z15)        FLAGS=(-C target-cpu=z15) ;;
  *) echo "build-release.sh: unknown variant '$VARIANT' for $ARCH" >&2; usage ;;
esac

[ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || { echo "build-release.sh: run crossbuild/install.sh first" >&2; exit 1; }
export PATH=/usr/bin:/bin
export RUSTC=/usr/bin/rustc
unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WORKSPACE/target/cross${VARIANT:+-$VARIANT}}"

EXTRA=()
if [ ${#FLAGS[@]} -gt 0 ]; then
  if [ -n "${RUSTFLAGS:-}" ]; then
    export RUSTFLAGS="$RUSTFLAGS ${FLAGS[*]}"       # RUSTFLAGS would override config rustflags
  else
    # Target-specific config rustflags: merged with the workspace's own, never applied to
    # build scripts / proc macros (those run on the host).
    q=$(printf '"%s",' "${FLAGS[@]}")
    EXTRA=(--config "target.$T.rustflags=[${q%,}]")
  fi
fi

NAME="ferry-$ARCH${VARIANT:+-$VARIANT}"
echo "build-release.sh: $(/usr/bin/rustc -V) | $T ${FLAGS[*]:-} -> dist/$NAME" >&2
cd "$WORKSPACE"
start=$(date +%s)
/usr/bin/cargo build --release --target "$T" --bin "$BIN" --config "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"} "$@"
mkdir -p dist
cp "$CARGO_TARGET_DIR/$T/release/$BIN" "dist/$NAME"
echo "build-release.sh: dist/$NAME ($(stat -c %s "dist/$NAME") bytes) in $(( $(date +%s) - start ))s" >&2
