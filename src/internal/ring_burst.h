/* SPDX-License-Identifier: BSD-2-Clause */
/* Bursts on a ck_ring of pointers: up to n values moved with one publication of the ring's index.
 *
 * ck_ring moves one value per call, and each call publishes its index (p_tail or c_head), a store
 * to a line the other side reads: a burst of 32 made of 32 calls moves that line between the cores
 * up to 32 times, and a burst of 32 made here moves it once, as DPDK's rte_ring burst calls do.
 * These follow ck_ring's own single-value protocols (ck_ring.h: _ck_ring_enqueue_sp,
 * _ck_ring_dequeue_sc, _ck_ring_enqueue_mp, _ck_ring_dequeue_mc) with the count generalised from 1
 * to k, on the same struct and the same fences (the single-ended ones also keep a copy of the
 * other side's index: see below).
 * The slots are read and written with ck_pr loads and stores, as the indexes are.
 *
 * The multi-producer and multi-consumer calls return how many values they moved, 0 when the ring
 * was full (enqueue) or empty (dequeue); they are lock-free, except that a multi-producer burst
 * waits for earlier reservations to be published, as ck_ring's own multi-producer enqueue does
 * (ats__spin_pause backs off after a short spin). The single-ended ones come in two steps (how
 * many fit or wait, then move them) and are wait-free. */
#ifndef ATS_INTERNAL_RING_BURST_H
#define ATS_INTERNAL_RING_BURST_H

#include "internal/compiler.h"

#include <ck_pr.h>
#include <ck_ring.h>
#include <stddef.h>

static inline unsigned ats__ring_burst_min(unsigned a, size_t n)
{
	return n < a ? (unsigned)n : a;
}

/* The single-ended calls cache the other side's index in a word of the caller's own (its line,
 * not the other side's): a single producer keeps the last c_head it read (*consumer_seen), a
 * single consumer the last p_tail (*producer_seen). Indexes only grow (modulo 2^32, as ck_ring
 * counts), so a cached one is a lower bound: a producer sees no more room than there is, a
 * consumer no more values. The producer reads c_head again only when the cached one leaves too
 * little room, and the consumer reads p_tail only when it has taken every value the cached one
 * announced. While the ring is neither full nor empty, neither reads the line the other writes
 * for each value, the one cross-core miss per value that ck_ring's own calls take (they read the
 * other index every time), as rigtorp's SPSCQueue and Folly's ProducerConsumerQueue do. A side
 * that uses these must move its values through them only: ck_ring's own calls would move that
 * side's index without its copy's bookkeeping (the other side may use anything). */

/* Single producer: the room for up to n values below `limit` values buffered (limit <= mask).
 * Wait-free. */
static inline unsigned ats__ring_sp_room(struct ck_ring *r, unsigned *consumer_seen, unsigned limit, size_t n)
{
	unsigned used = r->p_tail - *consumer_seen;
	if (ats__likely(limit - used >= n))
		return (unsigned)n;
	*consumer_seen = ck_pr_load_uint(&r->c_head);
	/* The c_head read before the slot stores it allows (the consumer read those slots before it
	 * published c_head). */
	ck_pr_fence_load_store();
	used = r->p_tail - *consumer_seen;
	return ats__ring_burst_min(limit - used, n);
}

/* Single producer: k values, when ats__ring_sp_room found room for k. Wait-free. (With k a
 * constant 1 the loop folds away: the one-value send uses it too.) */
static inline void ats__ring_enqueue_sp_burst(struct ck_ring *r, struct ck_ring_buffer *slots, void *const *items,
                                              unsigned k)
{
	const unsigned mask = r->mask;
	unsigned producer = r->p_tail;
	for (unsigned i = 0; i < k; i++)
		ck_pr_store_ptr(&slots[(producer + i) & mask].value, items[i]);
	/* The slots before the index that makes them visible. */
	ck_pr_fence_store();
	ck_pr_store_uint(&r->p_tail, producer + k);
}

/* Single consumer: how many of up to n values are there to take. Wait-free. */
static inline unsigned ats__ring_sc_avail(struct ck_ring *r, unsigned *producer_seen, size_t n)
{
	unsigned avail = *producer_seen - r->c_head;
	if (ats__likely(avail >= n))
		return (unsigned)n;
	*producer_seen = ck_pr_load_uint(&r->p_tail);
	/* The slots after the producer index that published them. */
	ck_pr_fence_load();
	return ats__ring_burst_min(*producer_seen - r->c_head, n);
}

