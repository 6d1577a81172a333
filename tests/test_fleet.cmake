# SPDX-License-Identifier: BSD-2-Clause
# test_fleet checks admission against the wall clock (at least 95% of rate * window, granted by
# four processes whose background threads must refill their leases in time): ctest runs it alone,
# not beside another test or a compile that would take the two cores from those refills.
set_tests_properties(${name} PROPERTIES RUN_SERIAL TRUE)
