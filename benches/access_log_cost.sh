#!/usr/bin/env bash
# The access log's cost on lbbench's new-connection rate, log off and log on (to a
# file, text) in alternation, off/on/off/on..., so both see the same machine load.
# Prints each run's req/s, LB CPU and req/s per LB core, the medians and the ratio.
#   ulimit -n 20000; bash benches/access_log_cost.sh [PAIRS=4] [REPS=2] [WRK_SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-4} reps=${2:-2} secs=${3:-5}
bench=${LBBENCH:-../shared/bench/lbbench.py}
[ -f "$bench" ] || bench=/work/shared/bench/lbbench.py
out=$(mktemp -d /tmp/edgelb-access-log-cost.XXXXXX)
wrapper="$PWD/benches/lbbench-access-log.sh"
for i in $(seq 1 "$pairs"); do
  for mode in off on; do
    env_args=()
    if [ "$mode" = on ]; then
      env_args=(--edgelb-env "EDGELB_ACCESS_LOG=$out/access-$i.log")
    fi
    cut -d' ' -f1-3 /proc/loadavg > "$out/$mode-$i.load"
    python3 "$bench" --edgelb target/release/edgelb --targets edgelb --baseline edgelb \
      --workloads conn_rate --reps "$reps" --wrk-time "$secs" \
      --edgelb-cmd "$wrapper {binary} {config}" "${env_args[@]}" \
      --json "$out/$mode-$i.json" > /dev/null 2> "$out/$mode-$i.err"
  done
done
python3 - "$out" "$pairs" <<'PY'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
rows = {"off": [], "on": []}
print("| run | log | req/s | LB CPU % | req/s per LB core | load average (1, 5, 15 min) |")
print("|---|---|---|---|---|---|")
for i in range(1, pairs + 1):
    for mode in ("off", "on"):
        d = json.load(open(f"{out}/{mode}-{i}.json"))
        for s in d["samples"]:
            if s["workload"] != "conn_rate" or not s["ok"]:
                continue
            m = s["metrics"]
            rows[mode].append(m)
            load = open(f"{out}/{mode}-{i}.load").read().strip()
            print(f"| {i}.{s['rep'] + 1} | {mode} | {m['rps']:,.0f} | {m['lb_cpu_pct']:.0f} "
                  f"| {m['rps_per_core']:,.0f} | {load} |")
med = {k: {f: statistics.median(m[f] for m in v) for f in ("rps", "lb_cpu_pct", "rps_per_core")}
       for k, v in rows.items()}
for k in ("off", "on"):
    print(f"median {k}: {med[k]['rps']:,.0f} req/s, LB CPU {med[k]['lb_cpu_pct']:.0f} %, "
          f"{med[k]['rps_per_core']:,.0f} req/s per LB core ({len(rows[k])} samples)")
print(f"on/off per LB core: {med['on']['rps_per_core'] / med['off']['rps_per_core']:.3f}; "
      f"req/s: {med['on']['rps'] / med['off']['rps']:.3f}")
lines = sum(1 for i in range(1, pairs + 1) for _ in open(f"{out}/access-{i}.log"))
print(f"access log lines written: {lines:,}; raw results in {out}")
PY
