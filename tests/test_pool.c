/* SPDX-License-Identifier: BSD-2-Clause */
/* The worker pool, one behaviour at a time: running, exact capacity, where a task goes, choosing
 * workers, cancellation, shutdown (drain, cancel, refusal after), blocking submit, stealing from a
 * blocked worker, counters and progress words, bad input. Workers are held busy by gate tasks
 * that wait on a ctx the test cancels; the test waits on what it can observe (a progress word, a
 * counter), never on a sleep. */
#include <atscale/clock.h>
#include <atscale/pool.h>
#include "internal/ec_hooks.h"
#include "internal/pool_hooks.h"

#include "asleep.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

static void expect_code(ats_err *err, ats_code code)
{
	cr_expect_not_null(err);
	cr_expect_eq(ats_err_code(err), code, "code %s", ats_code_name(ats_err_code(err)));
	ats_err_unref(err);
}

static ats_pool *mk(unsigned workers, size_t cap)
{
	ats_pool *p = NULL;
	ats_pool_config cfg = {.workers = workers, .queue_capacity = cap};
	cr_assert_null(ats_pool_new(&p, &cfg));
	cr_assert_eq(ats_pool_size(p), workers);
	return p;
}

struct counts {
	_Atomic uint64_t ran, cancelled;
	_Atomic int last_code;
};

static void count_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct counts *c = arg;
	atomic_fetch_add(&c->ran, 1);
}

static void count_cancel(void *arg, const ats_err *why)
{
	struct counts *c = arg;
	atomic_store(&c->last_code, (int)ats_err_code(why));
	atomic_fetch_add(&c->cancelled, 1);
}

static ats_task counted(struct counts *c, ats_ctx *ctx)
{
	return (ats_task){.run = count_run, .cancel = count_cancel, .arg = c, .ctx = ctx};
}

/* A gate: a task that holds its worker until the gate's ctx is cancelled. */
struct gate {
	ats_ctx *open;
	ats_pool *p;
	_Atomic int entered;
	_Atomic int worker; /* the worker that runs it (an idle one may have stolen it) */
};

static void gate_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct gate *g = arg;
	atomic_store(&g->worker, g->p ? ats_pool_current_worker(g->p) : -1);
	atomic_store(&g->entered, 1);
	ats_ctx_wait(g->open, ATS_CTX_NO_DEADLINE);
}

static void gate_init(struct gate *g)
{
	atomic_init(&g->entered, 0);
	atomic_init(&g->worker, -1);
	g->p = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &g->open));
}

/* Puts a gate on `worker`'s queue and waits until a worker is inside it; returns which worker
 * (the one asked, or an idle one that stole it first). */
static unsigned hold(ats_pool *p, unsigned worker, struct gate *g)
{
	gate_init(g);
	g->p = p;
	ats_task t = {.run = gate_run, .arg = g};
	cr_assert_eq(ats_pool_try_submit_to(p, worker, &t), ATS_POOL_OK);
	while (!atomic_load(&g->entered))
		sched_yield();
	return (unsigned)atomic_load(&g->worker);
}

static void release(struct gate *g)
{
	ats_ctx_cancel(g->open, NULL);
}

static void gate_free(struct gate *g)
{
	ats_ctx_release(g->open);
}

static void wait_count(_Atomic uint64_t *c, uint64_t n)
{
	while (atomic_load(c) < n)
		sched_yield();
}

Test(pool, runs_every_task_and_drains_on_shutdown)
{
	ats_pool *p = mk(2, 64);
	struct counts c = {0};
	for (int i = 0; i < 10000; i++) {
		ats_task t = counted(&c, NULL);
		cr_assert_null(ats_pool_submit(p, &t, ats_ctx_background()));
	}
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&c.ran), 10000);
	cr_expect_eq(atomic_load(&c.cancelled), 0);
	uint64_t run = 0;
	for (unsigned w = 0; w < 2; w++) {
		ats_pool_worker_stats s;
		cr_assert_null(ats_pool_worker_stats_get(p, w, &s));
		run += s.run;
		cr_expect_eq(s.progress, 2 * (s.run + s.cancelled), "progress counts starts and ends");
		cr_expect_eq(s.depth, 0);
	}
	cr_expect_eq(run, 10000);
	ats_pool_free(p);
}

Test(pool, capacity_is_exact_and_full_queues_nothing)
{
	for (size_t cap = 1; cap <= 9; cap++) {
		ats_pool *p = mk(1, cap);
		struct gate g;
		hold(p, 0, &g);
		struct counts c = {0};
		for (size_t i = 0; i < cap; i++) {
			ats_task t = counted(&c, NULL);
			cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_OK, "cap %zu task %zu", cap, i);
		}
		ats_task t = counted(&c, NULL);
		cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_FULL, "cap %zu", cap);
		cr_assert_eq(ats_pool_try_submit_to(p, 0, &t), ATS_POOL_FULL);
		ats_pool_worker_stats s;
		cr_assert_null(ats_pool_worker_stats_get(p, 0, &s));
		cr_expect_eq(s.depth, cap);
		cr_expect_eq(s.progress % 2, 1, "a task is running");
		release(&g);
		cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
		cr_expect_eq(atomic_load(&c.ran), cap);
		ats_pool_free(p);
		gate_free(&g);
	}
}

