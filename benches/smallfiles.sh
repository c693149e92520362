#!/usr/bin/env bash
# smallfiles.sh -- many small files (Velero #7840's shape): benches/make-smallfiles.py's
# tree (default 1,000,000 files, 20,000 directories plus one of 100,000 entries, ~2 GB), backed up
# by each binary given, interleaved run by run: initial backup, backup with nothing changed, backup
# after 1 % of the files changed, restore. Wall time, CPU (user+sys), CPU/wall and peak RSS per step,
# and at the end the median (min-max) of every step per tool.
#
#   benches/smallfiles.sh BIN [BIN...]   e.g. benches/smallfiles.sh target/release/ferry /usr/bin/restic
#
#   FILES     files in the tree (default 1000000)
#   RUNS      runs, interleaved (default 3)
#   WORK      work directory (default /tmp/ferry-smallfiles); as root, a fresh journaled ext4 in a
#             loop-mounted sparse image is made there, the loop device doing direct I/O to the
#             image (DIO=0: through the page cache) (SCRATCH=0: use the directory as it is) --
#             on this machine's journal-less root ext4, creating many files right after deleting
#             many was several times slower for minutes (seen on this kind of machine)
#   MAKE      path of make-smallfiles.py (default benches/make-smallfiles.py)
#   SETTLE    seconds of pause after each run's restored trees are deleted (default 20)
#   COLD      1: drop the page, dentry and inode caches before every step (as root), so every
#             tool starts each step from disk; default 0 (warm, whatever the previous step left:
#             a million-file restore evicts much of the source, so a run's first backup is colder)
#   FLOOR     1 (default when cc is there): each run also makes the source's tree with bare
#             system calls (benches/create-floor.c: openat, pwrite, futimens, close; one thread
#             per core, nothing read or decoded), listed as the tool "floor", step "restore": what
#             the kernel alone costs for a restore of these files; 0 to leave it out
# A binary named restic* is driven with restic's commands, anything else with ferry's. Each tool
# starts every run with a fresh repository and cache; the change step appends a line to every
# 100th file (in a fixed order) and gives it a new mtime, so every tool sees the same change.
# Restores are checked: same number of files and same total file size as the source.
# The order of the tools rotates from run to run (run 2 starts with the second binary), and the
# restored trees are deleted only after every tool has finished the run, followed by a sync and a
# pause. A backup right after another tool's restore starts with much of the source evicted from
# the caches and is slower (up to 2x seen): rotation spreads that over the tools; COLD=1 removes it.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,33p' "$0" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
FILES=${FILES:-1000000}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/ferry-smallfiles}
MAKE=${MAKE:-$here/make-smallfiles.py}
SCRATCH=${SCRATCH:-1}
export FERRY_PASSWORD=smallfiles-bench RESTIC_PASSWORD=smallfiles-bench
command -v /usr/bin/time >/dev/null || { echo "smallfiles.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
[ -f "$MAKE" ] || { echo "smallfiles.sh: $MAKE not found (set MAKE=)" >&2; exit 1; }
bins=()
for b in "$@"; do bins+=("$(readlink -f "$(command -v "$b")")"); done

mkdir -p "$WORK"
if [ "$SCRATCH" = 1 ]; then
  mountpoint -q "$WORK/scratch" && umount "$WORK/scratch"
  rm -f "$WORK/scratch.img"
  # A run writes about 18 GB (the source, every tool's repository and restored tree: each small
  # file takes a 4 KiB block) into the sparse image.
  free=$(df -B1 --output=avail "$WORK" | tail -1)
  [ "$free" -ge $(( 20 << 30 )) ] ||
    { echo "smallfiles.sh: $WORK has $(( free >> 30 )) GiB free, a run needs about 20: free some, or set WORK" >&2; exit 1; }
  truncate -s 40G "$WORK/scratch.img"
  mkfs.ext4 -q -F -i 4096 "$WORK/scratch.img" # inodes for the source and every tool's restore
  mkdir -p "$WORK/scratch"
  # Direct I/O from the loop device to its image (DIO=0 to compare): without it every block
  # the tools write is cached twice (the scratch file system's page and the image file's), and
  # the loop worker's copying and the image's writeback took about 15 s of the machine's two
  # cores during one million-file backup -- a cost no real disk has.
  loopdev=$(losetup --direct-io="$( [ "${DIO:-1}" = 1 ] && echo on || echo off )" -f --show "$WORK/scratch.img")
  mount "$loopdev" "$WORK/scratch"
  trap 'cd /; umount "$WORK/scratch" 2>/dev/null; losetup -d "$loopdev" 2>/dev/null; rm -f "$WORK/scratch.img"' EXIT
  W=$WORK/scratch
else
  W=$WORK
fi
src=$W/src
rm -rf "$src"
echo "making $FILES files in $src"
python3 "$MAKE" "$src" "$FILES"
find "$src" -type f | sort > "$W/files"
awk 'NR % 100 == 0' "$W/files" > "$W/changed"
want_n=$(wc -l < "$W/files")
# Bytes of regular files only: a directory's own size depends on the order its entries were made.
file_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
want_bytes=$(file_bytes "$src")
echo "$want_n files, $(( want_bytes / 1000000 )) MB apparent, $(wc -l < "$W/changed") to change"
FLOOR=${FLOOR:-$(command -v cc >/dev/null && echo 1 || echo 0)}
if [ "$FLOOR" = 1 ]; then
  cc -O2 -pthread -o "$W/create-floor" "$here/create-floor.c"
  # Directories first, parents before children (find's order); files in path order (bytewise,
  # whatever the locale), as a restore plan lists them.
  { (cd "$src" && find . -mindepth 1 -type d -printf '-1 %P\n')
    (cd "$src" && find . -type f -printf '%s %P\n' | LC_ALL=C sort -k2); } > "$W/floor-list"
fi
sleep 1.1 # files changed in the second before a backup are not trusted by the next one

results=$W/results.tsv
: > "$results"
# measure STEP CMD...: run CMD in $src, record wall, CPU, peak RSS.
COLD=${COLD:-0}
measure() {
  local step=$1; shift
  sync
  [ "$COLD" = 1 ] && echo 3 > /proc/sys/vm/drop_caches
  (cd "$src" && /usr/bin/time -f "%e %U %S %M" -o "$W/time" "$@" > "$W/out" 2>&1) || { cat "$W/out" >&2; return 1; }
  read -r wall user sys kib < "$W/time"
  local cpu; cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$run" "$step" "$wall" "$cpu" $(( kib / 1024 )) >> "$results"
  printf '%-10s run %s  %-18s wall %8.2f s  cpu %8.2f s  cpu/wall %4.2f  peak RSS %6d MiB\n' \
    "$tool" "$run" "$step" "$wall" "$cpu" "$(awk -v c="$cpu" -v w="$wall" 'BEGIN {printf "%.2f", (w > 0 ? c / w : 0)}')" $(( kib / 1024 ))
}

SETTLE=${SETTLE:-20}
for run in $(seq 1 "$RUNS"); do
  order=()
  for i in "${!bins[@]}"; do order+=("${bins[$(( (i + run - 1) % ${#bins[@]} ))]}"); done
  for bin in "${order[@]}"; do
    tool=$(basename "$bin")
    repo=$W/repo-$tool target=$W/restore-$tool
    rm -rf "$repo" "$target" "$W/cache-$tool"
    export XDG_CACHE_HOME=$W/cache-$tool
    "$bin" init --repo "$repo" > /dev/null
    case $tool in
      restic*) backup=("$bin" backup --repo "$repo" --host bench .)
               restore=("$bin" restore latest --repo "$repo" --target "$target") ;;
      *)       backup=("$bin" backup --repo "$repo" --host bench .)
               restore=("$bin" restore --repo "$repo" latest --target "$target") ;;
    esac
    measure "backup" "${backup[@]}"
    measure "backup unchanged" "${backup[@]}"
    while read -r f; do printf 'changed in run %s by %s\n' "$run" "$tool" >> "$f"; done < "$W/changed"
    sleep 1.1
    measure "backup 1% changed" "${backup[@]}"
    measure "restore" "${restore[@]}"
    n=$(find "$target" -type f | wc -l)
    bytes=$(file_bytes "$target")
    now_bytes=$(file_bytes "$src")
    [ "$n" -eq "$want_n" ] && [ "$bytes" -eq "$now_bytes" ] ||
      { echo "$tool: restored $n files / $bytes bytes, source has $want_n / $now_bytes" >&2; exit 1; }
    printf '%-10s run %s  repository %d MiB\n' "$tool" "$run" $(( $(du -sb "$repo" | cut -f1) / 1048576 ))
  done
  if [ "$FLOOR" = 1 ]; then
    tool=floor
    rm -rf "$W/restore-floor" && mkdir "$W/restore-floor"
    measure "restore" "$W/create-floor" "$W/restore-floor" "$(nproc)" < "$W/floor-list"
    n=$(find "$W/restore-floor" -type f | wc -l)
    [ "$n" -eq "$want_n" ] || { echo "floor: made $n files, the source has $want_n" >&2; exit 1; }
  fi
  [ "$run" -lt "$RUNS" ] || break # the scratch file system goes as a whole
  for bin in "${bins[@]}" floor; do rm -rf "$W/restore-$(basename "$bin")"; done
  sync
  # The freed blocks go back to the image's file system (the loop device punches holes):
  # without it the image grew by a run's writes (about 18 GB) every run, and filled this
  # machine's disk in the second run.
  [ "$SCRATCH" = 1 ] && fstrim "$W"
  sleep "$SETTLE"
