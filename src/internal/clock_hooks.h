/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the clock module (not part of the public API).. They exist only in
 * the test variant of the library (atscale_testing, built with -DATS_TESTING), never in the
 * installed one. */
#ifndef ATS_INTERNAL_CLOCK_HOOKS_H
#define ATS_INTERNAL_CLOCK_HOOKS_H

#include <stdatomic.h>
#include <stdint.h>

/* Added to the counter at each re-anchoring's read, as a jump of the counter (a VM migration or a
 * snapshot restore) would: the clock must notice and drop the counter. */
extern _Atomic int64_t ats__clock_fault_ticks;

/* Non-zero: the clock starts as on a CPU that reports no invariant counter (read at the first
 * clock use and by ats_clock_force(ATS_CLOCK_AUTO)), so the untrusted path runs on every machine. */
extern _Atomic int ats__clock_distrust_counter;

#endif
