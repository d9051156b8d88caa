#!/usr/bin/env bash
# The test command of the README. Installs the outside programs the tests talk to
# when they are missing (nginx and HAProxy as PROXY-protocol peers, Chromium to
# render the status page, the official Alibaba Cloud Python SDK for the control-API
# interop test), then runs the whole suite. Needs root for the installs (apt-get),
# as on CI and dev machines.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the tests need ${need[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "scripts/test.sh: installing ${need[*]}"
  # Keep the packages' scripts from starting system daemons: tests start their own.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ "$created_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# tests/api.rs `sdk_interop` runs tests/sdk_interop.py with this exact SDK version.
sdk=alibabacloud-ens20171110==12.1.0
if ! python3 -c 'import importlib.metadata as m; assert m.version("alibabacloud-ens20171110") == "12.1.0"' 2>/dev/null; then
  echo "scripts/test.sh: installing $sdk"
  # A Debian system python refuses plain pip installs (PEP 668); CI's is disposable.
  python3 -m pip install --quiet "$sdk" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "$sdk"
fi

cargo test
