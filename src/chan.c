/* SPDX-License-Identifier: BSD-2-Clause */
/* Channels: ck_ring for the values, ck_ec eventcounts for parking.
 *
 * Layout: the ring's consumer and producer counters sit on their own cache lines (ck_ring pads
 * them); the "not empty" eventcount, the single producer's in-send flag and its copy of the
 * consumer index share a line written by senders; "not full" and the single consumer's copy of
 * the producer index a line written by receivers; the credit word (multi-producer) its own; the
 * configuration, the slot pointer and the closed flag a read-mostly line. The copies spare each
 * value the read of the other side's index (internal/ring_burst.h).
 *
 * Close versus a racing send, per variant (the hard part: a send that passed its closed check
 * must land before any receiver concludes "closed and drained", or that value is lost):
 *  - multi-producer: the credit word holds the free credits and the closed bit. A sender takes a
 *    credit with one CAS that fails when the bit is set; close sets the bit with one RMW. So each
 *    send is ordered before or after close by the word's modification order. After close no
 *    credit is taken, so credits outstanding (capacity - free) count values buffered, values in
 *    a sender's hands between its CAS and its enqueue, and values a receiver dequeued but whose
 *    credit it has not returned yet. A receiver that finds the ring empty reports closed only
 *    when none is outstanding; otherwise it waits (WOULD_BLOCK), and whoever settles the last ones
 *    bumps "not empty" (a sender that saw a waiter does; a receiver does when it returns a credit
 *    to a closed channel), and a receiver that sees a credit out waits for it (`landing`).
 *  - single-producer: no shared word is written per send but an in-send flag, in a Dekker pair
 *    with the closed flag (both seq_cst): the sender sets `busy`, then reads `closed`; close sets
 *    `closed`; a receiver that finds the ring empty reads `closed`, then `busy`. If it sees closed
 *    and not busy, the sender either had cleared busy after its enqueue (release: the receiver's
 *    re-check finds the value) or had not set it yet (so it will read closed and fail). A sender
 *    clears busy and then bumps "not empty", so a receiver waiting on it wakes.
 *
 * Parking and why no wake-up is lost. Every send bumps "not empty" and every receive "not full"
 * (ck_ec32_inc, multi-producer mode: any thread may bump, close and ctx wake-ups included); that
 * bump is one locked add and makes a system call only when the eventcount's waiter flag is set.
 * Except where a send or receive makes a locked RMW anyway (the credit word, the single
 * producer's busy flag): there the bump happens only when the flag is set (the last paragraph of
 * this part says why that is safe).
 * A parked thread (a blocking send/recv or a select over several cases) does, per round:
 *   1. read its kick word (bumped by an after-func on its ctx when the ctx is cancelled);
 *   2. for each eventcount it needs, set the waiter flag with a CAS and keep the value it saw
 *      (ck_ec's own protocol for a waiter, done by hand so several can be armed at once);
 *   3. full fence, then re-try every case and re-check the ctx;
 *   4. sleep in futex_waitv on all those eventcount words and the kick word, each with the value
 *      kept in 1-2.
 * A send that lands after step 3's re-check bumps its eventcount after its enqueue. If that bump
 * came before step 2's CAS, the CAS saw it, and then (fence) the re-check sees the value. If it
 * came after, the word no longer holds the kept value, so futex_waitv returns at once, or the bump
 * saw the flag and wakes the futex (ck_ec32_wake). A cancel marks the ctx done and then runs the
 * after-func, which bumps the kick word and wakes it: before step 1 the re-check in 3 sees done,
 * after it the kick word differs from the kept value. The same holds for close (it bumps both
 * eventcounts after setting its flags). Without futex_waitv (Linux < 5.16) a thread sleeps on
 * its first eventcount alone; a cancel bumps that eventcount too (ats__ec_kick_bump), so a
 * blocking send or receive wakes at once as above; a select over several eventcounts watches
 * them (internal/ec.h): their bumps that find a waiter flag, which make a wake-up call anyway,
 * also bump and wake its kick word, and it sleeps on that word alone (ec.c says why no wake-up
 * is lost).
 * Bumps only for a waiter, where an RMW is there anyway. A multi-producer receive returns its
 * credit with a seq_cst RMW and then loads "not full"'s flag; a sender waiting for room armed
 * that flag, fenced, and re-read the credits, so either it sees the credit or the receive sees
 * the flag and bumps. A fenced send takes its credit with a seq_cst CAS (multi-producer) or sets
 * its busy flag with a seq_cst exchange (single producer), loads "not empty"'s flag before it
 * enqueues, and bumps after the enqueue only when it saw the flag. A receiver that armed the flag
 * after that load finds, after its fence, the credit taken or the sender busy: when its re-check
 * then finds the ring empty, it does not sleep but waits for the value to land (`landing`: the
 * sender is a few instructions from its enqueue, or another receiver from returning its credit).
 * So a fenced single-producer channel pays two locked instructions per message (the busy flag,
 * the receive's bump) and a multi-producer one the credit word's two and the ring's CASes.
 *
 * Light channels (config.light): no locked instruction on the single-producer send or on any
 * receive. Where the process can issue membarrier(PRIVATE_EXPEDITED) (internal/membarrier.h), the
 * rare sides pay the fences the hot sides skip. Each locked instruction of a send or receive
 * has to wait for the stores before it (the slot and the ring's index, whose cache lines the other
 * side holds) to reach the other core, so removing them lets consecutive messages overlap: on the
 * 2-core development VM chan.spsc went from 180-213 ns with three (all a fenced channel paid then;
 * it pays two now) to 56-61 ns with none.
 *  - A bump becomes: compiler barrier, load the eventcount, increment (and wake) only when its
 *    waiter flag is set. A parker, after arming its flags in step 2, issues the membarrier before
 *    step 3's re-check, every round. For any send, either its ring stores came before that
 *    barrier on the sender's CPU (the re-check sees the value) or its flag load came after it
 *    (it sees the flag and bumps). membarrier returns only after every running thread of the
 *    process has executed a full barrier, and a thread not running passes one when it is switched
 *    back in.
 *  - The single producer's Dekker pair with close: the sender stores busy and loads closed with a
 *    compiler barrier between; close sets closed to CLOSING, issues the membarrier, then sets it
 *    to CLOSED. Either the sender's busy store came before the barrier (visible once close has
 *    its membarrier back) or its closed load came after it (it sees CLOSING and fails). A receiver
 *    trusts only CLOSED, which comes after that membarrier, and reads busy after it.
 * The price: a parker's membarrier interrupts every CPU running a thread of the process, tens of
 * microseconds on a VM, every round it sleeps, which is why a light channel spins longer before
 * it sleeps (ATS_CHAN_LIGHT_SPIN_FACTOR), and why light is a choice and not the default: an end
 * that often waits long disturbs every thread of the process each time.
 * Where membarrier is missing, a light channel keeps the fenced protocol above
 * (ats__membarrier_force_off makes tests take that path on any kernel).
 */
