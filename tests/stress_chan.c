/* SPDX-License-Identifier: BSD-2-Clause */
/* Channels under contention (run under TSan and ASan): every variant with producers and consumers
 * on every core, about a million values each, every value delivered exactly once (a per-value
 * counter, checked at the end); MPMC closed mid-flight, where every send that succeeded is
 * received exactly once and none that failed is; and lost wake-up hunts: thousands of rounds of
 * a thread parking (recv, send, select) while another races it, each under a ctx timeout that
 * fails the test if it is ever reached. Nothing sleeps to synchronize. */
#include <criterion/criterion.h>

#include "atscale/chan.h"
#include "atscale/clock.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#define SEC UINT64_C(1000000000)
#define V(i) ((void *)(uintptr_t)(i))

#include "internal/chan_hooks.h"
#include "internal/membarrier_hooks.h"
#include "slow.h"
#ifdef SLOW
#define MESSAGES (1u << 18) /* TSan runs ~10x slower; a quarter million still covers every path */
#define ROUNDS 2000
#else
#define MESSAGES (1u << 20)
#define ROUNDS 10000
#endif

struct run {
	ats_chan *c;
	unsigned producers, consumers;
	uint32_t n;             /* values in all */
	_Atomic uint8_t *seen;  /* seen[id]: times id was received */
	_Atomic uint32_t *sent; /* per producer: values it sent successfully */
	_Atomic int bad;        /* a value out of range or received twice */
	_Atomic uint32_t received;
	_Atomic int closed_seen;
	uint32_t close_after; /* MPMC close test: close once this many were received (0: never) */
};

struct worker {
	struct run *r;
	unsigned id;
};

static void note(struct run *r, void *v)
{
	uintptr_t id = (uintptr_t)v - 1;
	if (id >= r->n || atomic_fetch_add_explicit(&r->seen[id], 1, memory_order_relaxed) != 0)
		atomic_store(&r->bad, 1);
	uint32_t got = atomic_fetch_add_explicit(&r->received, 1, memory_order_relaxed) + 1;
	if (r->close_after && got == r->close_after) {
		ats_err *err = ats_chan_close(r->c);
		if (err)
			atomic_store(&r->bad, 2);
	}
}

/* Producer p sends ids p, p + P, p + 2P, ... (so what it sent is a prefix of its sequence), mixing
 * blocking sends, try_send and bursts; stops at the first closed error. */
static void *producer(void *arg)
{
	struct worker *w = arg;
	struct run *r = w->r;
	uint32_t k = 0;
	for (uint32_t id = w->id; id < r->n;) {
		unsigned mode = (id / r->producers) % 3;
		if (mode == 0) {
			ats_err *err = ats_chan_send(r->c, V(id + 1), ats_ctx_background());
			if (err) {
				ats_err_unref(err);
				break;
			}
			id += r->producers, k++;
		} else if (mode == 1) {
			ats_chan_status st = ats_chan_try_send(r->c, V(id + 1));
			if (st == ATS_CHAN_CLOSED)
				break;
			if (st == ATS_CHAN_OK)
				id += r->producers, k++;
			else
				sched_yield();
		} else {
			void *items[8];
			size_t m = 0;
			for (uint32_t j = id; j < r->n && m < 8; j += r->producers)
				items[m++] = V(j + 1);
			size_t done = 0;
			ats_err *err = ats_chan_send_n(r->c, items, m, &done, ats_ctx_background());
			id += (uint32_t)done * r->producers, k += (uint32_t)done;
			if (err) {
				ats_err_unref(err);
				break;
			}
		}
		/* relaxed: read after the threads are joined. */
		atomic_store_explicit(&r->sent[w->id], k, memory_order_relaxed);
	}
	atomic_store_explicit(&r->sent[w->id], k, memory_order_relaxed);
	return NULL;
}

