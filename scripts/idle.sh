#!/usr/bin/env bash
# 9,000 (or N) concurrent idle connections through the release binary: edgelb's
# memory per connection, and RSS at start / held / after close, over two rounds.
#   scripts/idle.sh [N]        (default 9000; needs RLIMIT_NOFILE >= 2N+200)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-9000}"
ulimit -n "$(ulimit -Hn)"
EDGELB_IDLE_CONNECTIONS="$n" cargo test --release --test capacity -- --nocapture