#include "atscale/chan.h"
#include "atscale/clock.h"
#include "internal/chan_segment.h"
#include "internal/ec.h"
#include "internal/compiler.h"
#include "internal/futex.h"
#include "internal/membarrier.h"
#include "internal/ring_burst.h"
#include "internal/spin.h"
#include "internal/tsan.h"
#ifdef ATS_TESTING
#include "internal/chan_hooks.h"
#endif

#include <ck_pr.h>
#include <ck_ring.h>
#include <errno.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ThreadSanitizer cannot see ck_ring's ordering (ck_pr is inline assembly). A sender releases the
 * channel before its enqueue and a receiver acquires it after its dequeue, so what a sender wrote
 * before sending happens-before what the receiver reads after: the hand-over the ring gives, told
 * to TSan (internal/tsan.h). (The ring's own slot copies are listed in tests/tsan.supp.) */

#ifdef ATS_TESTING
void (*_Atomic ats__chan_before_enqueue)(ats_chan *c);
#endif

/* `closed`: CLOSING while a light channel's close waits for its membarrier, then CLOSED. */
enum { OPEN = 0, CLOSING = 1, CLOSED = 2 };

#define CREDIT_CLOSED (UINT64_C(1) << 63)
#define CREDIT_MASK (CREDIT_CLOSED - 1)

struct chan {
	struct ck_ring ring; /* c_head and p_tail/p_head each on their own line, then size/mask */
	_Alignas(64) struct ck_ring_buffer *slots;
	uint32_t cap;
	uint8_t kind;
	uint8_t sp; /* single producer */
	uint8_t mp; /* multi producer: credits */
	uint8_t sc; /* single consumer */
	uint8_t busy_poll;
	uint8_t light;           /* membarrier-backed: no locked instruction on the fast paths (file comment) */
	uint8_t segment;         /* a bridge's segment: only the bridge closes it (internal/chan_segment.h) */
	uint64_t spin_ns;        /* config.spin_ns, times ATS_CHAN_LIGHT_SPIN_FACTOR when light */
	_Atomic uint32_t closed; /* OPEN, CLOSING, CLOSED (also decides double close) */
	_Alignas(64) struct ck_ec32 not_empty;
	_Atomic uint32_t busy;  /* single producer: in a send (Dekker with closed) */
	unsigned consumer_seen; /* single producer: c_head when it last looked (ring_burst.h) */
	_Alignas(64) struct ck_ec32 not_full;
	unsigned producer_seen;                /* single consumer: p_tail when it last looked (ring_burst.h) */
	_Alignas(64) _Atomic uint64_t credits; /* multi producer: CREDIT_CLOSED | free credits */
};

_Static_assert(sizeof(struct chan) <= ATS_CHAN_SIZE, "ats_chan too small");
_Static_assert(_Alignof(struct chan) <= _Alignof(ats_chan), "ats_chan under-aligned");

static inline struct chan *C(ats_chan *c)
{
	return (struct chan *)(void *)c;
}

/* A send's or receive's eventcount bump: a light channel increments (and wakes) only when a
 * waiter armed the flag (its parker's membarrier orders that; file comment), others always. */
static inline void bump(struct chan *c, struct ck_ec32 *ec)
{
	if (c->light) {
		atomic_signal_fence(memory_order_seq_cst); /* the ring's stores, then the flag's load */
		if (!ck_ec32_has_waiters(ec))
			return;
	}
	ck_ec32_inc(ec, &ats__ec_mode_mp);
}

/* ---- Ring access per variant ---- */

/* Multi-producer: one value (a credit guarantees it a slot; the loop in send_burst guards that). */
static inline bool ring_enqueue_mp(struct chan *c, void *v)
{
	TSAN_RELEASE(c);
	return c->kind == ATS_CHAN_MPSC ? ck_ring_enqueue_mpsc(&c->ring, c->slots, v)
	                                : ck_ring_enqueue_mpmc(&c->ring, c->slots, v);
}

/* Single producer: one value if fewer than cap are buffered. */
static inline bool ring_enqueue_sp(struct chan *c, void *v)
{
	if (!ats__ring_sp_room(&c->ring, &c->consumer_seen, c->cap, 1))
		return false;
	TSAN_RELEASE(c);
	ats__ring_enqueue_sp_burst(&c->ring, c->slots, &v, 1);
	return true;
}

static inline bool ring_dequeue(struct chan *c, void **out)
{
	bool ok;
	switch (c->kind) {
	case ATS_CHAN_SPSC:
	case ATS_CHAN_MPSC:
		ok = ats__ring_sc_avail(&c->ring, &c->producer_seen, 1);
		if (ok)
			ats__ring_dequeue_sc_burst(&c->ring, c->slots, out, 1);
		break;
	case ATS_CHAN_SPMC: ok = ck_ring_dequeue_spmc(&c->ring, c->slots, out); break;
	default: ok = ck_ring_dequeue_mpmc(&c->ring, c->slots, out); break;
	}
	if (ok)
		TSAN_ACQUIRE(c);
	return ok;
}

/* Bursts: one index publication for up to n values (internal/ring_burst.h). Out of line: their
 * loops inlined into send_burst and recv_burst took registers from the one-value path and made
 * chan.spsc_light 25% slower. The multi-producer one moves what it can (credits bound it); the
 * single-producer one up to n while fewer than cap are buffered. */
__attribute__((noinline)) static size_t ring_enqueue_burst(struct chan *c, void *const *items, size_t n)
{
	if (!c->sp) {
		TSAN_RELEASE(c);
		return ats__ring_enqueue_mp_burst(&c->ring, c->slots, items, n);
	}
	unsigned k = ats__ring_sp_room(&c->ring, &c->consumer_seen, c->cap, n);
	if (k) {
		TSAN_RELEASE(c);
		ats__ring_enqueue_sp_burst(&c->ring, c->slots, items, k);
	}
	return k;
}

__attribute__((noinline)) static size_t ring_dequeue_burst(struct chan *c, void **out, size_t n)
{
	size_t k;
	if (c->sc) {
		k = ats__ring_sc_avail(&c->ring, &c->producer_seen, n);
		if (k)
			ats__ring_dequeue_sc_burst(&c->ring, c->slots, out, (unsigned)k);
	} else {
		k = ats__ring_dequeue_mc_burst(&c->ring, c->slots, out, n);
	}
	if (k)
		TSAN_ACQUIRE(c);
	return k;
}

/* ---- Sending ---- */

/* Multi-producer: takes up to n credits (one CAS). Returns how many; 0 with *closed set when the
 * channel is closed. */
static inline size_t take_credits(struct chan *c, size_t n, bool *closed)
{
	/* relaxed: the CAS below decides; its failure reloads the word. */
	uint64_t w = atomic_load_explicit(&c->credits, memory_order_relaxed);
	for (;;) {
		if (w & CREDIT_CLOSED) {
			*closed = true;
			return 0;
		}
		uint64_t k = w < n ? w : n;
		if (k == 0)
			return 0;
		/* acquire: a credit a receiver returned (release) comes after its dequeue freed the slot
		 * (ck_ring orders the slot itself; this orders our view of the credit count with it).
		 * seq_cst: the Dekker pair with a parked receiver (send_burst, file comment). */
		if (atomic_compare_exchange_weak_explicit(&c->credits, &w, w - k, memory_order_seq_cst,
		                                          memory_order_relaxed))
			return (size_t)k;
	}
}

/* Single producer: enters a send. false when closed (busy already cleared, waiters bumped). */
static inline bool sp_enter(struct chan *c)
{
	bool closed;
	if (c->light) {
		/* relaxed, both, and a compiler barrier: close's membarrier orders the pair (file comment). */
		atomic_store_explicit(&c->busy, 1, memory_order_relaxed);
		atomic_signal_fence(memory_order_seq_cst);
		closed = atomic_load_explicit(&c->closed, memory_order_relaxed);
	} else {
		/* seq_cst, both: the Dekker pair with close's store and a receiver's loads (file comment). */
		atomic_exchange_explicit(&c->busy, 1, memory_order_seq_cst);
		closed = atomic_load_explicit(&c->closed, memory_order_seq_cst);
	}
	if (ats__unlikely(closed)) {
		atomic_store_explicit(&c->busy, 0, memory_order_seq_cst);
		ck_ec32_inc(&c->not_empty, &ats__ec_mode_mp);
		return false;
	}
	return true;
}

static inline void sp_leave(struct chan *c)
{
	/* release: a receiver that reads busy == 0 (seq_cst) then finds what we enqueued. */
	atomic_store_explicit(&c->busy, 0, memory_order_release);
}

/* Whether a send must bump "not empty" after its enqueue: light channels look then (bump), fenced
 * ones look now, right after the send's seq_cst RMW (the credit's CAS, or the single producer's
 * busy flag), and bump only when a receiver had armed the flag. A receiver that arms after this
 * load sees the credit out or the busy flag after its fence and waits for the value instead of
 * sleeping (landing, file comment). */
static inline bool receiver_waits(struct chan *c)
{
	bool wake = c->light || (__atomic_load_n(&c->not_empty.counter, __ATOMIC_SEQ_CST) & ATS__EC_FLAG);
#ifdef ATS_TESTING
	void (*hook)(ats_chan *) = atomic_load(&ats__chan_before_enqueue);
	if (hook && !c->light)
		hook((ats_chan *)(void *)c);
#endif
	return wake;
}

static size_t send_burst(struct chan *c, void *const *items, size_t n, ats_chan_status *st)
{
	size_t k;
	bool wake;
	if (c->mp) {
		bool closed = false;
		k = take_credits(c, n, &closed);
		if (k == 0) {
			*st = closed ? ATS_CHAN_CLOSED : ATS_CHAN_WOULD_BLOCK;
			return 0;
		}
		wake = receiver_waits(c);
		/* With a credit the ring always has a slot: reserved-but-unread slots never exceed the
		 * credits taken, and cap <= mask. The loop only guards that reasoning. */
		for (size_t i = 0; i < k;) {
			size_t m = k - i == 1 ? ring_enqueue_mp(c, items[i]) : ring_enqueue_burst(c, items + i, k - i);
			if (ats__unlikely(m == 0))
				ats__cpu_relax();
			i += m;
		}
	} else {
		if (!sp_enter(c)) {
			*st = ATS_CHAN_CLOSED;
			return 0;
		}
		wake = receiver_waits(c);
		k = n == 1 ? ring_enqueue_sp(c, items[0]) : ring_enqueue_burst(c, items, n);
		if (k == 0) {
			/* A receiver may have seen us busy while the channel closed and parked: seq_cst
			 * store and load, so either it sees busy clear on its re-check or we see closed
			 * here and bump "not empty" for it. */
			atomic_store_explicit(&c->busy, 0, memory_order_seq_cst);
			if (ats__unlikely(atomic_load_explicit(&c->closed, memory_order_seq_cst)))
				ck_ec32_inc(&c->not_empty, &ats__ec_mode_mp);
			*st = ATS_CHAN_WOULD_BLOCK;
			return 0;
		}
		sp_leave(c);
	}
	if (wake)
		bump(c, &c->not_empty);
	*st = k == n ? ATS_CHAN_OK : ATS_CHAN_WOULD_BLOCK;
	return k;
}

/* ---- Receiving ---- */

static inline void after_recv(struct chan *c, size_t k)
{
	if (c->mp) {
		/* release: the slot is read before the credit that lets a sender refill it. seq_cst, with
		 * the flag's load below: a sender waiting for room arms "not full", fences and re-reads
		 * the credits (take_credits), so either it sees this credit or the load sees its flag.
		 * The credit's return is locked anyway; this spares each receive a second locked add, on
		 * a line every receiver writes. */
		uint64_t w = atomic_fetch_add_explicit(&c->credits, k, memory_order_seq_cst);
		if (ats__unlikely(w & CREDIT_CLOSED))
			ck_ec32_inc(&c->not_empty, &ats__ec_mode_mp); /* a receiver may wait on our credit */
		if (ats__unlikely(__atomic_load_n(&c->not_full.counter, __ATOMIC_SEQ_CST) & ATS__EC_FLAG))
			ck_ec32_inc(&c->not_full, &ats__ec_mode_mp);
		return;
	}
	bump(c, &c->not_full);
}

/* The ring looked empty: WOULD_BLOCK, or CLOSED once closed and nothing can still land, or OK
 * with a value that landed meanwhile. */
static ats_chan_status empty_or_closed(struct chan *c, void **out)
{
	if (c->mp) {
		/* acquire: pairs with the credit returns and close's RMW. */
		uint64_t w = atomic_load_explicit(&c->credits, memory_order_acquire);
		if (!(w & CREDIT_CLOSED))
			return ATS_CHAN_WOULD_BLOCK;
		if ((w & CREDIT_MASK) != c->cap)
			return ring_dequeue(c, out) ? (after_recv(c, 1), ATS_CHAN_OK) : ATS_CHAN_WOULD_BLOCK;
		return ATS_CHAN_CLOSED; /* no credit outstanding: nothing buffered, nothing coming */
	}
	/* seq_cst, both: the Dekker pair with sp_enter (file comment); only CLOSED is trusted: a light
	 * channel's close has then had its membarrier. */
	if (atomic_load_explicit(&c->closed, memory_order_seq_cst) != CLOSED)
		return ATS_CHAN_WOULD_BLOCK;
	if (atomic_load_explicit(&c->busy, memory_order_seq_cst))
		return ATS_CHAN_WOULD_BLOCK;
	if (ring_dequeue(c, out)) {
		after_recv(c, 1);
		return ATS_CHAN_OK;
	}
	return ATS_CHAN_CLOSED;
}

static size_t recv_burst(struct chan *c, void **out, size_t n, ats_chan_status *st)
{
	size_t k = n == 1 ? ring_dequeue(c, out) : ring_dequeue_burst(c, out, n);
	if (k) {
		after_recv(c, k);
		*st = k == n ? ATS_CHAN_OK : ATS_CHAN_WOULD_BLOCK;
		return k;
	}
	*st = empty_or_closed(c, &out[0]);
	return *st == ATS_CHAN_OK;
}

/* ---- Public non-blocking ops ---- */

ats_chan_status ats_chan_try_send(ats_chan *ch, void *v)
{
	if (ats__unlikely(!ch))
		return ATS_CHAN_INVALID;
	ats_chan_status st;
	send_burst(C(ch), &v, 1, &st);
	return st;
}

ats_chan_status ats_chan_try_recv(ats_chan *ch, void **out)
{
	if (ats__unlikely(!ch || !out))
		return ATS_CHAN_INVALID;
	struct chan *c = C(ch);
	void *v;
	if (ats__likely(ring_dequeue(c, &v))) {
		after_recv(c, 1);
		*out = v;
		return ATS_CHAN_OK;
	}
	ats_chan_status st = empty_or_closed(c, &v);
	if (st == ATS_CHAN_OK)
		*out = v;
	return st;
}

size_t ats_chan_try_send_n(ats_chan *ch, void *const *items, size_t n, ats_chan_status *status)
{
	ats_chan_status st = ATS_CHAN_OK;
	size_t k = 0;
	if (ats__unlikely(!ch || (!items && n)))
		st = ATS_CHAN_INVALID;
	else if (n)
		k = send_burst(C(ch), items, n, &st);
	if (status)
		*status = st;
	return k;
}

size_t ats_chan_try_recv_n(ats_chan *ch, void **out, size_t n, ats_chan_status *status)
{
	ats_chan_status st = ATS_CHAN_OK;
	size_t k = 0;
	if (ats__unlikely(!ch || (!out && n)))
		st = ATS_CHAN_INVALID;
	else if (n)
		k = recv_burst(C(ch), out, n, &st);
	if (status)
		*status = st;
	return k;
}

/* ---- Making and freeing ---- */

ats_err *ats_chan_init(ats_chan *ch, const ats_chan_config *cfg)
{
	if (!ch || !cfg)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel: NULL %s", ch ? "config" : "channel");
	if (cfg->capacity == 0)
		return ats_err_with_hint(ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel: capacity 0"),
		                         "unbuffered (rendezvous) channels are not provided; use capacity 1");
	if (cfg->capacity > ATS_CHAN_MAX_CAPACITY)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel: capacity %zu above %zu", cfg->capacity,
		                   (size_t)ATS_CHAN_MAX_CAPACITY);
	if ((unsigned)cfg->kind > ATS_CHAN_SPSC)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel: unknown kind %d", (int)cfg->kind);
	size_t ring = 2;
	while (ring < cfg->capacity + 1)
		ring <<= 1;
	struct ck_ring_buffer *slots = aligned_alloc(64, ring * sizeof *slots < 64 ? 64 : ring * sizeof *slots);
	if (!slots)
		return ats_err_oom;
	struct chan *c = C(ch);
	memset(c, 0, sizeof *c);
	ck_ring_init(&c->ring, (unsigned)ring);
	c->slots = slots;
	c->cap = (uint32_t)cfg->capacity;
	c->kind = (uint8_t)cfg->kind;
	c->sp = cfg->kind == ATS_CHAN_SPSC || cfg->kind == ATS_CHAN_SPMC;
	c->mp = !c->sp;
	c->sc = cfg->kind == ATS_CHAN_SPSC || cfg->kind == ATS_CHAN_MPSC;
	c->busy_poll = cfg->busy_poll;
	c->light = cfg->light && ats__membarrier_ready();
	c->spin_ns = cfg->spin_ns;
	if (c->light) /* its park costs a membarrier (chan.h) */
		c->spin_ns *= ATS_CHAN_LIGHT_SPIN_FACTOR;
	ck_ec32_init(&c->not_empty, 0);
	ck_ec32_init(&c->not_full, 0);
	/* relaxed: init happens before the channel is shared (the sharing orders it). */
	atomic_store_explicit(&c->credits, cfg->capacity, memory_order_relaxed);
	atomic_store_explicit(&c->closed, 0, memory_order_relaxed);
	atomic_store_explicit(&c->busy, 0, memory_order_relaxed);
	return NULL;
}

