#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# The Tail at Scale experiment (bench/bench_tail.c): runs its rows of atscale-bench (the table;
# pass --quick for a short run) and draws bench/tail_cdf.png, the tail of each policy's request
# latency distribution, with gnuplot. Without gnuplot the table still prints and the plot step
# says why it was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=build/release/bench/atscale-bench
if [ ! -x "$bench" ]; then
  cmake --preset release >/dev/null
  cmake --build --preset release -j "$(nproc)" --target atscale-bench
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
ATS_TAIL_DIR=$dir "$bench" --filter tail. "$@"
if ! command -v gnuplot >/dev/null; then
  echo "tail-plot: plot skipped: gnuplot is not installed (Debian: apt-get install gnuplot-nox)"
  exit 0
fi
for p in none replicate2 fixed adaptive tied floor; do
  [ -s "$dir/tail_$p.dat" ] || { echo "tail-plot: plot skipped: no data for tail.$p (the row failed?)"; exit 0; }
done
gnuplot <<GNUPLOT
set terminal pngcairo size 960,600 font "sans,11"
set output "bench/tail_cdf.png"
set title "Tail at Scale, scaled 1/10: requests fanning out to 10 keys on a 32-server pool"
set xlabel "request latency (ms)"
set ylabel "fraction of requests slower (1 - CDF)"
set logscale xy
set format y "10^{%L}"
set yrange [1e-4:1]
set grid
set key top right
plot for [p in "none replicate2 fixed adaptive tied"] "$dir/tail_".p.".dat" using 1:(1-\$2+1e-9) with lines lw 2 title p, \\
     "$dir/tail_floor.dat" using 1:(1-\$2+1e-9) with lines lw 2 dt 2 lc rgb "gray40" title "floor (constant service time)"
GNUPLOT
echo "tail-plot: wrote bench/tail_cdf.png"
