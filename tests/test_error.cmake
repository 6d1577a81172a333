# SPDX-License-Identifier: BSD-2-Clause
# test_error: allocation failure injection and named stack frames.
# The allocator calls of the test and of libatscale.a go through the test's __wrap_* functions,
# which count live blocks and can fail the Nth allocation (the OOM tests).
target_link_options(${name} PRIVATE
  -Wl,--wrap=malloc -Wl,--wrap=calloc -Wl,--wrap=realloc -Wl,--wrap=strdup -Wl,--wrap=free)
# Dynamic symbols for the executable, so symbolized stacks name the test's functions.
set_target_properties(${name} PROPERTIES ENABLE_EXPORTS ON)
