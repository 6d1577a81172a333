/* SPDX-License-Identifier: BSD-2-Clause */
/* Replicated, hedged and tied requests: the first success wins, losers are cancelled and their
 * results released (waited for or detached), fatal errors end a call and non-fatal ones start the
 * next attempt at once, a hedge goes out after its delay, the budget is exact under concurrency
 * and banks what quiet requests deposited,
 * tied copies run once, the adaptive delay stays silent through its warm-up and does not sink when
 * hedges win, the caller's ctx ends a call without leaking a result (and a done one sends
 * nothing), a parked caller sleeps until it is woken (with or without futex_waitv), and a pool
 * shut down under a call hands its queued attempts back. Attempts are
 * scripted per attempt number; they block on their ctx (cancelled when the call is decided), never
 * on a sleep. */
#include <atscale/clock.h>
#include <atscale/hedge.h>

#include "asleep.h"
#include "internal/futex_hooks.h"
#include "internal/ec_hooks.h"
#include "internal/pool_hooks.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

enum mode {
	WIN = 0,      /* succeed at once */
	BLOCK,        /* wait until cancelled, then return the ctx's error */
	FAIL_SOFT,    /* a non-fatal error */
	FAIL_HARD,    /* a fatal error */
	LATE_SUCCESS, /* wait until cancelled, then succeed anyway (a loser's result) */
	SLOW_WIN,     /* succeed after 2 ms unless cancelled first */
	TIMED_WIN,    /* succeed after wait_ns[n] unless cancelled first */
};

struct script {
	enum mode mode[ATS_HEDGE_MAX_ATTEMPTS];
	int value[ATS_HEDGE_MAX_ATTEMPTS];
	uint64_t wait_ns[ATS_HEDGE_MAX_ATTEMPTS];
	_Atomic int runs, released;
	_Atomic int ran[ATS_HEDGE_MAX_ATTEMPTS];
};

static ats_err *attempt(void *arg, unsigned n, ats_ctx *ctx, void **result)
{
	struct script *s = arg;
	atomic_fetch_add(&s->runs, 1);
	atomic_fetch_add(&s->ran[n], 1);
	switch (s->mode[n]) {
	case WIN: *result = &s->value[n]; return NULL;
	case BLOCK: ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE); return ats_ctx_err(ctx);
	case FAIL_SOFT: return ats_err_new(ATS_ERR_UNAVAILABLE, "soft %u", n);
	case FAIL_HARD: return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hard %u", n);
	case LATE_SUCCESS:
		ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
		*result = &s->value[n];
		return NULL;
	case SLOW_WIN:
	case TIMED_WIN:
		if (ats_ctx_wait(ctx, ats_now_ns() + (s->mode[n] == SLOW_WIN ? 2000000 : s->wait_ns[n])))
			return ats_ctx_err(ctx);
		*result = &s->value[n];
		return NULL;
	}
	return NULL;
}

static void release(void *result, void *arg)
{
	struct script *s = arg;
	cr_assert(result >= (void *)&s->value[0] && result < (void *)&s->value[ATS_HEDGE_MAX_ATTEMPTS]);
	atomic_fetch_add(&s->released, 1);
}

static bool fatal(const ats_err *err, void *arg)
{
	(void)arg;
	return ats_err_code(err) == ATS_ERR_INVALID_ARGUMENT;
}

static ats_request req(struct script *s)
{
	return (ats_request){.attempt = attempt, .arg = s, .release = release, .fatal = fatal};
}

static ats_pool *pool(unsigned n)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = n};
	cr_assert_null(ats_pool_new(&p, &cfg));
	return p;
}

static void expect_code(ats_err *err, ats_code code)
{
	cr_expect_not_null(err);
	cr_expect_eq(ats_err_code(err), code, "code %s", ats_code_name(ats_err_code(err)));
	ats_err_unref(err);
}

