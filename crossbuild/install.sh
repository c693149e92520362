#!/usr/bin/env bash
# Install the Ferry cross-build toolchain on Debian bookworm x86_64 (run as root).
#
#  * rustc-web + cargo-web pinned to Debian's 1.85 build (the project's MSRV; see
#    crossbuild/README.md). bookworm-security carries a newer rustc-web for amd64,
#    so an unpinned install would move off 1.85.
#  * The same version's target standard library (libstd-rust-web-dev) for arm64, ppc64el and
#    s390x, fetched with `apt-get download pkg:arch` and unpacked with `dpkg -x` into / .
#    It is NOT installed through multiarch apt (that pulls conflicting :arch dependencies);
#    the foreign package indexes live in a private apt state dir, so dpkg's architecture list
#    and the system's apt lists are left untouched.
#  * Debian's cross gcc + libc6-dev-*-cross (linkers and C compilers for cc-rs crates).
#  * qemu-user-static, used as the cargo runner (no binfmt registration needed).
#
# Idempotent: every step checks first and is skipped when already done.
# Override the pin with FERRY_RUST_VERSION=<debian version> (must be a 1.85 build).
# FERRY_INSTALL_QEMU=0 skips qemu-user-static (image builds that only compile, see Dockerfile).
set -euo pipefail

PIN_DEFAULT="1.85.0+dfsg3-1~deb12u3"
PIN="${FERRY_RUST_VERSION:-$PIN_DEFAULT}"
STATE=/var/cache/ferry-crossbuild          # private apt lists + downloaded .debs + stamps
FOREIGN_ARCHES="arm64 ppc64el s390x"
declare -A TRIPLE=([arm64]=aarch64-unknown-linux-gnu [ppc64el]=powerpc64le-unknown-linux-gnu [s390x]=s390x-unknown-linux-gnu)
declare -A GNU=([arm64]=aarch64-linux-gnu [ppc64el]=powerpc64le-linux-gnu [s390x]=s390x-linux-gnu)

