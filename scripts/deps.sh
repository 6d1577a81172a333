#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-2-Clause
# Installs the Debian packages atscale builds, tests and benchmarks with (only those missing).
# With --arm64, also the arm64 cross toolchain the arm64 preset uses (see install_arm64 below);
# failing to get that prints why and leaves the x86-64 set-up as it is.
set -euo pipefail
packages=(
  build-essential cmake pkg-config clang libclang-rt-14-dev     # toolchains, libFuzzer, sanitizers
  libck-dev liburcu-dev libunwind-dev libhiredis-dev            # the library's dependencies
  redis-server                                                  # the fleet limiter's tests and bench
  redis-tools                                                   # redis-cli, redis-benchmark: the example server's test
  libcriterion-dev                                              # tests
  golang-go golang-golang-x-time-dev golang-github-pkg-errors-dev dpdk-dev   # benchmark peers
  libglib2.0-dev libuv1-dev                                     # the pool's C peers (GThreadPool, uv_queue_work)
  gnuplot-nox                                                   # scripts/tail-plot.sh draws the Tail at Scale CDF
)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=""
apt_update() { [ -n "$updated" ] || $sudo apt-get update -q; updated=1; }
missing_of() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
install() {
  local missing
  mapfile -t missing < <(missing_of "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "atscale: installing ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The arm64 toolchain: the cross compiler, qemu-user, and the arm64 dependencies. liburcu and
# libunwind install next to their x86-64 builds (multiarch); Concurrency Kit's and Criterion's
# -dev packages cannot (same header paths, different contents), so their arm64 .debs and the
# libraries they load are unpacked under ATS_ARM64_DEPS, where cmake/toolchain-aarch64.cmake
# looks. The .pc files there are rewritten to point into the prefix.
arm64_prefix=${ATS_ARM64_DEPS:-/opt/atscale-arm64-deps}
arm64_unpacked=(libck0 libck-dev libcriterion3 libcriterion-dev libnanomsg5)
# Criterion runs each test in a child process that it starts by executing its own binary again.
# Under qemu-user that exec works only when the kernel hands arm64 binaries to qemu (binfmt_misc).
# qemu-user-binfmt declares the handler, but only a running systemd or binfmt-support registers
# it, and a machine may have neither (then every test dies with "Could not spawn test instance"):
# mount binfmt_misc if needed and register the declared handler by hand.
register_arm64_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -e "$dir/qemu-aarch64" ] && return 0
  if [ ! -e "$dir/register" ]; then
    $sudo mount -t binfmt_misc binfmt_misc "$dir" || { echo "atscale: cannot mount binfmt_misc on $dir" >&2; return 1; }
  fi
  [ -e "$dir/qemu-aarch64" ] && return 0
  [ -f "$conf" ] || { echo "atscale: $conf missing (qemu-user-binfmt)" >&2; return 1; }
  $sudo sh -c "cat '$conf' > '$dir/register'" || { echo "atscale: cannot register the qemu-aarch64 binfmt handler" >&2; return 1; }
}
install_arm64() {
  dpkg --print-foreign-architectures | grep -qx arm64 || { $sudo dpkg --add-architecture arm64; updated=""; }
  install gcc-aarch64-linux-gnu qemu-user qemu-user-binfmt libc6-dev:arm64 liburcu-dev:arm64 libunwind-dev:arm64 libhiredis-dev:arm64 \
    libffi8:arm64 libgit2-1.5:arm64 # the last two: what libcriterion3 loads
  register_arm64_binfmt || return 1
  local want p v
  want=$(for p in "${arm64_unpacked[@]}"; do
    v=$(apt-cache policy "$p:arm64" 2>/dev/null | sed -n 's/ *Candidate: //p')
    echo "$p:arm64=$v"
  done)
  # The marker names the packages and how they were unpacked (bump the recipe when what is done
  # to the unpacked files changes, so that a prefix made before is redone).
  local marker="$want
unpack-recipe=2"
  [ -f "$arm64_prefix/.debs" ] && [ "$(cat "$arm64_prefix/.debs")" = "$marker" ] && return 0
  if grep -q '=\(\|(none)\)$' <<<"$want"; then
    echo "atscale: no arm64 candidate for: $(grep '=\(\|(none)\)$' <<<"$want" | tr '\n' ' ')" >&2
    return 1
  fi
  echo "atscale: unpacking ${arm64_unpacked[*]} (arm64) into $arm64_prefix"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q $want >/dev/null) || { rm -rf "$tmp"; return 1; }
  $sudo mkdir -p "$arm64_prefix"
  for p in "$tmp"/*.deb; do $sudo dpkg -x "$p" "$arm64_prefix"; done
  rm -rf "$tmp"
  # The .pc files point into the prefix. Their Requires.private lines go: the tests link these
  # libraries dynamically, and pkgconf refuses a module whose private requirements it cannot find
  # (Criterion 2.4.1-2 lists boxfort, libffi, libgit2 and nanomsg, whose arm64 .pc files are not
  # installed here), even for --cflags.
  $sudo sed -i "s|^prefix=/usr\$|prefix=$arm64_prefix/usr|; s|=/usr/include\$|=$arm64_prefix/usr/include|;
                s|=/usr/lib/aarch64-linux-gnu\$|=$arm64_prefix/usr/lib/aarch64-linux-gnu|; /^Requires.private:/d" \
    "$arm64_prefix"/usr/lib/aarch64-linux-gnu/pkgconfig/*.pc
  echo "$marker" | $sudo tee "$arm64_prefix/.debs" >/dev/null
}

install "${packages[@]}"
if [ "${1:-}" = "--arm64" ]; then
  install_arm64 || { echo "atscale: the arm64 toolchain could not be installed (see above)" >&2; exit 2; }
fi