Test(hedge, replicate_first_success_wins_losers_cancelled_and_released)
{
	ats_pool *p = pool(3);
	struct script s = {.mode = {BLOCK, WIN, LATE_SUCCESS}};
	ats_request r = req(&s);
	void *res = NULL;
	cr_assert_null(ats_replicate(p, &r, 3, &res, ats_ctx_background()));
	cr_expect_eq(res, &s.value[1]);
	/* A loser cancelled before it started never runs; one that ran and succeeded late was
	 * released, not leaked; the call waited for it (the counts are final here). */
	cr_expect_eq(atomic_load(&s.ran[1]), 1);
	cr_expect_eq(atomic_load(&s.released), atomic_load(&s.ran[2]));
	ats_pool_free(p);
}

Test(hedge, replicate_detached_returns_first_and_losers_clean_up)
{
	ats_pool *p = pool(2);
	struct script s = {.mode = {WIN, LATE_SUCCESS}};
	ats_request r = req(&s);
	r.detach = true;
	for (int i = 0; i < 100; i++) {
		void *res = NULL;
		s.mode[0] = i % 2 ? WIN : LATE_SUCCESS;
		s.mode[1] = i % 2 ? LATE_SUCCESS : WIN;
		cr_assert_null(ats_replicate(p, &r, 2, &res, ats_ctx_background()));
		cr_expect_eq(res, &s.value[i % 2 ? 0 : 1]);
	}
	/* Detached losers finish on their own (the drain waits for them); each one that ran (one
	 * cancelled before it started never made a result) released its result. */
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	cr_expect_eq(atomic_load(&s.released), atomic_load(&s.runs) - 100);
	ats_pool_free(p);
}

Test(hedge, all_fail_returns_the_first_with_the_others_attached)
{
	ats_pool *p = pool(3);
	struct script s = {.mode = {FAIL_SOFT, FAIL_SOFT, FAIL_SOFT}};
	ats_request r = req(&s);
	void *res = NULL;
	ats_err *err = ats_replicate(p, &r, 3, &res, ats_ctx_background());
	cr_assert_not_null(err);
	cr_expect_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	cr_expect_eq(ats_err_kv_count(err), 2, "the two other failures are attached");
	ats_err_unref(err);
	cr_expect_null(res);
	ats_pool_free(p);
}

static ats_hedger *hedger(ats_pool *p, unsigned max, uint64_t delay)
{
	ats_hedger *h;
	ats_hedger_config cfg = {.pool = p, .max_attempts = max, .delay_ns = delay};
	cr_assert_null(ats_hedger_new(&h, &cfg));
	return h;
}

