# SPDX-License-Identifier: BSD-2-Clause
# test_time_base: at 1000/s with burst 1, a loop that is descheduled for more than a millisecond
# loses tokens on both sides of the comparison; alone on the machine its figures are about the
# clocks, not about the other tests.
set_tests_properties(${name} PROPERTIES RUN_SERIAL TRUE)
