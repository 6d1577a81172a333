# SPDX-License-Identifier: BSD-2-Clause
# regress_ctx: the allocations of the test and of libatscale go through the test's __wrap_malloc,
# which can fail one (the out-of-memory tests).
target_link_options(${name} PRIVATE -Wl,--wrap=malloc)
# A cross build runs its tests under an emulator (qemu-user), which cannot start a thread in the
# child of a fork: the fork test skips there, saying so.
if(CMAKE_CROSSCOMPILING)
  target_compile_definitions(${name} PRIVATE ATS_TEST_EMULATED=1)
endif()
