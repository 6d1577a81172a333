/* SPDX-License-Identifier: BSD-2-Clause */
/* SLOW is defined when the test is built with ThreadSanitizer, which runs about ten times slower:
 * the stress tests shrink their counts under it and still cover every path. */
#ifndef ATS_TESTS_SLOW_H
#define ATS_TESTS_SLOW_H

#if defined(__SANITIZE_THREAD__)
#define SLOW 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SLOW 1
#endif
#endif

#endif
