/* SPDX-License-Identifier: BSD-2-Clause */
/* Channels: cross-thread cost per message (SPSC one at a time and in bursts of 32, MPMC with two
 * producers and two consumers), a blocking round trip between two threads, a send + receive on one
 * thread (each also as `_light`, config.light: no locked instruction per message, a membarrier per
 * sleep), and two floors: raw ck_ring SPSC across two threads with spinning ends, and a round trip
 * of two futex wake-ups. Go peers: bench/peers/go/chan.go; C peers (DPDK's rte_ring, liburcu's
 * wfcq): bench/peers/dpdk_ring.c and bench/peers/urcu_wfcq.c.
 *
 * Each row runs on the runner's thread plus partner threads of its own (made at setup, parked on a
 * futex between runs), so ns_per_op is per message (per round trip for pingpong), not per thread:
 * the runner's multi-thread rows divide by thread count, which would halve a two-sided figure. */
#include "bench.h"
#include "atscale/chan.h"
#include "internal/futex.h"

#include <ck_ring.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define CAP 1024
#define BURST 32
#define MAX_PARTNERS 3

struct xb;
typedef void (*part_fn)(struct xb *x, unsigned idx, uint64_t iters);

struct xb {
	pthread_t th[MAX_PARTNERS];
	unsigned partners;
	part_fn main_part, partner_part;
	_Atomic uint32_t gen, done, stop;
	uint64_t iters;
	ats_chan *a, *b;
	struct ck_ring ring;
	struct ck_ring_buffer *slots;
	_Alignas(64) _Atomic uint32_t turn_a; /* floor.futex_pingpong's two words, a line each */
	_Alignas(64) _Atomic uint32_t turn_b;
};

struct partner_arg {
	struct xb *x;
	unsigned idx;
};
static struct partner_arg partner_args[64][MAX_PARTNERS];
static unsigned partner_arg_next;

static void *partner_main(void *arg)
{
	struct partner_arg *pa = arg;
	struct xb *x = pa->x;
	uint32_t seen = 0;
	for (;;) {
		uint32_t g;
		/* acquire: the run's iters and state, written before gen was bumped. */
		while ((g = atomic_load_explicit(&x->gen, memory_order_acquire)) == seen)
			ats__futex_wait(&x->gen, seen, ATS__FUTEX_FOREVER);
		seen = g;
		if (atomic_load_explicit(&x->stop, memory_order_acquire))
			return NULL;
		x->partner_part(x, pa->idx, x->iters);
		/* release: the main thread reads what this run did after it sees the count. */
		if (atomic_fetch_add_explicit(&x->done, 1, memory_order_acq_rel) + 1 == x->partners)
			ats__futex_wake(&x->done, 1);
	}
}

static void xb_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct xb *x = state;
	x->iters = iters;
	atomic_store_explicit(&x->done, 0, memory_order_relaxed); /* published by the release below */
	/* release: partners that see the new gen see iters and done reset. */
	atomic_fetch_add_explicit(&x->gen, 1, memory_order_release);
	ats__futex_wake(&x->gen, INT32_MAX);
	x->main_part(x, 0, iters);
	uint32_t d;
	while ((d = atomic_load_explicit(&x->done, memory_order_acquire)) != x->partners)
		ats__futex_wait(&x->done, d, ATS__FUTEX_FOREVER);
}

static void xb_teardown(void *state)
{
	struct xb *x = state;
	/* release, both: a partner that sees the new gen sees stop set. */
	atomic_store_explicit(&x->stop, 1, memory_order_release);
	atomic_fetch_add_explicit(&x->gen, 1, memory_order_release);
	ats__futex_wake(&x->gen, INT32_MAX);
	for (unsigned i = 0; i < x->partners; i++)
		pthread_join(x->th[i], NULL);
	ats_chan_free(x->a, NULL, NULL);
	ats_chan_free(x->b, NULL, NULL);
	free(x->slots);
	free(x);
}

static struct xb *xb_new_cfg(unsigned partners, part_fn main_part, part_fn partner_part, ats_chan_kind kind, size_t cap,
                             bool two, bool light)
{
	struct xb *x = aligned_alloc(64, (sizeof *x + 63) & ~(size_t)63);
	if (!x || partner_arg_next >= 64)
		return free(x), NULL;
	*x = (struct xb){.partners = partners, .main_part = main_part, .partner_part = partner_part};
	ats_chan_config cfg = ATS_CHAN_CONFIG(kind, cap);
	cfg.light = light;
	if (ats_chan_new(&x->a, &cfg) || (two && ats_chan_new(&x->b, &cfg))) {
		free(x);
		return NULL;
	}
	struct partner_arg *pa = partner_args[partner_arg_next++];
	for (unsigned i = 0; i < partners; i++) {
		pa[i] = (struct partner_arg){x, i + 1};
		if (pthread_create(&x->th[i], NULL, partner_main, &pa[i]) != 0)
			abort();
	}
	return x;
}

