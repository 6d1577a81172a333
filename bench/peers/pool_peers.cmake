# SPDX-License-Identifier: BSD-2-Clause
# The C peers of the worker pool and channels, each built when pkg-config finds its library:
# GLib's GThreadPool (libglib2.0-dev), libuv's thread pool (libuv1-dev), and liburcu's wait-free
# queue (liburcu-dev, which the library itself needs, so always there).
pkg_check_modules(ATS_GLIB QUIET IMPORTED_TARGET glib-2.0)
if(ATS_GLIB_FOUND)
  add_executable(glib-pool ${CMAKE_CURRENT_SOURCE_DIR}/peers/glib_pool.c)
  target_link_libraries(glib-pool PRIVATE PkgConfig::ATS_GLIB)
  set_target_properties(glib-pool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${ATS_PEER_DIR})
else()
  message(STATUS "GLib pool peer skipped: apt-get install libglib2.0-dev")
endif()

pkg_check_modules(ATS_UV QUIET IMPORTED_TARGET libuv)
if(ATS_UV_FOUND)
  add_executable(uv-pool ${CMAKE_CURRENT_SOURCE_DIR}/peers/uv_pool.c)
  target_link_libraries(uv-pool PRIVATE PkgConfig::ATS_UV)
  set_target_properties(uv-pool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${ATS_PEER_DIR})
else()
  message(STATUS "libuv pool peer skipped: apt-get install libuv1-dev")
endif()

add_executable(urcu-wfcq ${CMAKE_CURRENT_SOURCE_DIR}/peers/urcu_wfcq.c)
target_link_libraries(urcu-wfcq PRIVATE PkgConfig::URCU Threads::Threads)
set_target_properties(urcu-wfcq PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${ATS_PEER_DIR})
