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
