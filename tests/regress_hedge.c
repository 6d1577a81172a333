/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of hedged and replicated requests: each fences a bug that was found and fixed,
 * in the state that showed it (the spec tests are in test_hedge.c, the concurrent ones in
 * stress_hedge.c). The comment above each test says what the bug was. */
#include <atscale/clock.h>
#include <atscale/hedge.h>

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

static void hold(void *arg, ats_ctx *ctx)
{
	atomic_fetch_add((_Atomic int *)arg, 1);
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE); /* ends when the pool's ctx is cancelled */
}

static ats_err *block_attempt(void *arg, unsigned n, ats_ctx *ctx, void **result)
{
	(void)arg, (void)n, (void)result;
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
	return ats_ctx_err(ctx);
}

/* ats_replicate promises "n attempts at once on n different workers". It picked the less loaded
 * worker, then a random other one, then (first + i) % size for i >= 2, which could be the random
 * one: with n == size == 3 about half the calls queued two replicas on one worker. Every worker
 * is held busy (no stealing), so the queue depths show where the replicas went. */
struct rcall {
	ats_pool *p;
	ats_ctx *ctx;
	ats_err *err;
};

static void *replicate3(void *arg)
{
	struct rcall *rc = arg;
	ats_request r = {.attempt = block_attempt};
	void *res;
	rc->err = ats_replicate(rc->p, &r, 3, &res, rc->ctx);
	return NULL;
}

Test(regress_hedge, replicas_go_to_different_workers, .timeout = 60)
{
	int collisions = 0;
	for (int round = 0; round < 16; round++) {
		ats_pool *p;
		ats_pool_config cfg = {.workers = 3};
		cr_assert_null(ats_pool_new(&p, &cfg));
		_Atomic int held = 0;
		ats_task h = {.run = hold, .arg = (void *)&held};
		for (unsigned i = 0; i < 3; i++)
			cr_assert_eq(ats_pool_try_submit_to(p, i, &h), ATS_POOL_OK);
		while (atomic_load(&held) < 3)
			sched_yield();
		struct rcall rc = {.p = p};
		cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &rc.ctx));
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, replicate3, &rc), 0);
		size_t d[3];
		for (;;) {
			ats_pool_worker_stats s;
			size_t sum = 0;
			for (unsigned i = 0; i < 3; i++) {
				cr_assert_null(ats_pool_worker_stats_get(p, i, &s));
				d[i] = s.depth;
				sum += d[i];
			}
			if (sum == 3)
				break;
			sched_yield();
		}
		if (d[0] != 1 || d[1] != 1 || d[2] != 1) {
			collisions++;
			cr_log_error("round %d: replicas queued %zu/%zu/%zu on the 3 workers", round, d[0], d[1], d[2]);
		}
		ats_ctx_cancel(rc.ctx, NULL);
		pthread_join(th, NULL);
		ats_err_unref(rc.err);
		ats_ctx_release(rc.ctx);
		ats_pool_free(p);
	}
	cr_expect_eq(collisions, 0, "%d of 16 calls put two replicas on one worker", collisions);
}

/* ats_hedge: once the pool was closed no attempt could be sent, yet the call rescheduled its hedge
 * after every refused send and never reached max_attempts: with a ctx without a deadline it never
 * returned, though its only attempt had been handed back cancelled by the shutdown. Each refused
 * send was also counted as a hedge sent. */
struct hcall {
	ats_hedger *h;
	ats_ctx *ctx;
	ats_err *err;
	_Atomic int done;
};

static void *hedge1(void *arg)
{
	struct hcall *hc = arg;
	ats_request r = {.attempt = block_attempt};
	void *res;
	hc->err = ats_hedge(hc->h, &r, &res, hc->ctx);
	atomic_store(&hc->done, 1);
	return NULL;
}

