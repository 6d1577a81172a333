/* SPDX-License-Identifier: BSD-2-Clause */
/* Replicated, hedged and tied requests (hedge.h).
 *
 * One call = one heap record shared by the caller and every attempt sent. An attempt's task
 * argument is the record's address with the attempt's number in its low bits (the record is
 * cache-line aligned), so a worker reads nothing but the record.
 *
 * Who decides: the first successful attempt CASes `winner` from NONE to its number, writes its
 * result, and then ends with the WON bit in its bump of `seq` (below), which publishes the result.
 * A caller that leaves without a winner (ctx done, fatal error) CASes `winner` to LEFT, so a
 * success landing later releases its result instead.
 *
 * `seq` is the one word every task and the caller meet on, and the futex word the caller sleeps
 * on: ENDED counts the attempts that ended (each one a worker took ends with exactly one bump, run
 * or not), DROPPED the withdrawn ones a worker reached (below), SENT the attempts sent (written
 * when the caller leaves), and four bits say the winner's result is written (WON), the caller
 * sleeps (PARKED), the caller's ctx is done (KICKED) and the caller is gone (LEFT). A task's bump
 * is its last touch of the record: after it a worker reads nothing there, and at most makes a
 * futex wake-up system call on the word's address (harmless if the record was freed meanwhile:
 * futex waiters recheck their word).
 * So the record needs no reference count:
 *   - the caller frees it when it sees every attempt sent ended or dropped (a plain load; the
 *     usual case: a call whose first attempt won costs no write of the caller's to that line);
 *   - else it adds LEFT and the number of attempts sent (SENT) and leaves; the task whose bump
 *     completes the count frees it (or the caller, if that bump came before its own). The counts,
 *     SENT and LEFT share a word, so exactly one of them sees the count complete with LEFT set,
 *     and a task decides from the value its bump returned, reading nothing else.
 * Sleeping: the caller sets PARKED with a CAS from the value it saw, then sleeps while the word
 * holds that value; an ender whose bump finds PARKED wakes it. Both are read-modify-writes of one
 * word, so one comes first: the bump (the CAS fails, the caller does not sleep) or the CAS (the
 * bump sees PARKED). A call that never sleeps makes no wake-up system call. The caller's ctx wakes
 * it the same way: its after-func sets KICKED (release, after the ctx is marked done) and wakes a
 * PARKED caller, so the caller sleeps on this one word and needs no futex_waitv on any kernel.
 *
 * An attempt still queued when the call is decided is withdrawn, not waited for: `states` has a
 * started bit and a withdrawn bit per attempt. A worker sets the started bit with one
 * fetch-and-add and runs the attempt unless the withdrawn bit was set; a CAS sets the withdrawn
 * bit of every attempt not started. The winner of a fan-out (replicate, tied) does so before its
 * bump, for all the attempts the fan-out sends, so copies still queued never start while the
 * caller is on its way to see the win; the deciding caller then does so for every attempt it
 * sent, and counts the withdrawn ones among them from the word (the winner's withdrawals reach
 * it with the winner's bump). A withdrawn attempt never runs and never counts as ended (the
 * caller counted it); its task only bumps DROPPED when a worker reaches it. So a caller waits for
 * the losers that started, never for a queue to drain or a parked worker to wake (row
 * replicate.4).
 *
 * Layout: the record's first cache line holds what an attempt reads and the started bits, the
 * second the words the caller polls and every ender writes (the count, the winner, its result),
 * so a call whose first attempt wins brings one line back to the caller. The attempts' pool tasks
 * carry no ctx: the record keeps its ctx alive for every attempt, so the worker neither
 * counts a reference on the ctx nor reads it (an attempt that reads its ctx pays for that itself),
 * and the caller's cancel at the end finds the ctx's line still its own (row hedge.no_fire). */
#include "atscale/hedge.h"
#include "atscale/histogram.h"
#include "atscale/limiter.h"
#include "atscale/clock.h"
#include "internal/compiler.h"
#include "internal/futex.h"
#include "internal/home_cache.h"
#include "internal/spin.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NONE = -1, LEFT = -2 };
/* The budget's clock: one tick of REQUEST_NS per request, from BUDGET_T0. */
#define REQUEST_NS UINT64_C(1000000)
#define BUDGET_T0 REQUEST_NS
/* How long a caller spins on its call before it sleeps: about what a futex sleep and wake-up cost
 * (floor.futex_pingpong / 2), so spinning first costs at most twice the better choice. Bounded
 * in time, not in pause instructions, whose length differs tens of times between CPUs (4000 of
 * them took 80 us on the development VM's AMD CPU, and starved its two cores' workers). */
#define SPIN_NS 10000u

