/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale replicated, hedged and tied requests on the worker pool (after the seed's replicated
 * requests, Dean & Barroso's "The Tail at Scale", Finagle's backup requests and gRPC hedging).
 *
 * A request is an attempt function run as pool tasks: attempt(arg, n, ctx, &result) for attempt
 * number n, returning NULL with *result set on success or an error. Every attempt of a call runs
 * under one ctx, a child of the caller's, which is cancelled as soon as the call is decided: a
 * loser sees its ctx done and should return early. A call whose ctx is already done sends
 * nothing and returns the ctx's error; an attempt a worker starts just as the caller's ctx ends
 * runs with its ctx done (cancelled as it starts). A loser's successful result goes to
 * request.release (never leaked), also when it finishes after the caller has left.
 *
 *  - ats_replicate: n attempts at once on n different workers; the first success wins.
 *  - ats_hedge: one attempt; another (on a different worker, the less loaded of two random ones)
 *    after a delay, up to max_attempts. The delay is fixed, or adaptive: a percentile of recent
 *    call latencies from a per-core histogram (with a floor, and no hedge at all during a
 *    warm-up). A call's latency runs from its start to its first success, on the caller's clock,
 *    the one the delay is measured on (the default clock, ats_fast_now_ns: under its coarse
 *    source, only ever the user's choice, both move in kernel ticks, so a delay shorter than a
 *    tick can be neither learned nor kept). A call a hedge won counts the time it was decided:
 *    a lower bound on what its first attempt would have taken, and at least the delay. So every
 *    call that outlived the delay counts as having outlived it, and the delay settles on the
 *    percentile of unhedged calls. (Counting the winner's own time instead counts such calls at
 *    the hedge's, mostly short, time: the percentile sinks, hedges outrun the budget, and the
 *    budget refuses them at random rather than in the tail.)
 *    A budget caps the extra load: a token bucket of the limiter module (ats_limiter) on a clock
 *    that advances one tick per request, so each request deposits max_extra_load of a hedge and
 *    each hedge takes a whole one, up to budget_burst banked (Finagle's shape); with the budget
 *    empty no hedge is sent (counted). Exact under concurrency: at most
 *    max_extra_load * requests hedges, ever (the load is kept in billionths, rounded down). An
 *    attempt that fails with an error the request's `fatal` classifier calls non-fatal starts
 *    the next one at once; a fatal one ends the call.
 *  - ats_tied: two copies queued on two workers sharing a claim word; the first to start claims
 *    it and the other is dropped without running.
 *
 * The caller waits for the outcome (or its hedge time) spinning up to 10 us, about what a futex
 * sleep and wake-up cost (yielding the CPU every 256 tries, in case a worker it waits for is
 * queued on it), then on a futex: no timer thread, no long busy wait. It sleeps on one word that
 * every attempt's end and its ctx's cancel change, so it sleeps until it is woken on any kernel.
 * Once the call is decided, attempts still queued (no worker started them) are withdrawn (in
 * ats_replicate and ats_tied by the winning attempt itself, as it wins, before the caller has seen
 * the win): they never run, and the call does not wait for them, so a loser queued behind a
 * long task or on a sleeping worker costs the caller nothing (in the pool's counters its task
 * counts as run: it only lets go of the call). The call waits for the losers that started
 * (their ctx is cancelled, so they should return soon). With request.detach the call returns at the first
 * success without waiting for those either (they still end, release their results and free the
 * call). When every attempt fails, the call returns
 * the first error with the others attached ("attempt_<n>"). An attempt whose worker's queue is
 * full goes to another worker, never to one the call's other attempts are on (a hedge queued
 * behind the attempt it should outrun gains nothing). A submit the pool refuses (full, closed) is
 * not an attempt sent; if nothing could be sent, the call returns that error.
 */
#ifndef ATSCALE_HEDGE_H
#define ATSCALE_HEDGE_H

#include "atscale/common.h"
#include "atscale/ctx.h"
#include "atscale/error.h"
#include "atscale/pool.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ATS_HEDGE_MAX_ATTEMPTS 8u
/* The adaptive delay reads call latencies from two histograms (histogram.h) taking turns by
 * epochs of ATS_HEDGE_WINDOW samples (so it reflects the last ATS_HEDGE_WINDOW to twice that
 * many), and recomputes the percentile every ATS_HEDGE_REFRESH samples. The percentile is a
 * bucket's upper bound: at most 1/64 above the exact one. */
