#!/usr/bin/env bash
# bigrepo.sh -- a big repository: BLOBS index entries (default 10,000,000) and SNAPSHOTS snapshots
# (default 10,000) around a real one (a backup of make-smallfiles.py's tree of SRC_FILES files),
# grown by repo-format/examples/synth_repo.rs (made-up blobs in made-up packs: opening, listing,
# backing up and restoring read the index, never those packs). Then, each with a cold cache
# (empty Ferry cache, kernel page cache dropped) and a warm one (the same again): `snapshots`,
# `ls` of the latest snapshot (keeps the tree blobs' entries only), a backup after 1 % of the
# files changed (keeps the tree blobs' entries and 16-byte keys of the data blobs; the whole index
# with FERRY_INDEX_KEYS=0), and a restore of the latest snapshot (keeps the tree
# blobs' entries, then those of the data blobs it restores). Wall time, CPU and peak RSS; the
# index's own memory is the backup's peak RSS minus the same backup's into the repository before
# it was grown (both printed).
#
#   benches/bigrepo.sh FERRY_BIN
#   BLOBS SNAPSHOTS SRC_FILES (default 20000) WORK (default /tmp/ferry-bigrepo) RUNS (default 1)
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
ferry=$(readlink -f "$1")
BLOBS=${BLOBS:-10000000}
SNAPSHOTS=${SNAPSHOTS:-10000}
SRC_FILES=${SRC_FILES:-20000}
WORK=${WORK:-/tmp/ferry-bigrepo}
RUNS=${RUNS:-1}
export FERRY_PASSWORD=bigrepo-bench
command -v /usr/bin/time >/dev/null || { echo "bigrepo.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
(cd "$here" && cargo build -q --release -p ferry-repo-format --example synth_repo)
synth=$here/target/release/examples/synth_repo

rm -rf "$WORK" && mkdir -p "$WORK"
python3 "$here/benches/make-smallfiles.py" "$WORK/src" "$SRC_FILES" > /dev/null
find "$WORK/src" -type f | sort | awk 'NR % 100 == 0' > "$WORK/changed"
repo=$WORK/repo
"$ferry" init --repo "$repo" > /dev/null
sleep 1.1
export XDG_CACHE_HOME=$WORK/cache
(cd "$WORK/src" && "$ferry" backup --repo "$repo" --host bench . > /dev/null)

# measure STEP CMD...: wall, CPU, peak RSS of CMD run in the source directory.
measure() {
  local step=$1; shift
  (cd "$WORK/src" && /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$@" > "$WORK/out" 2>&1) || { cat "$WORK/out" >&2; return 1; }
  read -r wall user sys kib < "$WORK/time"
  printf '%-34s wall %8.2f s  cpu %8.2f s  peak RSS %6d MiB\n' "$step" "$wall" \
    "$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')" $(( kib / 1024 ))
}
change() {
  while read -r f; do echo "changed $1" >> "$f"; done < "$WORK/changed"
  sleep 1.1
}
cold() { rm -rf "$XDG_CACHE_HOME"; sync; echo 3 > /proc/sys/vm/drop_caches; }

change small
measure "backup, small repository" "$ferry" backup --repo "$repo" --host bench .
echo "growing the repository: $BLOBS index entries, $SNAPSHOTS snapshots"
/usr/bin/time -f "  (%e s)" "$synth" "$repo" "$BLOBS" "$SNAPSHOTS"
du -sh "$repo/index" "$repo/snapshots" 2>/dev/null | sed 's/^/  /'

for run in $(seq 1 "$RUNS"); do
  for cache in cold warm; do
    [ "$cache" = cold ] && cold
    measure "run $run snapshots ($cache)" "$ferry" snapshots --repo "$repo"
    measure "run $run ls latest ($cache)" "$ferry" ls --repo "$repo" latest
    [ "$cache" = cold ] && cold
    change "$run-$cache"
    measure "run $run backup, 1 % changed ($cache)" "$ferry" backup --repo "$repo" --host bench .
    [ "$cache" = cold ] && cold
    # A new directory each time: files just deleted make ext4's inode allocation slow
    # (`recently_deleted`), which doubled a restore's time into a directory emptied before it.
    measure "run $run restore latest ($cache)" "$ferry" restore --repo "$repo" latest --target "$WORK/restore-$run-$cache"
  done
done
n=$(find "$WORK/restore-$RUNS-warm" -type f | wc -l)
[ "$n" -eq "$SRC_FILES" ] || { echo "restored $n files, expected $SRC_FILES" >&2; exit 1; }
echo "restore checked: $n files"
rm -rf "$WORK"/restore-*