/* seq: */
#define ENDED UINT32_C(1)            /* attempts that ended, in the low byte */
#define DROPPED (UINT32_C(1) << 8)   /* withdrawn attempts a worker reached, in the next byte */
#define SENT (UINT32_C(1) << 16)     /* attempts sent, in the third byte: written by leave() */
#define KICKED (UINT32_C(1) << 28)   /* the caller's ctx is done (kick_caller) */
#define PARKED (UINT32_C(1) << 29)   /* the caller sleeps on seq (or is about to) */
#define LEFT_BIT (UINT32_C(1) << 30) /* the caller is gone: the task that completes the count frees */
#define WON (UINT32_C(1) << 31)      /* the winner ended (its result is written) */
#define ENDED_OF(seq) ((seq)&0xffu)
#define DROPPED_OF(seq) (((seq) >> 8) & 0xffu)
#define SENT_OF(seq) (((seq) >> 16) & 0xffu)
#define STARTED(n) (UINT32_C(1) << (n))
#define WITHDRAWN(n) (UINT32_C(1) << (ATS_HEDGE_MAX_ATTEMPTS + (n)))
#define TAG_MASK ((uintptr_t)ATS_HEDGE_MAX_ATTEMPTS - 1)
_Static_assert(2 * ATS_HEDGE_MAX_ATTEMPTS <= 31 && ATS_HEDGE_MAX_ATTEMPTS < 256,
               "states holds two bits per attempt, seq's counts a byte each");
_Static_assert((ATS_HEDGE_MAX_ATTEMPTS & TAG_MASK) == 0 && ATS_HEDGE_MAX_ATTEMPTS <= 64,
               "an attempt's number fits a cache-line-aligned address's low bits");

struct call {
	/* What an attempt reads, and the started bits: one line, 64 bytes. */
	_Alignas(64) _Atomic uint32_t states; /* STARTED(n) | WITHDRAWN(n) */
	bool tied;
	bool timed;      /* a hedger's call: attempts time themselves (the losers' busy time) */
	uint8_t fan_out; /* replicate, tied: the attempts sent at once (the winner withdraws the rest) */
	ats_ctx *ctx;
	ats_request req;
	/* What the caller polls and every ender writes. */
	_Alignas(64) _Atomic uint32_t seq; /* the counts and bits above: the futex word */
	_Atomic int winner;                /* NONE, LEFT or the winning attempt's number */
	void *result;                      /* the winner's */
	_Atomic uint64_t loser_busy_ns;
	/* The caller's, and errors. */
	_Alignas(64) _Atomic(ats_err *) errs[ATS_HEDGE_MAX_ATTEMPTS]; /* set (release) by attempt n when it fails */
	unsigned sent;
	unsigned last_worker;
};
_Static_assert(offsetof(struct call, seq) == 64, "an attempt's line is the first 64 bytes");

struct ats_hedger {
	ats_hedger_config cfg;
	/* The hedge budget: a token bucket of the limiter module on a clock that advances one
	 * REQUEST_NS per request (not per nanosecond), filling max_extra_load hedges per request up
	 * to budget_burst; it starts empty. Exact under concurrency (the limiter's CAS). */
	ats_limiter budget;
	_Atomic uint64_t delay_ns;
	_Atomic uint64_t samples; /* latencies ever recorded */
	_Atomic uint32_t refreshing;
	/* Call latencies (record()), in two histograms taking turns by epochs of ATS_HEDGE_WINDOW samples:
	 * the delay is read over the current epoch and the one before. */
	ats_histogram *lat[2];
	_Atomic uint64_t requests, attempts, hedges, won_by_hedge, budget_exhausted, loser_busy_ns;
};

static void free_call(struct call *c)
{
	for (unsigned i = 0; i < c->sent; i++)
		ats_err_unref(atomic_load_explicit(&c->errs[i], memory_order_relaxed));
	ats_ctx_release(c->ctx); /* NULL when the caller released it (await) */
	ats__home_put(c);
}

/* Whether `sent` attempts have all ended or been dropped: no task touches the record again. */
static bool all_done(uint32_t seq, unsigned sent)
{
	return ENDED_OF(seq) + DROPPED_OF(seq) == sent;
}

/* A task's last touch of the record (file comment): bumps seq by `add`, then frees the record when
 * the caller left and this completed the count, or wakes a sleeping caller. */
static void task_done(struct call *c, uint32_t add)
{
	/* acq_rel (release: the caller that sees the count sees this attempt's error and the WON bit
	 * the winner's result; acquire: a task that frees sees every write before LEFT). */
	uint32_t old = atomic_fetch_add_explicit(&c->seq, add, memory_order_acq_rel);
	uint32_t now = old + add;
	/* Decided on the word alone: after this bump another task may free c at any moment. */
	if ((now & LEFT_BIT) && all_done(now, SENT_OF(now)))
		free_call(c);
	else if (old & PARKED)
		ats__futex_wake(&c->seq, 1); /* c may be freed by now: the system call only names it */
}

