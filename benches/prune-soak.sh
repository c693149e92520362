#!/usr/bin/env bash
# prune-soak.sh [TRIALS] [ROUNDS] -- the chaos test of agent/tests/cli/prune.rs at length: backups
# from two processes and a prune in every trial, kill -9 landing at random in any of them, a
# structural check every 10 trials, then `check --read-data` and an exact restore of every
# snapshot whose backup reported success. Each round uses a new random seed (printed, so a
# failure can be replayed with FERRY_PRUNE_SEED=...). Default: 300 trials, 1 round.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-300}
ROUNDS=${2:-1}
for r in $(seq 1 "$ROUNDS"); do
  FERRY_PRUNE_TRIALS=$TRIALS cargo test --release -q -p ferry-agent --test cli \
    prune::backups_and_prunes_killed_at_random_lose_no_reported_snapshot -- --nocapture 2>&1 |
    grep -E "chaos seed|trials in|panicked|test result|differs|damaged"
done
