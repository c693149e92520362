# lib.sh -- shared by tests/kube/{start,stop,smoke}.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this

KUBE_CACHE=${FERRY_SERVERS_DIR:-/var/cache/ferry-servers}/kube
KUBE_BIN=${FERRY_KUBE_BIN:-$KUBE_CACHE/bin}
KUBE_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Loopback only: no proxy may see a request, neither ours nor the servers' own.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi

now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# alive PID BINARY DIR: the PID runs BINARY with DIR on its command line (guards against PID
# reuse and against killing a server that belongs to another test directory).
alive() {
  local pid=${1:-} cmd
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  case $cmd in *"$2"*) ;; *) return 1 ;; esac
  case $cmd in *"$3"*) return 0 ;; *) return 1 ;; esac
}

# running PID: the process exists and has not exited (a zombie has). For a server this script
# just launched, where `alive` can be wrong: while `setsid` execs the server, the process's
# command line can read empty for a moment (CI failed an agent test so twice, "etcd: exited
# before it was healthy" with an empty etcd.log: it had not started yet).
running() {
  local state
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/${1:-none}/status" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

pidof_in() { cat "$1/$2.pid" 2>/dev/null || true; } # DIR NAME

# stop_one DIR NAME BINARY: TERM the recorded process (its own session: the whole group), KILL
# after FERRY_KUBE_STOP_WAIT seconds (default 5). Quiet and successful if nothing runs.
stop_one() {
  local dir=$1 name=$2 bin=$3 pid i
  pid=$(pidof_in "$dir" "$name")
  if alive "$pid" "$bin" "$dir"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < ${FERRY_KUBE_STOP_WAIT:-5} * 10; i++)); do
      alive "$pid" "$bin" "$dir" || break
      sleep 0.1
    done
    if alive "$pid" "$bin" "$dir"; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do alive "$pid" "$bin" "$dir" || break; sleep 0.1; done
      echo "kube: $name (pid $pid) did not stop on TERM, killed"
    else
      echo "kube: stopped $name (pid $pid)"
    fi
  fi
  rm -f "$dir/$name.pid"
}
