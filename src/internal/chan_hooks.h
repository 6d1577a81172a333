/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the channel module (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_CHAN_HOOKS_H
#define ATS_INTERNAL_CHAN_HOOKS_H

#include <stdatomic.h>

/* Non-zero: channels made from now on keep the fenced protocol even when their config asks for
 * light and membarrier works (as on a kernel without it), so tests prove that path too. */
extern _Atomic int ats__chan_force_fences;

#endif