void ats_chan_destroy(ats_chan *ch, void (*drop)(void *value, void *arg), void *arg)
{
	if (!ch)
		return;
	struct chan *c = C(ch);
	void *v;
	while (ring_dequeue(c, &v))
		if (drop)
			drop(v, arg);
	free(c->slots);
	c->slots = NULL;
}

ats_err *ats_chan_new(ats_chan **out, const ats_chan_config *cfg)
{
	if (!out)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel: NULL out");
	*out = NULL;
	ats_chan *c = aligned_alloc(_Alignof(ats_chan), sizeof *c);
	if (!c)
		return ats_err_oom;
	ats_err *err = ats_chan_init(c, cfg);
	if (err) {
		free(c);
		return err;
	}
	*out = c;
	return NULL;
}

void ats_chan_free(ats_chan *c, void (*drop)(void *value, void *arg), void *arg)
{
	if (!c)
		return;
	ats_chan_destroy(c, drop, arg);
	free(c);
}

/* ---- Close and queries ---- */

static ats_err *close_chan(struct chan *c)
{
	/* seq_cst: the single-producer Dekker pair (file comment); also orders double closes. A CAS, not
	 * an exchange: a second close must not turn CLOSED back into CLOSING. */
	uint32_t open = OPEN;
	if (!atomic_compare_exchange_strong_explicit(&c->closed, &open, c->light ? CLOSING : CLOSED,
	                                             memory_order_seq_cst, memory_order_seq_cst))
		return ats_err_new(ATS_ERR_CLOSED, "channel: close of a closed channel");
	if (c->light) {
		/* Every sender past its closed check has its busy flag visible once this returns (file
		 * comment). It fails only when the kernel is out of memory (or a seccomp filter came in
		 * after registration): try again after a pause, receivers waiting for CLOSED meanwhile.
		 * After 100 tries (100 ms) close goes on: a store buffer drains in far less than that, so
		 * a sender's busy flag is visible by then in practice, though no longer by proof. */
		for (int tries = 0; tries < 100 && !ats__membarrier(); tries++) {
			struct timespec pause = {0, 1000000};
			nanosleep(&pause, NULL);
		}
		atomic_store_explicit(&c->closed, CLOSED, memory_order_seq_cst);
	}
	/* acq_rel: this RMW is the point that orders each multi-producer send before or after close.
	 * That needs only the word's modification order, and ck_ec32_inc's store fence orders it before
	 * the bumps below; the acquire/release halves are stronger than needed, kept: once per channel. */
	atomic_fetch_or_explicit(&c->credits, CREDIT_CLOSED, memory_order_acq_rel);
	/* Wake everyone parked: senders fail, receivers drain and then see closed. */
	ck_ec32_inc(&c->not_empty, &ats__ec_mode_mp);
	ck_ec32_inc(&c->not_full, &ats__ec_mode_mp);
	return NULL;
}