/* The ring's 32-bit indexes (the tickets) wrap: the capacity stays exact across the wrap, and
 * every task runs once. Queues start 7 tickets below 2^32 (a test hook), so round 1's burst
 * (after its gate task) takes tickets 2^32 - 1 to 2. */
Test(pool, capacity_stays_exact_across_the_index_wrap)
{
	atomic_store(&ats__pool_first_ticket, UINT32_MAX - 6);
	ats_pool *p = mk(1, 4);
	atomic_store(&ats__pool_first_ticket, 0);
	struct counts c = {0};
	for (uint64_t round = 0; round < 4; round++) { /* 5 tickets a round, the gate's first */
		struct gate g;
		hold(p, 0, &g);
		ats_task t = counted(&c, NULL);
		if (round % 2) { /* a burst, whose slots straddle the wrap in round 1 */
			ats_task ts[5] = {t, t, t, t, t};
			ats_pool_status st;
			cr_assert_eq(ats_pool_try_submit_n(p, ts, 5, &st), 4, "round %llu", (unsigned long long)round);
			cr_assert_eq(st, ATS_POOL_FULL);
		} else {
			for (int i = 0; i < 4; i++)
				cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_OK, "round %llu task %d",
				             (unsigned long long)round, i);
		}
		cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_FULL, "round %llu", (unsigned long long)round);
		ats_pool_worker_stats s;
		cr_assert_null(ats_pool_worker_stats_get(p, 0, &s));
		cr_assert_eq(s.depth, 4);
		release(&g);
		wait_count(&c.ran, 4 * (round + 1));
		gate_free(&g);
	}
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_assert_eq(atomic_load(&c.ran), 16);
	cr_assert_eq(atomic_load(&c.cancelled), 0);
	ats_pool_free(p);
}

Test(pool, submit_to_queues_on_that_worker)
{
	ats_pool *p = mk(3, 8);
	struct gate g[3];
	for (unsigned w = 0; w < 3; w++)
		hold(p, w, &g[w]);
	struct counts c = {0};
	ats_task t = counted(&c, NULL);
	cr_assert_eq(ats_pool_try_submit_to(p, 2, &t), ATS_POOL_OK);
	cr_assert_eq(ats_pool_try_submit_to(p, 2, &t), ATS_POOL_OK);
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &t), ATS_POOL_OK);
	size_t want[3] = {1, 0, 2};
	for (unsigned w = 0; w < 3; w++) {
		ats_pool_worker_stats s;
		cr_assert_null(ats_pool_worker_stats_get(p, w, &s));
		cr_expect_eq(s.depth, want[w], "worker %u", w);
	}
	cr_expect_eq(ats_pool_pick_less_loaded(p) != 2, true, "the longest queue is never the less loaded of two");
	for (unsigned w = 0; w < 3; w++)
		release(&g[w]);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&c.ran), 3);
	ats_pool_free(p);
	for (unsigned w = 0; w < 3; w++)
		gate_free(&g[w]);
}

struct where {
	ats_pool *p;
	_Atomic int worker;
};

static void where_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct where *w = arg;
	atomic_store(&w->worker, ats_pool_current_worker(w->p));
}

Test(pool, current_worker_and_picks)
{
	ats_pool *p = mk(4, 16);
	cr_expect_eq(ats_pool_current_worker(p), -1, "the test thread is no worker");
	struct where wh = {.p = p};
	atomic_init(&wh.worker, -2);
	ats_task t = {.run = where_run, .arg = &wh};
	cr_assert_null(ats_pool_submit(p, &t, ats_ctx_background()));
	while (atomic_load(&wh.worker) == -2)
		sched_yield();
	cr_expect(atomic_load(&wh.worker) >= 0 && atomic_load(&wh.worker) < 4);
	unsigned seen[4] = {0};
	for (int i = 0; i < 20000; i++) {
		unsigned avoid = (unsigned)i % 4;
		unsigned o = ats_pool_pick_other(p, avoid);
		cr_assert(o < 4 && o != avoid, "pick_other(%u) gave %u", avoid, o);
		unsigned l = ats_pool_pick_less_loaded(p);
		cr_assert(l < 4);
		seen[l]++;
	}
	for (unsigned w = 0; w < 4; w++)
		cr_expect_gt(seen[w], 1000, "worker %u picked %u times of 20000", w, seen[w]);
	ats_pool_free(p);

	ats_pool *one = mk(1, 4);
	cr_expect_eq(ats_pool_pick_other(one, 0), 0, "a pool of one has no other");
	cr_expect_eq(ats_pool_pick_less_loaded(one), 0);
	ats_pool_free(one);
}

Test(pool, a_done_ctx_goes_to_cancel_not_run)
{
	ats_pool *p = mk(2, 16);
	struct counts c = {0};
	ats_ctx *ctx;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &ctx));
	ats_ctx_cancel(ctx, NULL);
	ats_ctx *late;
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), 1, &late)); /* long past */
	for (int i = 0; i < 100; i++) {
		ats_task t = counted(&c, i % 2 ? ctx : late);
		cr_assert_null(ats_pool_submit(p, &t, ats_ctx_background()));
	}
	/* A task without a cancel callback is just not run. */
	ats_task quiet = {.run = count_run, .arg = &c, .ctx = ctx};
	cr_assert_null(ats_pool_submit(p, &quiet, ats_ctx_background()));
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&c.ran), 0);
	cr_expect_eq(atomic_load(&c.cancelled), 100);
	uint64_t cancelled = 0;
	for (unsigned w = 0; w < 2; w++) {
		ats_pool_worker_stats s;
		cr_assert_null(ats_pool_worker_stats_get(p, w, &s));
		cancelled += s.cancelled;
	}
	cr_expect_eq(cancelled, 101);
	ats_pool_free(p);
	ats_ctx_release(ctx);
	ats_ctx_release(late);
}

