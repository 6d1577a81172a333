/* SPDX-License-Identifier: BSD-2-Clause */
/* Private to heartbeat.h: the layout of the heartbeat and the watch (callers allocate them) and
 * the inline beat. Not API: fields ending in `_` and ats__ names may change in any release. */
#ifndef ATSCALE_HEARTBEAT_INL_H
#define ATSCALE_HEARTBEAT_INL_H

#ifdef __cplusplus
extern "C" {
#endif

struct ats_heartbeat {
	/* The beater's line. word_ = count << 1 | pending. */
	ATS__ALIGNAS(ATS__CACHE_LINE) ATS_ATOMIC(uint64_t) word_;
	uint64_t interval_ns_;
	uint64_t next_tick_ns_;
	ats_chan *pulse_;
	/* Waiters announce themselves here, on a line the beater only reads while nobody waits. */
	ATS__ALIGNAS(ATS__CACHE_LINE) ATS_ATOMIC(uint32_t) waiters_;
	/* What waiters sleep on: bumped by every wake-up (a beat that saw a waiter, a waiter's cancel). */
	ATS_ATOMIC(uint32_t) wake_;
};

struct ats_heartbeat_watch {
	const ats_heartbeat *h_;
	uint64_t timeout_ns_;
	double phi_threshold_;
	uint64_t last_count_;
	uint64_t last_change_ns_;
	bool last_pending_;
	uint32_t n_, next_;
	uint64_t intervals_[ATS_HEARTBEAT_WINDOW];
};

/* Wakes the waiters of h (out of line: the rare path). */
ATS_API void ats__heartbeat_wake(ats_heartbeat *h);

static inline void ats__heartbeat_store(ats_heartbeat *h, uint64_t word)
{
	/* release: a watcher or waiter that sees the new word sees what the beater did before. */
	ats__atomic_store(&h->word_, word, ats__mo_release);
	/* A compiler barrier only: the waiter's membarrier supplies the full fence this store-then-
	 * load needs (heartbeat.h, "Waiting"). relaxed: a hint made reliable by that fence. */
	__asm__ __volatile__("" ::: "memory");
	if (__builtin_expect(ats__atomic_load(&h->waiters_, ats__mo_relaxed) != 0, 0))
		ats__heartbeat_wake(h);
}

static inline void ats_heartbeat_beat(ats_heartbeat *h)
{
	/* relaxed: only this thread writes the word. */
	ats__heartbeat_store(h, ats__atomic_load(&h->word_, ats__mo_relaxed) + 2);
}

static inline void ats_heartbeat_work_begin(ats_heartbeat *h)
{
	ats__heartbeat_store(h, (ats__atomic_load(&h->word_, ats__mo_relaxed) + 2) | 1u);
}

static inline void ats_heartbeat_work_end(ats_heartbeat *h)
{
	ats__heartbeat_store(h, (ats__atomic_load(&h->word_, ats__mo_relaxed) + 2) & ~(uint64_t)1);
}

static inline uint64_t ats_heartbeat_count(const ats_heartbeat *h)
{
	/* acquire: pairs with the beat's release store. */
	return ats__atomic_load((ATS_ATOMIC(uint64_t) *)&h->word_, ats__mo_acquire) >> 1;
}

static inline bool ats_heartbeat_pending(const ats_heartbeat *h)
{
	return (ats__atomic_load((ATS_ATOMIC(uint64_t) *)&h->word_, ats__mo_acquire) & 1u) != 0;
}

#ifdef __cplusplus
}
#endif
#endif