/* Ends an attempt a worker took, `won` set by the winner. */
static void end_attempt(struct call *c, uint32_t won)
{
	task_done(c, ENDED | won);
}

/* The caller is done with the call: frees it, or leaves that to the last task (file comment). */
static void leave(struct call *c)
{
	/* acquire: every task's writes before its bump, so the caller may free. */
	if (all_done(atomic_load_explicit(&c->seq, memory_order_acquire), c->sent)) {
		free_call(c);
		return;
	}
	/* Read before the add: after it, the last task may free c at any moment. */
	unsigned sent = c->sent;
	/* acq_rel: publishes the record (the errors to free) to the task that frees; sees the bumps
	 * before it. The count of attempts sent goes into the word, where tasks read it. */
	uint32_t old = atomic_fetch_add_explicit(&c->seq, LEFT_BIT | sent * SENT, memory_order_acq_rel);
	if (all_done(old, sent))
		free_call(c); /* the last bump came between the load and the add */
}

/* A worker takes attempt n: false when it must not run. Then the task's end is done here: a
 * withdrawn attempt only drops its reference (the caller counted it), and a tied copy that finds
 * the other started ends unrun. */
static bool start_attempt(struct call *c, unsigned n)
{
	/* One fetch-and-add, not a load and a CAS: the line comes over once, already owned. Only
	 * the worker that took attempt n sets STARTED(n), so adding sets the bit. On a withdrawn
	 * attempt it sets the bit too, harmlessly: a withdrawal skips attempts whose withdrawn bit is
	 * set, and the caller counts withdrawn bits. acq_rel: the worker and a withdrawing CAS agree
	 * on who owns the attempt. */
	uint32_t st = atomic_fetch_add_explicit(&c->states, STARTED(n), memory_order_acq_rel);
	if (st & WITHDRAWN(n)) {
		task_done(c, DROPPED);
		return false;
	}
	bool other_started = st & (WITHDRAWN(0) - 1);
	if (other_started && c->tied) {
		end_attempt(c, 0); /* the other copy claimed the request */
		return false;
	}
	return true;
}

/* Withdraws every attempt in `mask` that no worker has started (nor was withdrawn): they never run.
 * Returns the states word after. One CAS, retried when a worker starts an attempt meanwhile. */
static uint32_t withdraw_unstarted(struct call *c, uint32_t mask)
{
	/* relaxed: the CAS decides; its failure reloads the word. */
	uint32_t st = atomic_load_explicit(&c->states, memory_order_relaxed);
	for (;;) {
		uint32_t queued = mask & ~st & ~(st >> ATS_HEDGE_MAX_ATTEMPTS);
		if (!queued)
			return st;
		/* acq_rel: start_attempt's fetch-and-add. */
		if (atomic_compare_exchange_weak_explicit(&c->states, &st, st | queued << ATS_HEDGE_MAX_ATTEMPTS,
		                                          memory_order_acq_rel, memory_order_relaxed))
			return st | queued << ATS_HEDGE_MAX_ATTEMPTS;
	}
}

static struct call *untag(void *arg, unsigned *n)
{
	*n = (unsigned)((uintptr_t)arg & TAG_MASK);
	return (struct call *)((uintptr_t)arg & ~TAG_MASK);
}

/* A worker runs attempt n under the call's ctx (the pool's, which it is given, only tells of a
 * shutdown: then attempt_cancel runs instead). Not checking the call's ctx here is safe: a call
 * decided before this start withdrew the attempt first (start_attempt refuses it), and one whose
 * caller's ctx just ended is an attempt cancelled as it started, which sees its ctx done. */
static void attempt_run(void *arg, ats_ctx *pool_ctx)
{
	(void)pool_ctx;
	unsigned n;
	struct call *c = untag(arg, &n);
	if (!start_attempt(c, n))
		return;
	/* Only a hedger reads the time an attempt took: replicate and tied calls skip both reads. */
	uint64_t t0 = c->timed ? ats_fast_now_ns() : 0;
	void *res = NULL;
	ats_err *err = c->req.attempt(c->req.arg, n, c->ctx, &res);
	uint64_t busy = c->timed ? ats_fast_now_ns() - t0 : 0;
	if (!err) {
		int none = NONE;
		/* relaxed: what this attempt wrote is published by end_attempt's bump, not by this CAS. */
		if (atomic_compare_exchange_strong_explicit(&c->winner, &none, (int)n, memory_order_relaxed,
		                                            memory_order_relaxed)) {
			c->result = res;
			/* A fan-out's winner withdraws the copies still queued, before its bump (its last
			 * touch of the record): they never start, even while the caller is still on its
			 * way to see the win. A hedger's later attempts are the caller's to withdraw. */
			if (c->fan_out > 1)
				withdraw_unstarted(c, STARTED(c->fan_out) - 1);
			end_attempt(c, WON);
			return;
		}
		if (c->req.release)
			c->req.release(res, c->req.arg);
	} else {
		/* release: the caller that loads it sees the error whole. */
		atomic_store_explicit(&c->errs[n], err, memory_order_release);
	}
	if (busy) /* replicate and tied calls do not time their attempts */
		atomic_fetch_add_explicit(&c->loser_busy_ns, busy, memory_order_relaxed);
	end_attempt(c, 0);
}