Test(regress_hedge, a_hedged_call_ends_when_the_pool_shuts_down, .timeout = 60)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 1, .queue_capacity = 1};
	cr_assert_null(ats_pool_new(&p, &cfg));
	_Atomic int held = 0;
	ats_task h = {.run = hold, .arg = (void *)&held};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &h), ATS_POOL_OK);
	while (atomic_load(&held) < 1)
		sched_yield();
	ats_hedger *hg;
	ats_hedger_config hcfg = {.pool = p, .max_attempts = 2, .delay_ns = 10000000}; /* 10 ms, no budget */
	cr_assert_null(ats_hedger_new(&hg, &hcfg));
	struct hcall hc = {.h = hg};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &hc.ctx));
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, hedge1, &hc), 0);
	for (;;) { /* attempt 0 queued behind the held task: the queue is full */
		ats_pool_worker_stats s;
		cr_assert_null(ats_pool_worker_stats_get(p, 0, &s));
		if (s.depth == 1)
			break;
		sched_yield();
	}
	ats_ctx *done;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &done));
	ats_ctx_cancel(done, NULL);
	ats_err *e = ats_pool_shutdown(p, done); /* attempt 0 goes to its cancel callback */
	ats_err_unref(e);
	uint64_t t0 = ats_now_ns();
	while (!atomic_load(&hc.done) && ats_now_ns() - t0 < 2000000000u)
		sched_yield();
	bool returned = atomic_load(&hc.done);
	ats_hedger_stats st;
	ats_hedger_stats_get(hg, &st);
	cr_expect(returned, "ats_hedge still waiting 2 s after the pool shut down (hedges counted: %llu)",
	          (unsigned long long)st.hedges);
	cr_expect_eq(st.hedges, 0, "%llu hedges counted, none sent", (unsigned long long)st.hedges);
	ats_ctx_cancel(hc.ctx, NULL); /* let it go */
	pthread_join(th, NULL);
	ats_err_unref(hc.err);
	ats_ctx_release(hc.ctx);
	ats_ctx_release(done);
	ats_hedger_free(hg);
	ats_pool_free(p);
}

/* A fixed delay near UINT64_MAX (UINT64_MAX itself means "no hedge") wrapped in start + delay:
 * the hedge went out at once instead of never. */
/* Attempt 0 waits *(uint64_t *)arg ns unless cancelled; the others answer at once. Each answers its number + 1. */
static ats_err *first_is_slow(void *arg, unsigned n, ats_ctx *ctx, void **result)
{
	if (n == 0 && ats_ctx_wait(ctx, ats_now_ns() + *(const uint64_t *)arg))
		return ats_ctx_err(ctx);
	*result = (void *)(uintptr_t)(n + 1);
	return NULL;
}

Test(regress_hedge, a_huge_fixed_delay_does_not_wrap_into_an_immediate_hedge)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 2};
	cr_assert_null(ats_pool_new(&p, &cfg));
	ats_hedger *hg;
	ats_hedger_config hcfg = {.pool = p, .max_attempts = 2, .delay_ns = UINT64_MAX - 1};
	cr_assert_null(ats_hedger_new(&hg, &hcfg));
	uint64_t wait_ns = 50000000;
	ats_request r = {.attempt = first_is_slow, .arg = &wait_ns};
	void *res = NULL;
	cr_assert_null(ats_hedge(hg, &r, &res, ats_ctx_background()));
	ats_hedger_stats st;
	ats_hedger_stats_get(hg, &st);
	cr_expect_eq(st.hedges, 0, "a delay of UINT64_MAX - 1 ns sent %llu hedge(s)", (unsigned long long)st.hedges);
	cr_expect_eq((uintptr_t)res, 1, "attempt %lu won", (unsigned long)(uintptr_t)res - 1);
	ats_hedger_free(hg);
	ats_pool_free(p);
}

/* config.warmup: "latencies seen before any adaptive hedge". The delay was computed only at
 * multiples of ATS_HEDGE_REFRESH samples, so a warm-up of 16 was silently one of 256 (and 300 one
 * of 512): no delay learned, and no hedge sent, long after the warm-up the caller asked for. */
static ats_err *win(void *arg, unsigned n, ats_ctx *ctx, void **result)
{
	(void)arg, (void)ctx;
	*result = (void *)(uintptr_t)(n + 1);
	return NULL;
}