Test(hedge, a_fatal_error_ends_the_call_a_soft_one_retries_at_once)
{
	ats_pool *p = pool(2);
	ats_hedger *h = hedger(p, 3, 3600 * ATS_NS_PER_SEC); /* no hedge by time in this test */
	struct script hard = {.mode = {FAIL_HARD, WIN, WIN}};
	ats_request r = req(&hard);
	void *res = NULL;
	expect_code(ats_hedge(h, &r, &res, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_eq(atomic_load(&hard.runs), 1);
	struct script soft = {.mode = {FAIL_SOFT, FAIL_SOFT, WIN}};
	r = req(&soft);
	cr_assert_null(ats_hedge(h, &r, &res, ats_ctx_background()));
	cr_expect_eq(res, &soft.value[2]);
	ats_hedger_stats st;
	ats_hedger_stats_get(h, &st);
	cr_expect_eq(st.requests, 2);
	cr_expect_eq(st.attempts, 4);
	cr_expect_eq(st.hedges, 0, "retries after failures are not hedges");
	ats_hedger_free(h);
	ats_pool_free(p);
}

Test(hedge, a_hedge_goes_out_after_the_delay_and_wins)
{
	ats_pool *p = pool(2);
	ats_hedger *h = hedger(p, 2, 1000000);
	struct script s = {.mode = {BLOCK, WIN}};
	ats_request r = req(&s);
	void *res = NULL;
	uint64_t t0 = ats_now_ns();
	cr_assert_null(ats_hedge(h, &r, &res, ats_ctx_background()));
	cr_expect_geq(ats_now_ns() - t0, 1000000, "not before the delay");
	cr_expect_eq(res, &s.value[1]);
	ats_hedger_stats st;
	ats_hedger_stats_get(h, &st);
	cr_expect_eq(st.hedges, 1);
	cr_expect_eq(st.won_by_hedge, 1);
	cr_expect_gt(st.loser_busy_ns, 0, "the blocked first attempt's time is counted");
	ats_hedger_free(h);
	ats_pool_free(p);
}

struct budget_run {
	ats_hedger *h;
	int calls;
};

static void *budget_thread(void *arg)
{
	struct budget_run *b = arg;
	struct script s = {.mode = {SLOW_WIN, WIN}};
	ats_request r = req(&s);
	for (int i = 0; i < b->calls; i++) {
		void *res = NULL;
		cr_assert_null(ats_hedge(b->h, &r, &res, ats_ctx_background()));
	}
	return NULL;
}

Test(hedge, the_budget_is_exact_under_concurrency)
{
	ats_pool *p = pool(2);
	ats_hedger *h;
	ats_hedger_config cfg = {
	    .pool = p, .max_attempts = 2, .delay_ns = 0, .max_extra_load = 0.25, .budget_burst = 1};
	cr_assert_null(ats_hedger_new(&h, &cfg));
	struct budget_run b = {h, 150};
	pthread_t th[3];
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, budget_thread, &b), 0);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	ats_hedger_stats st;
	ats_hedger_stats_get(h, &st);
	cr_expect_eq(st.requests, 450);
	/* Each call wants one hedge at once (its first attempt takes 2 ms) unless that attempt won
	 * first on a machine too busy to run the caller: at most one decision per call. */
	cr_expect_leq(st.hedges + st.budget_exhausted, 450);
	cr_expect_geq(st.hedges + st.budget_exhausted, 225);
	cr_expect_leq(st.hedges, 450 / 4, "never more than the deposits: a quarter of the requests");
	cr_expect_gt(st.hedges, 0);
	ats_hedger_free(h);
	ats_pool_free(p);
}

/* The budget banks what quiet requests deposited, up to budget_burst: 400 requests that need no
 * hedge deposit 200 hedges at 50% (the bank keeps `burst` of them), then 150 requests that each
 * need one (their first attempt answers after 3 ms, so one refused a hedge still ends) deposit 75
 * more. Returns the hedges refused among those, and how many were wanted. */
static uint64_t refused_after_quiet(unsigned burst, uint64_t *wanted_out)
{
	ats_pool *p = pool(2);
	ats_hedger *h;
	ats_hedger_config cfg = {
	    .pool = p, .max_attempts = 2, .delay_ns = 1000000, .max_extra_load = 0.5, .budget_burst = burst};
	cr_assert_null(ats_hedger_new(&h, &cfg));
	struct script quiet = {.mode = {WIN, WIN}}, slow = {.mode = {TIMED_WIN, WIN}, .wait_ns = {3000000}};
	ats_request rq = req(&quiet), rs = req(&slow);
	void *res;
	for (int i = 0; i < 400; i++)
		cr_assert_null(ats_hedge(h, &rq, &res, ats_ctx_background()));
	ats_hedger_stats before, after;
	ats_hedger_stats_get(h, &before);
	for (int i = 0; i < 150; i++)
		cr_assert_null(ats_hedge(h, &rs, &res, ats_ctx_background()));
	ats_hedger_stats_get(h, &after);
	/* Each slow request wants one hedge, unless its first attempt answered before its caller, off
	 * the CPU for 3 ms, came back to decide. */
	uint64_t wanted = after.hedges - before.hedges + after.budget_exhausted - before.budget_exhausted;
	cr_expect_leq(wanted, 150);
	*wanted_out = wanted;
	ats_hedger_free(h);
	ats_pool_free(p);
	return after.budget_exhausted - before.budget_exhausted;
}