static void attempt_cancel(void *arg, const ats_err *why)
{
	unsigned n;
	struct call *c = untag(arg, &n);
	if (!start_attempt(c, n))
		return;
	atomic_store_explicit(&c->errs[n], ats_err_ref((ats_err *)why), memory_order_release);
	end_attempt(c, 0);
}

static ats_err *new_call(const ats_request *r, ats_ctx *ctx, struct call **out)
{
	/* From the caller's cache of records, which the task that frees a record gives it back to
	 * (internal/home_cache.h): no malloc's lock shared with the workers, and no aligned_alloc,
	 * which bypasses glibc's per-thread cache. */
	struct call *c = ats__home_get(sizeof *c);
	if (!c)
		return ats_err_oom;
	memset(c, 0, sizeof *c);
	ats_err *err = ats_ctx_with_cancel(ctx, &c->ctx);
	if (err) {
		ats__home_put(c);
		return err;
	}
	atomic_init(&c->winner, NONE);
	c->req = *r;
	*out = c;
	return NULL;
}

/* Whether worker w is among chosen[0..n). */
static bool chosen_before(const unsigned *chosen, unsigned n, unsigned w)
{
	for (unsigned i = 0; i < n; i++)
		if (chosen[i] == w)
			return true;
	return false;
}

/* Sends attempt c->sent on worker w (falling back to the less loaded of two others when its
 * queue is full, unless that one is among avoid[0..navoid): a worker the call's other attempts are
 * on). NULL, or why it could not be sent. */
static ats_err *send(ats_pool *p, struct call *c, unsigned w, const unsigned *avoid, unsigned navoid)
{
	unsigned no = c->sent;
	ats_task t = {.run = attempt_run, .cancel = attempt_cancel, .arg = (void *)((uintptr_t)c | no)};
	c->sent++;
	ats_pool_status st = ats_pool_try_submit_to(p, w, &t);
	if (st == ATS_POOL_FULL && ats_pool_size(p) > 1) {
		unsigned other = ats_pool_pick_other(p, w);
		if (!chosen_before(avoid, navoid, other))
			st = ats_pool_try_submit_to(p, w = other, &t);
	}
	if (st == ATS_POOL_OK) {
		c->last_worker = w;
		return NULL;
	}
	c->sent--;
	return st == ATS_POOL_CLOSED ? ats_err_new(ATS_ERR_CLOSED, "hedge: the pool is shut down")
	       : st == ATS_POOL_FULL ? ats_err_new(ATS_ERR_UNAVAILABLE, "hedge: every queue tried is full")
	                             : ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedge: the pool refused the attempt");
}

/* The first error (of the attempts that ended) with the others attached. */
static ats_err *all_failed(struct call *c)
{
	ats_err *errs[ATS_HEDGE_MAX_ATTEMPTS], *first = NULL;
	for (unsigned i = 0; i < c->sent; i++) {
		/* acquire: pairs with the attempt's release store. */
		errs[i] = atomic_load_explicit(&c->errs[i], memory_order_acquire);
		if (!first && errs[i])
			first = ats_err_ref(errs[i]);
	}
	if (!first)
		return ats_err_new(ATS_ERR_INTERNAL, "hedge: every attempt ended without a result or an error");
	for (unsigned i = 0; i < c->sent; i++) {
		if (!errs[i] || errs[i] == first)
			continue;
		char text[256], key[24];
		ats_err_format(errs[i], text, sizeof text);
		snprintf(key, sizeof key, "attempt_%u", i);
		first = ats_err_with_kv(first, key, "%s", text);
	}
	return first;
}

static bool is_fatal(const struct call *c, const ats_err *err)
{
	return c->req.fatal && c->req.fatal(err, c->req.arg);
}

struct plan {
	ats_hedger *h; /* NULL: no hedges (replicate, tied) */
	ats_pool *p;
	unsigned max;
	uint64_t delay;
	uint64_t latency; /* out, adaptive hedgers only: the call's start to its success; UINT64_MAX: none */
};

static bool take_budget(ats_hedger *h)
{
	if (h->cfg.max_extra_load <= 0)
		return true;
	/* relaxed: the request count is the budget's clock; a stale reading only sees fewer
	 * deposits (the limiter never lets its time go backwards). */
	uint64_t n = atomic_load_explicit(&h->requests, memory_order_relaxed);
	return ats_limiter_allow_at(&h->budget, 1, BUDGET_T0 + n * REQUEST_NS);
}

