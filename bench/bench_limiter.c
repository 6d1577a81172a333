/* SPDX-License-Identifier: BSD-2-Clause */
/* Rate limiter rows: the exact limiter's grant and refusal paths, the sharded limiter at 1 and at
 * all threads, and a two-limit all-or-nothing acquire. Peers: peer.go.xrate_* (bench/peers/go) and
 * peer.dpdk.rte_meter_srtcm (bench/peers/dpdk_meter.c); the floors are floor.cas and floor.load_cas. */
#include "bench.h"
#include "atscale/limiter.h"

#include <stdio.h>
#include <stdlib.h>

#define T0 (UINT64_C(1) << 40)

/* A rate no loop can outrun (10 tokens per ns) and the largest burst: every call is granted. */
static void *exact_setup(unsigned threads)
{
	(void)threads;
	ats_limiter *l = NULL;
	ats_err *err = ats_limiter_new(&l, ats_rate_per_sec(10000000000u), UINT64_C(1) << 32);
	if (err) {
		ats_err_print(err, stderr);
		ats_err_unref(err);
		return NULL;
	}
	if (ats_limiter_init_at(l, ats_rate_per_sec(10000000000u), UINT64_C(1) << 32, T0)) {
		free(l);
		return NULL;
	}
	return l;
}

static void exact_teardown(void *state)
{
	ats_limiter_free(state);
}

/* Time passed in, one ns per call (a poll loop passes its batch's time). */
static void allow_at_run(void *state, unsigned tid, uint64_t iters)
{
	ats_limiter *l = state;
	uint64_t now = T0 + ((uint64_t)tid << 20);
	uint64_t ok = 0;
	for (uint64_t i = 0; i < iters; i++)
		ok += ats_limiter_allow_at(l, 1, now + i);
	if (ok != iters)
		fprintf(stderr, "limiter.allow_at: %llu of %llu refused\n", (unsigned long long)(iters - ok),
		        (unsigned long long)iters);
}

/* The library clock (ats_fast_now_ns) on every call. */
static void allow_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	ats_limiter *l = state;
	uint64_t ok = 0;
	for (uint64_t i = 0; i < iters; i++)
		ok += ats_limiter_allow(l, 1);
	ats_bench_sink(ok);
}

static void *allow_clock_setup(unsigned threads)
{
	(void)threads;
	ats_limiter *l = NULL;
	ats_err *err = ats_limiter_new(&l, ats_rate_per_sec(10000000000u), UINT64_C(1) << 32);
	if (err) {
		ats_err_unref(err);
		return NULL;
	}
	return l;
}

/* One token per second, drained: every call is refused by the full computation (not by n > burst). */
static void *deny_setup(unsigned threads)
{
	(void)threads;
	ats_limiter *l = NULL;
	ats_err *err = ats_limiter_new(&l, ats_rate_per_sec(1), 1);
	if (err) {
		ats_err_unref(err);
		return NULL;
	}
	err = ats_limiter_init_at(l, ats_rate_per_sec(1), 1, T0);
	if (err) {
		ats_err_unref(err);
		ats_limiter_free(l);
		return NULL;
	}
	ats_limiter_allow_at(l, 1, T0);
	return l;
}

static void deny_at_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	ats_limiter *l = state;
	uint64_t ok = 0;
	for (uint64_t i = 0; i < iters; i++)
		ok += ats_limiter_allow_at(l, 1, T0 + (i & 1023));
	if (ok)
		fprintf(stderr, "limiter.deny_at: %llu granted\n", (unsigned long long)ok);
}

/* ---- Sharded ---- */

/* One slot per thread that calls it: the workers, and the runner's main thread, which keeps the
 * index it got in the 1-thread row (indices are process-wide; see limiter.h). */
static void *sharded_setup(unsigned threads)
{
	ats_sharded *s = NULL;
	ats_sharded_config cfg = {
	    .rate = ats_rate_per_sec(10000000000u), .burst = UINT64_C(1) << 32, .batch = 4096, .shards = threads + 1};
	ats_err *err = ats_sharded_new(&s, &cfg);
	if (err) {
		ats_err_print(err, stderr);
		ats_err_unref(err);
		return NULL;
	}
	return s;
}

static void sharded_teardown(void *state)
{
	ats_sharded_free(state);
}

/* Time passed in, read from the cheap clock once per 16 calls (threads share the time scale, as
 * the shards require). */
static void sharded_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	ats_sharded *s = state;
	uint64_t ok = 0, now = 0;
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			now = ats_fast_now_ns();
		ok += ats_sharded_allow_at(s, 1, now);
	}
	if (ok != iters)
		fprintf(stderr, "sharded.allow_at: %llu of %llu refused\n", (unsigned long long)(iters - ok),
		        (unsigned long long)iters);
}

/* ---- Multi ---- */

struct two {
	ats_limiter *l[2];
};

static void *multi_setup(unsigned threads)
{
	struct two *t = malloc(sizeof *t);
	if (!t)
		return NULL;
	t->l[0] = exact_setup(threads);
	t->l[1] = exact_setup(threads);
	if (!t->l[0] || !t->l[1]) {
		ats_limiter_free(t->l[0]);
		ats_limiter_free(t->l[1]);
		free(t);
		return NULL;
	}
	return t;
}

static void multi_teardown(void *state)
{
	struct two *t = state;
	ats_limiter_free(t->l[0]);
	ats_limiter_free(t->l[1]);
	free(t);
}

static void multi_run(void *state, unsigned tid, uint64_t iters)
{
	struct two *t = state;
	uint64_t now = T0 + ((uint64_t)tid << 20), ok = 0;
	for (uint64_t i = 0; i < iters; i++)
		ok += ats_multi_allow_at(t->l, 2, 1, now + i);
	if (ok != iters)
		fprintf(stderr, "multi.allow_2: %llu of %llu refused\n", (unsigned long long)(iters - ok),
		        (unsigned long long)iters);
}

static const ats_bench limiter_allow_at = {
    "limiter.allow_at", ATS_BENCH_1T | ATS_BENCH_FIXED_2T, exact_setup, allow_at_run, exact_teardown, NULL, NULL};
static const ats_bench limiter_allow = {
    "limiter.allow", ATS_BENCH_1T, allow_clock_setup, allow_run, exact_teardown, NULL, NULL};
static const ats_bench limiter_deny_at = {"limiter.deny_at", ATS_BENCH_1T, deny_setup, deny_at_run,
                                          exact_teardown,    NULL,         NULL};
static const ats_bench sharded_allow_at = {
    "sharded.allow_at", ATS_BENCH_1T | ATS_BENCH_MT, sharded_setup, sharded_run, sharded_teardown, NULL, NULL};
static const ats_bench multi_allow_2 = {"multi.allow_2", ATS_BENCH_1T, multi_setup, multi_run,
                                        multi_teardown,  NULL,         NULL};
ATS_BENCH(limiter_allow_at)
ATS_BENCH(limiter_allow)
ATS_BENCH(limiter_deny_at)
ATS_BENCH(sharded_allow_at)
ATS_BENCH(multi_allow_2)