Test(hedge, the_budget_banks_what_quiet_requests_deposited)
{
	/* The default bank (ATS_HEDGE_DEFAULT_BUDGET_BURST, 100) covers the burst: 100 + 75 >= 150. */
	uint64_t wanted;
	cr_expect_eq(refused_after_quiet(0, &wanted), 0);
	cr_expect_gt(wanted, 100);
	/* A bank of 10 does not: 10 + 75 deposits for 150 wanted, so at least 65 refused (more when the
	 * budget's clock, the request count, is read a request late by a call's hedge). */
	uint64_t refused = refused_after_quiet(10, &wanted);
	cr_expect_geq(refused + 85, wanted, "refused %llu of %llu", (unsigned long long)refused,
	              (unsigned long long)wanted);
	cr_expect_gt(refused, 0);
}

Test(hedge, tied_copies_run_once)
{
	ats_pool *p = pool(2);
	struct script s = {.mode = {WIN, WIN}};
	ats_request r = req(&s);
	for (int i = 0; i < 1000; i++) {
		void *res = NULL;
		cr_assert_null(ats_tied(p, &r, &res, ats_ctx_background()));
		cr_assert_not_null(res);
	}
	cr_expect_eq(atomic_load(&s.runs), 1000, "exactly one copy of each ran");
	ats_pool_free(p);
}

Test(hedge, adaptive_delay_waits_for_its_warmup)
{
	ats_pool *p = pool(2);
	ats_hedger *h;
	ats_hedger_config cfg = {.pool = p, .max_attempts = 2, .percentile = 0.9, .min_delay_ns = 1000, .warmup = 512};
	cr_assert_null(ats_hedger_new(&h, &cfg));
	struct script s = {.mode = {WIN, WIN}};
	ats_request r = req(&s);
	ats_hedger_stats st;
	for (int i = 0; i < 511; i++) {
		void *res = NULL;
		cr_assert_null(ats_hedge(h, &r, &res, ats_ctx_background()));
	}
	ats_hedger_stats_get(h, &st);
	cr_expect_eq(st.hedges, 0);
	cr_expect_eq(st.delay_ns, UINT64_MAX, "no delay learned before the warm-up");
	void *res = NULL;
	cr_assert_null(ats_hedge(h, &r, &res, ats_ctx_background()));
	ats_hedger_stats_get(h, &st);
	cr_expect_lt(st.delay_ns, UINT64_MAX, "learned at the 512th latency");
	cr_expect_geq(st.delay_ns, 1000, "never below the floor");
	ats_hedger_free(h);
	ats_pool_free(p);
}

/* Three calls in five have a 1 ms first attempt and two a 3 ms one; a hedge answers at once. The
 * learned p30 is 1 ms (every unhedged call takes at least that), and it must stay there once the
 * slow calls are hedged: a hedged call lasted at least the delay. Counting the winning attempt's
 * own time instead (a hedge's near-zero one, two calls in five) takes the p30 down to the floor. */
static void *p30_caller(void *arg)
{
	ats_hedger *h = arg;
	struct script fast = {.mode = {TIMED_WIN, WIN}, .wait_ns = {1000000}};
	struct script slow = {.mode = {TIMED_WIN, WIN}, .wait_ns = {3000000}};
	for (int i = 0; i < 160; i++) {
		ats_request r = req(i % 5 < 2 ? &slow : &fast);
		void *res = NULL;
		cr_assert_null(ats_hedge(h, &r, &res, ats_ctx_background()));
	}
	return NULL;
}

Test(hedge, adaptive_delay_counts_a_hedged_call_at_its_own_latency, .timeout = 120)
{
	ats_pool *p = pool(12);
	ats_hedger *h;
	ats_hedger_config cfg = {.pool = p, .max_attempts = 2, .percentile = 0.3, .min_delay_ns = 1000};
	cr_assert_null(ats_hedger_new(&h, &cfg));
	pthread_t th[8];
	for (int i = 0; i < 8; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, p30_caller, h), 0);
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	ats_hedger_stats st;
	ats_hedger_stats_get(h, &st);
	cr_expect_eq(st.requests, 1280);
	cr_expect_gt(st.hedges, 0, "hedges went out after the warm-up");
	cr_expect_geq(st.delay_ns, 1000000, "the p30 of call latencies, every one at least 1 ms: %llu ns",
	              (unsigned long long)st.delay_ns);
	cr_expect_lt(st.delay_ns, UINT64_MAX);
	ats_hedger_free(h);
	ats_pool_free(p);
}