struct shutter {
	ats_pool *p;
	ats_ctx *ctx;
	ats_err *err;
};

static void *shut_thread(void *arg)
{
	struct shutter *s = arg;
	s->err = ats_pool_shutdown(s->p, s->ctx);
	return NULL;
}

Test(pool, shutdown_drains_then_refuses)
{
	ats_pool *p = mk(1, 64);
	struct gate g;
	hold(p, 0, &g);
	struct counts c = {0};
	for (int i = 0; i < 50; i++) {
		ats_task t = counted(&c, NULL);
		cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_OK);
	}
	struct shutter s = {p, ats_ctx_background(), NULL};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, shut_thread, &s), 0);
	/* Wait until the shutdown stopped accepting: every submit from then on is refused. */
	ats_task t = counted(&c, NULL);
	uint64_t accepted = 50;
	for (ats_pool_status st; (st = ats_pool_try_submit(p, &t)) != ATS_POOL_CLOSED;)
		accepted += st == ATS_POOL_OK; /* accepted before the shutdown closed the queue: runs too */
	cr_expect_eq(ats_pool_try_submit(p, &t), ATS_POOL_CLOSED);
	expect_code(ats_pool_submit(p, &t, ats_ctx_background()), ATS_ERR_CLOSED);
	expect_code(ats_pool_submit_to(p, 0, &t, ats_ctx_background()), ATS_ERR_CLOSED);
	release(&g);
	pthread_join(th, NULL);
	cr_expect_null(s.err, "drained: every accepted task ran");
	ats_pool_worker_stats st;
	cr_assert_null(ats_pool_worker_stats_get(p, 0, &st));
	cr_expect_eq(atomic_load(&c.ran), accepted, "every accepted task ran");
	cr_expect_eq(st.run, accepted + 1, "and the gate");
	cr_expect_eq(atomic_load(&c.cancelled), 0);
	expect_code(ats_pool_shutdown(p, ats_ctx_background()), ATS_ERR_CLOSED);
	ats_pool_free(p);
	gate_free(&g);
}

/* A gate that also ends when its task's ctx (the pool's) is cancelled. */
static void stubborn_run(void *arg, ats_ctx *ctx)
{
	struct gate *g = arg;
	atomic_store(&g->entered, 1);
	while (!ats_ctx_done(ctx) && !ats_ctx_done(g->open))
		ats_ctx_wait(ctx, ats_now_ns() + 1000000u);
}

Test(pool, shutdown_with_a_done_ctx_cancels_what_is_left)
{
	ats_pool *p = mk(1, 64);
	struct gate g;
	gate_init(&g);
	ats_task gt = {.run = stubborn_run, .arg = &g};
	cr_assert_eq(ats_pool_try_submit(p, &gt), ATS_POOL_OK);
	while (!atomic_load(&g.entered))
		sched_yield();
	struct counts c = {0};
	ats_ctx *own;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &own));
	for (int i = 0; i < 20; i++) {
		ats_task t = counted(&c, i % 2 ? own : NULL);
		cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_OK);
	}
	ats_ctx *stop;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &stop));
	ats_ctx_cancel(stop, NULL);
	/* The drain ends at once; the pool's ctx is cancelled, so the gate (waiting on it) returns;
	 * the 20 queued tasks go to their cancel callbacks with the stop ctx's error. */
	expect_code(ats_pool_shutdown(p, stop), ATS_ERR_CANCELLED);
	cr_expect_eq(atomic_load(&c.ran), 0);
	cr_expect_eq(atomic_load(&c.cancelled), 20);
	cr_expect_eq(atomic_load(&c.last_code), ATS_ERR_CANCELLED);
	ats_pool_free(p);
	ats_ctx_release(own);
	ats_ctx_release(stop);
	gate_free(&g);
}

Test(pool, free_without_shutdown_cancels_queued)
{
	ats_pool *p = mk(1, 8);
	struct gate g;
	gate_init(&g);
	ats_task gt = {.run = stubborn_run, .arg = &g};
	cr_assert_eq(ats_pool_try_submit(p, &gt), ATS_POOL_OK);
	while (!atomic_load(&g.entered))
		sched_yield();
	struct counts c = {0};
	for (int i = 0; i < 5; i++) {
		ats_task t = counted(&c, NULL);
		cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_OK);
	}
	ats_pool_free(p);
	cr_expect_eq(atomic_load(&c.cancelled), 5);
	cr_expect_eq(atomic_load(&c.ran), 0);
	gate_free(&g);
}

struct submitter {
	ats_pool *p;
	ats_ctx *ctx;
	struct counts *c;
	ats_err *err;
	_Atomic int started;
	_Atomic pid_t tid;
};