/* Single consumer: k values, when ats__ring_sc_avail found k. Wait-free. */
static inline void ats__ring_dequeue_sc_burst(struct ck_ring *r, const struct ck_ring_buffer *slots, void **out,
                                              unsigned k)
{
	const unsigned mask = r->mask;
	unsigned consumer = r->c_head;
	for (unsigned i = 0; i < k; i++)
		out[i] = ck_pr_load_ptr(&slots[(consumer + i) & mask].value);
	/* The copies before the index that lets a producer reuse the slots. */
	ck_pr_fence_store();
	ck_pr_store_uint(&r->c_head, consumer + k);
}

/* Multi-producer: publishes the k slots from `first`, reserved and written, once every earlier
 * reservation is published, as ck_ring's multi-producer commit does. ck_ring's loop spins on the
 * CPU hint forever; when the earlier producer was preempted inside its few instructions, later
 * ones spinning on every core would keep it off the CPU for whole time slices (producers
 * outnumbering cores: measured in the pool as a near-livelock), so after a short spin this one
 * yields (ats__spin_pause). The store fence orders the slots before the index (release).
 * Blocking only while an earlier producer is between its reservation and its publication. Used
 * by the burst below and by the pool, whose queues reserve slots with a ticket word. */
static inline void ats__ring_publish_mp(struct ck_ring *r, unsigned first, unsigned k)
{
	for (unsigned spins = 0; ck_pr_load_uint(&r->p_tail) != first;)
		ats__spin_pause(++spins);
	ck_pr_fence_store();
	ck_pr_store_uint(&r->p_tail, first + k);
}

/* Multi-producer: reserves up to n slots with one CAS on p_head, fills them, then publishes them
 * (ats__ring_publish_mp). */
static inline unsigned ats__ring_enqueue_mp_burst(struct ck_ring *r, struct ck_ring_buffer *slots, void *const *items,
                                                  size_t n)
{
	const unsigned mask = r->mask;
	unsigned producer = ck_pr_load_uint(&r->p_head), k;
	for (;;) {
		/* The snapshot of p_head before the c_head it is compared with. */
		ck_pr_fence_load();
		unsigned consumer = ck_pr_load_uint(&r->c_head);
		if (ats__likely(producer - consumer < mask)) {
			k = ats__ring_burst_min(mask - (producer - consumer), n);
			if (ck_pr_cas_uint_value(&r->p_head, producer, producer + k, &producer))
				break;
		} else {
			/* Full, or a stale p_head: full only when p_head did not move meanwhile. */
			ck_pr_fence_load();
			unsigned now = ck_pr_load_uint(&r->p_head);
			if (now == producer)
				return 0;
			producer = now;
		}
	}
	for (unsigned i = 0; i < k; i++)
		ck_pr_store_ptr(&slots[(producer + i) & mask].value, items[i]);
	ats__ring_publish_mp(r, producer, k);
	return k;
}

/* Multi-consumer: copies up to n values, then claims them with one CAS on c_head (a failed CAS
 * means another consumer took some: copy again from the new head). */
static inline unsigned ats__ring_dequeue_mc_burst(struct ck_ring *r, const struct ck_ring_buffer *slots, void **out,
                                                  size_t n)
{
	const unsigned mask = r->mask;
	unsigned consumer = ck_pr_load_uint(&r->c_head), k;
	do {
		/* The producer index after the consumer snapshot it is compared with. */
		ck_pr_fence_load();
		unsigned producer = ck_pr_load_uint(&r->p_tail);
		k = ats__ring_burst_min(producer - consumer, n);
		if (k == 0)
			return 0;
		ck_pr_fence_load();
		for (unsigned i = 0; i < k; i++)
			out[i] = ck_pr_load_ptr(&slots[(consumer + i) & mask].value);
		/* The copies before the CAS that gives the slots back to producers. */
		ck_pr_fence_store_atomic();
	} while (!ck_pr_cas_uint_value(&r->c_head, consumer, consumer + k, &consumer));
	return k;
}

#endif
