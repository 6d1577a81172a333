#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# Turns `atscale-bench --json` lines (stdin) into the Markdown table the README shows. A row marked
# (!) hit the retake cap: its threads did not run side by side, so its figure must not be quoted.
set -euo pipefail
echo "| row | threads | median | min | max | notes |"
echo "|---|---:|---:|---:|---:|---|"
sed -E 's/^\{"name": "([^"]*)", "ns_per_op": ([0-9.]+), "min": ([0-9.]+), "max": ([0-9.]+), "threads": ([0-9]+), "peer": (true|false)(, )?(.*)\}$/\1|\5|\2|\3|\4|\8/' |
  awk -F'|' '{ flag = index($6, "retake_cap_hit") ? " (!)" : ""
               printf "| %s%s | %s | %.2f | %.2f | %.2f | %s |\n", $1, flag, $2, $3, $4, $5, $6 }'
