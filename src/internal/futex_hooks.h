/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the futex primitives (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_FUTEX_HOOKS_H
#define ATS_INTERNAL_FUTEX_HOOKS_H

/* How many futex sleeps (a futex wait or a futex_waitv) the calling thread has begun: a wait that
 * polls begins one per look. Per thread, so a test counts its own thread's sleeps whatever other
 * threads do, and under an emulator (qemu-user) whose own locks put a thread to sleep too. */
extern _Thread_local unsigned long ats__futex_sleeps;

#endif