ats_err *ats_chan_close(ats_chan *ch)
{
	if (!ch)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel: NULL channel");
	if (C(ch)->segment)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT,
		                   "channel: a bridge's segment is closed by its bridge (the next open, or its close)");
	return close_chan(C(ch));
}

void ats__chan_mark_segment(ats_chan *ch)
{
	C(ch)->segment = 1;
}

ats_err *ats__chan_close_segment(ats_chan *ch)
{
	return close_chan(C(ch));
}

bool ats_chan_closed(const ats_chan *ch)
{
	/* acquire: a true answer shows what the closer did before closing. */
	return ch && atomic_load_explicit(&((const struct chan *)(const void *)ch)->closed, memory_order_acquire);
}

size_t ats_chan_len(const ats_chan *ch)
{
	return ch ? ck_ring_size(&((const struct chan *)(const void *)ch)->ring) : 0;
}

#ifdef ATS_TESTING
bool ats__chan_receiver_armed(ats_chan *ch)
{
	return ck_ec32_has_waiters(&C(ch)->not_empty);
}
#endif

size_t ats_chan_cap(const ats_chan *ch)
{
	return ch ? ((const struct chan *)(const void *)ch)->cap : 0;
}

/* ---- Select and parking ---- */

static _Thread_local uint32_t rng_state;