static void *submit_thread(void *arg)
{
	struct submitter *s = arg;
	ats_task t = counted(s->c, NULL);
	atomic_store(&s->tid, asleep_self_tid());
	atomic_store(&s->started, 1);
	s->err = ats_pool_submit(s->p, &t, s->ctx);
	return NULL;
}

/* A pool of one worker, held by gate g, with its one queue slot taken by a task counted in c. */
static ats_pool *held_and_full(struct gate *g, struct counts *c)
{
	ats_pool *p = mk(1, 1);
	hold(p, 0, g);
	ats_task t = counted(c, NULL);
	cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_OK);
	return p;
}

Test(pool, blocking_submit_waits_for_room)
{
	struct gate g;
	struct counts c = {0};
	ats_pool *p = held_and_full(&g, &c);
	struct submitter s = {.p = p, .ctx = ats_ctx_background(), .c = &c};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, submit_thread, &s), 0);
	while (!atomic_load(&s.started))
		sched_yield();
	release(&g); /* the worker takes the queued task: room for the waiting submit */
	pthread_join(th, NULL);
	cr_expect_null(s.err);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&c.ran), 2);
	ats_pool_free(p);
	gate_free(&g);
}

/* The cancel reaches the submit asleep in the kernel, with futex_waitv and as where the kernel
 * lacks it (Linux < 5.16, forced): there it sleeps on the queue's room eventcount alone, with no
 * bound, and the cancel bumps that eventcount too. A cancel that did not reach it would hang the
 * test. */
Test(pool, blocking_submit_ends_with_its_ctx, .timeout = 60)
{
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		struct gate g;
		struct counts c = {0};
		ats_pool *p = held_and_full(&g, &c);
		struct submitter s = {.p = p, .c = &c};
		cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &s.ctx));
		pthread_t th;
		cr_assert_eq(asleep_start_parked(&th, submit_thread, &s, &s.tid), 0);
		ats_ctx_cancel(s.ctx, NULL);
		pthread_join(th, NULL);
		expect_code(s.err, ATS_ERR_CANCELLED);
		ats_pool_worker_stats st;
		cr_assert_null(ats_pool_worker_stats_get(p, 0, &st));
		cr_expect_eq(st.depth, 1, "the refused task was not queued");
		release(&g);
		cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
		cr_expect_eq(atomic_load(&c.ran), 1);
		ats_pool_free(p);
		ats_ctx_release(s.ctx);
		gate_free(&g);
	}
	atomic_store(&ats__ec_force_no_waitv, 0);
}

/* A task that records the order it ran in. */
struct ordered {
	_Atomic uint64_t next;
	uint64_t at[16];
};
struct ordered_arg {
	struct ordered *o;
	unsigned i;
};

static void ordered_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct ordered_arg *a = arg;
	a->o->at[a->i] = atomic_fetch_add(&a->o->next, 1);
}

Test(pool, a_burst_queues_the_first_that_fit_in_order)
{
	ats_pool *p = mk(1, 5);
	struct gate g;
	hold(p, 0, &g);
	struct ordered o = {0};
	struct ordered_arg a[16];
	ats_task ts[16];
	for (unsigned i = 0; i < 16; i++) {
		a[i] = (struct ordered_arg){&o, i};
		ts[i] = (ats_task){.run = ordered_run, .arg = &a[i]};
	}
	ats_pool_status st = ATS_POOL_INVALID;
	cr_assert_eq(ats_pool_try_submit_n(p, ts, 3, &st), 3);
	cr_assert_eq(st, ATS_POOL_OK);
	cr_assert_eq(ats_pool_try_submit_n_to(p, 0, ts + 3, 8, &st), 2, "room for 2 of 8");
	cr_assert_eq(st, ATS_POOL_FULL);
	cr_assert_eq(ats_pool_try_submit_n(p, ts + 5, 1, &st), 0);
	cr_assert_eq(st, ATS_POOL_FULL);
	cr_assert_eq(ats_pool_try_submit_n(p, ts, 0, &st), 0);
	cr_assert_eq(st, ATS_POOL_OK, "an empty burst is all of it");
	ats_pool_worker_stats ws;
	cr_assert_null(ats_pool_worker_stats_get(p, 0, &ws));
	cr_assert_eq(ws.depth, 5);
	release(&g);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_assert_eq(atomic_load(&o.next), 5);
	for (unsigned i = 0; i < 5; i++)
		cr_expect_eq(o.at[i], i, "task %u ran %lluth", i, (unsigned long long)o.at[i]);
	cr_assert_eq(ats_pool_try_submit_n(p, ts, 2, &st), 0);
	cr_assert_eq(st, ATS_POOL_CLOSED);
	ats_pool_free(p);
	gate_free(&g);
}

