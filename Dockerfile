# syntax=docker/dockerfile:1
#
# Multi-arch image of the Ferry node agent (binary `ferry`, package `agent`).
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/ppc64le,linux/s390x -t ferry .
#   docker buildx build --platform linux/s390x --build-arg FERRY_VARIANT=z15 -t ferry:z15 .
#
# How it builds: CROSS-COMPILATION on the build platform, not a native build per platform.
# The builder stage always runs natively on $BUILDPLATFORM (an x86_64 host) and uses exactly
# the toolchain the project tests with (crossbuild/README.md): Debian
# bookworm's rustc-web/cargo-web 1.85, the same version's libstd for arm64/ppc64el/s390x and
# Debian's cross gcc for the C parts (zstd, bundled SQLite, BLAKE3, aws-lc). Why not native
# per platform: under buildx's qemu emulation rustc runs 10-20x slower (an s390x release build
# takes the better part of an hour instead of minutes), and the binaries would come from a
# different toolchain than the one CI tests. The toolchain layer does not depend on
# TARGETARCH, so it is built once and shared by all four platforms.
# Requirement: the build host must be linux/amd64 (crossbuild/install.sh checks this).
#
# Files needed in the build context: Cargo.toml, Cargo.lock (committed: the build is --locked,
# the lockfile is what keeps every dependency buildable with 1.85), repo-format/, agent/,
# benches/, crossbuild/. Add new workspace members here.

ARG DEBIAN_RELEASE=bookworm

FROM --platform=$BUILDPLATFORM debian:${DEBIAN_RELEASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY crossbuild/ crossbuild/
# Toolchain only (no qemu: nothing runs here). Pinned to rustc-web 1.85 inside install.sh.
RUN FERRY_INSTALL_QEMU=0 crossbuild/install.sh && rm -rf /var/lib/apt/lists/* /var/cache/ferry-crossbuild/debs
COPY Cargo.toml Cargo.lock ./
COPY repo-format/ repo-format/
COPY agent/ agent/
# repo-format declares its bench at ../benches/pipeline.rs; cargo needs the file to exist.
COPY benches/ benches/
ARG TARGETARCH
# Optional tuned build: arm64 crypto, ppc64le power9|power10, s390x z14|z15 (see
# crossbuild/build-release.sh). Empty = baseline CPU of the architecture.
ARG FERRY_VARIANT=""
RUN --mount=type=cache,target=/root/.cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=ferry-target-${TARGETARCH},sharing=locked \
    crossbuild/build-release.sh "${TARGETARCH}" ${FERRY_VARIANT} --locked \
 && install -D -m 0755 "dist/ferry-${TARGETARCH}${FERRY_VARIANT:+-${FERRY_VARIANT}}" /out/ferry

FROM debian:${DEBIAN_RELEASE}-slim
# util-linux: fsfreeze (and blockdev/losetup) for consistent snapshots of mounted filesystems;
# ca-certificates: TLS to S3/Azure/GCS endpoints. Unpinned on purpose so that a rebuild picks
# up Debian security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/ferry /usr/local/bin/ferry
# No USER: the agent runs as root on purpose. It is a node agent that freezes filesystems
# (FIFREEZE via fsfreeze), opens block devices and reads every file on the node, all of which
# need root (CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH); a non-root image cannot do its job. Confine it
# with the pod's securityContext/capabilities instead.
ENTRYPOINT ["/usr/local/bin/ferry"]
