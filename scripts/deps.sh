#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# Installs the Debian packages atscale builds, tests and benchmarks with (only those missing).
set -euo pipefail
packages=(
  build-essential cmake pkg-config clang libclang-rt-14-dev     # toolchains, libFuzzer, sanitizers
  libck-dev liburcu-dev libunwind-dev libhiredis-dev            # the library's dependencies
  redis-server                                                  # the fleet limiter's tests and bench
  libcriterion-dev                                              # tests
  golang-go golang-golang-x-time-dev golang-github-pkg-errors-dev dpdk-dev   # benchmark peers
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "atscale: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