/* The caller sleeps while seq still holds `seq`, until `until` (ATS__FUTEX_FOREVER: no bound).
 * Tells enders it sleeps first (file comment). Blocking. */
static void park_on_seq(struct call *c, uint32_t seq, uint64_t until)
{
	/* relaxed: the CAS only orders this sleep against the bumps, on one word (file comment);
	 * what a bump publishes is read with the caller's next acquire load. */
	uint32_t want = seq;
	if (!atomic_compare_exchange_strong_explicit(&c->seq, &want, seq | PARKED, memory_order_relaxed,
	                                             memory_order_relaxed))
		return; /* an attempt ended, or the ctx was cancelled, meanwhile */
	ats__futex_wait(&c->seq, seq | PARKED, until);
	/* relaxed: only this caller sets or reads the bit for itself; a bump that still finds it
	 * makes one spare wake-up call. */
	atomic_fetch_and_explicit(&c->seq, ~PARKED, memory_order_relaxed);
}

/* The after-func of the caller's ctx: tells the caller, on the word it polls and sleeps on. */
static void kick_caller(void *call)
{
	struct call *c = call;
	/* release: a caller that reads the bit sees its ctx done. */
	uint32_t old = atomic_fetch_or_explicit(&c->seq, KICKED, memory_order_release);
	if (old & PARKED)
		ats__futex_wake(&c->seq, 1);
}

/* The call is decided: withdraws every attempt sent that no worker started (file comment).
 * Returns how many attempts sent are withdrawn, by this call or by a fan-out's winner before it
 * (whose bump, which the caller saw, published its withdrawals). One CAS at most. */
static unsigned withdraw_queued(struct call *c)
{
	/* Every attempt sent has ended (the usual case): none is queued or withdrawn, and the states
	 * word (an attempt's line) need not come back to this core. relaxed: the count is exact once
	 * seen. */
	if (ENDED_OF(atomic_load_explicit(&c->seq, memory_order_relaxed)) == c->sent)
		return 0;
	uint32_t all = STARTED(c->sent) - 1;
	uint32_t st = withdraw_unstarted(c, all);
	return (unsigned)__builtin_popcount((st >> ATS_HEDGE_MAX_ATTEMPTS) & all);
}

/* The caller's side: waits for the outcome, sending hedges per plan. Leaves c (leave()): the
 * caller must not touch it afterwards. */
