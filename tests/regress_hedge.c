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
