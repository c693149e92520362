#!/usr/bin/env bash
# disk-sparse.sh -- a disk backup's memory and time against the disk's size and its data: a
# sparse image of SIZE holding DATA of random extents spread over it, backed up in full, then
# again with a changed-block list (1 % of the data rewritten), by each binary given.
#
#   benches/disk-sparse.sh BIN [BIN...]
#
#   SIZE   the image's apparent size (default 1T)
#   DATA   MiB of data in it (default 2048), in 64 extents spread evenly
#   WORK   work directory (default /tmp/ferry-disk-sparse; needs DATA of free space, twice)
# Output: one line per binary and step: peak RSS (MiB), wall (s), bytes read, bytes added.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
SIZE=${SIZE:-1T}
DATA=${DATA:-2048}
WORK=${WORK:-/tmp/ferry-disk-sparse}
export FERRY_PASSWORD=disk-bench XDG_CACHE_HOME=$WORK/cache
rm -rf "$WORK" && mkdir -p "$WORK"
img=$WORK/disk.img
truncate -s "$SIZE" "$img"
bytes=$(stat -c %s "$img")
extent=$(( DATA / 64 ))
stride=$(( bytes / 64 / 1048576 ))
for i in $(seq 0 63); do
  dd if=/dev/urandom of="$img" bs=1M count="$extent" seek=$(( i * stride )) conv=notrunc status=none
done
# The changed blocks: the first MiB of every extent, as `OFFSET LENGTH` lines; rewritten after
# each full backup (so the changed-block backup has 64 MiB of new data to read and store).
: > "$WORK/changed.txt"
for i in $(seq 0 63); do
  echo "$(( i * stride * 1048576 )) 1048576" >> "$WORK/changed.txt"
done
change() {
  for i in $(seq 0 63); do
    dd if=/dev/urandom of="$img" bs=1M count=1 seek=$(( i * stride )) conv=notrunc status=none
  done
}
echo "image: $SIZE apparent, $(du -m "$img" | cut -f1) MiB allocated"
for bin in "$@"; do
  repo=$WORK/repo-$(basename "$bin")
  rm -rf "$repo" "$WORK/cache"
  "$bin" --repo "$repo" -q init --kdf-memory 64 --kdf-iterations 1
  for step in full changed; do
    extra=()
    if [ "$step" = changed ]; then change; extra=(--changed-blocks "$WORK/changed.txt"); fi
    /usr/bin/time -f "%M %e" -o "$WORK/time" "$bin" --repo "$repo" --json backup "${extra[@]}" "$img" > "$WORK/out.json"
    read -r rss wall < "$WORK/time"
    summary=$(grep '"message_type":"summary"' "$WORK/out.json")
    read_b=$(sed -E 's/.*"bytes_read":([0-9]+).*/\1/' <<<"$summary")
    added=$(sed -E 's/.*"bytes_added":([0-9]+).*/\1/' <<<"$summary")
    printf '%s %-8s peak RSS %5d MiB  wall %7.2f s  read %6d MiB  added %6d MiB\n' \
      "$(basename "$bin")" "$step" $(( rss / 1024 )) "$wall" $(( read_b / 1048576 )) $(( added / 1048576 ))
  done
done
rm -rf "$WORK"