static uint32_t rng_next(void)
{
	uint32_t x = rng_state;
	if (ats__unlikely(!x))
		x = (uint32_t)(uintptr_t)&rng_state ^ (uint32_t)ats_now_ns() ^ 0x9e3779b9u;
	x ^= x << 13, x ^= x >> 17, x ^= x << 5;
	rng_state = x ? x : 1;
	return x;
}

/* Tries one case: OK or CLOSED fire it, WOULD_BLOCK does not. */
static ats_chan_status try_case(ats_chan_case *k)
{
	struct chan *c = C(k->chan);
	ats_chan_status st;
	if (k->send) {
		send_burst(c, &k->value, 1, &st);
	} else {
		void *v = NULL;
		if (ring_dequeue(c, &v)) {
			after_recv(c, 1);
			st = ATS_CHAN_OK;
		} else {
			st = empty_or_closed(c, &v);
		}
		if (st != ATS_CHAN_WOULD_BLOCK)
			k->value = st == ATS_CHAN_OK ? v : NULL;
	}
	return st;
}

/* One pass over the cases in a random order (Go's pollorder: a Fisher-Yates shuffle of the cases
 * with a channel), so that among the cases ready at once each is equally likely to fire. (A
 * rotation from a random start is not fair: a ready case after a run of k cases that are not
 * ready fires k+1 times as often as one right after another ready case.) The index that fired or
 * SIZE_MAX. */
