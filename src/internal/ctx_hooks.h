/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the ctx module (not part of the public API).. They exist only in
 * the test variant of the library (atscale_testing, built with -DATS_TESTING), never in the
 * installed one. */
#ifndef ATS_INTERNAL_CTX_HOOKS_H
#define ATS_INTERNAL_CTX_HOOKS_H

#include "atscale/ctx.h"

#include <stdatomic.h>
#include <stdint.h>

/* The next N context allocations fail, as if memory ran out (the OOM paths must change nothing). */
extern _Atomic uint32_t ats__ctx_fail_allocs;

/* Called by ats_ctx_after_stop between its first look at the state and its acting on it (NULL:
 * nothing): a test runs a cancel and a release there, which makes the race deterministic. */
extern void (*ats__ctx_after_stop_gap)(ats_ctx_after *a);

/* Rounds of the timer thread (each a scan of the wheels and a sleep): a test that arms a far
 * deadline checks the thread sleeps rather than spins. */
extern _Atomic uint64_t ats__timer_rounds;

/* While non-zero, each start of the timer thread fails with EAGAIN (as at a momentary thread
 * limit) and takes one off. */
extern _Atomic uint32_t ats__timer_refuse_starts;

#endif
