/* SPDX-License-Identifier: BSD-2-Clause */
/* The Tail at Scale experiment (Dean & Barroso, CACM 2013), scaled down so it runs in seconds.
 *
 * Servers: the workers of one pool (TAIL_WORKERS), each serving one attempt at a time. An attempt's
 * service time follows the per-key model that reproduces the paper's BigTable numbers, with its
 * 10 ms mark scaled to TAIL_MARK_NS (1 ms: every time below is the paper's / 10):
 *   - 98%: a body below the mark, lognormal with median 150 us (sigma 0.6), redrawn when above it;
 *   - 2%: a Pareto tail from the mark, alpha 1.55 up to 7.4 marks, 2.13 beyond (P(X > 180 marks)
 *     = 1e-6), every draw independent (a hedge is independent of the first copy).
 * A server "works" by waiting on the attempt's ctx until its service time is up (so 2 cores can
 * host many servers, and a cancelled loser frees its server at once), with a timer slack of 1 ns.
 *
 * Clients: TAIL_CALLERS threads, each sending one key at a time through the policy:
 *   none        one attempt (ats_replicate with n = 1);
 *   replicate2  two attempts at once, first answer wins (ats_replicate, n = 2);
 *   fixed       a hedge after the model's 95th percentile, a third attempt one delay later
 *               (ats_hedge, fixed delay, max_attempts 3);
 *   adaptive    the same after the 95th percentile of recent latencies, budget 5% (ats_hedge);
 *   tied        two queued copies, the first to start runs, the other is dropped (ats_tied);
 *   floor       one attempt whose service time is always the model's median: what this machine
 *               (its scheduler, its timers, the pool) adds to the tail by itself, the floor under
 *               every policy's figures.
 * A request fans out to TAIL_FANOUT keys and takes as long as its slowest: request latencies are
 * the maximum of TAIL_FANOUT per-key latencies drawn from those measured for the policy (keys are
 * independent in the model, so this is the fan-out's distribution). Rows tail.<policy>: request
 * p50/p99/p99.9, the per-key p99.9, and extra_load: attempts that started beyond one per key, per
 * key (backend work wasted: a dropped tied copy never started). The hedged rows add the delay the
 * hedger ended with (delay_ns) and the hedges its budget refused, per key (denied).
 *
 * Why a third attempt: hedging once, a key stays slow when its first attempt and its hedge both
 * draw from the 2% tail (4e-4 of keys, 4e-3 of 10-key requests), which sets the request p99.9
 * near twice the mark whatever the delay. A third attempt one delay later is sent for the few
 * keys still waiting then (extra load rises by about 0.1%) and rescues most of those.
 *
 * With ATS_TAIL_DIR set, each row writes <dir>/tail_<policy>.dat (request latency in ms and its
 * CDF), which scripts/tail-plot.sh draws with gnuplot. */
#include "bench.h"
#include "atscale/clock.h"
#include "atscale/hedge.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#define TAIL_MARK_NS 1000000.0 /* the paper's 10 ms, scaled by 1/10 */
#define TAIL_WORKERS 32u
#define TAIL_CALLERS 8u
#define TAIL_FANOUT 10u

enum policy { NONE, REPLICATE2, FIXED, ADAPTIVE, TIED, FLOOR };
static const char *const policy_name[] = {"none", "replicate2", "fixed", "adaptive", "tied", "floor"};

static _Atomic uint64_t started; /* attempts that began serving */

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13, x ^= x >> 7, x ^= x << 17;
	return *s = x;
}

static double uniform(uint64_t *s) /* (0, 1] */
{
	return ((double)(rng_next(s) >> 11) + 1.0) / 9007199254740992.0;
}

/* One service time of the model, ns. */
static uint64_t model_ns(uint64_t *s)
{
	double u = uniform(s);
	if (u > 0.02) {
		for (;;) { /* the body: lognormal, median 0.15 marks, below the mark */
			double z = sqrt(-2.0 * log(uniform(s))) * cos(2.0 * M_PI * uniform(s));
			double x = 0.15 * TAIL_MARK_NS * exp(0.6 * z);
			if (x < TAIL_MARK_NS)
				return (uint64_t)x;
		}
	}
	double r = u / 0.02; /* P(X > x | tail) */
	double knee = pow(7.4, -1.55);
	if (r >= knee)
		return (uint64_t)(TAIL_MARK_NS * pow(r, -1.0 / 1.55));
	return (uint64_t)(7.4 * TAIL_MARK_NS * pow(r / knee, -1.0 / 2.13));
}