Test(pool, a_burst_with_bad_input_queues_nothing)
{
	ats_pool *p = mk(1, 8);
	struct gate g;
	hold(p, 0, &g);
	struct counts c = {0};
	ats_task ts[3] = {counted(&c, NULL), counted(&c, NULL), counted(&c, NULL)};
	ts[2].run = NULL;
	ats_pool_status st;
	cr_assert_eq(ats_pool_try_submit_n(p, ts, 3, &st), 0, "a task without run refuses the burst");
	cr_assert_eq(st, ATS_POOL_INVALID);
	cr_assert_eq(ats_pool_try_submit_n(p, NULL, 1, &st), 0);
	cr_assert_eq(st, ATS_POOL_INVALID);
	cr_assert_eq(ats_pool_try_submit_n(NULL, ts, 2, &st), 0);
	cr_assert_eq(st, ATS_POOL_INVALID);
	cr_assert_eq(ats_pool_try_submit_n_to(p, 1, ts, 2, &st), 0);
	cr_assert_eq(st, ATS_POOL_INVALID);
	size_t done = 99;
	expect_code(ats_pool_submit_n(p, ts, 3, &done, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	cr_assert_eq(done, 0);
	expect_code(ats_pool_submit_n(p, ts, 2, NULL, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_pool_submit_n(p, ts, 2, &done, NULL), ATS_ERR_INVALID_ARGUMENT);
	ats_pool_worker_stats ws;
	cr_assert_null(ats_pool_worker_stats_get(p, 0, &ws));
	cr_assert_eq(ws.depth, 0, "nothing was queued");
	cr_assert_eq(ats_pool_try_submit_n(p, ts, 2, NULL), 2, "the status is optional");
	release(&g);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_assert_eq(atomic_load(&c.ran), 2);
	ats_pool_free(p);
	gate_free(&g);
}

struct burst_submitter {
	ats_pool *p;
	ats_ctx *ctx;
	const ats_task *ts;
	size_t n, submitted;
	ats_err *err;
};

static void *burst_submit_thread(void *arg)
{
	struct burst_submitter *s = arg;
	s->err = ats_pool_submit_n(s->p, s->ts, s->n, &s->submitted, s->ctx);
	return NULL;
}

/* ats_pool_submit_n queues what fits, waits for room for the rest, and ends with its ctx. */
Test(pool, a_blocking_burst_waits_for_room_and_ends_with_its_ctx)
{
	ats_pool *p = mk(1, 4);
	struct gate g;
	hold(p, 0, &g);
	struct counts c = {0};
	ats_task ts[10];
	for (int i = 0; i < 10; i++)
		ts[i] = counted(&c, NULL);
	struct burst_submitter s = {.p = p, .ts = ts, .n = 10};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &s.ctx));
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, burst_submit_thread, &s), 0);
	ats_pool_worker_stats ws;
	do { /* the first 4 fit; the 5th waits */
		cr_assert_null(ats_pool_worker_stats_get(p, 0, &ws));
		sched_yield();
	} while (ws.depth < 4);
	ats_ctx_cancel(s.ctx, NULL);
	pthread_join(th, NULL);
	expect_code(s.err, ATS_ERR_CANCELLED);
	cr_assert_eq(s.submitted, 4);
	ats_ctx_release(s.ctx);

	/* Again with a live ctx: the worker frees room as it runs, and all 10 go. */
	s = (struct burst_submitter){.p = p, .ts = ts, .n = 10, .ctx = ats_ctx_background()};
	cr_assert_eq(pthread_create(&th, NULL, burst_submit_thread, &s), 0);
	release(&g);
	pthread_join(th, NULL);
	cr_assert_null(s.err);
	cr_assert_eq(s.submitted, 10);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_assert_eq(atomic_load(&c.ran), 14);
	size_t done = 99;
	expect_code(ats_pool_submit_n(p, ts, 2, &done, ats_ctx_background()), ATS_ERR_CLOSED);
	cr_assert_eq(done, 0);
	ats_pool_free(p);
	gate_free(&g);
}

Test(pool, a_blocked_worker_queue_is_drained_by_stealing)
{
	ats_pool *p = mk(2, 256);
	struct gate g;
	unsigned held = hold(p, 0, &g), other = 1 - held;
	struct counts c = {0};
	for (int i = 0; i < 200; i++) {
		ats_task t = counted(&c, NULL);
		cr_assert_eq(ats_pool_try_submit_to(p, held, &t), ATS_POOL_OK);
	}
	wait_count(&c.ran, 200); /* the held worker is still in the gate: the other stole them all */
	ats_pool_worker_stats s0, s1;
	cr_assert_null(ats_pool_worker_stats_get(p, held, &s0));
	cr_assert_null(ats_pool_worker_stats_get(p, other, &s1));
	cr_expect_eq(s1.stolen, 200);
	cr_expect_eq(s0.run, 0, "worker 0 has not finished its gate");
	cr_expect_eq(s0.progress % 2, 1);
	release(&g);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	ats_pool_free(p);
	gate_free(&g);
}

/* The other half of the same promise, with no steal period to fall back on: tasks queued on an
 * idle worker (so the submit finds it not busy and wakes no one else) behind one that blocks. The
 * worker that takes the blocking task leaves the rest queued and wakes the parked worker, which
 * steals them. Without that wake-up they would wait for the blocked task: the test would fail at
 * its bound instead of finishing. */
