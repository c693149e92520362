#!/usr/bin/env bash
# stop.sh -- stop what tests/kube/start.sh started in DIR.
#
#   tests/kube/stop.sh DIR            stop kube-apiserver, then etcd
#   tests/kube/stop.sh DIR apiserver  stop only kube-apiserver (etcd and its data stay; bring it
#                                     back on the same port with tests/kube/start.sh DIR apiserver)
#
# Each process gets TERM, then KILL after FERRY_KUBE_STOP_WAIT seconds (default 5). Only the
# PIDs recorded in DIR/*.pid are signalled, and only if they still run the expected binary on
# DIR. Safe to call twice, or on a DIR where nothing runs. Files in DIR (certificates, tokens,
# etcd data, logs, env) are kept.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "usage: $0 DIR [apiserver]" >&2; exit 2; fi
mode=${2:-all}
case $mode in all|apiserver) ;; *) echo "usage: $0 DIR [apiserver]" >&2; exit 2 ;; esac
[ -d "$1" ] || exit 0
DIR=$(cd "$1" && pwd)

stop_one "$DIR" apiserver kube-apiserver
[ "$mode" = apiserver ] || stop_one "$DIR" etcd etcd
