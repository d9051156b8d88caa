#!/usr/bin/env bash
# The test command of the README: installs the outside programs the tests use
# (when missing) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test