Test(hedge, the_callers_ctx_ends_the_call_without_leaks)
{
	ats_pool *p = pool(2);
	struct script s = {.mode = {LATE_SUCCESS, LATE_SUCCESS}};
	ats_request r = req(&s);
	ats_ctx *ctx;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2000000, &ctx));
	void *res = NULL;
	ats_err *err = ats_replicate(p, &r, 2, &res, ctx);
	/* Either the deadline ended it, or a late success raced it and won: never both, never a leak. */
	if (err) {
		expect_code(err, ATS_ERR_DEADLINE_EXCEEDED);
		cr_expect_eq(atomic_load(&s.released), atomic_load(&s.runs), "every result made was released");
	} else {
		cr_expect_eq(atomic_load(&s.released), atomic_load(&s.runs) - 1);
	}
	ats_ctx_release(ctx);
	ats_pool_free(p);
}

/* A caller waiting for an attempt does not poll: a 30 ms wait (the attempt blocks until the
 * deadline cancels it) sleeps a few times at most, on kernels with futex_waitv and without it
 * (forced), where a caller that looked every millisecond would sleep about 30 times. */
Test(hedge, a_parked_caller_sleeps_until_woken)
{
	int was = atomic_load(&ats__ec_force_no_waitv);
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		ats_pool *p = pool(1);
		struct script s = {.mode = {BLOCK}};
		ats_request r = req(&s);
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 30000000, &ctx));
		void *res = NULL;
		unsigned long before = ats__futex_sleeps;
		expect_code(ats_replicate(p, &r, 1, &res, ctx), ATS_ERR_DEADLINE_EXCEEDED);
		unsigned long sleeps = ats__futex_sleeps - before;
		cr_expect_leq(sleeps, 5, "old kernel %d: %lu sleeps in a 30 ms wait", old_kernel, sleeps);
		cr_expect_leq(atomic_load(&s.runs), 1, "at most once (not at all if its worker was slow to start)");
		ats_ctx_release(ctx);
		ats_pool_free(p);
	}
	atomic_store(&ats__ec_force_no_waitv, was);
}

/* Holds a worker until `open` is cancelled; counts itself in when it starts. */
struct gate {
	ats_ctx *open;
	_Atomic int started;
};

static void gate_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct gate *g = arg;
	atomic_fetch_add(&g->started, 1);
	ats_ctx_wait(g->open, ATS_CTX_NO_DEADLINE);
}

struct canceller {
	ats_pool *p;
	ats_ctx *ctx;
};

/* Cancels ctx once each worker's queue holds an attempt. */
static void *cancel_when_queued(void *arg)
{
	struct canceller *k = arg;
	for (;;) {
		ats_pool_worker_stats a, b;
		cr_assert_null(ats_pool_worker_stats_get(k->p, 0, &a));
		cr_assert_null(ats_pool_worker_stats_get(k->p, 1, &b));
		if (a.depth >= 1 && b.depth >= 1)
			break;
		sched_yield();
	}
	ats_ctx_cancel(k->ctx, NULL);
	return NULL;
}

/* Both workers are held, so both attempts wait in queues when the caller's ctx is cancelled. The
 * call returns at once with the ctx's error: the queued attempts are withdrawn, never run, and the
 * call does not wait for the held workers (it would wait forever: they open only after it). */
