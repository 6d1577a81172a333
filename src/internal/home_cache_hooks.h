/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the home cache (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_HOME_CACHE_HOOKS_H
#define ATS_INTERNAL_HOME_CACHE_HOOKS_H

#include <stdatomic.h>

/* Homes made and not yet freed: a test that lets its threads exit and gives every block back
 * expects this back where it started. */
extern _Atomic long ats__homes_alive;

#endif
