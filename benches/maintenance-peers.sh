#!/usr/bin/env bash
# maintenance-peers.sh CORPUS [RUNS] -- prune and check --read-data, ferry against restic, in one
# run, interleaved (run 1: every peer, run 2: every peer, ...). For each peer and run: a fresh copy
# of CORPUS (the peer benchmark's corpus: source files, a VM image, media), init, ten backups with
# benches/make-change.sh (the peer harness's change script, kept here) applied between them,
# forget all but the last two, then, timed with /usr/bin/time: prune (ferry: `prune --sweep-now`, i.e. mark and delete in one run as restic's
# exclusive prune does; and separately the mark alone, what a ferry prune costs while backups run)
# and `check --read-data`. Prints a table of medians (wall s, peak RSS MiB) and ferry/restic ratios.
#
#   FERRY=target/release/ferry RESTIC=restic WORK=/tmp/maint \
#     benches/maintenance-peers.sh /tmp/bench/corpus.base 3
#
# Needs: restic, /usr/bin/time, python3. Local-directory repositories (no server); ferry's
# request counts (GET/LIST/DELETE) come from its --json summaries.
set -euo pipefail
CORPUS=${1:?usage: maintenance-peers.sh CORPUS [RUNS]}
RUNS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
FERRY=${FERRY:-$HERE/../target/release/ferry}
RESTIC=${RESTIC:-restic}
CHANGE=${CHANGE:-$HERE/make-change.sh}
WORK=${WORK:-/tmp/maint}
export FERRY_PASSWORD=bench RESTIC_PASSWORD=bench
RESULTS=$WORK/results.tsv
mkdir -p "$WORK"
: >"$RESULTS"

timed() { # timed LABEL PEER RUN CMD... -> appends "peer run label wall rss_mib"
  local label=$1 peer=$2 run=$3
  shift 3
  /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" >"$WORK/$peer-$label-$run.out" 2>"$WORK/$peer-$label-$run.err"
  read -r wall rss <"$WORK/time.txt"
  echo -e "$peer\t$run\t$label\t$wall\t$((rss / 1024))" >>"$RESULTS"
}

prepare() { # prepare PEER RUN: fresh corpus, init, 10 backups, forget all but 2
  local peer=$1 run=$2
  rm -rf "$WORK/corpus" "$WORK/repo-$peer" "$WORK/cache-$peer"
  cp -a "$CORPUS" "$WORK/corpus"
  for i in $(seq 1 10); do
    if [ "$peer" = ferry ]; then
      [ "$i" = 1 ] && "$FERRY" --repo "$WORK/repo-ferry" init -q
      (cd "$WORK/corpus" && XDG_CACHE_HOME=$WORK/cache-ferry "$FERRY" --repo "$WORK/repo-ferry" backup -q --host bench .)
    else
      [ "$i" = 1 ] && "$RESTIC" -r "$WORK/repo-restic" init -q
      (cd "$WORK/corpus" && XDG_CACHE_HOME=$WORK/cache-restic "$RESTIC" -r "$WORK/repo-restic" backup -q --host bench .)
    fi
    [ "$i" -lt 10 ] && bash "$CHANGE" "$WORK/corpus" >/dev/null
  done
  if [ "$peer" = ferry ]; then
    XDG_CACHE_HOME=$WORK/cache-ferry "$FERRY" --repo "$WORK/repo-ferry" forget -q --keep-last 2
  else
    XDG_CACHE_HOME=$WORK/cache-restic "$RESTIC" -r "$WORK/repo-restic" forget -q --keep-last 2
  fi
}

for run in $(seq 1 "$RUNS"); do
  for peer in ferry restic; do
    prepare "$peer" "$run"
    if [ "$peer" = ferry ]; then
      export XDG_CACHE_HOME=$WORK/cache-ferry
      cp -a "$WORK/repo-ferry" "$WORK/repo-ferry-mark"
      timed prune-mark ferry "$run" "$FERRY" --repo "$WORK/repo-ferry-mark" --json prune
      rm -rf "$WORK/repo-ferry-mark"
      timed prune ferry "$run" "$FERRY" --repo "$WORK/repo-ferry" --json prune --sweep-now
      timed check-read-data ferry "$run" "$FERRY" --repo "$WORK/repo-ferry" --json check --read-data
      unset XDG_CACHE_HOME
    else
      export XDG_CACHE_HOME=$WORK/cache-restic
      timed prune restic "$run" "$RESTIC" -r "$WORK/repo-restic" prune
      timed check-read-data restic "$run" "$RESTIC" -r "$WORK/repo-restic" check --read-data
      unset XDG_CACHE_HOME
    fi
    echo -e "$peer\t$run\trepo-bytes\t$(du -sb "$WORK/repo-$peer" | cut -f1)\t0" >>"$RESULTS"
  done
done

python3 - "$RESULTS" "$WORK" <<'PY'
import collections, json, statistics, sys, glob
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
for peer, run, label, wall, rss in rows:
    by[(peer, label)].append((float(wall), int(rss)))
print("| step | ferry wall s | restic wall s | ratio | ferry RSS MiB | restic RSS MiB | ratio |")
print("|---|---|---|---|---|---|---|")
for label in ["prune-mark", "prune", "check-read-data"]:
    f, r = by.get(("ferry", label)), by.get(("restic", label))
    fw = statistics.median(w for w, _ in f) if f else None
    fr = statistics.median(m for _, m in f) if f else None
    rw = statistics.median(w for w, _ in r) if r else None
    rr = statistics.median(m for _, m in r) if r else None
    ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else "-"
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
    print(f"| {label} | {fmt(fw)} | {fmt(rw)} | {ratio(fw, rw)} | {fmt(fr)} | {fmt(rr)} | {ratio(fr, rr)} |")
for peer in ["ferry", "restic"]:
    sizes = [w for w, _ in by.get((peer, "repo-bytes"), [])]
    if sizes:
        print(f"{peer} repository after prune: {statistics.median(sizes) / 1e6:.0f} MB")
for f in sorted(glob.glob(sys.argv[2] + "/ferry-*-1.out")):
    for line in open(f):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if v.get("message_type") == "summary" and "requests" in v:
            print(f"{f.split('/')[-1]}: requests {v['requests']}")
PY