/* Receives with recv, recv_n and select until closed. */
static void *consumer(void *arg)
{
	struct worker *w = arg;
	struct run *r = w->r;
	for (unsigned i = w->id;; i++) {
		ats_err *err = NULL;
		if (i % 3 == 0) {
			void *v;
			if (!(err = ats_chan_recv(r->c, &v, ats_ctx_background())))
				note(r, v);
		} else if (i % 3 == 1) {
			void *v[8];
			size_t m = 0;
			if (!(err = ats_chan_recv_n(r->c, v, 8, &m, ats_ctx_background())))
				for (size_t j = 0; j < m; j++)
					note(r, v[j]);
		} else {
			ats_chan_case cs[2] = {{.chan = NULL}, {.chan = r->c}};
			size_t fired;
			cr_assert_null(ats_chan_select(cs, 2, false, &fired, ats_ctx_background()));
			cr_assert_eq(fired, 1);
			if (cs[1].status == ATS_CHAN_OK)
				note(r, cs[1].value);
			else
				err = ats_err_new(ATS_ERR_CLOSED, "closed");
		}
		if (err) {
			if (ats_err_code(err) != ATS_ERR_CLOSED)
				atomic_store(&r->bad, 3);
			ats_err_unref(err);
			atomic_store(&r->closed_seen, 1);
			return NULL;
		}
	}
}

/* Whether the channels of this test are light (config.light). */
static bool light_channels;

static void run(ats_chan_kind kind, size_t cap, unsigned producers, unsigned consumers, uint32_t close_after)
{
	struct run r = {.producers = producers, .consumers = consumers, .n = MESSAGES, .close_after = close_after};
	ats_chan_config cfg = ATS_CHAN_CONFIG(kind, cap);
	/* 5 us in all (a light channel multiplies its spin): parks still happen (2 cores, 4
	 * threads); more spin keeps the run short, much more makes it long. */
	cfg.spin_ns = light_channels ? 5000 / ATS_CHAN_LIGHT_SPIN_FACTOR : 5000;
	cfg.light = light_channels;
	cr_assert_null(ats_chan_new(&r.c, &cfg));
	r.seen = calloc(r.n, 1);
	r.sent = calloc(producers, sizeof *r.sent);
	cr_assert(r.seen && r.sent);
	pthread_t pt[8], ct[8];
	struct worker pw[8], cw[8];
	for (unsigned i = 0; i < producers; i++) {
		pw[i] = (struct worker){&r, i};
		cr_assert_eq(pthread_create(&pt[i], NULL, producer, &pw[i]), 0);
	}
	for (unsigned i = 0; i < consumers; i++) {
		cw[i] = (struct worker){&r, i};
		cr_assert_eq(pthread_create(&ct[i], NULL, consumer, &cw[i]), 0);
	}
	for (unsigned i = 0; i < producers; i++)
		pthread_join(pt[i], NULL);
	if (!close_after) {
		/* Every value is sent: close so the consumers drain and stop. */
		cr_assert_null(ats_chan_close(r.c));
	}
	for (unsigned i = 0; i < consumers; i++)
		pthread_join(ct[i], NULL);
	cr_assert_eq(atomic_load(&r.bad), 0, "bad %d", atomic_load(&r.bad));
	/* Exactly the values sent successfully were received, each once. */
	uint64_t sent_total = 0;
	for (unsigned p = 0; p < producers; p++) {
		uint32_t k = atomic_load(&r.sent[p]);
		sent_total += k;
		for (uint32_t j = 0; j < r.n / producers + 1; j++) {
			uint32_t id = p + j * producers;
			if (id >= r.n)
				break;
			cr_assert_eq(atomic_load(&r.seen[id]), j < k ? 1 : 0, "producer %u value %u (sent %u)", p, j,
			             k);
		}
	}
	cr_assert_eq(sent_total, atomic_load(&r.received));
	if (!close_after)
		cr_assert_eq(sent_total, r.n);
	else
		cr_assert_lt(sent_total, r.n, "closed mid-flight");
	cr_assert_eq(ats_chan_len(r.c), 0);
	ats_chan_free(r.c, NULL, NULL);
	free(r.seen);
	free((void *)r.sent);
}

