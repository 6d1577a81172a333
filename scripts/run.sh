#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# The main job: install what is missing, build the release preset, run the demo, then print the
# benchmark table (pass --quick, --json or --filter PATTERN through to atscale-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
echo "== atscale-demo =="
build/release/atscale-demo
echo
echo "== atscale-bench =="
build/release/bench/atscale-bench "$@"
