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

#endif