static size_t try_round(ats_chan_case *cases, size_t n)
{
	uint8_t order[ATS_CHAN_SELECT_MAX];
	size_t active = 0;
	for (size_t i = 0; i < n; i++) {
		if (!cases[i].chan)
			continue;
		size_t j = active ? rng_next() % (active + 1) : 0; /* inside-out shuffle */
		if (j != active)
			order[active] = order[j];
		order[j] = (uint8_t)i;
		active++;
	}
	for (size_t j = 0; j < active; j++) {
		size_t i = order[j];
		ats_chan_status st = try_case(&cases[i]);
		if (st != ATS_CHAN_WOULD_BLOCK) {
			cases[i].status = st;
			return i;
		}
	}
	return SIZE_MAX;
}

static ats_err *ctx_check(ats_ctx *ctx, uint64_t deadline)
{
	if (ats_ctx_done(ctx) || (deadline != ATS_CTX_NO_DEADLINE && ats_now_ns() >= deadline))
		return ats_ctx_err(ctx); /* cancels a ctx whose deadline passed before its timer fired */
	return NULL;
}

/* Whether a receive case waits on a value a sender is about to enqueue: fenced senders bump "not
 * empty" only when they saw its flag right after their seq_cst RMW (receiver_waits), so such a
 * value may land without a wake-up, and a receiver must not sleep on it. Read after the parker's
 * fence (file comment). Multi-producer: a credit is out (also, as briefly, for a value another
 * receiver took and has not returned the credit for). Single producer: the sender is busy, or it
 * was and its value is in the ring now (busy is read first: acquire, so a busy flag cleared after
 * the enqueue shows the value to the ring read after it). */
static bool landing(const ats_chan_case *cases, size_t n)
{
	for (size_t j = 0; j < n; j++) {
		if (!cases[j].chan || cases[j].send)
			continue;
		struct chan *c = C(cases[j].chan);
		if (c->light)
			continue;
		if (c->mp) {
			/* relaxed: after the parker's full fence. */
			if ((atomic_load_explicit(&c->credits, memory_order_relaxed) & CREDIT_MASK) != c->cap)
				return true;
		} else if (atomic_load_explicit(&c->busy, memory_order_acquire) || ck_ring_size(&c->ring)) {
			return true;
		}
	}
	return false;
}

/* The blocking core of send, recv and select: cases[0..n), none ready on the caller's first try
 * (or not tried yet). Sets *fired; returns ctx's error when it is done first. */
