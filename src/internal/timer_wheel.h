/* SPDX-License-Identifier: BSD-2-Clause */
/* A hierarchical timing wheel (Varghese & Lauck), the data structure behind the ctx timer service.
 *
 * Time is counted in ticks (the service uses 2^16 ns = 65.5 us). The wheel has ATS__TW_LEVELS
 * levels of 64 slots; level w holds the timers due 64^w to 64^(w+1) ticks from the wheel's
 * current tick, in the slot named by digit w of their expiry. A 64-bit bitmap per level says
 * which slots are occupied, so finding the next due slot is one rotate and one count of trailing
 * zeros per level. Advancing collects, per level, the slots whose digit the clock entered since
 * the last advance (all 64 if it went round) and re-files their timers relative to the new
 * time: they drop to a lower level or expire. A timer therefore moves at most ATS__TW_LEVELS
 * times in its life, and an advance costs O(levels + timers touched) however much time passed:
 * far deadlines cost nothing until they near, and an idle service sleeps until the next due slot.
 *
 * Arm and disarm are O(1) (intrusive doubly linked slot lists). The wheel is not thread-safe: the
 * caller serializes (the service shards it, one lock per shard). The scheme follows William
 * Ahern's timeout.c; it is written here rather than linked because no packaged library offers an
 * intrusive, caller-locked wheel with this interface.
 */
#ifndef ATS_INTERNAL_TIMER_WHEEL_H
#define ATS_INTERNAL_TIMER_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ATS__TW_BITS 6
#define ATS__TW_SLOTS 64
#define ATS__TW_LEVELS 8 /* 48 bits of ticks: with 2^16 ns ticks, all of uint64_t ns */

/* A timer, embedded in its owner. `pprev` is NULL while it is on no wheel. */
struct ats__tw_node {
	struct ats__tw_node *next;
	struct ats__tw_node **pprev;
	uint64_t expires; /* tick */
	uint32_t where;   /* level * 64 + slot while on the wheel */
};

struct ats__tw {
	uint64_t now; /* the last tick processed: every timer due at or before it has been returned */
	uint64_t pending[ATS__TW_LEVELS];
	size_t count;
	struct ats__tw_node *slot[ATS__TW_LEVELS][ATS__TW_SLOTS];
};

void ats__tw_init(struct ats__tw *w, uint64_t now_tick);

static inline bool ats__tw_armed(const struct ats__tw_node *n)
{
	return n->pprev != NULL;
}

/* Files `n` (not armed) to expire at tick `expires`. Returns false, filing nothing, when
 * expires <= the wheel's current tick: the caller fires it itself. O(1). */
bool ats__tw_add(struct ats__tw *w, struct ats__tw_node *n, uint64_t expires);

/* Takes `n` off the wheel if it is on it. O(1). */
void ats__tw_del(struct ats__tw *w, struct ats__tw_node *n);

/* Moves the wheel's time to `to_tick` (ignored if not later) and returns the timers now due as a
 * list linked through `next` (NULL-terminated), each already off the wheel. */
struct ats__tw_node *ats__tw_advance(struct ats__tw *w, uint64_t to_tick);

/* The earliest tick at which an advance may have work: never later than the earliest expiry
 * (it may be earlier, when a far timer must drop a level). UINT64_MAX when the wheel is empty. */
uint64_t ats__tw_next(const struct ats__tw *w);

#endif
