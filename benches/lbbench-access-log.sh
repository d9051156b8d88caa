#!/usr/bin/env bash
# lbbench's edgelb command with the access log on: `edgelb run` on lbbench's
# generated file with a [global] section prepended when EDGELB_ACCESS_LOG is set
# (lbbench writes no [global] of its own). For the log on/off measurement in the
# README ("Access log cost"):
#   python3 ../shared/bench/lbbench.py --edgelb target/release/edgelb \
#     --edgelb-cmd 'benches/lbbench-access-log.sh {binary} {config}' \
#     --edgelb-env EDGELB_ACCESS_LOG=/tmp/edgelb-bench-access.log ...
set -euo pipefail
binary=$1 config=$2
if [ -n "${EDGELB_ACCESS_LOG:-}" ]; then
  with_log="${config%.toml}-access-log.toml"
  {
    printf '[global]\naccess_log = "%s"\naccess_log_format = "%s"\n\n' \
      "$EDGELB_ACCESS_LOG" "${EDGELB_ACCESS_LOG_FORMAT:-text}"
    cat "$config"
  } > "$with_log"
  config=$with_log
fi
# exec: lbbench watches this PID and signals it.
exec "$binary" run --config "$config"
