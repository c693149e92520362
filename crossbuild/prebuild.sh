#!/usr/bin/env bash
# prebuild.sh TARGET [SCOPE] -- compile, without running anything, what crossbuild/test.sh,
# cross-endian.sh and e2e.sh will run for TARGET: the library's test binaries, with SCOPE=all
# (default lib) the engine's unit-test binary too, and TARGET's ferry binary. Same commands,
# same target directory (targets.sh), so those scripts then find everything fresh.
# tests/run.sh starts this in the background at a low priority while the native stages run: on
# 2 cores the native test run leaves CPU idle (servers, loop devices, waiting processes), and a
# cold cross build of every dependency takes about 10 minutes per target.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/targets.sh"
case "${1:-}" in amd64|x86_64|"") false ;; *) cross_target "$1" ;; esac ||
  { echo "usage: prebuild.sh s390x|arm64|ppc64le [lib|all]" >&2; exit 2; }
cd "$(dirname "$HERE")"
start=$(date +%s)
cross_cargo test --no-run -q --target "$T" -p ferry-repo-format
[ "${2:-lib}" = lib ] || cross_cargo test --no-run -q --target "$T" -p ferry-engine --lib
cross_cargo build -q --target "$T" -p ferry-agent --bin ferry
echo "prebuild.sh: $T built in $(( $(date +%s) - start )) s"