static ats_err *await(struct call *c, struct plan *pl, void **result, ats_ctx *ctx)
{
	ats_ctx_after after;
	ats_ctx_after_func(ctx, &after, kick_caller, c);
	uint64_t deadline = ats_ctx_deadline(ctx);
	uint64_t start = pl->h ? ats_fast_now_ns() : 0;
	uint64_t next_hedge = pl->h && pl->delay != UINT64_MAX ? ats__add_sat(start, pl->delay) : UINT64_MAX;
	unsigned seen_failed = 0;
	ats_err *err = NULL;
	bool success = false;
	for (;;) {
		/* acquire: pairs with end_attempt's bump (the errors of the attempts it counts, and the
		 * winner's result) and with kick_caller's (the ctx done). */
		uint32_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
		if (seq & WON) {
			success = true;
			if (pl->h && pl->h->lat[0])
				pl->latency = ats_fast_now_ns() - start;
			break;
		}
		/* Failures so far: a fatal one ends the call; a non-fatal one sends the next at once. */
		unsigned failed = 0;
		bool fatal = false;
		for (unsigned i = 0; i < c->sent; i++) {
			/* acquire: pairs with the attempt's release store. */
			const ats_err *e = atomic_load_explicit(&c->errs[i], memory_order_acquire);
			if (e) {
				failed++;
				fatal |= is_fatal(c, e);
			}
		}
		if (fatal) {
			err = all_failed(c);
			break;
		}
		bool send_now = failed > seen_failed && pl->h && c->sent < pl->max, hedge = false;
		seen_failed = failed;
		uint64_t now = ats_fast_now_ns();
		if (!send_now && pl->h && c->sent < pl->max && now >= next_hedge) {
			if (take_budget(pl->h)) {
				send_now = hedge = true;
			} else {
				atomic_fetch_add_explicit(&pl->h->budget_exhausted, 1, memory_order_relaxed);
				next_hedge = UINT64_MAX; /* no budget: no more hedges for this call */
			}
		}
		if (send_now) {
			unsigned last = c->last_worker;
			ats_err *serr = send(pl->p, c, ats_pool_pick_other(pl->p, last), &last, 1);
			/* A closed pool takes no attempt again: stop hedging (the call ends with the
			 * attempts sent). A refused hedge is not counted; its budget token stays spent. */
			bool closed = serr && ats_err_code(serr) == ATS_ERR_CLOSED;
			if (serr) {
				ats_err_unref(serr);
			} else if (pl->h) {
				atomic_fetch_add_explicit(&pl->h->attempts, 1, memory_order_relaxed);
				if (hedge)
					atomic_fetch_add_explicit(&pl->h->hedges, 1, memory_order_relaxed);
			}
			next_hedge = !closed && c->sent < pl->max && pl->delay != UINT64_MAX
			                 ? ats__add_sat(now, pl->delay)
			                 : UINT64_MAX;
			continue;
		}
		if (ENDED_OF(seq) == c->sent && (!pl->h || c->sent >= pl->max || next_hedge == UINT64_MAX)) {
			err = all_failed(c);
			break;
		}
		if (ats_ctx_done(ctx) || (deadline != ATS_CTX_NO_DEADLINE && now >= deadline)) {
			if ((err = ats_ctx_err(ctx)))
				break;
		}
		uint64_t until = next_hedge < deadline ? next_hedge : deadline;
		/* Spin a little first: an attempt on an idle worker answers in about a cross-core round
		 * trip, far less than a futex sleep and wake-up. */
		bool moved = false;
		/* Timed on CLOCK_MONOTONIC, precise whatever source the fast clock uses, read every 64
		 * rounds: a look at the call is one load, a clock read is not. Not internal/spin.h's
		 * spin, whose first 256 untimed tries could overrun a hedge time that is near; it yields
		 * the CPU as that spin does (ats__spin_yield: the worker it waits for may need it). */
		uint64_t spin_ns = until <= now ? 0 : until - now < SPIN_NS ? until - now : SPIN_NS;
		uint64_t spin_end = ats_now_ns() + spin_ns;
		for (uint32_t i = 0;; i++) {
			ats__cpu_relax();
			moved = atomic_load_explicit(&c->seq, memory_order_relaxed) != seq;
			if (moved)
				break;
			ats__spin_yield(i);
			if (i % 64 == 63 && ats_now_ns() >= spin_end)
				break;
		}
		if (moved || (until != UINT64_MAX && ats_fast_now_ns() >= until))
			continue;
		park_on_seq(c, seq, until);
	}
	ats_ctx_after_stop(&after);
	if (!success) {
		int none = NONE;
		/* Leaving undecided: a success landing later must release its result. If one won just
		 * now, take it after all, once its bump says its result is written. */
		if (!atomic_compare_exchange_strong_explicit(&c->winner, &none, LEFT, memory_order_relaxed,
		                                             memory_order_relaxed)) {
			/* acquire: pairs with the winner's bump. */
			while (!(atomic_load_explicit(&c->seq, memory_order_acquire) & WON))
				ats__cpu_relax(); /* the winner is between its CAS and its bump: a few instructions */
			ats_err_unref(err);
			err = NULL;
			success = true;
		}
	}
	/* Withdraw first, so an attempt no worker has started never runs; then the losers that did
	 * start see their ctx done. */
	unsigned withdrawn = withdraw_queued(c);
	ats_ctx_cancel(c->ctx, NULL);
	if (success) {
		*result = c->result;
		if (pl->h && atomic_load_explicit(&c->winner, memory_order_relaxed) > 0)
			atomic_fetch_add_explicit(&pl->h->won_by_hedge, 1, memory_order_relaxed);
	}
	if (!c->req.detach || !success) {
		/* Wait for every attempt that started to end (a cancelled loser returns soon). */
		for (;;) {
			uint32_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
			if (ENDED_OF(seq) == c->sent - withdrawn)
				break;
			park_on_seq(c, seq, ATS__FUTEX_FOREVER);
		}
		if (pl->h)
			atomic_fetch_add_explicit(&pl->h->loser_busy_ns, atomic_load(&c->loser_busy_ns),
			                          memory_order_relaxed);
		/* No attempt reads the ctx again: those that ran have ended, and a withdrawn one, which a
		 * worker may still reach, reads only the record. So the caller releases it, into its own
		 * cache of contexts, rather than leaving it to the task that frees the record. */
		ats_ctx_release(c->ctx);
		c->ctx = NULL;
	}
	leave(c);
	return err;
}

/* ---- Replicate and tied ---- */

static ats_err *check_args(ats_pool *p, const ats_request *r, void **result, ats_ctx *ctx)
{
	if (!p || !r || !r->attempt || !result || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedge: NULL %s",
		                   !p            ? "pool"
		                   : !r          ? "request"
		                   : !r->attempt ? "attempt"
		                   : !result     ? "result"
		                                 : "ctx");
	/* A call whose ctx is already done sends nothing (the pool does not check the attempts'
	 * ctx: attempt_run). */
	uint64_t deadline = ats_ctx_deadline(ctx);
	if (ats_ctx_done(ctx) || (deadline != ATS_CTX_NO_DEADLINE && ats_fast_now_ns() >= deadline))
		return ats_ctx_err(ctx);
	return NULL;
}

