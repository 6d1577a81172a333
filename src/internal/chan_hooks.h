/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the channel module (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_CHAN_HOOKS_H
#define ATS_INTERNAL_CHAN_HOOKS_H

#include "atscale/chan.h"

#include <stdatomic.h>
#include <stdbool.h>

/* Called, when set, by a fenced multi-producer send between its look at the "not empty" waiter
 * flag and its enqueue: the window that a receiver arming meanwhile must not sleep through
 * (src/chan.c, `landing`). A test holds sends there to make that interleaving happen every time. */
extern void (*_Atomic ats__chan_before_enqueue)(ats_chan *c);

/* Whether a receiver has armed c's "not empty" eventcount (set its waiter flag). */
bool ats__chan_receiver_armed(ats_chan *c);

#endif