Test(regress_hedge, the_adaptive_delay_is_learned_after_the_configured_warmup)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 2};
	cr_assert_null(ats_pool_new(&p, &cfg));
	ats_hedger *hg;
	ats_hedger_config hcfg = {.pool = p, .max_attempts = 2, .percentile = 0.9, .min_delay_ns = 1000, .warmup = 16};
	cr_assert_null(ats_hedger_new(&hg, &hcfg));
	ats_request r = {.attempt = win};
	for (int i = 0; i < 100; i++) {
		void *res;
		cr_assert_null(ats_hedge(hg, &r, &res, ats_ctx_background()));
	}
	ats_hedger_stats st;
	ats_hedger_stats_get(hg, &st);
	cr_expect_lt(st.delay_ns, UINT64_MAX,
	             "100 calls after a warm-up of 16, the delay is still unlearned (no hedge possible)");
	ats_hedger_free(hg);
	ats_pool_free(p);
}

/* max_extra_load is accepted whatever its size (finite, >= 0), but was converted with
 * (uint64_t)(x * 1e6 + 0.5): above ~1.8e13 that conversion is undefined; on x86-64 it gave 0,
 * a rate of 1 per million: a budget meant to be generous refused almost every hedge. */
Test(regress_hedge, a_huge_extra_load_is_refused_or_honoured)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 2};
	cr_assert_null(ats_pool_new(&p, &cfg));
	ats_hedger *hg;
	ats_hedger_config hcfg = {.pool = p, .max_attempts = 2, .delay_ns = 0, .max_extra_load = 1e20};
	ats_err *err = ats_hedger_new(&hg, &hcfg);
	if (err) { /* refusing it is fine */
		ats_err_unref(err);
		ats_pool_free(p);
		return;
	}
	uint64_t wait_ns = 2000000;
	ats_request r = {.attempt = first_is_slow, .arg = &wait_ns};
	for (int i = 0; i < 20; i++) {
		void *res;
		cr_assert_null(ats_hedge(hg, &r, &res, ats_ctx_background()));
	}
	ats_hedger_stats st;
	ats_hedger_stats_get(hg, &st);
	cr_expect_eq(st.budget_exhausted, 0, "a budget of 1e20 hedges per request refused %llu of 20 hedges",
	             (unsigned long long)st.budget_exhausted);
	ats_hedger_free(hg);
	ats_pool_free(p);
}

/* ats_hedge and ats_replicate: when the chosen worker's queue was full, the attempt fell back to "some other worker"
 * than that one, which could be the worker the call's first attempt was queued on (always, with two workers): the
 * hedge waited behind the very attempt it was sent to outrun, and two replicas shared a worker. A fallback onto a
 * worker the call already uses is not taken now. Both workers are held busy (no stealing); worker 1's queue is full
 * and worker 0's empty, so the first attempt goes to worker 0 and every later one finds worker 1 full. */
static void noop_task(void *arg, ats_ctx *ctx)
{
	(void)arg, (void)ctx;
}

static ats_pool *busy_pool(void)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 2, .queue_capacity = 2, .idle = ATS_POOL_PARK};
	cr_assert_null(ats_pool_new(&p, &cfg));
	static _Atomic int held;
	atomic_store(&held, 0);
	ats_task h = {.run = hold, .arg = (void *)&held};
	for (unsigned i = 0; i < 2; i++)
		cr_assert_eq(ats_pool_try_submit_to(p, i, &h), ATS_POOL_OK);
	while (atomic_load(&held) < 2)
		sched_yield();
	ats_task f = {.run = noop_task};
	cr_assert_eq(ats_pool_try_submit_to(p, 1, &f), ATS_POOL_OK);
	cr_assert_eq(ats_pool_try_submit_to(p, 1, &f), ATS_POOL_OK);
	return p;
}

static size_t depth_of(ats_pool *p, unsigned w)
{
	ats_pool_worker_stats s;
	cr_assert_null(ats_pool_worker_stats_get(p, w, &s));
	return s.depth;
}

/* Whether worker 0's depth reaches 2 within 50 ms (the hedge delay below is 1 ms, and replicas are sent back to
 * back): a bound on what is awaited, not a synchronization. */
