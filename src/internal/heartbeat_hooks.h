/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the heartbeat module (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_HEARTBEAT_HOOKS_H
#define ATS_INTERNAL_HEARTBEAT_HOOKS_H

#include "atscale/heartbeat.h"

#include <stdatomic.h>

/* Waiters announced on h now. */
uint32_t ats__heartbeat_waiters(const ats_heartbeat *h);

#endif
