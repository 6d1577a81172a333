# SPDX-License-Identifier: BSD-2-Clause
# Finds atscale's dependencies with pkg-config. A missing one stops the configure step with the
# Debian package that provides it, so the fix is one apt-get away.
find_package(Threads REQUIRED)
find_package(PkgConfig)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "atscale needs pkg-config: apt-get install pkg-config")
endif()

# ats_require(<prefix> <pkg-config module> <Debian package>)
function(ats_require prefix module debian_package)
  pkg_check_modules(${prefix} QUIET IMPORTED_TARGET GLOBAL ${module})
  if(NOT ${prefix}_FOUND)
    message(FATAL_ERROR "atscale needs ${module} (pkg-config module '${module}' not found): apt-get install ${debian_package}")
  endif()
endfunction()

ats_require(CK ck libck-dev)                  # linked: the channels' ck_ring and ck_ec
ats_require(URCU liburcu liburcu-dev)         # linked: keyed's RCU (memb flavour)
ats_require(UNWIND libunwind libunwind-dev)   # linked: error stacks
if(ATS_BUILD_BENCH)
  ats_require(URCU_CDS liburcu-cds liburcu-dev) # the benchmark's cds_lfht comparison only
endif()
ats_require(HIREDIS hiredis libhiredis-dev)     # linked: the fleet limiter's Redis client

# Concurrency Kit's headers are built for one CPU (ck_md.h: its memory model; ck.pc: a -D of the
# architecture macro), and the x86-64 and arm64 ones share a path. A cross build that picks up the
# host's would compile x86 atomics for arm64 or fail deep inside ck_pr.h, so check them here
# against the compiler's own target, and link the library to check its architecture too.
include(CheckCSourceCompiles)
include(CMakePushCheckState)
cmake_push_check_state(RESET)
set(CMAKE_REQUIRED_LIBRARIES PkgConfig::CK)
set(CMAKE_REQUIRED_QUIET ON)
check_c_source_compiles([[
#include <ck_md.h>
#include <ck_pr.h>
#if defined(__aarch64__) && (defined(__x86_64__) || defined(__i386__) || defined(CK_MD_TSO))
#error "x86 Concurrency Kit headers in an arm64 build"
#endif
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__aarch64__) || !defined(CK_MD_TSO))
#error "non-x86 Concurrency Kit headers in an x86 build"
#endif
int main(void) { int x = 0; ck_pr_inc_int(&x); return x != 1; }
]] ATS_CK_MATCHES_TARGET)
cmake_pop_check_state()
if(NOT ATS_CK_MATCHES_TARGET)
  unset(ATS_CK_MATCHES_TARGET CACHE) # check again on the next configure, once fixed
  execute_process(COMMAND ${PKG_CONFIG_EXECUTABLE} --variable=pcfiledir ck OUTPUT_VARIABLE ck_pc_dir
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  message(FATAL_ERROR "atscale: the Concurrency Kit found (ck.pc in ${ck_pc_dir}, headers in "
          "${CK_INCLUDE_DIRS}) is not built for this target (${CMAKE_SYSTEM_PROCESSOR}): "
          "its ck_md.h or library is another architecture's. For arm64, run scripts/deps.sh --arm64 "
          "and configure with the arm64 preset, which reads ck from ATS_ARM64_DEPS.")
endif()
