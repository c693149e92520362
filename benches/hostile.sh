#!/usr/bin/env bash
# hostile.sh -- what a hostile repository or target costs a ferry binary: peak RSS, wall time,
# exit code, and whether anything outside the target was written. Run it with two binaries to
# compare (e.g. a build before and after a fix):
#
#   benches/hostile.sh BIN [BIN...]
#
# Scenarios (each on a fresh local repository under $WORK, default /tmp/ferry-hostile):
#   junk-index    a 2 GiB junk object under a valid index name, then `restore latest`
#   planted-keys  eight key files with Argon2 m = 1 GiB, t = 4 beside the real (cheap) one, then
#                 `snapshots` with the right password, and with a wrong one
#   disk-symlink  a disk snapshot restored into a directory holding a symlink of the disk's name to
#                 a loop device outside the target (needs root and losetup)
# Output: one line per scenario and binary: name, binary, exit code, peak RSS (MiB), wall (s),
# and for disk-symlink whether the device outside was written.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
WORK=${WORK:-/tmp/ferry-hostile}
export FERRY_PASSWORD=hostile-bench

measure() { # bin args... -> "exit=N rss=MiB wall=s"
  /usr/bin/time -o "$WORK/.time" -f '%x %M %e' "$@" >/dev/null 2>&1 || true
  tail -1 "$WORK/.time" | awk '{ printf "exit=%s rss=%.0fMiB wall=%ss", $1, $2 / 1024, $3 }'
}

fresh() { # bin -> repo dir with one snapshot of a small tree
  local bin=$1
  rm -rf "$WORK"; mkdir -p "$WORK/src"
  head -c 1000000 /dev/urandom > "$WORK/src/f"
  export FERRY_REPOSITORY=$WORK/repo FERRY_CACHE_DIR=$WORK/cache
  "$bin" init --kdf-memory 64 --kdf-iterations 1 >/dev/null
  "$bin" backup "$WORK/src" >/dev/null
}

for bin in "$@"; do
  fresh "$bin"
  hex=$(printf '5a%.0s' $(seq 32))
  truncate -s 2G "$WORK/repo/index/$hex"
  echo "junk-index $bin $(measure "$bin" restore latest --target "$WORK/t")"

  fresh "$bin"
  real=$(ls "$WORK/repo/keys")
  for i in 1 2 3 4 5 6 7 8; do
    python3 - "$WORK/repo/keys/$real" "$WORK/repo/keys" "$i" <<'EOF'
import sys, struct, hashlib
src, keys, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
k = bytearray(open(src, 'rb').read())
k[12:16] = struct.pack('<I', 1 << 20)  # m = 1 GiB
k[16:20] = struct.pack('<I', 4)        # t = 4
k[24] = i
try:
    from blake3 import blake3
    name = blake3(bytes(k)).hexdigest()
except ImportError:
    name = None
if name is None:
    sys.exit("pip install blake3 (key file names are BLAKE3 hashes)")
open(f"{keys}/{name}", 'wb').write(k)
EOF
  done
  echo "planted-keys $bin $(measure "$bin" snapshots)"
  echo "planted-keys-wrong-password $bin $(FERRY_PASSWORD=wrong measure "$bin" snapshots)"

  if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null; then
    fresh "$bin"
    head -c 4194304 /dev/urandom > "$WORK/vm.img"
    "$bin" backup --disk "$WORK/vm.img" >/dev/null
    head -c 8388608 /dev/urandom > "$WORK/victim.raw"
    sum_before=$(sha256sum < "$WORK/victim.raw")
    dev=$(losetup -f --show "$WORK/victim.raw")
    mkdir -p "$WORK/target"; ln -s "$dev" "$WORK/target/vm.img"
    r=$(measure "$bin" restore latest --target "$WORK/target")
    losetup -d "$dev"
    if [ "$(sha256sum < "$WORK/victim.raw")" = "$sum_before" ]; then w="untouched"; else w="WRITTEN"; fi
    echo "disk-symlink $bin $r device-outside-target=$w"
  fi
done
rm -rf "$WORK"