static ats_err *wait_cases(ats_chan_case *cases, size_t n, size_t *fired, ats_ctx *ctx, uint64_t spin_ns, bool poll)
{
	uint64_t deadline = ats_ctx_deadline(ctx);
	size_t i;
	ats_err *err;
	ats__spin spin = ats__spin_start(spin_ns); /* internal/spin.h */
	for (uint32_t s = 0; poll || spin_ns; s++) {
		if ((i = try_round(cases, n)) != SIZE_MAX) {
			*fired = i;
			return NULL;
		}
		/* The clocks only every 64 tries: a done check is one load, a clock read is not. */
		if (ats_ctx_done(ctx))
			return ats_ctx_err(ctx);
		if (!(s & 63) && (err = ctx_check(ctx, deadline)))
			return err;
		if (!poll && ats__spin_over(&spin, s))
			break;
		ats__cpu_relax();
	}

	struct futex_waitv w[ATS_CHAN_SELECT_MAX + 1];
	/* A cancel also bumps the first case's eventcount, w[0] below: where a thread can sleep on
	 * only one word (no futex_waitv), a cancel still wakes it at once (ats__ec_park). */
	ats__ec_kicker kick = {.ec = NULL};
	atomic_init(&kick.word, 0);
	bool light = false;
	/* Where a thread sleeps on one word at a time, a wait on several eventcounts watches them
	 * (internal/ec.h) and sleeps on its kick word, which their flagged bumps then bump too. */
	ats__ec_watch watch[ATS_CHAN_SELECT_MAX];
	unsigned nwatch = 0;
	for (size_t j = 0; j < n; j++) {
		if (!cases[j].chan)
			continue;
		struct chan *c = C(cases[j].chan);
		light |= c->light;
		struct ck_ec32 *ec = cases[j].send ? &c->not_full : &c->not_empty;
		if (!kick.ec)
			kick.ec = ec;
		unsigned d = 0;
		while (d < nwatch && watch[d].ec != ec)
			d++;
		if (d == nwatch)
			watch[nwatch++] = (ats__ec_watch){.ec = ec, .word = &kick.word};
	}
	if (nwatch < 2 || !ats__ec_parks_alone())
		nwatch = 0;
	else
		ats__ec_watch_start(watch, nwatch);
	ats_ctx_after after;
	ats_ctx_after_func(ctx, &after, ats__ec_kick_bump, &kick);
	err = NULL;
	unsigned landing_spins = 0;
	for (;;) {
		/* acquire: pairs with ats__ec_kick's release (then the ctx check below sees done). */
		uint32_t kv = atomic_load_explicit(&kick.word, memory_order_acquire);
		unsigned nw = 0;
		for (size_t j = 0; j < n; j++) {
			if (!cases[j].chan)
				continue;
			struct chan *c = C(cases[j].chan);
			struct ck_ec32 *ec = cases[j].send ? &c->not_full : &c->not_empty;
			unsigned d = 0;
			while (d < nw && w[d].uaddr != (uint64_t)(uintptr_t)&ec->counter)
				d++;
			if (d < nw)
				continue; /* the same eventcount twice: one entry */
			uint32_t val = ats__ec_arm(ec);
			w[nw++] = (struct futex_waitv){.val = val,
			                               .uaddr = (uint64_t)(uintptr_t)&ec->counter,
			                               .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};
		}
		w[nw++] = (struct futex_waitv){
		    .val = kv, .uaddr = (uint64_t)(uintptr_t)&kick.word, .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};
		/* Full fence: the flags above are set before the re-check below reads the rings (the
		 * other half is the locked add of a sender's or receiver's eventcount bump). */
		/* On arm64 that bump (ck_ec32_inc, mp mode) is ck_pr_fence_store_atomic (dmb st) and then a
		 * plain fetch-and-add: the bumper's ring, credit and closed stores are ordered before the add's
		 * write, and this dmb sy orders our CAS (or load) that read it before the re-check's loads:
		 * message passing, which ARMv8 forbids to fail. It needs ck's RMO build of ck_pr for arm64
		 * (CK_MD_TSO would make both fences compiler-only), which cmake/AtsDependencies.cmake checks. */
		ck_pr_fence_memory();
		/* Light channels' senders and receivers bump only when they see a flag: the asymmetric
		 * half of that (file comment), every round, as each round re-arms. It fails only when the
		 * kernel is out of memory: then this round sleeps at most 1 ms and looks again (a value
		 * that landed meanwhile is found late, never lost). */
		uint64_t until = deadline;
		if (light && !ats__membarrier()) {
			uint64_t soon = ats_now_ns() + 1000000;
			until = soon < deadline ? soon : deadline;
		}
		if ((i = try_round(cases, n)) != SIZE_MAX) {
			*fired = i;
			break;
		}
		if ((err = ctx_check(ctx, deadline)))
			break;
		if (landing(cases, n)) {
			ats__spin_pause(++landing_spins); /* a sender is between its credit and its enqueue */
			continue;
		}
		landing_spins = 0;
		if (nwatch)
			ats__ec_park_watched(&kick.word, kv, until); /* every wake-up comes to this word */
		else
			ats__ec_park(w, nw, until, true);
	}
	ats_ctx_after_stop(&after);
	if (nwatch)
		ats__ec_watch_stop(watch, nwatch);
	return err;
}

static ats_err *closed_err(void)
{
	return ats_err_new(ATS_ERR_CLOSED, "channel closed");
}

ats_err *ats_chan_select(ats_chan_case *cases, size_t n, bool has_default, size_t *fired, ats_ctx *ctx)
{
	if (!fired || !ctx || (!cases && n) || n > ATS_CHAN_SELECT_MAX)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "select: %s",
		                   !fired                    ? "NULL fired"
		                   : !ctx                    ? "NULL ctx"
		                   : n > ATS_CHAN_SELECT_MAX ? "too many cases"
		                                             : "NULL cases");
	ats_err *err;
	if ((err = ctx_check(ctx, ats_ctx_deadline(ctx))))
		return err;
	size_t i = try_round(cases, n);
	if (i != SIZE_MAX || has_default) {
		*fired = i == SIZE_MAX ? ATS_CHAN_SELECT_DEFAULT : i;
		return NULL;
	}
	uint64_t spin_ns = 0;
	bool poll = true, any = false; /* busy-poll only when every case has a busy-poll channel */
	for (size_t j = 0; j < n; j++) {
		if (!cases[j].chan)
			continue;
		struct chan *c = C(cases[j].chan);
		spin_ns = c->spin_ns > spin_ns ? c->spin_ns : spin_ns;
		poll = poll && c->busy_poll;
		any = true;
	}
	poll = poll && any; /* no channel at all (n == 0, or only NULL ones): park until ctx is done */
	return wait_cases(cases, n, fired, ctx, spin_ns, poll);
}

/* ---- Blocking send and receive ---- */

/* The slow halves of send and recv: the first try found the channel full (empty). */
static ats_err *wait_send(struct chan *c, ats_chan *ch, void *v, ats_ctx *ctx)
{
	ats_chan_case k = {.chan = ch, .send = true, .value = v};
	size_t fired;
	ats_err *err = wait_cases(&k, 1, &fired, ctx, c->spin_ns, c->busy_poll);
	if (err)
		return err;
	return k.status == ATS_CHAN_OK ? NULL : closed_err();
}

static ats_err *wait_recv(struct chan *c, ats_chan *ch, void **out, ats_ctx *ctx)
{
	ats_chan_case k = {.chan = ch, .send = false};
	size_t fired;
	ats_err *err = wait_cases(&k, 1, &fired, ctx, c->spin_ns, c->busy_poll);
	if (err)
		return err;
	if (k.status != ATS_CHAN_OK)
		return closed_err();
	*out = k.value;
	return NULL;
}

