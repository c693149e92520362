#!/usr/bin/env bash
# s3-peers.sh -- Ferry against restic on the same S3 server: backup and restore of the peer
# corpus (the corpus of the external peer benchmark harness, make-corpus.sh) into s3s-fs on loopback, with wall/CPU time, peak RSS and the
# requests the *server* saw, by S3 operation (counted from s3s-fs's own log, so both tools are
# counted the same way).
#
#   CORPUS=/tmp/bench/corpus.base FERRY=target/release/ferry RUNS=3 benches/s3-peers.sh
#
#   CORPUS     directory to back up (default /tmp/bench/corpus.base, made by make-corpus.sh)
#   FERRY      the ferry binary (default target/release/ferry)
#   RESTIC     the restic binary (default: restic in PATH)
#   S3S_FS     the s3s-fs binary (default /var/cache/ferry-servers/s3s/bin/s3s-fs, installed
#              by tests/servers.sh install)
#   WORK       scratch directory (default /tmp/ferry-s3-peers): server root, restores, logs
#   RUNS       runs per tool, interleaved (default 3); the table shows medians
#   PEERS      tools to run (default "ferry restic")
# Everything talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-/tmp/bench/corpus.base}
FERRY=$(realpath "${FERRY:-target/release/ferry}")
RESTIC=${RESTIC:-$(command -v restic || true)}
S3S_FS=${S3S_FS:-/var/cache/ferry-servers/s3s/bin/s3s-fs}
WORK=${WORK:-/tmp/ferry-s3-peers}
RUNS=${RUNS:-3}
PEERS=${PEERS:-ferry restic}
[ -d "$CORPUS" ] || { echo "s3-peers.sh: no corpus at $CORPUS (make it with the peer harness make-corpus.sh)" >&2; exit 1; }
[ -x "$FERRY" ] || { echo "s3-peers.sh: no ferry binary at $FERRY (cargo build --release)" >&2; exit 1; }
[ -x "$S3S_FS" ] || { echo "s3-peers.sh: no s3s-fs at $S3S_FS (tests/servers.sh install)" >&2; exit 1; }
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true FERRY_PASSWORD=bench RESTIC_PASSWORD=bench
mkdir -p "$WORK"
RESULTS=$WORK/results.tsv
: >"$RESULTS"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SERVER_PID=

start_server() {
  rm -rf "$WORK/root" && mkdir -p "$WORK/root/bench"
  # s3s::ops logs one "resolved route, op: X" line per request at debug level.
  RUST_LOG=s3s::ops=debug setsid "$S3S_FS" --host 127.0.0.1 --port "$PORT" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/root" \
    >"$WORK/server.log" 2>&1 </dev/null &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl --noproxy '*' -s -o /dev/null "http://127.0.0.1:$PORT/" && return 0
    sleep 0.1
  done
  echo "s3-peers.sh: s3s-fs did not start" >&2; exit 1
}
stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  SERVER_PID=
}
trap stop_server EXIT

# Requests by operation since the log line count $1: "PutObject=12 GetObject=3 ...".
ops_since() {
  tail -n +"$(($1 + 1))" "$WORK/server.log" | grep -o 'resolved route, op: [A-Za-z]*' |
    awk '{n[$4]++} END {for (k in n) printf "%s=%d ", k, n[k]}'
}
log_lines() { wc -l <"$WORK/server.log"; }

# timed NAME CMD...: runs CMD, appends "tool run step wall user sys maxrss_kb ops" to results.
timed() {
  local tool=$1 run=$2 step=$3; shift 3
  local before t
  before=$(log_lines)
  t=$(mktemp)
  /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" >"$WORK/$tool-$step.out" 2>&1 ||
    { echo "s3-peers.sh: $tool $step failed:" >&2; tail -5 "$WORK/$tool-$step.out" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$run" "$step" "$(cat "$t")" "$(ops_since "$before")" >>"$RESULTS"
  rm -f "$t"
}

run_ferry() {
  local run=$1 repo="s3:http://127.0.0.1:$PORT/bench/ferry"
  export XDG_CACHE_HOME=$WORK/cache-ferry; rm -rf "$XDG_CACHE_HOME" "$WORK/restore"
  "$FERRY" init --repo "$repo" >/dev/null
  (cd "$CORPUS" && timed ferry "$run" backup "$FERRY" backup --repo "$repo" --host bench .)
  timed ferry "$run" restore "$FERRY" restore --repo "$repo" latest --target "$WORK/restore"
  diff -r -q "$CORPUS" "$WORK/restore" >/dev/null || { echo "s3-peers.sh: ferry restore differs" >&2; exit 1; }
}

run_restic() {
  local run=$1 repo="s3:http://127.0.0.1:$PORT/bench/restic"
  export XDG_CACHE_HOME=$WORK/cache-restic; rm -rf "$XDG_CACHE_HOME" "$WORK/restore"
  "$RESTIC" -r "$repo" init >/dev/null
  (cd "$CORPUS" && timed restic "$run" backup "$RESTIC" -r "$repo" backup --host bench .)
  timed restic "$run" restore "$RESTIC" -r "$repo" restore latest --target "$WORK/restore"
  diff -r -q "$CORPUS" "$WORK/restore" >/dev/null || { echo "s3-peers.sh: restic restore differs" >&2; exit 1; }
}

for run in $(seq "$RUNS"); do
  for tool in $PEERS; do
    start_server
    "run_$tool" "$run"
    echo "run $run $tool: repository $(du -sm "$WORK/root/bench" | cut -f1) MB" | tee -a "$WORK/sizes.txt"
    stop_server
  done
done

# Medians per tool and step, and the request counts of the median run.
python3 - "$RESULTS" <<'EOF'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tool, run, step, times, ops = (line.rstrip("\n").split("\t") + [""])[:5]
    wall, user, sys_, rss = times.split()
    rows[(tool, step)].append((float(wall), float(user) + float(sys_), int(rss) / 1024, ops.strip()))
print("| tool | step | wall s (median, min–max) | CPU s | peak RSS MiB | requests seen by the server (median run) |")
print("|---|---|---|---|---|---|")
for (tool, step), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    rs.sort()
    mid = rs[len(rs) // 2]
    walls = [r[0] for r in rs]
    print(f"| {tool} | {step} | {statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f}) | "
          f"{statistics.median(r[1] for r in rs):.2f} | {statistics.median(r[2] for r in rs):.0f} | {mid[3]} |")
EOF
