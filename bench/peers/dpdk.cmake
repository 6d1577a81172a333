# SPDX-License-Identifier: BSD-2-Clause
# DPDK as a peer, built only when pkg-config finds libdpdk (apt-get install dpdk-dev):
# dpdk-meter times rte_meter_srtcm_color_blind_check against the limiters, dpdk-ring times rte_ring
# against the channels.
pkg_check_modules(ATS_DPDK QUIET IMPORTED_TARGET libdpdk)
if(ATS_DPDK_FOUND)
  foreach(peer meter ring)
    add_executable(dpdk-${peer} ${CMAKE_CURRENT_SOURCE_DIR}/peers/dpdk_${peer}.c)
    target_link_libraries(dpdk-${peer} PRIVATE PkgConfig::ATS_DPDK Threads::Threads)
    # DPDK's headers are not -Wstrict-prototypes/-Wshadow clean.
    target_compile_options(dpdk-${peer} PRIVATE -Wno-strict-prototypes -Wno-shadow -Wno-error)
    set_target_properties(dpdk-${peer} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${ATS_PEER_DIR})
  endforeach()
else()
  message(STATUS "DPDK peers skipped: apt-get install dpdk-dev")
endif()