ats_err *ats_chan_send(ats_chan *ch, void *v, ats_ctx *ctx)
{
	if (ats__unlikely(!ch || !ctx))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel send: NULL %s", ch ? "ctx" : "channel");
	struct chan *c = C(ch);
	ats_chan_status st;
	/* One load, no clock read: a deadline that passed before the timer fired is caught once the
	 * call has to wait (ctx.h: deadlines fire at most a tick late). */
	if (ats__unlikely(ats_ctx_done(ctx)))
		return ats_ctx_err(ctx);
	send_burst(c, &v, 1, &st);
	if (ats__likely(st == ATS_CHAN_OK))
		return NULL;
	if (st == ATS_CHAN_CLOSED)
		return closed_err();
	return wait_send(c, ch, v, ctx);
}

ats_err *ats_chan_recv(ats_chan *ch, void **out, ats_ctx *ctx)
{
	if (ats__unlikely(!ch || !out || !ctx))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel recv: NULL %s",
		                   !ch    ? "channel"
		                   : !out ? "out"
		                          : "ctx");
	if (ats__unlikely(ats_ctx_done(ctx))) /* one load, as in send */
		return ats_ctx_err(ctx);
	ats_chan_status st = ats_chan_try_recv(ch, out);
	if (ats__likely(st == ATS_CHAN_OK))
		return NULL;
	if (st == ATS_CHAN_CLOSED)
		return closed_err();
	return wait_recv(C(ch), ch, out, ctx);
}

/* The bursts try the whole burst first (one credit or room check, one index publication, one
 * wake check); only when nothing fits do they wait for one value's room, as send does, and then
 * send what else fits. */
ats_err *ats_chan_send_n(ats_chan *ch, void *const *items, size_t n, size_t *sent, ats_ctx *ctx)
{
	if (!ch || !ctx || !sent || (!items && n))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel send_n: NULL %s",
		                   !ch     ? "channel"
		                   : !ctx  ? "ctx"
		                   : !sent ? "sent"
		                           : "items");
	*sent = 0;
	if (n == 0)
		return NULL;
	if (ats__unlikely(ats_ctx_done(ctx)))
		return ats_ctx_err(ctx);
	struct chan *c = C(ch);
	ats_chan_status st;
	size_t k = send_burst(c, items, n, &st);
	if (ats__likely(k)) {
		*sent = k;
		return NULL;
	}
	if (st == ATS_CHAN_CLOSED)
		return closed_err();
	ats_err *err = wait_send(c, ch, items[0], ctx);
	if (err)
		return err;
	*sent = 1 + (n > 1 ? send_burst(c, items + 1, n - 1, &st) : 0);
	return NULL;
}

ats_err *ats_chan_recv_n(ats_chan *ch, void **out, size_t n, size_t *received, ats_ctx *ctx)
{
	if (!ch || !ctx || !received || (!out && n))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel recv_n: NULL %s",
		                   !ch         ? "channel"
		                   : !ctx      ? "ctx"
		                   : !received ? "received"
		                               : "out");
	*received = 0;
	if (n == 0)
		return NULL;
	if (ats__unlikely(ats_ctx_done(ctx)))
		return ats_ctx_err(ctx);
	struct chan *c = C(ch);
	ats_chan_status st;
	size_t k = recv_burst(c, out, n, &st);
	if (ats__likely(k)) {
		*received = k;
		return NULL;
	}
	if (st == ATS_CHAN_CLOSED)
		return closed_err();
	ats_err *err = wait_recv(c, ch, &out[0], ctx);
	if (err)
		return err;
	*received = 1 + (n > 1 ? recv_burst(c, out + 1, n - 1, &st) : 0);
	return NULL;
}

/* ---- Combinators ---- */

ats_err *ats_chan_forward(ats_chan *in, ats_chan *out, size_t *forwarded, void **undelivered, ats_ctx *ctx)
{
	if (!in || !out || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel forward: NULL %s",
		                   !in    ? "in"
		                   : !out ? "out"
		                          : "ctx");
	size_t n = 0;
	ats_err *err;
	if (undelivered)
		*undelivered = NULL;
	for (;;) {
		void *v;
		if ((err = ats_chan_recv(in, &v, ctx))) {
			if (ats_err_code(err) == ATS_ERR_CLOSED) {
				ats_err_unref(err);
				err = NULL; /* in closed and drained: done */
			}
			break;
		}
		if ((err = ats_chan_send(out, v, ctx))) {
			/* Taken from in, not delivered: in cannot take it back at the front, so the caller gets it. */
			if (undelivered)
				*undelivered = v;
			break;
		}
		n++;
	}
	if (forwarded)
		*forwarded = n;
	return err;
}

ats_err *ats_chan_tee(ats_chan *in, ats_chan *out1, ats_chan *out2, size_t *teed, void **undelivered, ats_ctx *ctx)
{
	if (!in || !out1 || !out2 || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "channel tee: NULL argument");
	size_t n = 0;
	ats_err *err;
	if (undelivered)
		*undelivered = NULL;
	for (;;) {
		void *v;
		if ((err = ats_chan_recv(in, &v, ctx))) {
			if (ats_err_code(err) == ATS_ERR_CLOSED) {
				ats_err_unref(err);
				err = NULL;
			}
			break;
		}
		/* Both sends, whichever is ready first (Go's tee: a select that drops each case once
		 * it fired), so a slow reader of one side does not hold back the other more than one value. */
		ats_chan_case cs[2] = {{.chan = out1, .send = true, .value = v},
		                       {.chan = out2, .send = true, .value = v}};
		for (int left = 2; left > 0 && !err; left--) {
			size_t fired;
			if ((err = ats_chan_select(cs, 2, false, &fired, ctx)))
				break;
			if (cs[fired].status != ATS_CHAN_OK)
				err = ats_err_new(ATS_ERR_CLOSED, "channel tee: output %zu closed", fired + 1);
			cs[fired].chan = NULL;
		}
		if (err) {
			if (undelivered)
				*undelivered = v;
			break;
		}
		n++;
	}
	if (teed)
		*teed = n;
	return err;
}
