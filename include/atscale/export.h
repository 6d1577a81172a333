/* SPDX-License-Identifier: BSD-2-Clause */
/* ATS_API: marks what libatscale exports (like libuv's UV_EXTERN).
 *
 * The library is built with -fvisibility=hidden, so only declarations marked ATS_API are in the
 * shared object's dynamic symbol table: the ats_ API, and the few ats__ symbols that public inline
 * code and macros call (each listed in tests/exported_symbols.txt, which ctest exported_symbols
 * checks the built .so against). Everything else, the test hooks included, stays inside. */
#ifndef ATSCALE_EXPORT_H
#define ATSCALE_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define ATS_API __attribute__((visibility("default")))
#else
#define ATS_API
#endif

#endif
