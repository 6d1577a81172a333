/* SPDX-License-Identifier: BSD-2-Clause */
/* The asymmetric fence: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) makes every running thread of
 * the process execute a full memory barrier before it returns. A hot path that would need a
 * store-load fence against a rare path (a beat against a waiter, a channel send against a parked
 * receiver) then needs only a compiler barrier: the rare path issues the membarrier. Used by the
 * heartbeat waiters and the channels' parking. */
#ifndef ATS_INTERNAL_MEMBARRIER_H
#define ATS_INTERNAL_MEMBARRIER_H

#include <stdbool.h>

/* Whether the process can issue the fence: registers it once (MEMBARRIER_CMD_REGISTER_PRIVATE_
 * EXPEDITED, Linux >= 4.14); false where the kernel (or an emulator) lacks it, and callers then
 * keep their fenced protocol. Blocking the first time (one system call), then one load. */
bool ats__membarrier_ready(void);
/* Issues the fence; false if it failed (never once ready() said true, short of a kernel change).
 * Blocking: one system call, an interrupt to each CPU running a thread of the process. */
bool ats__membarrier(void);

#endif
