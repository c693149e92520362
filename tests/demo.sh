#!/usr/bin/env bash
# demo.sh [SOURCE_DIR] -- the main job on a fresh machine, no server needed: build ferry, create an
# encrypted repository in a local directory, back up SOURCE_DIR (default: /usr/share/doc), change
# nothing and back up again (incremental), restore the latest snapshot with --verify, and compare
# the restored tree with the source; then forget the older snapshot (with a prune) and check
# every byte of the repository. Work area: $FERRY_DEMO_DIR (default /tmp/ferry-demo), reset
# on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-/usr/share/doc}
DEMO=${FERRY_DEMO_DIR:-/tmp/ferry-demo}
command -v cargo >/dev/null || { echo "demo: cargo is needed (rustup)" >&2; exit 1; }
cargo build --release -q -p ferry-agent
F=$PWD/target/release/ferry
rm -rf "$DEMO" && mkdir -p "$DEMO"
export FERRY_REPOSITORY=$DEMO/repo FERRY_PASSWORD=${FERRY_PASSWORD:-demo-password} FERRY_CACHE_DIR=$DEMO/cache
echo "== ferry init ($FERRY_REPOSITORY)"
"$F" init
echo "== ferry backup $SRC"
"$F" backup --tag demo=1 "$SRC"
echo "== ferry backup $SRC (incremental)"
"$F" backup --tag demo=2 "$SRC"
echo "== ferry snapshots"
"$F" snapshots
echo "== ferry restore latest --verify"
"$F" restore latest --target "$DEMO/restore" --verify
if diff -r --no-dereference "$SRC" "$DEMO/restore" >/dev/null; then
  echo "== restored tree equals $SRC"
else
  echo "== restored tree differs from $SRC" >&2
  exit 1
fi
echo "== ferry forget --keep-last 1 --prune (marks what the older snapshot alone held)"
"$F" forget --keep-last 1 --prune
echo "== ferry check --read-data"
"$F" check --read-data