Test(hedge, queued_attempts_are_withdrawn_not_waited_for, .timeout = 60)
{
	ats_pool *p = pool(2);
	struct gate g = {0};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &g.open));
	ats_task hold = {.run = gate_run, .arg = &g};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &hold), ATS_POOL_OK);
	cr_assert_eq(ats_pool_try_submit_to(p, 1, &hold), ATS_POOL_OK);
	while (atomic_load(&g.started) < 2)
		sched_yield();

	struct script s = {.mode = {WIN, WIN}};
	ats_request r = req(&s);
	struct canceller k = {p, NULL};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &k.ctx));
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, cancel_when_queued, &k), 0);
	void *res = NULL;
	expect_code(ats_replicate(p, &r, 2, &res, k.ctx), ATS_ERR_CANCELLED);
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&s.runs), 0);

	ats_ctx_cancel(g.open, NULL);
	ats_pool_free(p); /* the workers reach the withdrawn tasks and drop them */
	cr_expect_eq(atomic_load(&s.runs), 0, "a withdrawn attempt never runs");
	ats_ctx_release(k.ctx);
	ats_ctx_release(g.open);
}

/* The pool the hook below watches, and how many submits it has seen. */
static ats_pool *hooked_pool;
static _Atomic unsigned hooked_submits;

/* A fan-out's second submit waits until the first copy's task has ended on its worker: it won,
 * and only then is the second copy published. */
static void second_copy_after_the_first_ended(void)
{
	if (atomic_fetch_add(&hooked_submits, 1) % 2 == 0)
		return;
	for (;;) {
		uint64_t run = 0;
		for (unsigned w = 0; w < ats_pool_size(hooked_pool); w++) {
			ats_pool_worker_stats st;
			cr_assert_null(ats_pool_worker_stats_get(hooked_pool, w, &st));
			run += st.run;
		}
		if (run >= 1)
			return;
		sched_yield();
	}
}

/* The winner of a fan-out withdraws the copies not started yet, itself, before the caller even
 * sees the win: here the second copy is published only after the first won (the caller is still
 * sending), and it never runs. Without the winner's withdrawal a worker would start it before
 * the caller, on its way from the submit to the win, withdraws it. A fresh pool per call, so the
 * only task that can have ended is the first copy. */
Test(hedge, a_fan_outs_winner_withdraws_the_copies_not_started)
{
	struct script s = {.mode = {WIN, WIN}};
	ats_request r = req(&s);
	atomic_store(&ats__pool_before_publish, second_copy_after_the_first_ended);
	for (int i = 0; i < 50; i++) {
		hooked_pool = pool(2);
		atomic_store(&hooked_submits, 0);
		void *res = NULL;
		cr_assert_null(ats_replicate(hooked_pool, &r, 2, &res, ats_ctx_background()));
		cr_assert_eq(res, &s.value[0]);
		cr_assert_eq(atomic_load(&s.runs), i + 1, "call %d: the copy sent after the win ran", i);
		ats_pool_free(hooked_pool); /* a worker reaches the withdrawn copy and drops it, or shutdown does */
	}
	atomic_store(&ats__pool_before_publish, NULL);
	cr_expect_eq(atomic_load(&s.released), 0);
}