static ats_err *fan_out(ats_pool *p, const ats_request *r, unsigned n, bool tied, void **result, ats_ctx *ctx)
{
	struct call *c = NULL;
	ats_err *err = new_call(r, ctx, &c);
	if (err)
		return err;
	c->tied = tied;
	c->fan_out = (uint8_t)n;
	unsigned size = ats_pool_size(p), first = ats_pool_pick_less_loaded(p);
	unsigned chosen[ATS_HEDGE_MAX_ATTEMPTS];
	ats_err *send_err = NULL;
	for (unsigned i = 0; i < n; i++) {
		unsigned w = i == 0 ? first : i == 1 ? ats_pool_pick_other(p, first) : (first + i) % size;
		while (chosen_before(chosen, i, w)) /* n <= size: a worker not chosen yet remains */
			w = (w + 1) % size;
		chosen[i] = w;
		ats_err *e = send(p, c, w, chosen, i);
		if (e) {
			ats_err_unref(send_err);
			send_err = e;
		}
	}
	if (c->sent == 0) {
		free_call(c); /* nothing was sent */
		return send_err;
	}
	ats_err_unref(send_err);
	struct plan pl = {NULL, p, n, UINT64_MAX, UINT64_MAX};
	return await(c, &pl, result, ctx);
}

ats_err *ats_replicate(ats_pool *p, const ats_request *r, unsigned n, void **result, ats_ctx *ctx)
{
	ats_err *err = check_args(p, r, result, ctx);
	if (err)
		return err;
	if (n == 0 || n > ATS_HEDGE_MAX_ATTEMPTS || n > ats_pool_size(p))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedge: %u replicas (1..%u on %u workers)", n,
		                   ATS_HEDGE_MAX_ATTEMPTS, ats_pool_size(p));
	return fan_out(p, r, n, false, result, ctx);
}

ats_err *ats_tied(ats_pool *p, const ats_request *r, void **result, ats_ctx *ctx)
{
	ats_err *err = check_args(p, r, result, ctx);
	if (err)
		return err;
	return fan_out(p, r, ats_pool_size(p) > 1 ? 2 : 1, true, result, ctx);
}

/* ---- Hedge ---- */

ats_err *ats_hedger_new(ats_hedger **out, const ats_hedger_config *cfg)
{
	if (!out || !cfg || !cfg->pool)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedger: NULL %s",
		                   !out   ? "out"
		                   : !cfg ? "config"
		                          : "pool");
	*out = NULL;
	if (cfg->max_attempts > ATS_HEDGE_MAX_ATTEMPTS)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedger: %u attempts, above %u", cfg->max_attempts,
		                   ATS_HEDGE_MAX_ATTEMPTS);
	if (!(cfg->percentile >= 0 && cfg->percentile < 1))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedger: percentile %g outside [0, 1)", cfg->percentile);
	if (!(cfg->max_extra_load >= 0) || !isfinite(cfg->max_extra_load))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedger: extra load %g", cfg->max_extra_load);
	ats_hedger *h = aligned_alloc(64, (sizeof *h + 63) & ~(size_t)63);
	if (!h)
		return ats_err_oom;
	memset(h, 0, sizeof *h);
	h->cfg = *cfg;
	if (!h->cfg.max_attempts)
		h->cfg.max_attempts = 2;
	if (!h->cfg.warmup)
		h->cfg.warmup = ATS_HEDGE_REFRESH;
	if (!h->cfg.budget_burst)
		h->cfg.budget_burst = ATS_HEDGE_DEFAULT_BUDGET_BURST;
	atomic_init(&h->delay_ns, cfg->percentile > 0 ? UINT64_MAX : cfg->delay_ns);
	if (cfg->max_extra_load > 0) {
		/* max_extra_load hedges per request: per billion requests, in whole hedges (1e-9 steps). */
		/* No request sends more than ATS_HEDGE_MAX_ATTEMPTS - 1 hedges: a larger load is the same
		 * budget, and keeps the conversion below in range. */
		double load =
		    cfg->max_extra_load < ATS_HEDGE_MAX_ATTEMPTS ? cfg->max_extra_load : ATS_HEDGE_MAX_ATTEMPTS;
		/* Rounded down, never up: at most max_extra_load hedges per request (a load under 1e-9
		 * is rate 0: no hedge). */
		ats_rate rate = {(uint64_t)(load * 1e9), UINT64_C(1000000000) * REQUEST_NS};
		ats_err *err = ats_limiter_init_at(&h->budget, rate, h->cfg.budget_burst, BUDGET_T0);
		if (err) {
			ats_hedger_free(h);
			return err;
		}
		/* Empty at first: hedges are paid for by requests already made. */
		(void)ats_limiter_allow_at(&h->budget, h->cfg.budget_burst, BUDGET_T0);
	}
	if (cfg->percentile > 0) {
		ats_err *err = ats_histogram_new(&h->lat[0], 0);
		if (!err)
			err = ats_histogram_new(&h->lat[1], 0);
		if (err) {
			ats_hedger_free(h);
			return err;
		}
	}
	*out = h;
	return NULL;
}