static _Thread_local uint64_t server_rng;

/* A server serving one attempt: wait for the service time, or until the call is decided. */
static ats_err *serve(void *arg, unsigned attempt, ats_ctx *ctx, void **result)
{
	(void)attempt;
	bool constant = arg != NULL;
	if (!server_rng) {
		server_rng = 0x9e3779b97f4a7c15u ^ (uint64_t)(uintptr_t)&server_rng;
		prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	}
	atomic_fetch_add_explicit(&started, 1, memory_order_relaxed);
	uint64_t until = ats_now_ns() + (constant ? (uint64_t)(0.15 * TAIL_MARK_NS) : model_ns(&server_rng));
	if (ats_ctx_wait(ctx, until) && ats_now_ns() < until)
		return ats_ctx_err(ctx); /* a loser, cancelled */
	static int answer;
	*result = &answer;
	return NULL;
}

struct run {
	enum policy pol;
	ats_pool *pool;
	ats_hedger *hedger;
	uint64_t *lat; /* per-key latencies, ns */
	size_t n;
	_Atomic size_t next;
	_Atomic int failed;
};

static void *caller(void *arg)
{
	struct run *r = arg;
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	ats_request req = {.attempt = serve, .arg = r->pol == FLOOR ? (void *)r : NULL};
	for (;;) {
		size_t i = atomic_fetch_add(&r->next, 1);
		if (i >= r->n)
			return NULL;
		void *res = NULL;
		uint64_t t0 = ats_now_ns();
		ats_err *err;
		switch (r->pol) {
		case NONE:
		case FLOOR: err = ats_replicate(r->pool, &req, 1, &res, ats_ctx_background()); break;
		case REPLICATE2: err = ats_replicate(r->pool, &req, 2, &res, ats_ctx_background()); break;
		case TIED: err = ats_tied(r->pool, &req, &res, ats_ctx_background()); break;
		default: err = ats_hedge(r->hedger, &req, &res, ats_ctx_background()); break;
		}
		r->lat[i] = ats_now_ns() - t0;
		if (err) {
			atomic_store(&r->failed, 1);
			ats_err_unref(err);
		}
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t quantile(const uint64_t *sorted, size_t n, double q)
{
	size_t rank = (size_t)ceil(q * (double)n - 1e-9);
	return sorted[rank ? rank - 1 : 0];
}

/* The model's 95th percentile (the paper's hedge delay), from a fixed-seed sample. */
static uint64_t model_p95(void)
{
	enum { M = 200000 };
	uint64_t *v = malloc(M * sizeof *v), s = 12345;
	if (!v)
		return (uint64_t)(0.46 * TAIL_MARK_NS);
	for (size_t i = 0; i < M; i++)
		v[i] = model_ns(&s);
	qsort(v, M, sizeof *v, cmp_u64);
	uint64_t p = quantile(v, M, 0.95);
	free(v);
	return p;
}

static void write_cdf(enum policy pol, const uint64_t *sorted, size_t n)
{
	const char *dir = getenv("ATS_TAIL_DIR");
	if (!dir || !*dir)
		return;
	char path[512];
	snprintf(path, sizeof path, "%s/tail_%s.dat", dir, policy_name[pol]);
	FILE *f = fopen(path, "w");
	if (!f)
		return;
	fprintf(f, "# request latency (ms)\tCDF\n");
	size_t step = n / 2000 ? n / 2000 : 1;
	for (size_t i = 0; i < n; i += step)
		fprintf(f, "%.4f\t%.6f\n", (double)sorted[i] / 1e6, (double)(i + 1) / (double)n);
	for (size_t i = n - n / 1000; i < n; i++) /* the last 0.1%: every point */
		fprintf(f, "%.4f\t%.6f\n", (double)sorted[i] / 1e6, (double)(i + 1) / (double)n);
	fclose(f);
}

static bool measure(enum policy pol, bool quick, ats_bench_result *out)
{
	struct run r = {.pol = pol, .n = quick ? 2000 : 100000};
	ats_pool_config pc = {.workers = TAIL_WORKERS, .idle = ATS_POOL_PARK};
	bool ok = false;
	uint64_t *req = NULL;
	r.lat = malloc(r.n * sizeof *r.lat);
	ats_err *err = r.lat ? ats_pool_new(&r.pool, &pc) : ats_err_oom;
	if (!err && (pol == FIXED || pol == ADAPTIVE)) {
		ats_hedger_config hc = {.pool = r.pool, .max_attempts = 3};
		if (pol == FIXED) {
			hc.delay_ns = model_p95();
		} else {
			hc.percentile = 0.95;
			hc.max_extra_load = 0.05;
			hc.min_delay_ns = 50000;
		}
		err = ats_hedger_new(&r.hedger, &hc);
	}
	if (err)
		goto out;
	atomic_store(&started, 0);
	pthread_t t[TAIL_CALLERS];
	unsigned made = 0;
	for (; made < TAIL_CALLERS; made++)
		if (pthread_create(&t[made], NULL, caller, &r) != 0)
			break;
	for (unsigned i = 0; i < made; i++)
		pthread_join(t[i], NULL);
	if (made < TAIL_CALLERS || atomic_load(&r.failed))
		goto out;
	/* Stop the pool first: attempts still serving (losers of decided calls) count as started. */
	err = ats_pool_shutdown(r.pool, ats_ctx_background());
	if (err)
		goto out;
	uint64_t extra = atomic_load(&started) - r.n;
	qsort(r.lat, r.n, sizeof *r.lat, cmp_u64);
	uint64_t key_p999 = quantile(r.lat, r.n, 0.999);
	/* Requests: the slowest of TAIL_FANOUT keys drawn from the measured ones (fixed seed). */
	size_t m = r.n;
	req = malloc(m * sizeof *req);
	if (!req)
		goto out;
	uint64_t s = 0x2545f4914f6cdd1du;
	for (size_t i = 0; i < m; i++) {
		uint64_t worst = 0;
		for (unsigned k = 0; k < TAIL_FANOUT; k++) {
			uint64_t v = r.lat[rng_next(&s) % r.n];
			worst = v > worst ? v : worst;
		}
		req[i] = worst;
	}
	qsort(req, m, sizeof *req, cmp_u64);
	write_cdf(pol, req, m);
	uint64_t p50 = quantile(req, m, 0.5), p99 = quantile(req, m, 0.99), p999 = quantile(req, m, 0.999);
	out->ns_per_op = (double)p999;
	out->min = (double)req[0];
	out->max = (double)req[m - 1];
	snprintf(out->extra, sizeof out->extra,
	         "\"p50_ns\": %llu, \"p99_ns\": %llu, \"p999_ns\": %llu, \"extra_load\": %.4f, \"key_p999_ns\": %llu, "
	         "\"fanout\": %u",
	         (unsigned long long)p50, (unsigned long long)p99, (unsigned long long)p999,
	         (double)extra / (double)r.n, (unsigned long long)key_p999, TAIL_FANOUT);
	if (r.hedger) { /* the delay the hedger ended with, and the hedges its budget refused */
		ats_hedger_stats hs;
		ats_hedger_stats_get(r.hedger, &hs);
		size_t len = strlen(out->extra);
		snprintf(out->extra + len, sizeof out->extra - len, ", \"delay_ns\": %llu, \"denied\": %.4f",
		         (unsigned long long)hs.delay_ns, (double)hs.budget_exhausted / (double)r.n);
	}
	ok = true;
out:
	ats_err_unref(err);
	ats_hedger_free(r.hedger);
	ats_pool_free(r.pool);
	free(r.lat);
	free(req);
	return ok;
}

#define TAIL_ROW(pol, name)                                                                                            \
	static bool tail_##name##_measure(void *state, bool quick, ats_bench_result *out)                              \
	{                                                                                                              \
		(void)state;                                                                                           \
		return measure(pol, quick, out);                                                                       \
	}                                                                                                              \
	static const ats_bench tail_##name = {"tail." #name, ATS_BENCH_1T,          NULL, NULL,                        \
	                                      NULL,          tail_##name##_measure, NULL};                             \
	ATS_BENCH(tail_##name)

TAIL_ROW(NONE, none)
TAIL_ROW(REPLICATE2, replicate2)
TAIL_ROW(FIXED, fixed)
TAIL_ROW(ADAPTIVE, adaptive)
TAIL_ROW(TIED, tied)
TAIL_ROW(FLOOR, floor)
