# targets.sh -- sourced by the crossbuild scripts: the one table of cross targets, and the one way
# to run the Debian 1.85 cargo for them.
#
#   cross_target NAME   NAME: s390x | arm64 (aarch64) | ppc64le (ppc64el, powerpc64le) |
#                       amd64 (x86_64, native). Sets T (Rust triple) and QEMU (the qemu-user
#                       command line that runs a T binary; empty for amd64) and LIB_FEATURES
#                       (the library's cargo feature flags for its suite under qemu: the
#                       little-endian targets leave out the `cloud` feature, object_store's
#                       S3/Azure/GCS clients: a cold build of ppc64le's suite takes 262 s
#                       without it, 470 s with it (506 and 907 unit-seconds), and they hold no
#                       byte-order or width bug of ours to find; s390x keeps it: its suite
#                       runs the S3 and Azure conformance tests under qemu, and its engine
#                       tests build those clients anyway).
#                       Returns 2 for an unknown NAME.
#   cross_pkgs SCOPE    the packages (and feature flags) a cross build names, for cross_cargo:
#                       lib = the library alone, with LIB_FEATURES; all = the library, the
#                       engine and the agent. Every build of the ferry binary, and s390x's suite
#                       (scope all), name the same packages: cargo resolves features for the
#                       packages a command names, so `-p ferry-repo-format`, `-p ferry-engine`
#                       and `-p ferry-agent` named apart gave the dependencies they share
#                       different feature sets, and object_store, reqwest, hyper, h2, rustls
#                       and the library itself were compiled two or three times per target
#                       (s390x's three builds: 490 compile units apart, 438 named alike;
#                       `cargo build --unit-graph`). Only the target selection differs.
#   cross_suite SCOPE [WS]  the targets of the suite under qemu, after cross_pkgs SCOPE: lib =
#                       every target of the library; all = the library's unit, integration tests
#                       and examples, and the engine's unit tests; the integration tests are
#                       those of workspace WS (default: the tree holding crossbuild/).
#   native_tests        why the native test binaries the cross scripts run are built with
#                       `cargo test --workspace --test NAME`, never `-p ferry-agent`: the same
#                       package set as tests/run.sh's `cargo test --workspace`, so cargo resolves
#                       the same dependency features and reuses that build (named alone, the
#                       agent's packages resolve differently and 31 units were compiled again in
#                       every CI run: tokio, hyper, reqwest, object_store, kube, the workspace's
#                       crates and the test binaries). That build also makes the native ferry
#                       binary (target/debug/ferry). (A comment only; nothing to call.)
#   cross_cargo ARGS... /usr/bin/cargo with only the Debian toolchain on PATH (a rustup
#                       cargo/rustc earlier in PATH would silently be used instead), the
#                       cross linker/runner configuration, and CARGO_TARGET_DIR = cross_dir.
#                       Runs in a subshell: the caller's PATH stays.
#   cross_dir           that target directory: FERRY_CROSS_TARGET_DIR, else CARGO_TARGET_DIR,
#                       else <workspace>/target/cross, then /by-target/T when cross_target
#                       has set T.
#                       One directory per target: cargo locks a target directory for a whole
#                       build or test run, host part included, so with one directory a build
#                       of one target in the background held up another target's tests
#                       (tests/run.sh overlaps them); the price is the host tools (build
#                       scripts, proc macros) built once per target.
# shellcheck shell=bash
CROSSBUILD_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

cross_target() {
  case "$1" in
    amd64|x86_64)                T=x86_64-unknown-linux-gnu;      QEMU="" ;;
    s390x)                       T=s390x-unknown-linux-gnu;       QEMU="qemu-s390x-static -L /usr/s390x-linux-gnu" ;;
    arm64|aarch64)               T=aarch64-unknown-linux-gnu;     QEMU="qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
    ppc64le|ppc64el|powerpc64le) T=powerpc64le-unknown-linux-gnu; QEMU="qemu-ppc64le-static -L /usr/powerpc64le-linux-gnu" ;;
    *) return 2 ;;
  esac
  case "$T" in
    aarch64-* | powerpc64le-*) LIB_FEATURES="--no-default-features" ;;
    *)                         LIB_FEATURES="" ;;
  esac
}

cross_pkgs() {
  case "$1" in
    lib) echo "-p ferry-repo-format $LIB_FEATURES" ;;
    all) echo "-p ferry-repo-format -p ferry-engine -p ferry-agent" ;;
    *) echo "cross_pkgs: unknown scope $1 (lib, all)" >&2; return 2 ;;
  esac
}

cross_suite() {
  local f ws=${2:-$(dirname "$CROSSBUILD_DIR")}
  case "$1" in
    lib) ;;
    all)
      printf -- '--lib --examples'
      for f in "$ws"/repo-format/tests/*.rs; do
        [ -e "$f" ] || { echo "cross_suite: no tests in $ws/repo-format/tests" >&2; return 2; }
        printf -- ' --test %s' "$(basename "$f" .rs)"
      done
      echo ;;
    *) echo "cross_suite: unknown scope $1 (lib, all)" >&2; return 2 ;;
  esac
}

cross_dir() {
  echo "${FERRY_CROSS_TARGET_DIR:-${CARGO_TARGET_DIR:-$(dirname "$CROSSBUILD_DIR")/target/cross}}${T:+/by-target/$T}"
}

cross_cargo() {
  ( export CARGO_TARGET_DIR; CARGO_TARGET_DIR="$(cross_dir)"
    export PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc
    unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER
    exec /usr/bin/cargo --config "$CROSSBUILD_DIR/cargo-config.toml" "$@" )
}