Test(pool, a_worker_leaving_tasks_behind_a_blocking_one_wakes_a_parked_one)
{
	atomic_store(&ats__pool_steal_period_ns, UINT64_C(3600) * ATS_NS_PER_SEC);
	ats_pool *p = mk(2, 256);
	while (ats__pool_parked(p) < 2) /* both idle: neither is busy, neither is looking */
		sched_yield();
	struct gate g;
	gate_init(&g);
	g.p = p;
	struct counts c = {0};
	ats_task ts[201];
	ts[0] = (ats_task){.run = gate_run, .arg = &g};
	for (int i = 1; i < 201; i++)
		ts[i] = counted(&c, NULL);
	ats_pool_status st;
	cr_assert_eq(ats_pool_try_submit_n_to(p, 0, ts, 201, &st), 201);
	uint64_t bound = ats_now_ns() + 30 * ATS_NS_PER_SEC;
	while (atomic_load(&c.ran) < 200 && ats_now_ns() < bound)
		sched_yield();
	cr_assert_eq(atomic_load(&c.ran), 200, "the tasks behind the blocked one waited for it");
	while (!atomic_load(&g.entered)) /* worker 0 woke the other before it entered the gate */
		sched_yield();
	cr_assert_eq(atomic_load(&g.worker), 0);
	ats_pool_worker_stats s1;
	cr_assert_null(ats_pool_worker_stats_get(p, 1, &s1));
	cr_expect_eq(s1.stolen, 200);
	release(&g);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	ats_pool_free(p);
	gate_free(&g);
}

static void shutdown_from_worker(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct shutter *s = arg;
	s->err = ats_pool_shutdown(s->p, ats_ctx_background());
}

