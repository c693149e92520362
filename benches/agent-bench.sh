#!/usr/bin/env bash
# agent-bench.sh -- the node agent against the CLI on the same volumes: N volumes shaped like the
# peer corpus (scaled down), backed up (1) by `ferry backup` back to back, (2) by one
# `ferry agent` through N DataUploads with --concurrency C (FERRY_AGENT_BENCH_CONCURRENCY, 2)
# and (3) by that agent with --concurrency 1 (one after another inside the agent),
# against a real kube-apiserver and an s3s-fs server on loopback. Prints each run's line and the
# medians.
#
#   benches/agent-bench.sh                 3 runs, 10 volumes
#   RUNS=5 FERRY_AGENT_BENCH_VOLUMES=4 FERRY_AGENT_BENCH_CONCURRENCY=4 benches/agent-bench.sh
#
# Per-volume sizes: FERRY_AGENT_BENCH_SOURCES_MIB (24), FERRY_AGENT_BENCH_IMAGE_MIB (32, in a
# 256 MiB sparse image), FERRY_AGENT_BENCH_MEDIA_MIB (16). Needs root (loop devices, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=$(mktemp -t ferry-agent-bench.XXXXXX)
bash tests/servers.sh install >/dev/null
bash tests/servers.sh start >/dev/null
trap 'bash tests/servers.sh stop >/dev/null 2>&1 || true; rm -f "$OUT"' EXIT
# shellcheck disable=SC1091
. "${FERRY_SERVERS_DIR:-/var/cache/ferry-servers}/run/env"
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
cargo test --release -p ferry-agent --test agent --no-run 2>/dev/null
for r in $(seq "$RUNS"); do
  FERRY_AGENT_BENCH_OUT=$OUT cargo test -q --release -p ferry-agent --test agent bench_ -- --ignored --nocapture \
    --test-threads 1 2>/dev/null | grep '^agent-bench:' || { echo "run $r failed" >&2; exit 1; }
done
# Medians of the CLI wall, the agent wall, their ratio and the peak RSS (key=value lines).
awk '
  { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1], NR] = kv[2] } }
  function median(k, n,   i, j, t, s) {
    for (i = 1; i <= n; i++) s[i] = v[k, i] + 0
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (s[j] < s[i]) { t = s[i]; s[i] = s[j]; s[j] = t }
    return (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
  }
  END { printf "median of %d runs: CLI back to back %.2f s (CPU %.2f s), agent %.2f s (CPU %.2f s); machine busy CLI %.2f s, agent %.2f s (control plane %.2f s); agent/CLI %.2f; peak RSS agent %d MiB (anonymous %d, mapped files %d), CLI %d MiB; the agent one job at a time %.2f s, all at once / one at a time %.2f\n",
        NR, median("cli_s", NR), median("cli_cpu_s", NR), median("agent_s", NR), median("agent_cpu_s", NR), median("cli_busy_s", NR), median("agent_busy_s", NR), median("agent_plane_s", NR), median("ratio", NR), median("agent_rss_mib", NR), median("agent_anon_mib", NR), median("agent_file_mib", NR), median("cli_rss_mib", NR), median("one_s", NR), median("one_ratio", NR) }' "$OUT"
