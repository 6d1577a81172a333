/* SPDX-License-Identifier: BSD-2-Clause */
/* Hedged and replicated calls: the overhead of a hedged call whose first attempt wins at once (no
 * hedge fires; compare pool.submit_run, the plain submit-and-wait), and a request replicated to 4
 * workers, first answer taken, the rest cancelled and waited for. Go peer:
 * bench/peers/go/replicate.go (the seed's goroutines, done channel and WaitGroup). */
#include "bench.h"
#include "atscale/hedge.h"

#include <stdlib.h>

struct hb {
	ats_pool *p;
	ats_hedger *h;
};

static int token;

static ats_err *answer(void *arg, unsigned n, ats_ctx *ctx, void **result)
{
	(void)arg, (void)n, (void)ctx;
	*result = &token;
	return NULL;
}

static void *setup(unsigned workers)
{
	struct hb *b = calloc(1, sizeof *b);
	if (!b)
		return NULL;
	ats_pool_config pc = {.workers = workers};
	ats_err *err = ats_pool_new(&b->p, &pc);
	ats_hedger_config hc = {.pool = b->p, .max_attempts = 2, .delay_ns = ATS_NS_PER_SEC};
	if (!err)
		err = ats_hedger_new(&b->h, &hc);
	if (err) {
		ats_err_unref(err);
		ats_pool_free(b->p);
		free(b);
		return NULL;
	}
	return b;
}

static void *no_fire_setup(unsigned threads)
{
	(void)threads;
	return setup(1);
}

static void *replicate_setup(unsigned threads)
{
	(void)threads;
	return setup(4);
}

static void teardown(void *state)
{
	struct hb *b = state;
	ats_hedger_free(b->h);
	ats_pool_free(b->p);
	free(b);
}

static void no_fire_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct hb *b = state;
	ats_request r = {.attempt = answer};
	for (uint64_t i = 0; i < iters; i++) {
		void *res;
		ats_err *err = ats_hedge(b->h, &r, &res, ats_ctx_background());
		ats_err_unref(err);
		ats_bench_sink(res);
	}
}

static void replicate_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct hb *b = state;
	ats_request r = {.attempt = answer};
	for (uint64_t i = 0; i < iters; i++) {
		void *res;
		ats_err *err = ats_replicate(b->p, &r, 4, &res, ats_ctx_background());
		ats_err_unref(err);
		ats_bench_sink(res);
	}
}

static const ats_bench hedge_no_fire = {"hedge.no_fire", ATS_BENCH_1T, no_fire_setup, no_fire_run,
                                        teardown,        NULL,         NULL};
static const ats_bench replicate_4 = {"replicate.4", ATS_BENCH_1T, replicate_setup, replicate_run, teardown,
                                      NULL,          NULL};
ATS_BENCH(hedge_no_fire)
ATS_BENCH(replicate_4)
