#!/usr/bin/env bash
# What 2,000 TCP health checks a second cost (issue 5), measured twice:
#  1. loopback: backends in the same host and namespace. The kernel runs the
#     backends' half of every probe (the SYN, the half-open request and its
#     reset) inside the balancer's own system calls, so it is charged to it.
#  2. namespace: backends in another network namespace behind a veth pair whose
#     receive side runs in NAPI kernel threads, as off-host backends' work would
#     be on other hosts. The thread that receives the balancer's own packets
#     (SYN-ACKs) is counted with the balancer.
# Needs root, iproute2 and ethtool (installed if missing). Prints every run and
# the median of each; RUNS (default 5) and SECONDS_PER_RUN (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
secs=${SECONDS_PER_RUN:-10}
ns=edgelb-hc
near=elbhc0
far=elbhc1
port=9000

command -v ethtool >/dev/null || apt-get install -y -qq ethtool >/dev/null
cargo build --release --example health_cost
bin=target/release/examples/health_cost

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

cleanup() {
    [[ -n ${serve_pid:-} ]] && kill "$serve_pid" 2>/dev/null || true
    ip link del "$near" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

echo "== loopback backends"
for _ in $(seq "$runs"); do
    "$bin" "$secs" | tee /dev/stderr | sed -E 's/.* = ([0-9.]+)% of one core.*/\1/'
done 2>&1 >/tmp/edgelb-hc-loopback | cat
loopback=$(median </tmp/edgelb-hc-loopback)

echo "== backends in network namespace $ns"
ip netns add "$ns"
ip link add "$near" type veth peer name "$far" netns "$ns"
ip addr add 10.231.0.1/24 dev "$near"
ip -n "$ns" addr add 10.231.0.2/24 dev "$far"
ip -n "$ns" link set lo up
for side in "" "ip netns exec $ns"; do
    dev=$near; [[ -n $side ]] && dev=$far
    $side ip link set "$dev" up
    # veth hands packets to NAPI (and so to a kernel thread) only with GRO on,
    # toggled while up, and TSO off on the sending side.
    $side ethtool -K "$dev" gro off tso off
    $side ethtool -K "$dev" gro on
    $side sh -c "echo 1 > /sys/class/net/$dev/threaded"
done
ip netns exec "$ns" "$bin" serve "$port" &
serve_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/10.231.0.2/$port") 2>/dev/null && break
    sleep 0.1
done
napi=$(pgrep -x "napi/$near-.*" | head -1 || true)
[[ -n $napi ]] || { echo "no NAPI thread for $near" >&2; exit 1; }
backends=$(seq -s, -f "10.231.0.2:%g" "$port" $((port + 9)))
for _ in $(seq "$runs"); do
    "$bin" "$secs" --backends "$backends" --count-thread "$napi" | tee /dev/stderr |
        sed -E 's/.* = ([0-9.]+)% of one core.* = ([0-9.]+)%.*/\1 \2/'
done 2>&1 >/tmp/edgelb-hc-netns | cat
alone=$(cut -d' ' -f1 </tmp/edgelb-hc-netns | median)
netns=$(cut -d' ' -f2 </tmp/edgelb-hc-netns | median)

echo "median of $runs runs, % of one core: loopback ${loopback}; backends in a namespace ${alone} (the balancer's threads), ${netns} (with its receive thread)"
