/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the asymmetric fence (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_MEMBARRIER_HOOKS_H
#define ATS_INTERNAL_MEMBARRIER_HOOKS_H

#include <stdatomic.h>

/* Non-zero: ats__membarrier_ready() says false, as on a kernel (or in a sandbox) without
 * membarrier, so tests prove the paths that keep their fences: light channels made from then on
 * are fenced, heartbeat waiters poll. Set at load when the environment has
 * ATS_TEST_NO_MEMBARRIER=1, so that whole suites run that way (scripts/test.sh). */
extern _Atomic int ats__membarrier_force_off;

#endif
