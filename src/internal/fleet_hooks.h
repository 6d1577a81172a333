/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the fleet modules (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_FLEET_HOOKS_H
#define ATS_INTERNAL_FLEET_HOOKS_H

#include <stdatomic.h>
#include <stdint.h>

/* Rounds (table walks) of every keyed fleet limiter's background thread: a test that refuses an
 * exhausted key checks the refusals do not each wake the thread for a walk. */
extern _Atomic uint64_t ats__fleet_keyed_rounds;

#endif