export DEBIAN_FRONTEND=noninteractive
log() { printf '[install.sh] %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "install.sh: must run as root" >&2; exit 1; }
[ "$(dpkg --print-architecture)" = amd64 ] || { echo "install.sh: expects an amd64 host" >&2; exit 1; }

T0=$(date +%s)
UPDATED=0
apt_update_once() {
  if [ "$UPDATED" = 0 ]; then log "apt-get update"; apt-get update -qq; UPDATED=1; fi
}
installed_version() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$1" 2>/dev/null | sed -n 's/^.i[^ ]* *//p'; }

# ---- 1. rustc-web / cargo-web pinned to 1.85 -------------------------------------------
if [ "$(installed_version rustc-web)" = "$PIN" ] && [ "$(installed_version cargo-web)" = "$PIN" ]; then
  log "rustc-web/cargo-web $PIN already installed: skip"
else
  apt_update_once
  if ! apt-cache madison rustc-web | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -qxF "$PIN"; then
    # The archive may carry a rebuilt 1.85 (e.g. a later ~deb12uN). Any 1.85.x build is fine
    # as long as rustc, cargo and all target std libs use that same version (rlib metadata
    # must match the compiler exactly), so adapt the pin to it.
    ALT=$(apt-cache madison rustc-web | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep '^1\.85\.' | head -n1 || true)
    [ -n "$ALT" ] || { echo "install.sh: no rustc-web 1.85 build in the archive (apt-cache madison rustc-web)" >&2; exit 1; }
    log "pin $PIN not in the archive; using the archive's 1.85 build $ALT instead"
    PIN="$ALT"
  fi
  log "installing rustc-web=$PIN cargo-web=$PIN (+ libstd-rust-web-dev/-1.85 at the same version)"
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "rustc-web=$PIN" "cargo-web=$PIN" "libstd-rust-web-dev=$PIN" "libstd-rust-web-1.85=$PIN"
  # Keep `apt-get upgrade` from moving to bookworm-security's newer rustc-web.
  apt-mark hold rustc-web cargo-web libstd-rust-web-dev libstd-rust-web-1.85 >/dev/null
fi
PIN="$(installed_version rustc-web)"   # from here on: the version actually installed

# ---- 2. cross gcc, libc headers, qemu --------------------------------------------------
QEMU="${FERRY_INSTALL_QEMU:-1}"
PKGS="ca-certificates"   # cargo-web fetches crates.io over TLS (not pulled in with --no-install-recommends)
[ "$QEMU" = 0 ] || PKGS="$PKGS qemu-user-static"
for a in $FOREIGN_ARCHES; do PKGS="$PKGS gcc-${GNU[$a]} libc6-dev-$a-cross"; done
MISSING=""
for p in $PKGS; do [ -n "$(installed_version "$p")" ] || MISSING="$MISSING $p"; done
if [ -z "$MISSING" ]; then
  log "cross gcc / libc6-dev-*-cross$([ "$QEMU" = 0 ] || echo " / qemu-user-static") already installed: skip"
else
  apt_update_once
  log "installing:$MISSING"
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $MISSING
fi

# ---- 3. target standard libraries (apt-get download + dpkg -x) -------------------------
NEED=""
for a in $FOREIGN_ARCHES; do
  stamp="$STATE/stamp-libstd-$a"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PIN" ] && \
     compgen -G "/usr/lib/rustlib/${TRIPLE[$a]}/lib/libstd-*.rlib" >/dev/null; then
    log "libstd-rust-web-dev:$a $PIN already unpacked: skip"
  else
    NEED="$NEED $a"
  fi
done
if [ -n "$NEED" ]; then
  mkdir -p "$STATE/lists/partial" "$STATE/archives/partial" "$STATE/debs"
  SRC="$STATE/sources.list"
  # Only bookworm main: the 1.85 builds live there (bookworm-security only has newer rustc-web).
  echo "deb [arch=arm64,ppc64el,s390x signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" > "$SRC"
  APTOPT=(-o "Dir::State::Lists=$STATE/lists" -o "Dir::Cache::Archives=$STATE/archives"
          -o "Dir::Etc::SourceList=$SRC" -o "Dir::Etc::SourceParts=-"
          -o "APT::Architectures=amd64,arm64,ppc64el,s390x" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root")
  log "apt-get update (private lists for arm64/ppc64el/s390x in $STATE)"
  apt-get "${APTOPT[@]}" update -qq
  for a in $NEED; do
    deb="$STATE/debs/libstd-rust-web-dev_${PIN//:/%3a}_$a.deb"   # apt's file name (epoch ':' -> %3a)
    if [ ! -f "$deb" ]; then
      log "apt-get download libstd-rust-web-dev:$a=$PIN"
      (cd "$STATE/debs" && apt-get "${APTOPT[@]}" download "libstd-rust-web-dev:$a=$PIN")
      [ -f "$deb" ] || { echo "install.sh: download did not produce $deb" >&2; exit 1; }
    fi
    log "dpkg -x $(basename "$deb") /"
    dpkg -x "$deb" /
    echo "$PIN" > "$STATE/stamp-libstd-$a"
  done
fi

# ---- 4. sanity check --------------------------------------------------------------------
RV=$(/usr/bin/rustc -V)
case "$RV" in "rustc 1.85."*) ;; *) echo "install.sh: /usr/bin/rustc is '$RV', expected 1.85" >&2; exit 1;; esac
for a in $FOREIGN_ARCHES; do
  t=${TRIPLE[$a]}
  compgen -G "/usr/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null || { echo "install.sh: no std for $t" >&2; exit 1; }
  command -v "${GNU[$a]}-gcc" >/dev/null || { echo "install.sh: ${GNU[$a]}-gcc missing" >&2; exit 1; }
done
if [ "$QEMU" != 0 ]; then
  for q in qemu-aarch64-static qemu-ppc64le-static qemu-s390x-static; do
    command -v "$q" >/dev/null || { echo "install.sh: $q missing" >&2; exit 1; }
  done
fi
log "ok: $RV, $(/usr/bin/cargo -V), std for aarch64/powerpc64le/s390x, cross gcc$([ "$QEMU" = 0 ] || echo ", qemu-user-static") ($(( $(date +%s) - T0 ))s)"
