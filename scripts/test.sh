#!/usr/bin/env bash
# The test command of the README. Installs the outside programs the tests talk to
# when they are missing (nginx and HAProxy as PROXY-protocol peers, Chromium to
# render the status page, BIRD 2 and nftables for the fleet test, logrotate to run
# the shipped rotation config, the official Alibaba Cloud Python SDK for the
# control-API interop test), runs the whole suite, then fails if anything the suite
# started outlived it. Needs root for the installs (apt-get), as on CI and dev
# machines.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt-get install PACKAGE...: as root, without letting packages start system daemons.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the tests need $*; run as root to install them" >&2
    exit 1
  fi
  echo "scripts/test.sh: installing $*"
  # Keep the packages' scripts from starting system daemons: tests start their own.
  local created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  if [ "$created_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/bin/chromium ] || need+=(chromium)
# tests/fleet: BGP on every node and the router, flow stickiness on the router.
[ -x /usr/sbin/bird ] || need+=(bird2)
[ -x /usr/sbin/nft ] || need+=(nftables)
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
# tests/access_log_binary.rs runs config/logrotate.conf against the binary.
[ -x /usr/sbin/logrotate ] || need+=(logrotate)
if [ "${#need[@]}" -gt 0 ]; then apt_install "${need[@]}"; fi

# tests/api.rs `sdk_interop` runs tests/sdk_interop.py with this exact SDK version,
# from a virtual environment of the project's own: the system Python is left alone.
sdk=alibabacloud-ens20171110==12.1.0
venv="$(realpath -m "${CARGO_TARGET_DIR:-target}")/sdk-venv"
if [ ! -x "$venv/bin/python3" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's own python3 makes a venv only with python3-venv (ensurepip).
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
fi
if ! "$venv/bin/python3" -c 'import importlib.metadata as m; assert m.version("alibabacloud-ens20171110") == "12.1.0"' 2>/dev/null; then
  echo "scripts/test.sh: installing $sdk into $venv"
  "$venv/bin/python3" -m pip install --quiet "$sdk"
fi
export EDGELB_SDK_PYTHON="$venv/bin/python3"

# Issue 20: pids of live orphans (parent PID 1) naming one of the suite's temporary
# directories ($TMPDIR/edgelb-*) in their command line or open files (nginx's
# worker renames itself but keeps its error log open), each with its command line.
orphans() {
  local tmp="${TMPDIR:-/tmp}" proc stat state ppid cmdline
  tmp="${tmp%/}/edgelb-"
  for proc in /proc/[0-9]*; do
    stat=$(cat "$proc/stat" 2>/dev/null) || continue
    # After the command name, in parentheses and possibly with spaces: state, ppid.
    read -r state ppid _ <<< "${stat##*) }"
    if [ "$state" = Z ] || [ "$ppid" != 1 ]; then continue; fi
    cmdline=$(tr '\0' ' ' < "$proc/cmdline" 2>/dev/null) || continue
    if [[ $cmdline == *"$tmp"* ]] || ls -l "$proc/fd" 2>/dev/null | grep -qF "$tmp"; then
      echo "${proc#/proc/} $cmdline"
    fi
  done
}
# Those already there are not this run's.
before=$(orphans | cut -d' ' -f1)

status=0
cargo test || status=$?

left=$(awk 'NR == FNR { old[$1]; next } !($1 in old)' <(echo "$before") <(orphans))
if [ -n "$left" ]; then
  echo "scripts/test.sh: the suite left these processes running (issue 20):" >&2
  echo "$left" >&2
  status=1
fi
exit "$status"