void ats_hedger_free(ats_hedger *h)
{
	if (!h)
		return;
	ats_histogram_free(h->lat[0]);
	ats_histogram_free(h->lat[1]);
	ats_limiter_destroy(&h->budget);
	free(h);
}

/* Records a call's latency (adaptive delay only; hedge.h says what it measures). The first sample of each epoch
 * empties the histogram whose turn it is (it held the epoch before last; a sample another caller
 * files there at that instant may be lost, which only thins the estimate). Every
 * ATS_HEDGE_REFRESH samples one caller recomputes the delay over both histograms: two snapshots
 * (O(buckets * shards) loads), no sort. */
static void record(ats_hedger *h, uint64_t latency)
{
	if (!h->lat[0])
		return;
	uint64_t n = atomic_fetch_add_explicit(&h->samples, 1, memory_order_relaxed);
	ats_histogram *cur = h->lat[(n / ATS_HEDGE_WINDOW) & 1];
	if (n % ATS_HEDGE_WINDOW == 0 && n > 0)
		ats_histogram_reset(cur);
	ats_histogram_record(cur, latency);
	/* The first estimate at the end of the warm-up, then one every ATS_HEDGE_REFRESH samples. */
	uint64_t k = n + 1;
	if (k < h->cfg.warmup || (k != h->cfg.warmup && k % ATS_HEDGE_REFRESH != 0))
		return;
	uint32_t zero = 0;
	if (!atomic_compare_exchange_strong(&h->refreshing, &zero, 1))
		return;
	ats_histogram_snapshot *a = malloc(sizeof *a), *b = malloc(sizeof *b);
	if (a && b) {
		ats_histogram_snapshot_get(h->lat[0], a);
		ats_histogram_snapshot_get(h->lat[1], b);
		for (unsigned i = 0; i < ATS_HISTOGRAM_BUCKETS; i++)
			a->buckets[i] += b->buckets[i];
		uint64_t d = ats_histogram_snapshot_percentile(a, h->cfg.percentile);
		atomic_store_explicit(&h->delay_ns, d > h->cfg.min_delay_ns ? d : h->cfg.min_delay_ns,
		                      memory_order_relaxed);
	}
	free(a);
	free(b);
	atomic_store(&h->refreshing, 0);
}

ats_err *ats_hedge(ats_hedger *h, const ats_request *r, void **result, ats_ctx *ctx)
{
	if (!h)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "hedger: NULL hedger");
	ats_err *err = check_args(h->cfg.pool, r, result, ctx);
	if (err)
		return err;
	/* Also the budget's clock: this request's deposit. relaxed: a counter. */
	atomic_fetch_add_explicit(&h->requests, 1, memory_order_relaxed);
	struct call *c = NULL;
	if ((err = new_call(r, ctx, &c)))
		return err;
	c->timed = true;
	if ((err = send(h->cfg.pool, c, ats_pool_pick_less_loaded(h->cfg.pool), NULL, 0))) {
		free_call(c); /* nothing was sent */
		return err;
	}
	atomic_fetch_add_explicit(&h->attempts, 1, memory_order_relaxed);
	struct plan pl = {h, h->cfg.pool, h->cfg.max_attempts, atomic_load_explicit(&h->delay_ns, memory_order_relaxed),
	                  UINT64_MAX};
	err = await(c, &pl, result, ctx);
	if (pl.latency != UINT64_MAX)
		record(h, pl.latency);
	return err;
}

void ats_hedger_stats_get(const ats_hedger *h, ats_hedger_stats *out)
{
	if (!h || !out)
		return;
	ats_hedger *m = (ats_hedger *)h;
	out->requests = atomic_load_explicit(&m->requests, memory_order_relaxed);
	out->attempts = atomic_load_explicit(&m->attempts, memory_order_relaxed);
	out->hedges = atomic_load_explicit(&m->hedges, memory_order_relaxed);
	out->won_by_hedge = atomic_load_explicit(&m->won_by_hedge, memory_order_relaxed);
	out->budget_exhausted = atomic_load_explicit(&m->budget_exhausted, memory_order_relaxed);
	out->loser_busy_ns = atomic_load_explicit(&m->loser_busy_ns, memory_order_relaxed);
	out->delay_ns = atomic_load_explicit(&m->delay_ns, memory_order_relaxed);
}
