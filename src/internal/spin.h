/* SPDX-License-Identifier: BSD-2-Clause */
/* The timed spin: how a waiter that expects its wake-up soon (a channel's blocking call, an idle
 * pool worker) decides it has spun long enough and should sleep. Not API.
 *
 * A spin is a time (CLOCK_MONOTONIC nanoseconds), not a count of CPU pauses: a pause lasts a few
 * cycles on some CPUs and about 140 on others, so a count would spin 1 us on one machine and 25 us
 * on another. The clock is read only from the ATS__SPIN_UNTIMED-th try on, and then every
 * ATS__SPIN_UNTIMED tries: a wait the other end ends within them reads no clock at all (a read at
 * the 64th try cost pool.submit_run 7-12% on the development VM, whose waits often outlast 64
 * pauses). So a spin lasts its time plus one to two times ATS__SPIN_UNTIMED tries.
 *
 * A spin also gives its CPU away for a moment (sched_yield) every ATS__SPIN_UNTIMED tries: when a
 * machine has more runnable threads than CPUs (four pool workers and a caller on two, or a server's
 * I/O threads beside one worker per CPU), the thread a spinner waits for may be queued behind it
 * on its own CPU, and without a yield it runs only when the scheduler preempts the spinner. With
 * nothing else runnable the call returns at once, a system call's cost every few microseconds of
 * spinning. (Measured on the development VM, two vCPUs, medians of seven interleaved runs:
 * replicate.4 9.8 -> 3.9 us, pool.submit_run 1341 -> 979 ns, chan.mpmc_2x2_light 473 -> 237 ns.)
 * A busy-polling waiter (a pool's or channel's poll mode) owns its core and never yields.
 *
 * (The hedged call's caller spins against its next hedge time instead, which must not be overrun
 * by a batch of untimed tries; src/hedge.c times that spin itself.) */
#ifndef ATS_INTERNAL_SPIN_H
#define ATS_INTERNAL_SPIN_H

#include "atscale/clock.h"

#include <stdbool.h>
#include <sched.h>
#include <stdint.h>

#define ATS__SPIN_UNTIMED 256u

typedef struct ats__spin {
	uint64_t ns;  /* how long to spin */
	uint64_t end; /* 0 until the first clock read */
} ats__spin;

static inline ats__spin ats__spin_start(uint64_t ns)
{
	return (ats__spin){.ns = ns, .end = 0};
}

/* Called after try number `tries` (0, 1, 2, ...) of any spin: every ATS__SPIN_UNTIMED tries,
 * yields the CPU to a runnable thread, if there is one (file comment). True when it did. */
static inline bool ats__spin_yield(uint32_t tries)
{
	if (tries % ATS__SPIN_UNTIMED != ATS__SPIN_UNTIMED - 1)
		return false;
	sched_yield();
	return true;
}

/* Whether the spin is over, asked after try number `tries` (0, 1, 2, ...) failed. Yields the CPU
 * and reads the clock once every ATS__SPIN_UNTIMED tries, nothing otherwise; wait-free apart from
 * the yield. */
static inline bool ats__spin_over(ats__spin *s, uint32_t tries)
{
	if (!ats__spin_yield(tries))
		return false;
	uint64_t now = ats_now_ns();
	if (!s->end) {
		s->end = now + s->ns;
		return false;
	}
	return now >= s->end;
}

#endif