Test(stress_chan, spsc)
{
	run(ATS_CHAN_SPSC, 7, 1, 1, 0);
}
Test(stress_chan, mpsc)
{
	run(ATS_CHAN_MPSC, 10, 2, 1, 0);
}
Test(stress_chan, spmc)
{
	run(ATS_CHAN_SPMC, 10, 1, 2, 0);
}
Test(stress_chan, mpmc)
{
	run(ATS_CHAN_MPMC, 5, 2, 2, 0);
}
Test(stress_chan, mpmc_capacity_one)
{
	run(ATS_CHAN_MPMC, 1, 2, 2, 0);
}
Test(stress_chan, mpmc_close_mid_flight)
{
	run(ATS_CHAN_MPMC, 6, 2, 2, MESSAGES / 3);
}
Test(stress_chan, spmc_close_mid_flight)
{
	run(ATS_CHAN_SPMC, 3, 1, 2, MESSAGES / 3);
}
/* Light channels under the same counts: exactly once, close mid-flight included. */
Test(stress_chan, spsc_light)
{
	light_channels = true;
	run(ATS_CHAN_SPSC, 7, 1, 1, 0);
}
Test(stress_chan, spmc_close_mid_flight_light)
{
	light_channels = true;
	run(ATS_CHAN_SPMC, 3, 1, 2, MESSAGES / 3);
}
Test(stress_chan, mpmc_close_mid_flight_light)
{
	light_channels = true;
	run(ATS_CHAN_MPMC, 6, 2, 2, MESSAGES / 3);
}

/* ---- Lost wake-up hunt ----
 * Each round: the parker blocks (recv on an empty channel, send on a full one, or select over two
 * empty channels) under a ctx that times out after 5 s; the racer, released at the same moment,
 * makes it ready. A lost wake-up leaves the parker asleep until the timeout, which fails the
 * test. The two start together through a round counter, not a sleep, so the racer's operation
 * lands anywhere from before the parker's first try to after it sleeps. */
struct hunt {
	ats_chan *a, *b;
	int mode; /* 0 recv, 1 send, 2 select */
	_Atomic uint32_t round, ready;
	_Atomic int failed;
};

static void *racer(void *arg)
{
	struct hunt *h = arg;
	for (uint32_t i = 1; i <= ROUNDS; i++) {
		while (atomic_load(&h->round) != i)
			sched_yield();
		void *v;
		if (h->mode == 0)
			cr_assert_eq(ats_chan_try_send(h->a, V(i)), ATS_CHAN_OK);
		else if (h->mode == 1)
			cr_assert_null(ats_chan_recv(h->a, &v, ats_ctx_background()));
		else
			cr_assert_eq(ats_chan_try_send(i & 1 ? h->a : h->b, V(i)), ATS_CHAN_OK);
		atomic_store(&h->ready, i);
	}
	return NULL;
}

/* light: 0 both channels fenced (the default), 1 both light, 2 the first light and the second
 * fenced (select over both). */