Test(pool, bad_input_changes_nothing)
{
	ats_pool *p = NULL;
	expect_code(ats_pool_new(NULL, NULL), ATS_ERR_INVALID_ARGUMENT);
	ats_pool_config cfg = {.workers = ATS_POOL_MAX_WORKERS + 1};
	expect_code(ats_pool_new(&p, &cfg), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_null(p);
	cfg = (ats_pool_config){.queue_capacity = ATS_POOL_MAX_CAPACITY + 1};
	expect_code(ats_pool_new(&p, &cfg), ATS_ERR_INVALID_ARGUMENT);
	cfg = (ats_pool_config){.idle = (ats_pool_idle)7};
	expect_code(ats_pool_new(&p, &cfg), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_null(p);

	p = mk(2, 4);
	struct counts c = {0};
	ats_task t = counted(&c, NULL), norun = {.arg = &c};
	cr_expect_eq(ats_pool_try_submit(NULL, &t), ATS_POOL_INVALID);
	cr_expect_eq(ats_pool_try_submit(p, NULL), ATS_POOL_INVALID);
	cr_expect_eq(ats_pool_try_submit(p, &norun), ATS_POOL_INVALID);
	cr_expect_eq(ats_pool_try_submit_to(p, 2, &t), ATS_POOL_INVALID);
	expect_code(ats_pool_submit(p, &t, NULL), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_pool_submit(NULL, &t, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_pool_submit_to(p, 9, &t, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	ats_pool_worker_stats s;
	expect_code(ats_pool_worker_stats_get(p, 2, &s), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_pool_worker_stats_get(p, 0, NULL), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_eq(ats_pool_progress(p, 2), 0);
	expect_code(ats_pool_shutdown(NULL, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_pool_shutdown(p, NULL), ATS_ERR_INVALID_ARGUMENT);
	for (unsigned w = 0; w < 2; w++) {
		cr_assert_null(ats_pool_worker_stats_get(p, w, &s));
		cr_expect_eq(s.depth, 0, "nothing was queued");
	}
	/* Shutdown from the pool's own worker would wait for itself: refused. */
	struct shutter sh = {p, NULL, NULL};
	ats_task self_stop = {.run = shutdown_from_worker, .arg = &sh};
	cr_assert_null(ats_pool_submit(p, &self_stop, ats_ctx_background()));
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	expect_code(sh.err, ATS_ERR_INVALID_ARGUMENT);
	cr_expect_eq(atomic_load(&c.ran), 0);
	ats_pool_free(p);
	ats_pool_free(NULL);
}

Test(pool, default_config_is_one_worker_per_cpu)
{
	ats_pool *p = NULL;
	cr_assert_null(ats_pool_new(&p, NULL));
	cpu_set_t set;
	cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
	cr_expect_eq(ats_pool_size(p), (unsigned)CPU_COUNT(&set));
	ats_pool_free(p);
	ats_pool_config cfg = {.workers = 3, .pin = true, .idle = ATS_POOL_POLL};
	cr_assert_null(ats_pool_new(&p, &cfg));
	struct counts c = {0};
	for (int i = 0; i < 1000; i++) {
		ats_task t = counted(&c, NULL);
		cr_assert_null(ats_pool_submit(p, &t, ats_ctx_background()));
	}
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&c.ran), 1000);
	ats_pool_free(p);
}

/* The map from a caller's CPU to the worker it feeds, for masks this machine may not have. */
Test(pool, a_cpu_feeds_its_pinned_worker_however_cpus_are_numbered)
{
	uint16_t map[8];
	cpu_set_t mask;
	/* A cpuset of 2-5, four workers pinned to CPUs 2, 3, 4, 5: each CPU feeds its own worker
	 * (by number modulo four, CPU 2 would feed worker 2, pinned to CPU 4). CPUs 0, 1, 6 and 7 are
	 * outside the mask: by number. */
	CPU_ZERO(&mask);
	for (int c = 2; c <= 5; c++)
		CPU_SET(c, &mask);
	ats__pool_map_cpus(&mask, 4, map, 8);
	uint16_t want_2_5[8] = {0, 1, 0, 1, 2, 3, 2, 3};
	for (unsigned c = 0; c < 8; c++)
		cr_expect_eq(map[c], want_2_5[c], "cpuset 2-5, CPU %u feeds worker %u", c, map[c]);
	/* Every other CPU (one thread per core), two workers: callers spread over both (by number,
	 * every CPU of the mask would feed worker 0). */
	CPU_ZERO(&mask);
	for (int c = 0; c < 8; c += 2)
		CPU_SET(c, &mask);
	ats__pool_map_cpus(&mask, 2, map, 8);
	for (unsigned c = 0; c < 8; c += 2)
		cr_expect_eq(map[c], (c / 2) % 2, "even CPUs, CPU %u feeds worker %u", c, map[c]);
	/* More workers than CPUs (three on CPU 1): the CPU feeds the first worker pinned to it. */
	CPU_ZERO(&mask);
	CPU_SET(1, &mask);
	ats__pool_map_cpus(&mask, 3, map, 2);
	cr_expect_eq(map[1], 0);
	cr_expect_eq(map[0], 0, "CPU 0 is outside the mask: 0 modulo 3");
}

struct pinned_gate {
	struct gate g;
	_Atomic int cpu;
};

static void pinned_gate_run(void *arg, ats_ctx *ctx)
{
	struct pinned_gate *pg = arg;
	atomic_store(&pg->cpu, sched_getcpu());
	gate_run(&pg->g, ctx);
}

struct cpu_submit {
	ats_pool *p;
	int cpu;
	ats_task t;
	int pinned; /* sched_setaffinity's result */
	ats_pool_status status;
	int ran_on; /* the caller's CPU when it submitted */
};

static void *submit_from_cpu(void *arg)
{
	struct cpu_submit *s = arg;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(s->cpu, &one);
	s->pinned = sched_setaffinity(0, sizeof one, &one);
	s->status = ats_pool_try_submit(s->p, &s->t);
	s->ran_on = sched_getcpu();
	return NULL;
}

/* On this machine: with every pinned worker held in a task (so none steals), a caller pinned to
 * each CPU the process may run on queues its task on the worker pinned to that CPU. */
Test(pool, a_caller_on_a_pinned_workers_cpu_feeds_that_worker)
{
	ats_pool_config cfg = {.pin = true};
	ats_pool *p = NULL;
	cr_assert_null(ats_pool_new(&p, &cfg));
	unsigned n = ats_pool_size(p);
	struct pinned_gate *g = calloc(n, sizeof *g);
	int *worker_cpu = calloc(n, sizeof *worker_cpu);
	cr_assert(g && worker_cpu);
	for (unsigned i = 0; i < n; i++) {
		gate_init(&g[i].g);
		g[i].g.p = p;
		atomic_init(&g[i].cpu, -1);
		ats_task t = {.run = pinned_gate_run, .arg = &g[i]};
		cr_assert_eq(ats_pool_try_submit_to(p, i, &t), ATS_POOL_OK);
	}
	for (unsigned i = 0; i < n; i++) {
		while (!atomic_load(&g[i].g.entered))
			sched_yield();
		worker_cpu[atomic_load(&g[i].g.worker)] = atomic_load(&g[i].cpu);
	}
	cpu_set_t mask;
	cr_assert_eq(sched_getaffinity(0, sizeof mask, &mask), 0);
	struct counts c = {0};
	unsigned checked = 0;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &mask))
			continue;
		int owner = -1;
		for (unsigned w = 0; w < n && owner < 0; w++)
			if (worker_cpu[w] == cpu)
				owner = (int)w;
		if (owner < 0)
			continue; /* fewer workers than CPUs (a cgroup CPU limit): none is pinned here */
		size_t before[ATS_POOL_MAX_WORKERS];
		for (unsigned w = 0; w < n; w++) {
			ats_pool_worker_stats st;
			cr_assert_null(ats_pool_worker_stats_get(p, w, &st));
			before[w] = st.depth;
		}
		struct cpu_submit s = {.p = p, .cpu = cpu, .t = counted(&c, NULL)};
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, submit_from_cpu, &s), 0);
		pthread_join(th, NULL);
		cr_assert_eq(s.pinned, 0);
		cr_assert_eq(s.status, ATS_POOL_OK);
		cr_assert_eq(s.ran_on, cpu);
		for (unsigned w = 0; w < n; w++) {
			ats_pool_worker_stats st;
			cr_assert_null(ats_pool_worker_stats_get(p, w, &st));
			cr_expect_eq(st.depth - before[w], w == (unsigned)owner ? 1u : 0u,
			             "a caller on CPU %d: worker %u (on CPU %d) queued %zu", cpu, w, worker_cpu[w],
			             st.depth - before[w]);
		}
		checked++;
	}
	cr_expect_gt(checked, 0);
	for (unsigned i = 0; i < n; i++)
		release(&g[i].g);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&c.ran), checked);
	ats_pool_free(p);
	for (unsigned i = 0; i < n; i++)
		gate_free(&g[i].g);
	free(g);
	free(worker_cpu);
}

/* ---- Stuck workers ---- */

struct replacements {
	_Atomic int n, worker, code;
};

