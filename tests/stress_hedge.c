/* SPDX-License-Identifier: BSD-2-Clause */
/* Replicated, hedged and tied calls from several threads at once on one pool (run under TSan and
 * ASan), attempts racing to win, losers cancelled mid-run, some calls detached, some callers' ctxs
 * ending mid-call. Every result an attempt makes is either returned by its call or released,
 * exactly once: results made == calls won + results released, counted at the end after the pool
 * drained; and every call record went home (src/home_cache.c), the last ones after their callers
 * exited. */
#include <criterion/criterion.h>

#include "atscale/clock.h"
#include "atscale/hedge.h"
#include "internal/home_cache_hooks.h"

#include <pthread.h>

#include "slow.h"
#ifdef SLOW
#define CALLS 300
#else
#define CALLS 3000
#endif
#define THREADS 4

static _Atomic uint64_t made, released, won;
static int token;

static ats_err *attempt(void *arg, unsigned n, ats_ctx *ctx, void **result)
{
	uintptr_t kind = (uintptr_t)arg;
	if (kind % 3 == 0 && n == 0) /* the first attempt is slow: hedges and replicas win */
		ats_ctx_wait(ctx, ats_now_ns() + 50000);
	if (kind % 5 == 1 && n % 2 == 1)
		return ats_err_new(ATS_ERR_UNAVAILABLE, "soft");
	*result = &token;
	atomic_fetch_add(&made, 1);
	return NULL;
}

static void release(void *result, void *arg)
{
	(void)arg;
	cr_assert_eq(result, &token);
	atomic_fetch_add(&released, 1);
}

struct run {
	ats_pool *p;
	ats_hedger *h;
};

static void *caller(void *arg)
{
	struct run *r = arg;
	for (uintptr_t i = 0; i < CALLS; i++) {
		ats_request req = {.attempt = attempt, .arg = (void *)i, .release = release, .detach = i % 7 == 0};
		void *res = NULL;
		/* Some callers' ctxs end mid-call: attempts then start, or are withdrawn, as it ends. */
		ats_ctx *ctx = ats_ctx_background();
		if (i % 11 == 3)
			cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 20000, &ctx));
		ats_err *err;
		switch (i % 3) {
		case 0: err = ats_hedge(r->h, &req, &res, ctx); break;
		case 1: err = ats_replicate(r->p, &req, 2, &res, ctx); break;
		default: err = ats_tied(r->p, &req, &res, ctx);
		}
		ats_ctx_release(ctx);
		if (!err) {
			cr_assert_eq(res, &token);
			atomic_fetch_add(&won, 1);
		}
		ats_err_unref(err);
	}
	return NULL;
}

Test(hedge_stress, every_result_returned_or_released_once, .timeout = 300)
{
	long homes = atomic_load(&ats__homes_alive);
	struct run r;
	ats_pool_config pc = {.workers = 3};
	cr_assert_null(ats_pool_new(&r.p, &pc));
	ats_hedger_config hc = {.pool = r.p, .max_attempts = 3, .delay_ns = 20000, .max_extra_load = 0.5};
	cr_assert_null(ats_hedger_new(&r.h, &hc));
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, caller, &r), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	cr_assert_null(ats_pool_shutdown(r.p, ats_ctx_background())); /* detached losers end */
	cr_expect_eq(atomic_load(&made), atomic_load(&won) + atomic_load(&released));
	cr_expect_gt(atomic_load(&won), 0);
	/* The callers exited, some with detached losers still running: the last of those freed their
	 * homes (src/home_cache.c). */
	cr_expect_eq(atomic_load(&ats__homes_alive), homes);
	ats_hedger_stats st;
	ats_hedger_stats_get(r.h, &st);
	cr_expect_leq(st.hedges, st.requests / 2 + 10, "the budget held");
	ats_hedger_free(r.h);
	ats_pool_free(r.p);
}
