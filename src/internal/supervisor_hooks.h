/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the supervisor module (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_SUPERVISOR_HOOKS_H
#define ATS_INTERNAL_SUPERVISOR_HOOKS_H

#include <stdatomic.h>

/* The next N ward starts fail as if no thread could be made (EAGAIN); negative: every start does,
 * until the test sets it back to 0. */
extern _Atomic int ats__sup_refuse_starts;

#endif
