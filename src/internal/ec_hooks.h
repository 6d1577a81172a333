/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the eventcount parking (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_EC_HOOKS_H
#define ATS_INTERNAL_EC_HOOKS_H

#include <stdatomic.h>

/* Non-zero: ats__ec_park sleeps as on a kernel without futex_waitv (Linux < 5.16), so tests prove
 * that path on any kernel. Set at load when the environment has ATS_TEST_NO_FUTEX_WAITV=1, so
 * that whole suites run that way (scripts/test.sh). */
extern _Atomic int ats__ec_force_no_waitv;

/* How many sleeps took that path (ats__ec_park's fallback, or a watcher's sleep). */
extern _Atomic unsigned long ats__ec_fallback_sleeps;

#endif