static struct xb *xb_new(unsigned partners, part_fn main_part, part_fn partner_part, ats_chan_kind kind, size_t cap,
                         bool two)
{
	return xb_new_cfg(partners, main_part, partner_part, kind, cap, two, false);
}

/* ---- chan.spsc: one message at a time, blocking ends ---- */

static void spsc_send(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++)
		if (ats_chan_send(x->a, (void *)(uintptr_t)(i + 1), ats_ctx_background()))
			abort();
}

static void spsc_recv(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++) {
		void *v;
		if (ats_chan_recv(x->a, &v, ats_ctx_background()))
			abort();
		ats_bench_sink(v);
	}
}

static void *spsc_setup(unsigned threads)
{
	(void)threads;
	return xb_new(1, spsc_send, spsc_recv, ATS_CHAN_SPSC, CAP, false);
}

static void *spsc_light_setup(unsigned threads)
{
	(void)threads;
	return xb_new_cfg(1, spsc_send, spsc_recv, ATS_CHAN_SPSC, CAP, false, true);
}

/* ---- chan.spsc_batch32: bursts of 32 (the last one shorter) ---- */

static void batch_send(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	void *items[BURST];
	for (unsigned j = 0; j < BURST; j++)
		items[j] = (void *)(uintptr_t)(j + 1);
	for (uint64_t i = 0; i < iters;) {
		size_t want = iters - i < BURST ? (size_t)(iters - i) : BURST, k;
		if (ats_chan_send_n(x->a, items, want, &k, ats_ctx_background()))
			abort();
		i += k;
	}
}

static void batch_recv(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	void *items[BURST];
	for (uint64_t i = 0; i < iters;) {
		size_t want = iters - i < BURST ? (size_t)(iters - i) : BURST, k;
		if (ats_chan_recv_n(x->a, items, want, &k, ats_ctx_background()))
			abort();
		ats_bench_sink(items[0]);
		i += k;
	}
}

static void *batch_setup(unsigned threads)
{
	(void)threads;
	return xb_new(1, batch_send, batch_recv, ATS_CHAN_SPSC, CAP, false);
}

static void *batch_light_setup(unsigned threads)
{
	(void)threads;
	return xb_new_cfg(1, batch_send, batch_recv, ATS_CHAN_SPSC, CAP, false, true);
}

/* ---- chan.mpmc_2x2: two producers (the runner's thread and partner 1), two consumers; each
 * producer sends half, each consumer takes half ---- */

static void mpmc_part(struct xb *x, unsigned idx, uint64_t iters)
{
	uint64_t half = (iters + 1) / 2;
	if (idx <= 1)
		spsc_send(x, idx, half);
	else
		spsc_recv(x, idx, half);
}

static void *mpmc_setup(unsigned threads)
{
	(void)threads;
	return xb_new(3, mpmc_part, mpmc_part, ATS_CHAN_MPMC, CAP, false);
}

static void *mpmc_light_setup(unsigned threads)
{
	(void)threads;
	return xb_new_cfg(3, mpmc_part, mpmc_part, ATS_CHAN_MPMC, CAP, false, true);
}

/* ---- chan.pingpong: a blocking round trip (a -> partner -> b) ---- */

static void ping(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++) {
		void *v;
		if (ats_chan_send(x->a, (void *)(uintptr_t)(i + 1), ats_ctx_background()) ||
		    ats_chan_recv(x->b, &v, ats_ctx_background()))
			abort();
	}
}

static void pong(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++) {
		void *v;
		if (ats_chan_recv(x->a, &v, ats_ctx_background()) || ats_chan_send(x->b, v, ats_ctx_background()))
			abort();
	}
}

static void *pingpong_setup(unsigned threads)
{
	(void)threads;
	return xb_new(1, ping, pong, ATS_CHAN_SPSC, 1, true);
}

static void *pingpong_light_setup(unsigned threads)
{
	(void)threads;
	return xb_new_cfg(1, ping, pong, ATS_CHAN_SPSC, 1, true, true);
}

/* ---- floor.ck_ring_spsc: the ring alone, both ends spinning ---- */

static void ring_send(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++)
		while (!ck_ring_enqueue_spsc(&x->ring, x->slots, (void *)(uintptr_t)(i + 1)))
			ats__cpu_relax();
}

static void ring_recv(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++) {
		void *v;
		while (!ck_ring_dequeue_spsc(&x->ring, x->slots, &v))
			ats__cpu_relax();
		ats_bench_sink(v);
	}
}

static void *ring_setup(unsigned threads)
{
	(void)threads;
	struct xb *x = xb_new(1, ring_send, ring_recv, ATS_CHAN_SPSC, 1, false);
	if (!x)
		return NULL;
	/* CAP + 1 slots, rounded: the same ring the channel of capacity CAP has. */
	x->slots = aligned_alloc(64, 2 * CAP * sizeof *x->slots);
	if (!x->slots) {
		xb_teardown(x);
		return NULL;
	}
	ck_ring_init(&x->ring, 2 * CAP);
	return x;
}