static void hunt_with(int mode, ats_chan_kind kind, int light)
{
	struct hunt h = {.mode = mode};
	ats_chan_config cfg = ATS_CHAN_CONFIG(kind, 1);
	cfg.spin_ns = 0; /* park at once: the window between arming and sleeping is what is hunted */
	cfg.light = light >= 1;
	cr_assert_null(ats_chan_new(&h.a, &cfg));
	cfg.kind = ATS_CHAN_SPSC;
	cfg.light = light == 1;
	cr_assert_null(ats_chan_new(&h.b, &cfg));
	if (mode == 1)
		cr_assert_eq(ats_chan_try_send(h.a, V(1)), ATS_CHAN_OK); /* full */
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, racer, &h), 0);
	for (uint32_t i = 1; i <= ROUNDS; i++) {
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 5 * SEC, &ctx));
		atomic_store(&h.round, i);
		ats_err *err;
		void *v = NULL;
		if (mode == 0) {
			err = ats_chan_recv(h.a, &v, ctx);
			if (!err)
				cr_assert_eq(v, V(i));
		} else if (mode == 1) {
			err = ats_chan_send(h.a, V(i + 1), ctx);
		} else {
			ats_chan_case cs[2] = {{.chan = h.a}, {.chan = h.b}};
			size_t fired = 9;
			err = ats_chan_select(cs, 2, false, &fired, ctx);
			if (!err) {
				cr_assert_eq(fired, i & 1 ? 0u : 1u);
				cr_assert_eq(cs[fired].value, V(i));
			}
		}
		/* A parker whose wake-up was lost sleeps to the deadline and then, re-checking, finds the
		 * value and succeeds: so the deadline having passed is the failure, error or not. */
		cr_assert(!err && !ats_ctx_done_at(ctx, ats_now_ns()),
		          "round %u: woke only at the timeout (a lost wake-up)", i);
		ats_ctx_release(ctx);
		while (atomic_load(&h.ready) != i)
			sched_yield();
	}
	pthread_join(t, NULL);
	ats_chan_free(h.a, NULL, NULL);
	ats_chan_free(h.b, NULL, NULL);
}

static void hunt(int mode, ats_chan_kind kind)
{
	hunt_with(mode, kind, 0);
}

Test(stress_chan, no_lost_wakeup_recv_spsc)
{
	hunt(0, ATS_CHAN_SPSC);
}
Test(stress_chan, no_lost_wakeup_recv_mpmc)
{
	hunt(0, ATS_CHAN_MPMC);
}
Test(stress_chan, no_lost_wakeup_send_spsc)
{
	hunt(1, ATS_CHAN_SPSC);
}
Test(stress_chan, no_lost_wakeup_send_mpmc)
{
	hunt(1, ATS_CHAN_MPMC);
}
Test(stress_chan, no_lost_wakeup_select)
{
	hunt(2, ATS_CHAN_MPMC);
}

/* The same with light channels (no fence on the hot side, a membarrier on the parking side), a
 * select over a light and a fenced channel at once, and light asked for where membarrier is
 * missing (forced by the hook): the channel must fall back to the fenced protocol. */
Test(stress_chan, no_lost_wakeup_recv_spsc_light)
{
	hunt_with(0, ATS_CHAN_SPSC, 1);
}
Test(stress_chan, no_lost_wakeup_send_spsc_light)
{
	hunt_with(1, ATS_CHAN_SPSC, 1);
}
Test(stress_chan, no_lost_wakeup_send_mpmc_light)
{
	hunt_with(1, ATS_CHAN_MPMC, 1);
}
Test(stress_chan, no_lost_wakeup_select_light)
{
	hunt_with(2, ATS_CHAN_MPMC, 1);
}
Test(stress_chan, no_lost_wakeup_select_light_and_fenced)
{
	hunt_with(2, ATS_CHAN_MPMC, 2);
}
Test(stress_chan, no_lost_wakeup_light_without_membarrier)
{
	atomic_store(&ats__membarrier_force_off, 1);
	hunt_with(0, ATS_CHAN_SPSC, 1);
}

/* A fenced send reads the "not empty" waiter flag right after its seq_cst RMW (taking a credit,
 * or setting the single producer's busy flag) and enqueues a few instructions later, bumping only
 * when it saw the flag. A receiver that arms in between must not sleep through the value. Each
 * round forces that order: the send stops in the hook (after its look at the flag), the receiver
 * starts only then, and the hook lets the send go on once the receiver has armed. (A receiver
 * that armed and then found its value leaves the flag set, so the next round's send sees it and
 * bumps: every other round is the hunted one.) */
static _Atomic uint32_t sends_held;

static void hold_until_receiver_armed(ats_chan *c)
{
	atomic_fetch_add(&sends_held, 1);
	while (!ats__chan_receiver_armed(c))
		sched_yield();
}

struct armed_race {
	ats_chan *c;
	_Atomic uint32_t round;
};