#define ATS_HEDGE_WINDOW 1024u
#define ATS_HEDGE_REFRESH 256u
/* Whole hedges a budget banks unless told otherwise. A budget whose deposits match what its
 * percentile asks for (a 95th percentile delay and 5% extra load) has no drift: its balance is a
 * random walk, and a small bank runs dry in every clump of slow calls, refusing hedges exactly
 * where the tail is. A bank of 100 hedges rides those out (Finagle's retry budget banks a
 * 10-second window); the cap stays max_extra_load * requests, since the bank starts empty. */
#define ATS_HEDGE_DEFAULT_BUDGET_BURST 100u

typedef ats_err *(*ats_attempt_fn)(void *arg, unsigned attempt, ats_ctx *ctx, void **result);

typedef struct ats_request {
	ats_attempt_fn attempt; /* required */
	void *arg;
	void (*release)(void *result, void *arg);     /* a successful loser's result; NULL: dropped */
	bool (*fatal)(const ats_err *err, void *arg); /* NULL: every error is non-fatal */
	bool detach;                                  /* return at the first success without waiting for the losers */
} ats_request;

/* Runs n (1..min(ATS_HEDGE_MAX_ATTEMPTS, pool size)) attempts at once on n different workers and
 * returns the first success (*result). Errors: every attempt failed (the first error, others
 * attached); a fatal error; ctx's error when ctx is done first (attempts cancelled, results
 * released); ATS_ERR_INVALID_ARGUMENT for NULL p, r, r->attempt, result or ctx, or n out of
 * range. Blocking. A call takes a record and a child ctx from per-thread caches (the record goes
 * back to the caller's cache from whichever thread ends the call), so steady calls rarely reach
 * malloc. */
ATS_API ATS_NODISCARD ats_err *ats_replicate(ats_pool *p, const ats_request *r, unsigned n, void **result,
                                             ats_ctx *ctx);
/* Tied request: two copies on two workers; the first to start runs, the other is dropped unrun.
 * Errors as ats_replicate. Blocking. */
ATS_API ATS_NODISCARD ats_err *ats_tied(ats_pool *p, const ats_request *r, void **result, ats_ctx *ctx);

typedef struct ats_hedger_config {
	ats_pool *pool;        /* required */
	unsigned max_attempts; /* 1..ATS_HEDGE_MAX_ATTEMPTS; 0: 2 */
	uint64_t delay_ns;     /* the fixed delay (when percentile is 0) */
	double percentile;     /* in (0, 1): adaptive delay, e.g. 0.95; 0: fixed */
	uint64_t min_delay_ns; /* floor of the adaptive delay */
	unsigned warmup;       /* latencies seen before any adaptive hedge; 0: ATS_HEDGE_REFRESH */
	double max_extra_load; /* budget: hedges per request, e.g. 0.05; 0: no budget (unlimited) */
	unsigned budget_burst; /* whole hedges the budget may bank; 0: ATS_HEDGE_DEFAULT_BUDGET_BURST */
} ats_hedger_config;

typedef struct ats_hedger ats_hedger;

typedef struct ats_hedger_stats {
	uint64_t requests;
	uint64_t attempts;         /* attempts sent, first ones included */
	uint64_t hedges;           /* attempts sent after a delay */
	uint64_t won_by_hedge;     /* requests a hedge (not the first attempt) won */
	uint64_t budget_exhausted; /* hedges not sent for want of budget */
	uint64_t loser_busy_ns;    /* worker time spent in attempts that lost */
	uint64_t delay_ns;         /* the hedge delay now */
} ats_hedger_stats;

/* Errors: NULL out, cfg or pool, max_attempts or percentile out of range, a negative extra load
 * (ATS_ERR_INVALID_ARGUMENT); no memory. */
ATS_API ATS_NODISCARD ats_err *ats_hedger_new(ats_hedger **out, const ats_hedger_config *cfg);
/* NULL-safe. Calls in flight must have returned (detached losers may still run: they hold no
 * reference to the hedger). */
ATS_API void ats_hedger_free(ats_hedger *h);
/* A hedged call (see the file comment). Errors as ats_replicate. Blocking; allocates as
 * ats_replicate. */
ATS_API ATS_NODISCARD ats_err *ats_hedge(ats_hedger *h, const ats_request *r, void **result, ats_ctx *ctx);
/* The counters. Wait-free. */
ATS_API void ats_hedger_stats_get(const ats_hedger *h, ats_hedger_stats *out);

#ifdef __cplusplus
}
#endif
#endif