static bool second_lands_on_worker_0(ats_pool *p)
{
	while (depth_of(p, 0) == 0) /* the first attempt */
		sched_yield();
	uint64_t end = ats_now_ns() + 50000000;
	while (ats_now_ns() < end)
		if (depth_of(p, 0) >= 2)
			return true;
	return false;
}

Test(regress_hedge, a_hedge_never_queues_behind_its_first_attempt, .timeout = 30)
{
	ats_pool *p = busy_pool();
	ats_hedger *hg;
	ats_hedger_config hcfg = {.pool = p, .max_attempts = 2, .delay_ns = 1000000};
	cr_assert_null(ats_hedger_new(&hg, &hcfg));
	struct hcall hc = {.h = hg};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &hc.ctx));
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, hedge1, &hc), 0);
	bool behind = second_lands_on_worker_0(p);
	ats_ctx_cancel(hc.ctx, NULL);
	pthread_join(th, NULL);
	ats_err_unref(hc.err);
	ats_ctx_release(hc.ctx);
	ats_pool_free(p);
	ats_hedger_free(hg);
	cr_expect_not(behind, "the hedge was queued on worker 0, behind the first attempt");
}

static void *replicate2(void *arg)
{
	struct rcall *rc = arg;
	ats_request r = {.attempt = block_attempt};
	void *res;
	rc->err = ats_replicate(rc->p, &r, 2, &res, rc->ctx);
	return NULL;
}

Test(regress_hedge, a_replica_never_falls_back_onto_another_replicas_worker, .timeout = 30)
{
	ats_pool *p = busy_pool();
	struct rcall rc = {.p = p};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &rc.ctx));
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, replicate2, &rc), 0);
	bool shared = second_lands_on_worker_0(p);
	ats_ctx_cancel(rc.ctx, NULL);
	pthread_join(th, NULL);
	ats_err_unref(rc.err);
	ats_ctx_release(rc.ctx);
	ats_pool_free(p);
	cr_expect_not(shared, "both replicas were queued on worker 0");
}

/* The hedge budget promises at most max_extra_load * requests hedges, ever. The load was rounded to the nearest
 * millionth, up as well as down, and a load under 5e-7 was raised to 1e-6: at 0.2499996, 4 requests bought a hedge.
 * It is rounded down now, in billionths. */
static ats_err *first_sleeps(void *arg, unsigned n, ats_ctx *ctx, void **result)
{
	(void)arg, (void)ctx;
	if (n == 0) { /* long enough that, with a delay of 0, a budget that allowed it would send a hedge */
		struct timespec ts = {0, 5000000};
		nanosleep(&ts, NULL);
	}
	*result = NULL;
	return NULL;
}

Test(regress_hedge, the_budget_never_exceeds_max_extra_load_times_requests, .timeout = 30)
{
	ats_pool *p;
	ats_pool_config cfg = {.workers = 2};
	cr_assert_null(ats_pool_new(&p, &cfg));
	const double load = 0.2499996;
	ats_hedger *hg;
	ats_hedger_config hcfg = {.pool = p, .max_attempts = 2, .delay_ns = 0, .max_extra_load = load};
	cr_assert_null(ats_hedger_new(&hg, &hcfg));
	ats_request r = {.attempt = first_sleeps};
	for (int i = 0; i < 4; i++) {
		void *res;
		cr_assert_null(ats_hedge(hg, &r, &res, ats_ctx_background()));
	}
	ats_hedger_stats st;
	ats_hedger_stats_get(hg, &st);
	ats_hedger_free(hg);
	cr_expect_leq((double)st.hedges, load * (double)st.requests, "%llu hedges for %llu requests at %.7g",
	              (unsigned long long)st.hedges, (unsigned long long)st.requests, load);
	/* Loads from tiny to past the most a request can send are all accepted. */
	double loads[] = {1e-10, 1e-7, 8.0, 100.0};
	for (int i = 0; i < 4; i++) {
		hcfg.max_extra_load = loads[i];
		ats_err *e = ats_hedger_new(&hg, &hcfg);
		cr_expect_null(e, "load %g: %s", loads[i], ats_err_message(e));
		if (!e)
			ats_hedger_free(hg);
		ats_err_unref(e);
	}
	ats_pool_free(p);
}
