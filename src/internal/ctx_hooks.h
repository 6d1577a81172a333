/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the ctx module (not part of the public API).. They exist only in
 * the test variant of the library (atscale_testing, built with -DATS_TESTING), never in the
 * installed one. */
#ifndef ATS_INTERNAL_CTX_HOOKS_H
#define ATS_INTERNAL_CTX_HOOKS_H

#include <stdatomic.h>
#include <stdint.h>

/* The next N context allocations fail, as if memory ran out (the OOM paths must change nothing). */
extern _Atomic uint32_t ats__ctx_fail_allocs;

#endif
