#!/usr/bin/env bash
# insn-count.sh -- guest instructions per MiB of BLAKE3 (each path) and AES-256-GCM under qemu:
# the proxy for speed on IBM Power and Z when no such machine is at hand (emulated time means
# nothing). Dynamic counts: qemu-user runs one instruction per translation block (-singlestep)
# and logs every block executed (-d exec,nochain); the count at 1 MiB minus the count at 0 bytes
# (start-up, allocation of the input) is the primitive's. The input is made by the program, so
# its generation is counted too: about 4 instructions per byte, the same for every path (the
# "baseline" row measures it, to subtract by eye).
#
#   benches/insn-count.sh [TARGET...]   TARGET: s390x ppc64le arm64 (default: s390x ppc64le)
#   QEMU_CPU_s390x / QEMU_CPU_ppc64le   CPU models (default: qemu's default, which has the vector
#                                       facility / VSX; "max,vx=off" shows s390x without it)
# Needs crossbuild/install.sh; builds repo-format/examples/insn_count.rs in release with rustc 1.85.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
MIB=$((1 << 20))
export PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR=${FERRY_CROSS_TARGET_DIR:-/var/cache/ferry-build/cross}
unset RUSTUP_TOOLCHAIN
fifo=$(mktemp -u /tmp/insn-count.XXXXXX)
trap 'rm -f "$fifo"' EXIT

# count QEMU... -- ARGS: guest instructions of one run.
count() {
  rm -f "$fifo"; mkfifo "$fifo"
  local out; out=$(mktemp)
  (grep -c '^Trace' < "$fifo" > "$out") &
  "$@" -singlestep -d exec,nochain -D "$fifo" "$exe" "${args[@]}" > /dev/null
  wait
  cat "$out"; rm -f "$out"
}

for target in "${@:-s390x ppc64le}"; do
  for t in $target; do
    case $t in
      s390x)   T=s390x-unknown-linux-gnu;       Q=(qemu-s390x-static -L /usr/s390x-linux-gnu); cpu=${QEMU_CPU_s390x:-} ;;
      ppc64le) T=powerpc64le-unknown-linux-gnu; Q=(qemu-ppc64le-static -L /usr/powerpc64le-linux-gnu); cpu=${QEMU_CPU_ppc64le:-} ;;
      arm64)   T=aarch64-unknown-linux-gnu;     Q=(qemu-aarch64-static -L /usr/aarch64-linux-gnu); cpu=${QEMU_CPU_arm64:-} ;;
      *) echo "insn-count.sh: unknown target $t" >&2; exit 2 ;;
    esac
    (cd "$here" && /usr/bin/cargo build -q --release --target "$T" --config crossbuild/cargo-config.toml \
      -p ferry-repo-format --example insn_count)
    exe=$CARGO_TARGET_DIR/$T/release/examples/insn_count
    [ -n "$cpu" ] && Q+=(-cpu "$cpu")
    echo "== $t (${cpu:-qemu default cpu}): guest instructions per MiB"
    for row in "baseline crate" "hash crate" "hash kernel4" "keyed crate" "keyed kernel4" "aes-gcm crate" "aes-gcm kernel"; do
      read -r prim path <<< "$row"
      export FERRY_BLAKE3=$path FERRY_AES=$path
      args=("$prim" 0); zero=$(count "${Q[@]}")
      args=("$prim" "$MIB"); one=$(count "${Q[@]}")
      args=("$prim" "$MIB"); via=$("${Q[@]}" "$exe" "${args[@]}" | sed 's/.* via \(.*\): ..$/\1/')
      printf '  %-8s %-34s %12d instructions/MiB  (%.2f per byte)\n' "$prim" "$via" $((one - zero)) \
        "$(awk -v a="$one" -v b="$zero" 'BEGIN {print (a - b) / 1048576}')"
    done
    unset FERRY_BLAKE3 FERRY_AES
  done
done
