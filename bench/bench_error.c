/* SPDX-License-Identifier: BSD-2-Clause */
/* Structured errors: what making, wrapping, testing and printing an error costs.
 *
 * Every row frees what it makes (new + unref), since a C caller must; the Go peers leave that to
 * the garbage collector, which they pay for later and elsewhere. The message is the peers' own
 * ("connection refused", "dialing backend") so both sides copy the same bytes.
 */
#include "bench.h"
#include "atscale/error.h"

#include <stdlib.h>

/* A known edge case without a stack: the common error of a latency-critical path. */
static void new_run(void *state, unsigned tid, uint64_t iters)
{
	(void)state, (void)tid;
	for (uint64_t i = 0; i < iters; i++) {
		ats_err *e = ats_err_new(ATS_ERR_UNAVAILABLE, "connection refused");
		ats_bench_sink(e);
		ats_err_unref(e);
	}
}

/* The same with a raw stack (up to ATS_ERR_MAX_FRAMES frames, unsymbolized), as
 * peer.go.pkg_errors_new captures one (runtime.Callers, 32 frames). */
static void new_stack_run(void *state, unsigned tid, uint64_t iters)
{
	(void)state, (void)tid;
	for (uint64_t i = 0; i < iters; i++) {
		ats_err *e = ats_err_new_stack(ATS_ERR_UNAVAILABLE, "connection refused");
		ats_bench_sink(e);
		ats_err_unref(e);
	}
}

static void *base_setup(unsigned threads)
{
	(void)threads;
	ats_err *e = ats_err_new(ATS_ERR_UNAVAILABLE, "connection refused");
	return e == ats_err_oom ? NULL : e;
}

static void base_teardown(void *state)
{
	ats_err_unref(state);
}

/* Wrapping a shared cause: peer.go.pkg_errors_wrap wraps one long-lived error (without a stack
 * here: pkg/errors.Wrap takes one, so the peer pays for it; the stack case is error.new_stack). */
static void wrap_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	ats_err *base = state;
	for (uint64_t i = 0; i < iters; i++) {
		ats_err *e = ats_err_wrap(ats_err_ref(base), "dialing backend");
		ats_bench_sink(e);
		ats_err_unref(e);
	}
}

/* A chain of four: deadline exceeded at the root, wrapped three times. */
static void *chain_setup(unsigned threads)
{
	(void)threads;
	ats_err *e = ats_err_new(ATS_ERR_DEADLINE_EXCEEDED, "read timed out after %d ms", 250);
	e = ats_err_with_kv(e, "peer", "10.0.0.7:443");
	e = ats_err_wrap(e, "fetching user %d", 42);
	e = ats_err_wrap(e, "rendering profile");
	e = ats_err_wrap(e, "handling GET /profile");
	return e == ats_err_oom ? NULL : e;
}

/* is() for the root's code on that chain: the walk to the deepest error, the worst case. */
static void is_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	const ats_err *e = state;
	for (uint64_t i = 0; i < iters; i++) {
		ats_bench_sink(e);
		ats_bench_sink(ats_err_is(e, ATS_ERR_DEADLINE_EXCEEDED));
	}
}

/* The JSON format of that chain (4 errors, one attachment, no stacks): what a log hook writes. */
static void format_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	const ats_err *e = state;
	char buf[2048];
	for (uint64_t i = 0; i < iters; i++) {
		ats_bench_sink(e);
		ats_bench_sink(ats_err_format_json(e, buf, sizeof buf));
	}
}

static const ats_bench error_new = {"error.new", ATS_BENCH_1T, NULL, new_run, NULL, NULL, NULL};
static const ats_bench error_new_stack = {"error.new_stack", ATS_BENCH_1T, NULL, new_stack_run, NULL, NULL, NULL};
static const ats_bench error_wrap = {"error.wrap", ATS_BENCH_1T, base_setup, wrap_run, base_teardown, NULL, NULL};
static const ats_bench error_is = {"error.is", ATS_BENCH_1T, chain_setup, is_run, base_teardown, NULL, NULL};
static const ats_bench error_format = {"error.format", ATS_BENCH_1T, chain_setup, format_run,
                                       base_teardown,  NULL,         NULL};
ATS_BENCH(error_new)
ATS_BENCH(error_new_stack)
ATS_BENCH(error_wrap)
ATS_BENCH(error_is)
ATS_BENCH(error_format)