done

echo
echo "median (min-max) over $RUNS runs"
python3 - "$results" <<'EOF'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
tools = list(dict.fromkeys(r[0] for r in rows))
steps = list(dict.fromkeys(r[2] for r in rows))
def cell(vals, fmt):
    m = statistics.median(vals)
    return f"{fmt % m} ({fmt % min(vals)}-{fmt % max(vals)})"
print("| step | " + " | ".join(f"{t} wall s | {t} cpu/wall | {t} peak RSS MiB" for t in tools) + " |")
print("|---" * (1 + 3 * len(tools)) + "|")
for s in steps:
    out = [s]
    for t in tools:
        rs = [r for r in rows if r[0] == t and r[2] == s]
        if not rs:  # the floor has a restore only
            out += ["-"] * 3
            continue
        out.append(cell([float(r[3]) for r in rs], "%.2f"))
        out.append("%.2f" % statistics.median([float(r[4]) / max(float(r[3]), 0.01) for r in rs]))
        out.append(cell([float(r[5]) for r in rs], "%.0f"))
    print("| " + " | ".join(out) + " |")
def med(t, s, col):
    return statistics.median([float(r[col]) for r in rows if r[0] == t and r[2] == s])
if "floor" in tools:
    tools.remove("floor")
    for t in tools:
        print(f"restore: {t}/floor wall {med(t, 'restore', 3) / med('floor', 'restore', 3):.2f}x, "
              f"CPU {med(t, 'restore', 4) / med('floor', 'restore', 4):.2f}x")
if len(tools) >= 2:
    a, b = tools[0], tools[1]
    for s in steps:
        wa = statistics.median([float(r[3]) for r in rows if r[0] == a and r[2] == s])
        wb = statistics.median([float(r[3]) for r in rows if r[0] == b and r[2] == s])
        ra = statistics.median([float(r[5]) for r in rows if r[0] == a and r[2] == s])
        rb = statistics.median([float(r[5]) for r in rows if r[0] == b and r[2] == s])
        print(f"{s}: {a}/{b} wall {wa / wb:.2f}x, peak RSS {ra / rb:.2f}x")
EOF
