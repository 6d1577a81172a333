# SPDX-License-Identifier: BSD-2-Clause
# DPDK's rte_meter as a peer: dpdk-meter times rte_meter_srtcm_color_blind_check, built only when
# pkg-config finds libdpdk (apt-get install dpdk-dev).
pkg_check_modules(ATS_DPDK QUIET IMPORTED_TARGET libdpdk)
if(ATS_DPDK_FOUND)
  add_executable(dpdk-meter ${CMAKE_CURRENT_SOURCE_DIR}/peers/dpdk_meter.c)
  target_link_libraries(dpdk-meter PRIVATE PkgConfig::ATS_DPDK)
  # DPDK's headers are not -Wstrict-prototypes/-Wshadow clean.
  target_compile_options(dpdk-meter PRIVATE -Wno-strict-prototypes -Wno-shadow -Wno-error)
  set_target_properties(dpdk-meter PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${ATS_PEER_DIR})
else()
  message(STATUS "DPDK peer skipped: apt-get install dpdk-dev")
endif()
