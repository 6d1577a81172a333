/* SPDX-License-Identifier: BSD-2-Clause */
/* Test hooks of the pool module (not API): only in the test variant of the library
 * (atscale_testing, -DATS_TESTING), never in the installed one. */
#ifndef ATS_INTERNAL_POOL_HOOKS_H
#define ATS_INTERNAL_POOL_HOOKS_H

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

/* The first ticket (ring index) of every queue of pools made from now on; 0 in production. A
 * test sets it just below 2^32 to make the 32-bit ring indexes wrap within a few tasks. */
extern _Atomic uint32_t ats__pool_first_ticket;

/* When not 0, the steal period (first and longest) of workers started from now on, in ns: a test
 * sets it to an hour so that only a wake-up can make a parked worker look for work. */
extern _Atomic uint64_t ats__pool_steal_period_ns;

/* When set, every submit calls it between its look at the worker's waiter flag and the
 * publication of its task: a test that makes it wait a while widens the window in which a worker
 * may arm its flag after the look (the submit then does not wake it: the worker's re-check must
 * see the ticket taken). */
extern void (*_Atomic ats__pool_before_publish)(void);

/* When set, a parking worker calls it between its re-check's loads of c_head and of the tickets,
 * where a preemption lets a submit and a steal land (regress_pool.c). */
extern void (*_Atomic ats__pool_park_between)(void);

/* The pool's CPU-to-worker map (map_cpus in pool.c) for a given mask: map[c] for c < len. */
void ats__pool_map_cpus(const cpu_set_t *mask, unsigned workers, uint16_t *map, unsigned len);

/* How many of p's workers are parked (or about to sleep: their eventcount is armed). */
struct ats_pool;
unsigned ats__pool_parked(struct ats_pool *p);

#endif
