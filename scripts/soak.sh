#!/usr/bin/env bash
# Soak: mixed traffic through the release binary for N minutes while backends flap
# and the listener file is reloaded (SIGHUP) every 3 s; prints a report and fails on
# any lost or corrupted byte, any client-visible failure, a refused reload, or growth
# in edgelb's descriptors or memory. See tests/soak.rs.
#   scripts/soak.sh [--minutes N]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --minutes=*) minutes="${1#*=}"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "scripts/soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
EDGELB_SOAK_SECS=$(( minutes * 60 )) cargo test --release --test soak -- --nocapture
