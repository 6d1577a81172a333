# SPDX-License-Identifier: BSD-2-Clause
# test_fleet_keyed: the proof tests time a real redis-server and two instances against the rate
# (>= 90% admission), so they run alone rather than beside another test binary on the same cores.
set_tests_properties(${name} PROPERTIES RUN_SERIAL TRUE)