static void *armed_racer(void *arg)
{
	struct armed_race *r = arg;
	for (uint32_t i = 1; i <= ROUNDS; i++) {
		while (atomic_load(&r->round) != i)
			sched_yield();
		cr_assert_eq(ats_chan_try_send(r->c, V(i)), ATS_CHAN_OK);
	}
	return NULL;
}

static void armed_before_enqueue(ats_chan_kind kind)
{
	struct armed_race r = {0};
	atomic_store(&sends_held, 0);
	ats_chan_config cfg = ATS_CHAN_CONFIG(kind, 1);
	cfg.spin_ns = 0;
	cr_assert_null(ats_chan_new(&r.c, &cfg));
	atomic_store(&ats__chan_before_enqueue, hold_until_receiver_armed);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, armed_racer, &r), 0);
	for (uint32_t i = 1; i <= ROUNDS; i++) {
		atomic_store(&r.round, i);
		while (atomic_load(&sends_held) != i)
			sched_yield();
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 5 * SEC, &ctx));
		void *v = NULL;
		ats_err *err = ats_chan_recv(r.c, &v, ctx);
		cr_assert(!err && !ats_ctx_done_at(ctx, ats_now_ns()),
		          "round %u: woke only at the timeout (a lost wake-up)", i);
		cr_assert_eq(v, V(i));
		ats_ctx_release(ctx);
	}
	pthread_join(t, NULL);
	atomic_store(&ats__chan_before_enqueue, NULL);
	ats_chan_free(r.c, NULL, NULL);
}

/* The multi-producer send looks at the flag after its credit's CAS (the receiver finds the credit
 * out); the single producer after setting its busy flag (the receiver finds it busy). */
Test(stress_chan, no_lost_wakeup_receiver_arms_before_enqueue_mpmc)
{
	armed_before_enqueue(ATS_CHAN_MPMC);
}
Test(stress_chan, no_lost_wakeup_receiver_arms_before_enqueue_spsc)
{
	armed_before_enqueue(ATS_CHAN_SPSC);
}
Test(stress_chan, no_lost_wakeup_receiver_arms_before_enqueue_spmc)
{
	armed_before_enqueue(ATS_CHAN_SPMC);
}

/* A ctx cancel racing the park: every round a parked recv must return cancelled, never hang. */
struct cancel_hunt {
	_Atomic(ats_ctx *) ctx;
	_Atomic uint32_t done;
};

static void *canceller(void *arg)
{
	struct cancel_hunt *h = arg;
	for (uint32_t i = 1; i <= ROUNDS; i++) {
		ats_ctx *c;
		while (!(c = atomic_exchange(&h->ctx, NULL)))
			sched_yield();
		ats_ctx_cancel(c, NULL);
		ats_ctx_release(c);
		while (atomic_load(&h->done) != i)
			sched_yield();
	}
	return NULL;
}

Test(stress_chan, no_lost_wakeup_cancel)
{
	ats_chan *c;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_MPMC, 1);
	cfg.spin_ns = 0;
	cr_assert_null(ats_chan_new(&c, &cfg));
	struct cancel_hunt h;
	atomic_init(&h.ctx, NULL);
	atomic_init(&h.done, 0);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, canceller, &h), 0);
	for (uint32_t i = 1; i <= ROUNDS; i++) {
		ats_ctx *parent, *ctx;
		/* The parent's 5 s timeout is the failure bound: a lost cancel wake-up shows as deadline
		 * exceeded instead of cancelled. */
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 5 * SEC, &parent));
		cr_assert_null(ats_ctx_with_cancel(parent, &ctx));
		atomic_store(&h.ctx, ats_ctx_ref(ctx));
		void *v;
		ats_err *err = ats_chan_recv(c, &v, ctx);
		cr_assert_eq(ats_err_code(err), ATS_ERR_CANCELLED, "round %u", i);
		ats_err_unref(err);
		ats_ctx_release(ctx);
		ats_ctx_release(parent);
		atomic_store(&h.done, i);
	}
	pthread_join(t, NULL);
	ats_chan_free(c, NULL, NULL);
}