/* ---- floor.futex_pingpong: the wake-up floor of a blocking round trip ----
 * Two threads pass a turn back and forth on two words, each side sleeping in FUTEX_WAIT until the
 * other stores and wakes it: two sleeps and two wake-ups per round trip, nothing else. A blocking
 * channel round trip (chan.pingpong) whose ends find nothing to receive pays at least this. */

static void futex_ping(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++) {
		uint32_t v = (uint32_t)i + 1;
		/* release/acquire: the turn word carries the hand-over. */
		atomic_store_explicit(&x->turn_a, v, memory_order_release);
		ats__futex_wake(&x->turn_a, 1);
		uint32_t b;
		while ((b = atomic_load_explicit(&x->turn_b, memory_order_acquire)) != v)
			ats__futex_wait(&x->turn_b, b, ATS__FUTEX_FOREVER);
	}
}

static void futex_pong(struct xb *x, unsigned idx, uint64_t iters)
{
	(void)idx;
	for (uint64_t i = 0; i < iters; i++) {
		uint32_t v = (uint32_t)i + 1, a;
		while ((a = atomic_load_explicit(&x->turn_a, memory_order_acquire)) != v)
			ats__futex_wait(&x->turn_a, a, ATS__FUTEX_FOREVER);
		atomic_store_explicit(&x->turn_b, v, memory_order_release);
		ats__futex_wake(&x->turn_b, 1);
	}
}

static void futex_run(void *state, unsigned tid, uint64_t iters)
{
	struct xb *x = state;
	/* Each run counts its turns from 1 again: both words start below the first turn. */
	atomic_store_explicit(&x->turn_a, 0, memory_order_relaxed);
	atomic_store_explicit(&x->turn_b, 0, memory_order_relaxed);
	xb_run(state, tid, iters);
}

static void *futex_setup(unsigned threads)
{
	(void)threads;
	return xb_new(1, futex_ping, futex_pong, ATS_CHAN_SPSC, 1, false);
}

/* ---- chan.try_pair: try_send + try_recv on one thread ---- */

static void *pair_setup(unsigned threads)
{
	(void)threads;
	ats_chan *c = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, CAP);
	return ats_chan_new(&c, &cfg) ? NULL : c;
}

static void *pair_light_setup(unsigned threads)
{
	(void)threads;
	ats_chan *c = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, CAP);
	cfg.light = true;
	return ats_chan_new(&c, &cfg) ? NULL : c;
}

static void pair_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	ats_chan *c = state;
	for (uint64_t i = 0; i < iters; i++) {
		void *v;
		if (ats_chan_try_send(c, (void *)(uintptr_t)(i + 1)) != ATS_CHAN_OK ||
		    ats_chan_try_recv(c, &v) != ATS_CHAN_OK)
			abort();
		ats_bench_sink(v);
	}
}

static void pair_teardown(void *state)
{
	ats_chan_free(state, NULL, NULL);
}

static const ats_bench chan_spsc = {"chan.spsc", ATS_BENCH_1T, spsc_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_spsc_batch = {"chan.spsc_batch32", ATS_BENCH_1T, batch_setup, xb_run,
                                          xb_teardown,         NULL,         NULL};
static const ats_bench chan_mpmc = {"chan.mpmc_2x2", ATS_BENCH_1T, mpmc_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_pingpong = {"chan.pingpong", ATS_BENCH_1T, pingpong_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_try_pair = {"chan.try_pair", ATS_BENCH_1T, pair_setup, pair_run, pair_teardown, NULL, NULL};
static const ats_bench floor_ring = {"floor.ck_ring_spsc", ATS_BENCH_1T, ring_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_spsc_l = {
    "chan.spsc_light", ATS_BENCH_1T, spsc_light_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_batch_l = {
    "chan.spsc_batch32_light", ATS_BENCH_1T, batch_light_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_mpmc_l = {
    "chan.mpmc_2x2_light", ATS_BENCH_1T, mpmc_light_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_pingpong_l = {
    "chan.pingpong_light", ATS_BENCH_1T, pingpong_light_setup, xb_run, xb_teardown, NULL, NULL};
static const ats_bench chan_pair_l = {
    "chan.try_pair_light", ATS_BENCH_1T, pair_light_setup, pair_run, pair_teardown, NULL, NULL};
ATS_BENCH(chan_spsc)
ATS_BENCH(chan_spsc_l)
ATS_BENCH(chan_batch_l)
ATS_BENCH(chan_mpmc_l)
ATS_BENCH(chan_pingpong_l)
ATS_BENCH(chan_pair_l)
ATS_BENCH(chan_spsc_batch)
ATS_BENCH(chan_mpmc)
ATS_BENCH(chan_pingpong)
ATS_BENCH(chan_try_pair)
static const ats_bench floor_futex = {
    "floor.futex_pingpong", ATS_BENCH_1T, futex_setup, futex_run, xb_teardown, NULL, NULL};
ATS_BENCH(floor_ring)
ATS_BENCH(floor_futex)
