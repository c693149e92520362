#!/usr/bin/env bash
# bigfile.sh -- one big file: a sparse image of SIZE holding DATA MiB in 16 extents, half of them
# incompressible (/dev/urandom) and half compressible (the bytes of /usr as a tar stream), backed
# up as a file (content-defined chunking) and restored, by each binary given (ferry, restic),
# interleaved RUNS times. Reports wall, CPU (user+sys), CPU/wall and peak RSS per step, and the
# median over the runs.
#
#   benches/bigfile.sh BIN [BIN...]     e.g. benches/bigfile.sh target/release/ferry /usr/bin/restic
#
#   SIZE   the image's apparent size (default 20G)
#   DATA   MiB of data in it (default 8192)
#   RUNS   runs per binary (default 3)
#   WORK   work directory (default /tmp/ferry-bigfile; needs about 2 × DATA + SIZE free: restic
#          0.14 writes the image's holes as zeros)
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
SIZE=${SIZE:-20G}
DATA=${DATA:-8192}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/ferry-bigfile}
export FERRY_PASSWORD=bigfile-bench RESTIC_PASSWORD=bigfile-bench
command -v /usr/bin/time >/dev/null || { echo "bigfile.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK/src"
# Checked before anything is written: a disk that fills up mid-run (restic writing the holes)
# stopped every process on this machine kind, the shell driving the bench included.
need=$(( $(numfmt --from=iec "$SIZE") + 2 * DATA * 1048576 ))
free=$(df -B1 --output=avail "$WORK" | tail -1)
[ "$free" -ge "$need" ] || {
  echo "bigfile.sh: $WORK has $(( free >> 30 )) GiB free, the run needs about $(( need >> 30 )) GiB (SIZE + 2 x DATA): free some, or set WORK, SIZE or DATA" >&2
  exit 1
}
img=$WORK/src/disk.img
truncate -s "$SIZE" "$img"
bytes=$(stat -c %s "$img")
extent=$(( DATA / 16 ))
stride=$(( bytes / 16 / 1048576 ))
tar -c /usr 2>/dev/null | head -c $(( DATA / 2 * 1048576 )) > "$WORK/text" || true
for i in $(seq 0 15); do
  if [ $(( i % 2 )) -eq 0 ]; then
    dd if=/dev/urandom of="$img" bs=1M count="$extent" seek=$(( i * stride )) conv=notrunc status=none
  else
    dd if="$WORK/text" of="$img" bs=1M count="$extent" skip=$(( i / 2 * extent )) seek=$(( i * stride )) \
      conv=notrunc status=none iflag=fullblock
  fi
done
rm -f "$WORK/text"
echo "image: $SIZE apparent, $(du -m "$img" | cut -f1) MiB allocated"
sync

results=$WORK/results.txt
: > "$results"
# measure NAME CMD...: run CMD; record wall, CPU and peak RSS.
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$@" > "$WORK/out" 2>&1 || { cat "$WORK/out" >&2; return 1; }
  read -r wall user sys kib < "$WORK/time"
  echo "$tool $name $wall $user $sys $kib" >> "$results"
  awk -v t="$tool" -v n="$name" -v w="$wall" -v u="$user" -v s="$sys" -v k="$kib" -v r="$run" 'BEGIN {
    printf "%-8s run %s %-8s wall %7.2f s  CPU %7.2f s  CPU/wall %.2f  peak RSS %5d MiB\n", t, r, n, w, u + s, (u + s) / w, k / 1024 }'
}

for run in $(seq 1 "$RUNS"); do
  for bin in "$@"; do
    tool=$(basename "$bin")
    repo=$WORK/repo-$tool target=$WORK/restore-$tool
    rm -rf "$repo" "$target" "$WORK/cache-$tool"
    export XDG_CACHE_HOME=$WORK/cache-$tool
    cd "$WORK/src"
    "$bin" init --repo "$repo" >/dev/null 2>&1
    sync
    case $tool in
      restic*)
        measure backup "$bin" backup --repo "$repo" --host bench .
        measure restore "$bin" restore latest --repo "$repo" --target "$target" ;;
      *)
        measure backup "$bin" backup --repo "$repo" --host bench .
        measure restore "$bin" restore --repo "$repo" latest --target "$target" ;;
    esac
    cmp "$img" "$target/disk.img" || { echo "$tool: restored image differs" >&2; exit 1; }
    echo "$tool repository: $(du -sm "$repo" | cut -f1) MiB"
    rm -rf "$target" "$repo" # one tool's files at a time: restic 0.14 restores the holes as zeros
  done
done

echo
echo "median of $RUNS (min-max): wall s, CPU s, CPU/wall, peak RSS MiB"
for tool in $(cut -d' ' -f1 "$results" | sort -u); do
  for step in backup restore; do
    grep "^$tool $step " "$results" | awk -v t="$tool" -v s="$step" '
      { w[NR] = $3; c[NR] = $4 + $5; m[NR] = $6 / 1024 }
      function med(a, n,   i, j, x, b) { for (i = 1; i <= n; i++) b[i] = a[i];
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (b[j] < b[i]) { x = b[i]; b[i] = b[j]; b[j] = x }
        return n % 2 ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2 }
      function lo(a, n,   i, x) { x = a[1]; for (i = 2; i <= n; i++) if (a[i] < x) x = a[i]; return x }
      function hi(a, n,   i, x) { x = a[1]; for (i = 2; i <= n; i++) if (a[i] > x) x = a[i]; return x }
      END { printf "%-8s %-8s wall %.2f (%.2f-%.2f)  CPU %.2f  CPU/wall %.2f  RSS %d MiB\n",
        t, s, med(w, NR), lo(w, NR), hi(w, NR), med(c, NR), med(c, NR) / med(w, NR), med(m, NR) }'
  done
done