Test(hedge, bad_input)
{
	ats_pool *p = pool(2);
	struct script s = {0};
	ats_request r = req(&s), none = {0};
	void *res;
	expect_code(ats_replicate(NULL, &r, 1, &res, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_replicate(p, &none, 1, &res, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_replicate(p, &r, 3, &res, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_replicate(p, &r, 0, &res, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_replicate(p, &r, 1, NULL, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_tied(p, &r, &res, NULL), ATS_ERR_INVALID_ARGUMENT);
	ats_hedger *h;
	ats_hedger_config cfg = {.pool = p, .max_attempts = ATS_HEDGE_MAX_ATTEMPTS + 1};
	expect_code(ats_hedger_new(&h, &cfg), ATS_ERR_INVALID_ARGUMENT);
	cfg = (ats_hedger_config){.pool = p, .percentile = 1.5};
	expect_code(ats_hedger_new(&h, &cfg), ATS_ERR_INVALID_ARGUMENT);
	cfg = (ats_hedger_config){.pool = NULL};
	expect_code(ats_hedger_new(&h, &cfg), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_hedge(NULL, &r, &res, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_eq(atomic_load(&s.runs), 0);
	/* A shut pool: nothing can be sent. */
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	expect_code(ats_replicate(p, &r, 1, &res, ats_ctx_background()), ATS_ERR_CLOSED);
	ats_pool_free(p);
}

/* A call whose ctx is already done (cancelled, or past its deadline) sends no attempt. */
Test(hedge, a_done_ctx_sends_nothing)
{
	ats_pool *p = pool(2);
	struct script s = {0};
	ats_request r = req(&s);
	ats_hedger *h;
	ats_hedger_config cfg = {.pool = p, .delay_ns = 1000};
	cr_assert_null(ats_hedger_new(&h, &cfg));
	ats_ctx *cancelled, *expired;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &cancelled));
	ats_ctx_cancel(cancelled, NULL);
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), ats_now_ns() - 1, &expired));
	void *res = NULL;
	expect_code(ats_replicate(p, &r, 2, &res, cancelled), ATS_ERR_CANCELLED);
	expect_code(ats_tied(p, &r, &res, cancelled), ATS_ERR_CANCELLED);
	expect_code(ats_hedge(h, &r, &res, cancelled), ATS_ERR_CANCELLED);
	expect_code(ats_replicate(p, &r, 2, &res, expired), ATS_ERR_DEADLINE_EXCEEDED);
	expect_code(ats_hedge(h, &r, &res, expired), ATS_ERR_DEADLINE_EXCEEDED);
	cr_expect_null(res);
	cr_expect_eq(atomic_load(&s.runs), 0);
	ats_hedger_stats st;
	ats_hedger_stats_get(h, &st);
	cr_expect_eq(st.attempts, 0);
	ats_ctx_release(cancelled);
	ats_ctx_release(expired);
	ats_hedger_free(h);
	ats_pool_free(p);
}

/* Holds a worker until the pool's ctx (the one a task without its own runs under) is cancelled. */
static void hold_until_stopped(void *arg, ats_ctx *ctx)
{
	atomic_fetch_add((_Atomic int *)arg, 1);
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
}

struct replicate_call {
	ats_pool *p;
	ats_request r;
	ats_err *err;
};

static void *replicate_two(void *arg)
{
	struct replicate_call *rc = arg;
	void *res = NULL;
	rc->err = ats_replicate(rc->p, &rc->r, 2, &res, ats_ctx_background());
	return NULL;
}

/* A pool shut down while a call's attempts wait in its queues hands them back: they end with the
 * pool's error without running, and the call returns it. */
Test(hedge, a_pool_shutdown_hands_queued_attempts_back, .timeout = 60)
{
	ats_pool *p = pool(2);
	_Atomic int held = 0;
	ats_task hold = {.run = hold_until_stopped, .arg = (void *)&held};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &hold), ATS_POOL_OK);
	cr_assert_eq(ats_pool_try_submit_to(p, 1, &hold), ATS_POOL_OK);
	while (atomic_load(&held) < 2)
		sched_yield();
	struct script s = {0};
	struct replicate_call rc = {.p = p, .r = req(&s)};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, replicate_two, &rc), 0);
	for (;;) {
		ats_pool_worker_stats a, b;
		cr_assert_null(ats_pool_worker_stats_get(p, 0, &a));
		cr_assert_null(ats_pool_worker_stats_get(p, 1, &b));
		if (a.depth >= 1 && b.depth >= 1)
			break;
		sched_yield();
	}
	/* A done ctx: no drain; the held tasks see the pool's ctx cancelled, then the queues are
	 * handed back. */
	ats_ctx *now;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &now));
	ats_ctx_cancel(now, NULL);
	expect_code(ats_pool_shutdown(p, now), ATS_ERR_CANCELLED);
	pthread_join(th, NULL);
	expect_code(rc.err, ATS_ERR_CANCELLED);
	cr_expect_eq(atomic_load(&s.runs), 0, "no attempt ran");
	ats_ctx_release(now);
	ats_pool_free(p);
}
