#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# Turns `atscale-bench --json` lines (stdin) into the Markdown table the README shows.
set -euo pipefail
echo "| row | threads | median | min | max | notes |"
echo "|---|---:|---:|---:|---:|---|"
sed -E 's/^\{"name": "([^"]*)", "ns_per_op": ([0-9.]+), "min": ([0-9.]+), "max": ([0-9.]+), "threads": ([0-9]+), "peer": (true|false)(, )?(.*)\}$/\1|\5|\2|\3|\4|\8/' |
  awk -F'|' '{ printf "| %s | %s | %.2f | %.2f | %.2f | %s |\n", $1, $2, $3, $4, $5, $6 }'
