# SPDX-License-Identifier: BSD-2-Clause
# regress_ctx: the allocations of the test and of libatscale go through the test's __wrap_malloc,
# which can fail one (the out-of-memory tests).
target_link_options(${name} PRIVATE -Wl,--wrap=malloc)