static void on_replace(unsigned worker, const ats_err *why, void *arg)
{
	struct replacements *r = arg;
	atomic_store(&r->worker, (int)worker);
	atomic_store(&r->code, (int)ats_err_code(why));
	cr_expect_not_null(ats_err_kv_get(why, "worker"));
	atomic_fetch_add(&r->n, 1);
}

/* Calls ats_pool_replace_stuck until it replaces a worker: the stuck time has to pass, and the
 * loop waits on that, not on a sleep. */
static unsigned replace_until_one(ats_pool *p, uint64_t stuck_ns)
{
	for (;;) {
		unsigned n = 0;
		cr_assert_null(ats_pool_replace_stuck(p, stuck_ns, &n));
		if (n)
			return n;
		sched_yield();
	}
}

Test(pool, a_stuck_worker_is_replaced_and_its_queue_served)
{
	struct replacements r = {0};
	ats_pool *p = NULL;
	ats_pool_config cfg = {.workers = 1, .on_replace = on_replace, .replace_arg = &r};
	cr_assert_null(ats_pool_new(&p, &cfg));
	struct gate g;
	cr_assert_eq(hold(p, 0, &g), 0);
	/* Queued behind the stuck task: with one worker, only a replacement can run them. */
	struct counts c = {0};
	for (int i = 0; i < 100; i++) {
		ats_task t = counted(&c, NULL);
		cr_assert_eq(ats_pool_try_submit_to(p, 0, &t), ATS_POOL_OK);
	}
	uint64_t before = ats_pool_progress(p, 0);
	cr_expect(before & 1, "a task runs");
	cr_expect_eq(replace_until_one(p, 2000000), 1);
	wait_count(&c.ran, 100);
	cr_expect_eq(atomic_load(&r.n), 1);
	cr_expect_eq(atomic_load(&r.worker), 0);
	cr_expect_eq(atomic_load(&r.code), ATS_ERR_UNAVAILABLE);
	ats_pool_worker_stats st;
	cr_assert_null(ats_pool_worker_stats_get(p, 0, &st));
	cr_expect_eq(st.replaced, 1);
	cr_expect_eq(st.returned, 0, "the stuck task has not returned");
	/* The stuck thread's task returns at last: its thread finds itself replaced and leaves. */
	release(&g);
	while (ats_pool_worker_stats_get(p, 0, &st) == NULL && st.returned == 0)
		sched_yield();
	cr_expect_eq(st.returned, 1);
	cr_expect_eq(st.run, 100, "the replaced thread's task is counted as returned, not twice");
	/* The worker goes on with its new thread. */
	ats_task t = counted(&c, NULL);
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &t), ATS_POOL_OK);
	wait_count(&c.ran, 101);
	cr_expect_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&c.ran), 101);
	cr_expect_eq(atomic_load(&c.cancelled), 0);
	ats_pool_free(p);
	gate_free(&g);
}

/* A task that waits for its ctx (the pool's, since it was submitted without one). */
static void wait_for_ctx(void *arg, ats_ctx *ctx)
{
	atomic_store((_Atomic int *)arg, 1);
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
}

Test(pool, shutdown_ends_and_joins_a_quarantined_thread)
{
	ats_pool *p = mk(1, 16);
	_Atomic int entered = 0;
	ats_task t = {.run = wait_for_ctx, .arg = (void *)&entered};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &t), ATS_POOL_OK);
	while (!atomic_load(&entered))
		sched_yield();
	replace_until_one(p, 1000000);
	/* The drain finds nothing queued and no task running (the stuck one was taken over); the
	 * quarantined thread is then ended through the pool's ctx and joined. */
	cr_expect_null(ats_pool_shutdown(p, ats_ctx_background()));
	ats_pool_worker_stats st;
	cr_assert_null(ats_pool_worker_stats_get(p, 0, &st));
	cr_expect_eq(st.replaced, 1);
	cr_expect_eq(st.returned, 1);
	/* After shutdown began nothing is replaced. */
	unsigned n = 9;
	cr_expect_null(ats_pool_replace_stuck(p, 1, &n));
	cr_expect_eq(n, 0);
	ats_pool_free(p);
}

static void replace_from_worker(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct gate *g = arg;
	ats_err *err = ats_pool_replace_stuck(g->p, 1000, NULL);
	atomic_store(&g->worker, (int)ats_err_code(err));
	ats_err_unref(err);
	atomic_store(&g->entered, 1);
}

Test(pool, replace_stuck_bad_input)
{
	ats_pool *p = mk(1, 4);
	unsigned n = 7;
	expect_code(ats_pool_replace_stuck(NULL, 1000, &n), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_eq(n, 0);
	expect_code(ats_pool_replace_stuck(p, 0, NULL), ATS_ERR_INVALID_ARGUMENT);
	struct gate g;
	gate_init(&g);
	g.p = p;
	ats_task t = {.run = replace_from_worker, .arg = &g};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &t), ATS_POOL_OK);
	while (!atomic_load(&g.entered))
		sched_yield();
	cr_expect_eq(atomic_load(&g.worker), ATS_ERR_INVALID_ARGUMENT, "refused from the pool's own worker");
	/* An idle pool: nothing is stuck. */
	cr_expect_null(ats_pool_replace_stuck(p, 1, &n));
	cr_expect_eq(n, 0);
	cr_expect_null(ats_pool_shutdown(p, ats_ctx_background()));
	ats_pool_free(p);
	gate_free(&g);
}
