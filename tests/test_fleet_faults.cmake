# SPDX-License-Identifier: BSD-2-Clause
# test_fleet_faults: times each acquire (none may wait on the network) and counts against a real
# redis-server, so it runs alone rather than beside another test binary on the same cores.
set_tests_properties(${name} PROPERTIES RUN_SERIAL TRUE)
