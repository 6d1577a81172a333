#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# The whole test suite: Criterion tests and the example server's end-to-end test (ctest
# example_server) in release and in ASan+UBSan, the concurrent tests under TSan, every fuzz target
# briefly on its seed corpus, the install/consumer test, and a benchmark smoke run (no thresholds).
# Warnings are errors. Set ATS_FUZZ_SECONDS to fuzz longer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
fuzz_seconds=${ATS_FUZZ_SECONDS:-15}
step() { printf '\n==== %s ====\n' "$*"; }
total=0
# ctest over one build; adds its test count to the total (a failure stops the script). With
# ATS_CTEST_WRAPPER set, ctest runs under that command (it and the tests inherit what it sets up).
run_ctest() {
  local log
  log=$(mktemp)
  ${ATS_CTEST_WRAPPER:-} ctest --output-on-failure --no-tests=error -j "$jobs" "$@" | tee "$log"
  total=$((total + $(sed -n 's/.* tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1)))
  rm -f "$log"
}

step "release build and unit tests"
cmake --preset release -DATS_WERROR=ON >/dev/null
cmake --build --preset release -j "$jobs"
run_ctest --test-dir build/release

step "the suites under each source of the default clock"
# The default clock (clock.h) takes tsc or monotonic, as the CPU allows, so the whole suite, which
# ran above under this machine's choice, runs again under the other one; the clock-reading suites
# (limiter, keyed, ctx, time base) also run under coarse, which is only ever the user's choice. A
# source this machine cannot give is named, not passed over.
clock_suites='^(test|stress)_(limiter|limiter_wait|keyed|ctx|time_base|clock)$'
auto=$(build/release/tests/clock_probe)
echo "the automatic choice: $auto"
for source in tsc monotonic coarse; do
  got=$(ATS_CLOCK=$source build/release/tests/clock_probe)
  if [ "${got%% *}" != "$source" ]; then
    echo "clock source $source: this machine cannot give it: $got"
    continue
  fi
  if [ "$source" = "${auto%% *}" ]; then
    echo "clock source $source: the automatic choice, run above"
    continue
  fi
  echo "clock source $source: $got"
  suites='^(test|stress|regress)_'
  [ "$source" = coarse ] && suites=$clock_suites
  ATS_CLOCK=$source run_ctest --test-dir build/release -R "$suites"
done

step "the parking and per-CPU suites as on older kernels, sandboxes and C libraries"
# Linux before 5.16 has no futex_waitv: ATS_TEST_NO_FUTEX_WAITV=1 makes the test build park as it
# does there (src/internal/ec.c). Before 4.14, or in a sandbox that filters it, there is no
# membarrier: ATS_TEST_NO_MEMBARRIER=1 (light channels stay fenced, heartbeat waiters poll).
# glibc before 2.35, or a kernel without rseq, gives no rseq area: the tunable makes glibc register
# none, so the CPU is read with sched_getcpu (internal/cpu.h).
parking_suites='^(test|stress)_(chan|pool|hedge|heartbeat|supervisor|bridge|limiter)$'
ATS_TEST_NO_FUTEX_WAITV=1 ATS_TEST_NO_MEMBARRIER=1 GLIBC_TUNABLES=glibc.pthread.rseq=0 \
  run_ctest --test-dir build/release -R "$parking_suites"

step "the parking suites in a sandbox that refuses futex_waitv and membarrier"
# The hooks above skip those calls; a container runtime's or service manager's seccomp profile
# written before the calls existed refuses them instead (EPERM), and the library must find that
# out by itself. tests/sandbox_run installs such a filter and runs ctest under it.
if build/release/tests/sandbox_run true; then
  ATS_CTEST_WRAPPER=build/release/tests/sandbox_run run_ctest --test-dir build/release -R "$parking_suites"
else
  echo "no seccomp filter can be installed on this machine: step skipped"
fi

step "the whole suite on one CPU"
# As in a container given one CPU: every waiter that spins must let the thread it waits for run
# on the same CPU (internal/spin.h), and the concurrent tests meet other interleavings than on
# several. This shell is pinned to the first CPU it may use for the step (children inherit it).
cpus=$(taskset -pc $$ | sed 's/.*: *//')
taskset -pc "${cpus%%[-,]*}" $$ >/dev/null
run_ctest --test-dir build/release -R '^(test|stress|regress)_'
taskset -pc "$cpus" $$ >/dev/null

step "ASan + UBSan build and all tests"
cmake --preset asan -DATS_WERROR=ON >/dev/null
cmake --build --preset asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_ctest --test-dir build/asan

step "TSan build and the concurrent tests"
cmake --preset tsan -DATS_WERROR=ON >/dev/null
cmake --build --preset tsan -j "$jobs"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp" \
  run_ctest --test-dir build/tsan -L concurrent

step "fuzz targets, ${fuzz_seconds}s each on the seed corpus"
cmake --preset fuzz -DATS_WERROR=ON -DATS_FUZZ_SECONDS="$fuzz_seconds" >/dev/null
cmake --build --preset fuzz -j "$jobs"
run_ctest --test-dir build/fuzz -L fuzz

step "benchmark smoke run"
build/release/bench/atscale-bench --quick --json > build/release/bench-smoke.json
rows=$(grep -c '"ns_per_op"' build/release/bench-smoke.json)
echo "benchmark smoke run: $rows rows"
[ "$rows" -gt 0 ]
total=$((total + 1))

step "arm64 build and release tests under qemu"
# A plain command, so that a failure there stops the run (set -e); it writes its count to fd 3.
arm64_count=$(mktemp)
scripts/test-arm64.sh 3>"$arm64_count"
total=$((total + $(cat "$arm64_count")))
rm -f "$arm64_count"
echo
echo "atscale: $total passed, 0 failed"
