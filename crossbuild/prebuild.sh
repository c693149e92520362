#!/usr/bin/env bash
# prebuild.sh TARGET [WHAT...] -- compile, without running anything, what crossbuild/test.sh,
# cross-endian.sh and e2e.sh will run for TARGET. WHAT (default: all bin): lib = the library's
# test binaries (test.sh with FERRY_CROSS_SCOPE=lib), all = those and the engine's unit-test
# binary (test.sh's default scope), bin = TARGET's ferry binary. Same commands, same packages,
# same target directory (targets.sh), so those scripts then find everything fresh.
# tests/run.sh starts these in the background at a low priority while the native stages run: on
# 2 cores the native test run leaves CPU idle (servers, loop devices, waiting processes), and a
# cold cross build of every dependency takes about 10 minutes per target.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/targets.sh"
case "${1:-}" in amd64|x86_64|"") false ;; *) cross_target "$1" ;; esac ||
  { echo "usage: prebuild.sh s390x|arm64|ppc64le [lib|all|bin]..." >&2; exit 2; }
shift
cd "$(dirname "$HERE")"
start=$(date +%s)
for what in "${@:-all bin}"; do
  for w in $what; do
    case $w in
      lib | all) cross_cargo test --no-run -q --target "$T" $(cross_pkgs "$w") $(cross_suite "$w") ;;
      bin) cross_cargo build -q --target "$T" $(cross_pkgs all) --bin ferry ;;
      *) echo "prebuild.sh: unknown part $w (lib, all, bin)" >&2; exit 2 ;;
    esac
  done
done
echo "prebuild.sh: $T ${*:-all bin} built in $(( $(date +%s) - start )) s"
