# SPDX-License-Identifier: BSD-2-Clause
# stress_error: frees go through the test's __wrap_free, which counts how often each watched
# error was freed (exact reference counting under concurrent ref/unref).
target_link_options(${name} PRIVATE -Wl,--wrap=free)
