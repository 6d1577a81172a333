/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the worker pool: each fences a bug that was found and fixed, in the state
 * that showed it (the spec tests are in test_pool.c, the concurrent ones in stress_pool.c). The
 * comment above each test says what the bug was. */
#include <atscale/clock.h>
#include <atscale/pool.h>

#include "asleep.h"
#include "internal/pool_hooks.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

static void hold(void *arg, ats_ctx *ctx)
{
	atomic_fetch_add((_Atomic int *)arg, 1);
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE); /* ends when the pool's ctx is cancelled */
}

static void noop(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	atomic_fetch_add((_Atomic int *)arg, 1);
}

static void on_cancel(void *arg, const ats_err *why)
{
	(void)why;
	atomic_fetch_add((_Atomic int *)arg, 1);
}

struct blocked {
	ats_pool *p;
	ats_task t;
	ats_ctx *ctx;
	_Atomic pid_t tid;
	ats_err *err;
	uint64_t took_ns;
};

static void *submitter(void *arg)
{
	struct blocked *b = arg;
	atomic_store(&b->tid, asleep_self_tid());
	uint64_t t0 = ats_now_ns();
	b->err = ats_pool_submit(b->p, &b->t, b->ctx);
	b->took_ns = ats_now_ns() - t0;
	return NULL;
}

/* A submit parked on a full queue must end with ATS_ERR_CLOSED when the pool shuts down (pool.h:
 * "parks ... until a slot frees, the pool closes (ATS_ERR_CLOSED) or ctx is done"). Shutdown set
 * the closed bit but never bumped the `room` eventcount the submitter sleeps on, and a shutdown
 * that does not drain (its ctx done) empties the queue without a dequeue's bump: the submitter
 * slept until its own ctx ended (here a 3 s deadline; with none, forever). */
Test(regress_pool, shutdown_wakes_a_submit_blocked_on_a_full_queue, .timeout = 30)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 1, .queue_capacity = 1, .idle = ATS_POOL_PARK};
	cr_assert_null(ats_pool_new(&p, &cfg));
	_Atomic int held = 0, ran = 0, cancelled = 0;
	ats_task h = {.run = hold, .arg = (void *)&held};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &h), ATS_POOL_OK);
	while (atomic_load(&held) < 1)
		sched_yield();
	ats_task f = {.run = noop, .cancel = on_cancel, .arg = (void *)&ran};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &f), ATS_POOL_OK);
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &f), ATS_POOL_FULL);

	struct blocked b = {.p = p, .t = {.run = noop, .cancel = on_cancel, .arg = (void *)&cancelled}};
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 3000000000u, &b.ctx));
	pthread_t th;
	cr_assert_eq(asleep_start_parked(&th, submitter, &b, &b.tid), 0);

	ats_ctx *done;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &done));
	ats_ctx_cancel(done, NULL);
	ats_err *e = ats_pool_shutdown(p, done);
	cr_expect_eq(ats_err_code(e), ATS_ERR_CANCELLED);
	ats_err_unref(e);
	pthread_join(th, NULL);
	cr_expect_not_null(b.err);
	cr_expect_eq(ats_err_code(b.err), ATS_ERR_CLOSED,
	             "blocked submit ended with %s after %.3f s, expected CLOSED at once",
	             ats_code_name(ats_err_code(b.err)), b.took_ns / 1e9);
	cr_expect_lt(b.took_ns, 1000000000u, "blocked submit took %.3f s to see the shutdown", b.took_ns / 1e9);
	ats_err_unref(b.err);
	ats_ctx_release(b.ctx);
	ats_ctx_release(done);
	ats_pool_free(p);
}

/* pool.h, ats_pool_replace_stuck: "After shutdown began it replaces nothing." It checked only
 * that the workers were not being stopped, which shutdown marks after the drain: during a drain
 * it replaced a stuck worker, so the drain saw no task running and returned NULL ("everything
 * accepted ran to its end") after the stuck task was cancelled through the pool's ctx. */
struct shut {
	ats_pool *p;
	ats_err *err;
};

static void *shutter(void *arg)
{
	struct shut *s = arg;
	s->err = ats_pool_shutdown(s->p, ats_ctx_background());
	return NULL;
}

