/* SPDX-License-Identifier: BSD-2-Clause */
/* Contexts: create + cancel + release, with and without a timer, the done check, cancelling a
 * tree of 1000 children, value lookup, and the timer's lateness (p50/p99 of fired deadlines, as
 * seen by a thread blocked in poll(2) on the context's fd). Go peers: bench/peers/go/ctx.go. */
#include "bench.h"
#include "atscale/ctx.h"
#include "atscale/clock.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_THREADS 256

/* One cancellable parent per thread (a request's context): children link under it, as a
 * server's per-request contexts would. */
struct parents {
	ats_ctx *p[MAX_THREADS];
};

static void *parents_setup(unsigned threads)
{
	if (threads > MAX_THREADS)
		return NULL;
	struct parents *s = calloc(1, sizeof *s);
	for (unsigned i = 0; i < threads; i++)
		if (ats_ctx_with_cancel(ats_ctx_background(), &s->p[i])) {
			free(s);
			return NULL;
		}
	return s;
}

static void parents_teardown(void *state)
{
	struct parents *s = state;
	for (unsigned i = 0; i < MAX_THREADS; i++)
		ats_ctx_release(s->p[i]);
	free(s);
}

static void with_cancel_cancel_run(void *state, unsigned tid, uint64_t iters)
{
	ats_ctx *p = ((struct parents *)state)->p[tid];
	for (uint64_t i = 0; i < iters; i++) {
		ats_ctx *c;
		if (ats_ctx_with_cancel(p, &c))
			abort();
		ats_ctx_cancel(c, NULL);
		ats_ctx_release(c);
	}
}

static void with_timeout_cancel_run(void *state, unsigned tid, uint64_t iters)
{
	ats_ctx *p = ((struct parents *)state)->p[tid];
	for (uint64_t i = 0; i < iters; i++) {
		ats_ctx *c;
		/* Reads the clock every time, as Go's WithTimeout does (the _at variant would not). */
		if (ats_ctx_with_timeout(p, ATS_NS_PER_SEC, &c))
			abort();
		ats_ctx_cancel(c, NULL);
		ats_ctx_release(c);
	}
}

static void done_run(void *state, unsigned tid, uint64_t iters)
{
	ats_ctx *p = ((struct parents *)state)->p[tid];
	for (uint64_t i = 0; i < iters; i++)
		ats_bench_sink(ats_ctx_done(p));
}

static void cancel_1000_children_run(void *state, unsigned tid, uint64_t iters)
{
	(void)state, (void)tid;
	ats_ctx *kids[1000];
	for (uint64_t i = 0; i < iters; i++) {
		ats_ctx *root;
		if (ats_ctx_with_cancel(ats_ctx_background(), &root))
			abort();
		for (int k = 0; k < 1000; k++)
			if (ats_ctx_with_cancel(root, &kids[k]))
				abort();
		ats_ctx_cancel(root, NULL);
		for (int k = 0; k < 1000; k++)
			ats_ctx_release(kids[k]);
		ats_ctx_release(root);
	}
}

static ATS_CTX_KEY(bench_key_user);
static ATS_CTX_KEY(bench_key_trace);
static ATS_CTX_KEY(bench_key_tenant);

/* A request context four levels deep with three values; the lookup is of the outermost one. */
static void *values_setup(unsigned threads)
{
	(void)threads;
	ats_ctx *a, *b, *c, *d;
	if (ats_ctx_with_value(ats_ctx_background(), &bench_key_tenant, (void *)"acme", &a) ||
	    ats_ctx_with_value(a, &bench_key_user, (void *)"ann", &b) ||
	    ats_ctx_with_value(b, &bench_key_trace, (void *)"t-1", &c) || ats_ctx_with_timeout(c, 3600000000000u, &d))
		return NULL;
	ats_ctx_release(a);
	ats_ctx_release(b);
	ats_ctx_release(c);
	return d;
}

static void value_lookup_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	ats_ctx *c = state;
	for (uint64_t i = 0; i < iters; i++)
		ats_bench_sink(ats_ctx_value(c, &bench_key_tenant));
}

static void ctx_release_state(void *state)
{
	ats_ctx_release(state);
}

/* ---- Timer lateness: one sample per deadline, each a thread blocked in poll on the fd ---- */

static uint64_t late[4096];
static size_t nlate;

static bool lateness_sample(bool quick)
{
	size_t n = quick ? 300 : 2000;
	uint64_t seed = 0x9E3779B97F4A7C15ull;
	nlate = 0;
	for (size_t i = 0; i < n; i++) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		/* 200 us .. 2 ms ahead, at no particular phase of the wheel's tick. */
		uint64_t timeout = 200000 + seed % 1800000;
		ats_ctx *c;
		int fd;
		if (ats_ctx_with_timeout(ats_ctx_background(), timeout, &c))
			return false;
		if (ats_ctx_fd(c, &fd)) {
			ats_ctx_release(c);
			return false;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		if (poll(&pfd, 1, 10000) != 1) {
			ats_ctx_release(c);
			return false;
		}
		uint64_t woke = ats_now_ns();
		late[nlate++] = woke - ats_ctx_deadline(c);
		ats_ctx_release(c);
	}
	return true;
}

static bool late_measure(bool quick, unsigned percentile, ats_bench_result *out)
{
	if (!lateness_sample(quick))
		return false;
	ats_bench_percentile(late, nlate, percentile, out);
	snprintf(out->extra, sizeof out->extra, "\"samples\": %zu, \"tick_ns\": %llu", nlate,
	         (unsigned long long)ats_ctx_timer_precision_ns());
	return true;
}

static bool late_p50_measure(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	return late_measure(quick, 50, out);
}

static bool late_p99_measure(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	return late_measure(quick, 99, out);
}

static const ats_bench ctx_with_cancel_cancel = {"ctx.with_cancel_cancel",
                                                 ATS_BENCH_1T | ATS_BENCH_MT,
                                                 parents_setup,
                                                 with_cancel_cancel_run,
                                                 parents_teardown,
                                                 NULL,
                                                 NULL};
static const ats_bench ctx_with_timeout_cancel = {"ctx.with_timeout_cancel",
                                                  ATS_BENCH_1T | ATS_BENCH_MT,
                                                  parents_setup,
                                                  with_timeout_cancel_run,
                                                  parents_teardown,
                                                  NULL,
                                                  NULL};
static const ats_bench ctx_done = {"ctx.done", ATS_BENCH_1T, parents_setup, done_run, parents_teardown, NULL, NULL};
static const ats_bench ctx_cancel_1000_children = {
    "ctx.cancel_1000_children", ATS_BENCH_1T, NULL, cancel_1000_children_run, NULL, NULL, NULL};
static const ats_bench ctx_value_lookup = {"ctx.value_lookup", ATS_BENCH_1T, values_setup, value_lookup_run,
                                           ctx_release_state,  NULL,         NULL};
static const ats_bench ctx_timer_late_p50 = {"ctx.timer_late_p50", ATS_BENCH_1T, NULL, NULL, NULL,
                                             late_p50_measure,     NULL};
static const ats_bench ctx_timer_late_p99 = {"ctx.timer_late_p99", ATS_BENCH_1T, NULL, NULL, NULL,
                                             late_p99_measure,     NULL};
ATS_BENCH(ctx_with_cancel_cancel)
ATS_BENCH(ctx_with_timeout_cancel)
ATS_BENCH(ctx_done)
ATS_BENCH(ctx_cancel_1000_children)
ATS_BENCH(ctx_value_lookup)
ATS_BENCH(ctx_timer_late_p50)
ATS_BENCH(ctx_timer_late_p99)
