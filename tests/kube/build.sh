#!/usr/bin/env bash
# build.sh -- build kube-apiserver, etcd and ferry-test-kubelet from Go module sources for the
# agent's tests.
#
#   tests/kube/build.sh          idempotent: builds $FERRY_SERVERS_DIR/kube/bin/{kube-apiserver,
#                                etcd,ferry-test-kubelet} unless the version stamp there matches
#                                go.mod/go.sum and kubelet/*.go (then it returns at once, without
#                                running go). The stamp has one line for kube-apiserver + etcd and
#                                one for ferry-test-kubelet: a change to kubelet/*.go alone
#                                rebuilds only ferry-test-kubelet.
#   tests/kube/build.sh --force  rebuild everything even if the stamp matches
#
# Needs: go >= 1.24 on PATH (GO=... to use another one) and a Go module proxy (GOPROXY, default
# proxy.golang.org). go.sum is committed, so no checksum-database lookup is made; the build runs
# with -mod=readonly and fails rather than change go.mod/go.sum. GOPATH, GOMODCACHE and GOCACHE
# live under the cache directory, so a fresh machine needs nothing else. Nothing here talks to
# anything but the module proxy.
#
#   FERRY_SERVERS_DIR  cache root (default /var/cache/ferry-servers); everything goes to .../kube
set -euo pipefail

KUBE_VERSION=v1.34.10
ETCD_VERSION=v3.6.4
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${FERRY_SERVERS_DIR:-/var/cache/ferry-servers}/kube
BIN=$DIR/bin
STAMP=$BIN/.ferry-version
# The Go toolchain of this machine kind lives in /usr/local/go; a non-interactive shell (CI) may
# not have it on PATH.
if [ -z "${GO:-}" ]; then
  if command -v go >/dev/null; then GO=go; elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; else GO=go; fi
fi

say() { echo "kube/build.sh: $*"; }
die() { echo "kube/build.sh: $*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The stamp names the versions and the exact module graph the binaries came from (line 1:
# kube-apiserver and etcd), and the test kubelet's sources (line 2).
mod_hash() { cat "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-16; }
want_servers() { echo "kube-apiserver=$KUBE_VERSION etcd=$ETCD_VERSION mod=$(mod_hash)"; }
want_kubelet() {
  echo "ferry-test-kubelet mod=$(mod_hash)" \
    "src=$(cat "$HERE"/kubelet/*.go | sha256sum | cut -c1-16)"
}
servers_built() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/etcd" ] &&
    [ "$(sed -n 1p "$STAMP" 2>/dev/null)" = "$(want_servers)" ]
}
kubelet_built() {
  [ -x "$BIN/ferry-test-kubelet" ] && [ "$(sed -n 2p "$STAMP" 2>/dev/null)" = "$(want_kubelet)" ]
}
built() { servers_built && kubelet_built; }

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ $force = 0 ] && built; then
  say "kube-apiserver $KUBE_VERSION, etcd $ETCD_VERSION and ferry-test-kubelet already built in $BIN"
  exit 0
fi

command -v "$GO" >/dev/null || die "go is needed (not on PATH; set GO=/path/to/go)"
mkdir -p "$BIN"
# One build at a time (two test runs starting together would otherwise race on the outputs).
exec 9>"$DIR/.build.lock"
flock 9
if [ $force = 0 ] && built; then
  say "built by a concurrent run in $BIN"
  exit 0
fi

export GOPATH=$DIR/go GOMODCACHE=$DIR/go/pkg/mod GOCACHE=$DIR/go-build
# Never download a toolchain; static binaries like upstream's; the committed go.sum is the truth.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
# The Go command's own settings file may hold anything; only the environment above counts.
export GOENV=off
say "building with $("$GO" version) (GOPROXY=$("$GO" env GOPROXY))"

t0=$(now)
cd "$HERE"
say "downloading modules"
nice -n 10 "$GO" mod download
say "modules ready ($(since "$t0") s)"

# Version ldflags: without them /version says v0.0.0-master+$Format:%H$ (hack/lib/version.sh).
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldf="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldf+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldf+=" -X $p.gitTreeState=clean"
done

if [ $force = 1 ] || ! servers_built; then
  t=$(now)
  nice -n 10 "$GO" build -trimpath -ldflags "$ldf" -o "$BIN/.kube-apiserver.tmp" \
    k8s.io/kubernetes/cmd/kube-apiserver
  mv -f "$BIN/.kube-apiserver.tmp" "$BIN/kube-apiserver"
  say "built kube-apiserver $KUBE_VERSION ($(since "$t") s)"

  t=$(now)
  nice -n 10 "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/.etcd.tmp" go.etcd.io/etcd/server/v3
  mv -f "$BIN/.etcd.tmp" "$BIN/etcd"
  say "built etcd $ETCD_VERSION ($(since "$t") s)"

  # Check what came out before stamping it.
  v=$("$BIN/kube-apiserver" --version)
  [ "$v" = "Kubernetes $KUBE_VERSION" ] || die "kube-apiserver --version says '$v'"
  v=$("$BIN/etcd" --version | sed -n 's/^etcd Version: //p')
  [ "v$v" = "$ETCD_VERSION" ] || die "etcd --version says '$v'"
  # Servers stamped, kubelet line cleared: it is rebuilt below in any case.
  want_servers >"$STAMP"
fi

t=$(now)
nice -n 10 "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/.ferry-test-kubelet.tmp" ./kubelet
mv -f "$BIN/.ferry-test-kubelet.tmp" "$BIN/ferry-test-kubelet"
v=$("$BIN/ferry-test-kubelet" --version)
[ "$v" = "ferry-test-kubelet $KUBE_VERSION" ] || die "ferry-test-kubelet --version says '$v'"
say "built ferry-test-kubelet ($(since "$t") s)"
{ want_servers; want_kubelet; } >"$STAMP"
say "done in $(since "$t0") s: $BIN"
