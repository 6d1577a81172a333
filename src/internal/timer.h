/* SPDX-License-Identifier: BSD-2-Clause */
/* The timer service (not API): one thread that fires timers at their deadlines, on a sharded
 * hierarchical timing wheel (timer_wheel.h). It knows nothing of what a timer is for: a timer is a
 * node embedded in its owner with two callbacks, and contexts (ctx.c) are one such owner.
 *
 * Firing, in two steps, so an owner can keep itself alive across the second:
 *  - claim(t), on the timer thread with the timer's shard lock held, when t is due: the owner
 *    says whether to fire (typically it pins itself, and says no when it is being freed). It must
 *    be short and must not arm or disarm timers.
 *  - fire(t), on the timer thread after every shard's lock is dropped, for each timer claimed.
 * Between the two the service stores armed = 0 (release): its last touch of an unclaimed timer.
 * ats__timer_disarm therefore takes no lock when armed reads 0 (acquire), and an owner may free a
 * timer once disarm has returned, or once it saw armed == 0 with acquire.
 *
 * Precision: deadlines are rounded up to the tick (2^16 ns = 65.5 us), so a timer fires at its
 * deadline plus up to one tick plus the scheduler's wake-up latency, never early. The thread
 * starts on the first arm (again after a start that failed, and in the child of a fork, which
 * inherits the wheels but no thread), blocks every signal, and is stopped and joined at exit
 * (atexit).
 */
#ifndef ATS_INTERNAL_TIMER_H
#define ATS_INTERNAL_TIMER_H

#include "internal/timer_wheel.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct ats__timer;

struct ats__timer_ops {
	bool (*claim)(struct ats__timer *t); /* under the shard lock: fire it? */
	void (*fire)(struct ats__timer *t);  /* after the locks, for each claimed timer */
};

/* A timer, embedded in its owner; zero it (or ats__timer_init) before its first arm. */
struct ats__timer {
	struct ats__tw_node node;
	_Atomic uint32_t armed; /* on a wheel; changed under its shard's lock */
	uint32_t shard;
	const struct ats__timer_ops *ops;
};

static inline void ats__timer_init(struct ats__timer *t, const struct ats__timer_ops *ops)
{
	t->node.next = NULL;
	t->node.pprev = NULL;
	atomic_init(&t->armed, 0);
	t->shard = 0;
	t->ops = ops;
}

enum { ATS__TIMER_OK, ATS__TIMER_EXPIRED, ATS__TIMER_FAILED };

/* Files t (not armed) to fire at deadline_ns (CLOCK_MONOTONIC). ATS__TIMER_OK; EXPIRED when the
 * deadline's tick has already been processed (nothing filed: the caller acts itself); FAILED
 * when the timer thread could not start (errno says why). Blocking: the calling thread's shard
 * lock (a few instructions) and, when the thread is not running, its start. */
int ats__timer_arm(struct ats__timer *t, uint64_t deadline_ns);

/* Takes t off its wheel if it is on one: no lock when it is not. Blocking (the shard lock). */
void ats__timer_disarm(struct ats__timer *t);

/* The tick: how late past its deadline a timer may fire, besides the scheduler's latency. */
uint64_t ats__timer_precision_ns(void);

#endif
