#!/usr/bin/env bash
# fresh-pages.sh -- what writing to page cache costs this machine when the pages are fresh.
# Writes FILES unlinked files of MIB MiB each at once (1 MiB writes, interleaved, as a backup's
# open packs fill), ROUNDS times, pausing PAUSE seconds before each round, and prints the kernel
# time and rate of every round.
#
#   benches/fresh-pages.sh [FILES MIB ROUNDS PAUSE]     default: 16 64 3 3 (1 GiB per round)
#
# Why: on a VM whose balloon reports free pages to the host (virtio-balloon free page
# reporting), a page freed a few seconds ago may have been handed back, and the first write to
# it waits for the host to supply it again; the guest sees only a slow copy
# (`copy_folio_from_iter_atomic`). Seen on this project's machines (2 cores, 2026-12-05):
# 1 GiB at once after a 3 s pause 0.4-0.6 GB/s in every round; without the pause 4.0-4.7 GB/s
# (the pages freed by the round before, not handed back yet); 256 MiB at once 1.7-2.5 GB/s after
# the pause, 3.7-5.6 without. A program that spools more at once (four backups in one
# agent: about 600 MiB of open and uploading packs, against 200 MiB for one backup) pays it on
# more of its bytes. Compare this script's figures before reading agent-bench.sh's CPU ratio on
# a new machine.
set -euo pipefail
FILES=${1:-16} MIB=${2:-64} ROUNDS=${3:-3} PAUSE=${4:-3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" "$FILES" "$MIB" "$ROUNDS" "$PAUSE" <<'PY'
import os, resource, sys, time
d, n, size, rounds, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20, int(sys.argv[4]), float(sys.argv[5])
chunk = 1 << 20
buf = os.urandom(chunk)
for r in range(rounds):
    time.sleep(pause)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    fds = []
    for i in range(n):
        p = os.path.join(d, f"f{i}")
        fds.append(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
        os.unlink(p)
    for off in range(0, size, chunk):
        for fd in fds:
            os.pwrite(fd, buf, off)
    for fd in fds:
        os.close(fd)
    sys_s = resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0
    print("round %d: %d MiB in %d files, kernel %.2f s, %.1f GB/s" % (r + 1, n * size >> 20, n, sys_s, n * size / 1e9 / max(sys_s, 1e-9)))
PY