static void hold_gate(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	ats_ctx **gate = arg;
	ats_ctx_wait(gate[0], ATS_CTX_NO_DEADLINE); /* ends when the test cancels the gate */
	atomic_store((_Atomic int *)gate[1], 1);
}

Test(regress_pool, replace_stuck_replaces_nothing_once_shutdown_began, .timeout = 30)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 1};
	cr_assert_null(ats_pool_new(&p, &cfg));
	_Atomic int ran = 0, finished = 0;
	ats_ctx *gate[2];
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &gate[0]));
	gate[1] = (ats_ctx *)(void *)&finished;
	ats_task h = {.run = hold_gate, .arg = gate};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &h), ATS_POOL_OK);
	while (!(ats_pool_progress(p, 0) & 1))
		sched_yield();
	struct shut s = {.p = p};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, shutter, &s), 0);
	ats_task probe = {.run = noop, .arg = (void *)&ran};
	while (ats_pool_try_submit_to(p, 0, &probe) != ATS_POOL_CLOSED) /* shutdown began */
		sched_yield();
	unsigned total = 0;
	for (int i = 0; i < 1000 && !total; i++) {
		unsigned n = 0;
		cr_assert_null(ats_pool_replace_stuck(p, 1, &n));
		total += n;
		sched_yield();
	}
	cr_expect_eq(total, 0, "replace_stuck replaced %u worker(s) during the shutdown's drain", total);
	ats_ctx_cancel(gate[0], NULL);
	pthread_join(th, NULL);
	cr_log_info("shutdown returned %s", s.err ? ats_code_name(ats_err_code(s.err)) : "NULL");
	ats_err_unref(s.err);
	ats_pool_free(p);
	ats_ctx_release(gate[0]);
}

/* Bug: a worker could stay in park() for good, and then shutdown never returned. Its re-check read the tickets, then
 * c_head; a submit and a steal landing between the two left c_head past the tickets it had read, and it waited for
 * a task to land that a thief had already run (only a later submit to it ended that wait, and a shutdown makes none).
 * It reads c_head first now. The hook makes a submit to worker 0 and worker 1's steal of it happen at that point. */
static ats_pool *park_pool;
static _Atomic int park_fired, stolen_ran, shut_done;

static void mark_ran(void *arg, ats_ctx *ctx)
{
	(void)arg, (void)ctx;
	atomic_store(&stolen_ran, 1);
}

static void submit_and_wait_for_the_steal(void)
{
	if (ats_pool_current_worker(park_pool) != 0 || atomic_exchange(&park_fired, 1))
		return;
	ats_task t = {.run = mark_ran};
	if (ats_pool_try_submit_to(park_pool, 0, &t) != ATS_POOL_OK)
		return;
	while (!atomic_load(&stolen_ran)) /* worker 1, waking for its steal period, takes it */
		sched_yield();
}

static void *shut_down(void *arg)
{
	(void)arg;
	ats_err_unref(ats_pool_shutdown(park_pool, ats_ctx_background()));
	atomic_store(&shut_done, 1);
	return NULL;
}

Test(regress_pool, a_steal_during_a_workers_park_recheck_does_not_strand_it, .timeout = 30)
{
	atomic_store(&ats__pool_steal_period_ns, 100000); /* 100 us: worker 1 wakes often to steal */
	ats_pool_config cfg = {.workers = 2, .idle = ATS_POOL_PARK};
	cr_assert_null(ats_pool_new(&park_pool, &cfg));
	atomic_store(&ats__pool_park_between, submit_and_wait_for_the_steal);
	while (!atomic_load(&stolen_ran))
		sched_yield();
	atomic_store(&ats__pool_park_between, NULL);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, shut_down, NULL), 0);
	uint64_t end = ats_now_ns() + 2 * ATS_NS_PER_SEC; /* a bound: an idle pool shuts down in microseconds */
	while (!atomic_load(&shut_done) && ats_now_ns() < end) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	cr_assert(atomic_load(&shut_done), "ats_pool_shutdown still waiting after 2 s: worker 0 never left park()");
	pthread_join(t, NULL);
	ats_pool_free(park_pool);
	atomic_store(&ats__pool_steal_period_ns, 0);
}
