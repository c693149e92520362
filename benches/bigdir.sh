#!/usr/bin/env bash
# bigdir.sh -- one directory of ENTRIES entries (default 1,000,000; format version 3 stores it in
# parts): backup, a backup with one file added (parent and files cache), and restore, for each
# binary given (ferry, and restic if named), with peak RSS and wall time per step.
#
#   benches/bigdir.sh BIN [BIN...]      e.g. benches/bigdir.sh target/release/ferry /usr/bin/restic
#
#   ENTRIES  entries in the directory (default 1000000): empty files, every 1000th holding 1 KiB
#   WORK     work directory (default /tmp/ferry-bigdir)
#   RUNS     runs per binary, interleaved (default 1)
#   SCRATCH  1 (default, as root): WORK is a fresh journaled ext4 in a loop-mounted sparse image;
#            0: WORK as it is. On a journal-less ext4 (this machine kind's root file system), a
#            million files made right after a million were deleted take minutes (the inode
#            allocator skips recently deleted inodes): every restore after the first was 5x slower
# Output: one line per binary, run and step: wall (s), peak RSS (MiB); then the restore is
# compared with the source (entry count and the non-empty files).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
ENTRIES=${ENTRIES:-1000000}
WORK=${WORK:-/tmp/ferry-bigdir}
RUNS=${RUNS:-1}
export FERRY_PASSWORD=bigdir-bench RESTIC_PASSWORD=bigdir-bench
command -v /usr/bin/time >/dev/null || { echo "bigdir.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
SCRATCH=${SCRATCH:-$([ "$(id -u)" = 0 ] && echo 1 || echo 0)}
bins=()
for b in "$@"; do bins+=("$(readlink -f "$(command -v "$b")")"); done
set -- "${bins[@]}"
mountpoint -q "$WORK" 2>/dev/null && umount "$WORK"
rm -rf "$WORK" "$WORK.img" && mkdir -p "$WORK"
if [ "$SCRATCH" = 1 ]; then
  # Inodes for the source and one restore; inode tables written now, not in the background.
  truncate -s 16G "$WORK.img"
  mkfs.ext4 -q -F -i 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$WORK.img"
  mount -o loop "$WORK.img" "$WORK"
  trap 'cd /; umount "$WORK" 2>/dev/null; rm -f "$WORK.img"' EXIT
fi
mkdir -p "$WORK/src/big"
echo "making $ENTRIES entries in $WORK/src/big"
python3 - "$WORK/src/big" "$ENTRIES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
blob = b"x" * 1024
for i in range(n):
    with open(os.path.join(d, "f%07d" % i), "wb") as f:
        if i % 1000 == 0:
            f.write(blob + str(i).encode())
os.utime(d)
EOF
sleep 1.1 # files changed in the second before a backup are not trusted by the next one

# measure NAME CMD...: run CMD, print wall seconds and peak RSS MiB.
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; return 1; }
  read -r wall kib < "$WORK/time"
  printf '%-10s run %s  %-22s wall %8.2f s  peak RSS %6d MiB\n' "$tool" "$run" "$name" "$wall" $(( kib / 1024 ))
}

for run in $(seq 1 "$RUNS"); do
  for bin in "$@"; do
    tool=$(basename "$bin")
    repo=$WORK/repo-$tool target=$WORK/restore-$tool
    rm -rf "$repo" "$target" "$WORK/cache-$tool" "$WORK/src/big/added"
    export XDG_CACHE_HOME=$WORK/cache-$tool
    cd "$WORK/src"
    case $tool in
      restic*)
        "$bin" init --repo "$repo" >/dev/null
        measure backup "$bin" backup --repo "$repo" --host bench .
        echo added > big/added
        measure "backup, one added" "$bin" backup --repo "$repo" --host bench .
        measure restore "$bin" restore latest --repo "$repo" --target "$target" ;;
      *)
        "$bin" init --repo "$repo" >/dev/null
        measure backup "$bin" backup --repo "$repo" --host bench .
        echo added > big/added
        measure "backup, one added" "$bin" backup --repo "$repo" --host bench .
        measure restore "$bin" restore --repo "$repo" latest --target "$target" ;;
    esac
    n=$(find "$target/big" -maxdepth 1 -type f | wc -l)
    [ "$n" -eq $(( ENTRIES + 1 )) ] || { echo "$tool: restored $n entries, expected $(( ENTRIES + 1 ))" >&2; exit 1; }
    cmp "$WORK/src/big/f0000000" "$target/big/f0000000"
    cmp "$WORK/src/big/added" "$target/big/added"
    rm -rf "$target"
  done
done
