# SPDX-License-Identifier: BSD-2-Clause
# Cross-builds atscale for arm64 (aarch64) on a Debian x86-64 host, and runs what it builds (the
# tests, through ctest) under qemu-user. `scripts/deps.sh --arm64` installs everything it uses:
#  - Debian's cross compiler (gcc-aarch64-linux-gnu) and qemu-user;
#  - the arm64 builds of liburcu and libunwind through multiarch (/usr/lib/aarch64-linux-gnu);
#  - the arm64 builds of Concurrency Kit and Criterion unpacked under ATS_ARM64_DEPS
#    (/opt/atscale-arm64-deps unless set): their -dev packages cannot be installed next to the
#    x86-64 ones, whose headers differ (ck_md.h describes the CPU).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(ATS_TRIPLET aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${ATS_TRIPLET}-gcc)

# The toolchain file is read again by every try_compile, where only the environment and the
# variables listed below reach it: take the prefix from the cache, then the environment.
if(NOT ATS_ARM64_DEPS)
  if(DEFINED ENV{ATS_ARM64_DEPS} AND NOT "$ENV{ATS_ARM64_DEPS}" STREQUAL "")
    set(ATS_ARM64_DEPS "$ENV{ATS_ARM64_DEPS}")
  else()
    set(ATS_ARM64_DEPS /opt/atscale-arm64-deps)
  endif()
endif()
set(ATS_ARM64_DEPS "${ATS_ARM64_DEPS}" CACHE PATH "Where the arm64 Concurrency Kit and Criterion are unpacked")
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ATS_ARM64_DEPS)
set(ATS_ARM64_LIBDIR ${ATS_ARM64_DEPS}/usr/lib/${ATS_TRIPLET})

# pkg-config (the host's) reads only arm64 .pc files: the unpacked prefix, then multiarch. The
# LIBDIR replaces the default search path, so no x86-64 .pc file can answer, and a PKG_CONFIG_PATH
# from the caller's shell (typically x86-64 paths) is dropped.
set(ENV{PKG_CONFIG_LIBDIR} "${ATS_ARM64_LIBDIR}/pkgconfig:/usr/lib/${ATS_TRIPLET}/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
unset(ENV{PKG_CONFIG_SYSROOT_DIR})

# Programs built here run under qemu, which finds the arm64 dynamic loader and libc where multiarch
# put them (libc6:arm64). No -L /usr/aarch64-linux-gnu: that prefix holds the cross toolchain's
# own glibc build, whose loader paired with multiarch's libc hangs Criterion's test runner. The
# unpacked libraries are found through LD_LIBRARY_PATH, which (unlike the RUNPATH CMake writes
# into the test binaries) also serves libraries' own dependencies (libcriterion needs libnanomsg
# from the same prefix).
find_program(ATS_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(ATS_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${ATS_QEMU_AARCH64} -E LD_LIBRARY_PATH=${ATS_ARM64_LIBDIR})
endif()
