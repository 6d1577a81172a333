/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale rate limiters: an exact lock-free token bucket, a sharded per-core bucket and an
 * all-or-nothing multi-limit, all on the GCRA core of gcra.h.
 *
 * ---- Exact limiter (ats_limiter) ----
 * Token-bucket semantics of Go's x/time/rate: `rate` tokens per second refill a bucket of `burst`
 * tokens that starts full; ATS_RATE_INF allows everything (burst ignored); a rate of 0 allows the
 * initial burst and then nothing. n > burst is refused at once and changes nothing; n == 0 is
 * allowed unless reservations have put the bucket in debt (as AllowN(t, 0)).
 *
 * State: one 64-bit word, `(TAT << 1) | parity`: the GCRA theoretical arrival time (gcra.h) on the
 * token clock of the current configuration, modulo 2^63, and the parity of the configuration
 * generation the TAT is expressed in. An acquire is one relaxed/acquire read of the config and the
 * word, integer math and one CAS; a refusal writes nothing. Rates from one per hour (and lower) up to
 * 10^12 per second, n and burst up to 2^32, no drift (gcra.h), any uptime: the word wraps freely.
 * The one limit of a 63-bit TAT: a bucket that grants nothing for between 2^62 and 2^63 units
 * reads as in debt for the rest of that span (the word cannot tell its idle TAT from one far
 * ahead), then as full again. A unit is a token << shift, at most one per ns at rates up to 10^9/s,
 * so that span starts after 146 years of idleness there; at faster rates a unit is a token, and it
 * starts after 14.6 years at 10^10/s, 1.46 years at 10^11/s and 53 days at 10^12/s. Any grant
 * (allow(l, 0) does not write) resets it: a bucket configured as "practically unlimited" at
 * 10^12/s and idle for months should take a token now and then, or use ATS_RATE_INF.
 *
 * Stale time: a now_ns older than one already seen never mints tokens and never moves stored time
 * back (TAT only grows; an older now only makes max(TAT, now) - now larger). golang/go#71360 cannot
 * happen here.
 *
 * Runtime changes (ats_limiter_set_at, set_rate_at, set_burst_at), the rule for tokens already there:
 * at the moment of the change t the bucket keeps the tokens it holds, clamped to the new burst, and
 * refills at the new rate from t on; pending debt (reservations ahead of now) is carried over in
 * tokens, so every reserved token stays reserved. Formally: debt_new = max(0, debt_old + burst_new -
 * burst_old) tokens, where debt = burst - tokens available, rounded up to the new units.
 * Mechanism: two config slots and a 64-bit generation. A setter writes the inactive slot, publishes
 * the generation, then converts the word with one CAS that also flips its parity bit. Acquirers read
 * the generation, the slot it names and the word, and re-check the generation after the word (a
 * seqlock): if the word's parity still names the previous generation (conversion pending), they use
 * the previous slot, which no setter may touch before the conversion is done. So an acquirer always
 * computes with the clock the word is expressed in, a CAS computed under the old clock fails once
 * the parity flips, and a setter that stalls leaves the old rate in force without blocking anyone.
 * Setters serialize among themselves on a small lock (blocking with respect to other setters only).
 * A parity bit alone guards one change; what guards more is that each new clock starts one unit
 * past the word's TAT and past the old clock (at the moment of the change), so a new generation's
 * words all lie above every word the old one held: an acquirer stalled across any number of
 * changes cannot find its old word again (it would need the numbering to wrap 2^63 units). The
 * one remaining window: a grant in the old generation landing between the setter's read of the
 * word and its converting CAS (a few hundred ns), later matched exactly by a stalled acquirer's
 * stale word two or more changes on.
 *
 * Reservations (ats_limiter_reserve_at) follow x/time/rate's Reservation: reserve n now, act after
 * `delay_ns`; cancel gives back n tokens minus those of later callers that act after this one's
 * time to act, counting on its tokens (x/time/rate's restore = n - (lastEvent - timeToAct)*rate; in
 * TAT arithmetic, with the time to act at TAT = max(TAT_after_this_reservation, now + burst):
 * restore = n - max(0, TAT_now - that)), and nothing once the time to act has passed. So tokens
 * that later callers took from what was left over come back in full. The bucket never rises above
 * full. A cancel that finds the limiter as its reservation left it (nothing granted, given back or
 * changed since) puts back exactly the state from before the reservation, so that a caller with an
 * older timestamp sees what it would have seen without it. Across one rate/burst change the rule is applied in the old
 * units up to the change, what is left is capped at the debt the change kept (a smaller burst forgives debt, and a
 * forgiven reservation has nothing left to give back), and every token granted after the change counts as built on it;
 * a reservation two or more changes old gives nothing back (never over-grants).
 *
 * ---- Sharded limiter (ats_sharded) ----
 * Token caches leasing batches from one exact limiter, so an acquire touches only a cache line of
 * its own. Two kinds of cache, `shards` of each:
 *  - per-thread slots, for ats_sharded_allow_at: each thread gets a process-wide index on its first
 *    call (the lowest free one; handed back when the thread exits), and the thread with index i
 *    owns slot i alone, so its hits are a plain load and store (no locked instruction);
 *  - per-core shards, shared (CAS), for ats_sharded_allow_shard_at and for ats_sharded_allow_at in
 *    threads whose index is >= shards (more threads than slots).
 * Over-admission bound, for callers whose timestamps follow real time: in any window [t, t+w] at most
 * burst + rate*w + L*batch tokens are granted, where L <= 2*shards is the number of caches that hold
 * leases (each holds at most one lease of <= batch tokens, and a cache's operations are ordered by
 * time). L = shards when only slots (every caller of ats_sharded_allow_at has an index < shards) or
 * only shards are used. A lease expires after `lease_ns` without use (idle threads and cores do not
 * hoard); expired tokens are dropped, not returned. A slot's lease outlives its thread and passes to
 * the next thread given that index. (A cache keeps 40 bits of its last use's time: a lease left
 * idle for a multiple of 2^40 ns, about 18 minutes, give or take lease_ns, reads as fresh once,
 * within the bound above.)
 *
 * ---- Multi-limit (ats_multi_allow_at) ----
 * All-or-nothing across several limiters: either every limiter grants n or none is charged.
 * Guarantee: never over-grants any limiter; a refused multi-acquire gives back what it took with the
 * cancel rule, so single-threaded every limiter is left exactly as it was (at every time, earlier
 * ones included), and concurrently its
 * tokens may be briefly unavailable to others (or partly kept when later callers reserved on top).
 *
 * Threads: every function may be called from any thread at once. `_at` variants take the time from
 * the caller (CLOCK_MONOTONIC scale ns); the others read ats_fast_now_ns().
 */
#ifndef ATSCALE_LIMITER_H
#define ATSCALE_LIMITER_H

#include "atscale/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atscale/clock.h"
#include "atscale/ctx.h"
#include "atscale/error.h"
#include "atscale/gcra.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The exact limiter: 256 bytes, 64-byte aligned. Transparent (laid out in limiter_inl.h) so that
 * it can live in caller memory and the hot paths inline; every field is private. */
typedef struct ats_limiter ats_limiter;

/* A reservation (x/time/rate's Reservation). ok, n, delay_ns and act_ns are for the caller. */
typedef struct ats_reservation {
	bool ok;           /* false: refused (n > burst, rate 0, or beyond max delay); nothing taken */
	uint64_t n;        /* tokens reserved */
	uint64_t delay_ns; /* wait this long after the now_ns given before acting */
	uint64_t act_ns;   /* now_ns + delay_ns */
	/* private */
	ats_limiter *lim_;
	uint64_t gen_;    /* generation whose units the words below are in */
	uint64_t front2_; /* max(TAT after it, now + burst), doubled units: later grants past it act after it */
	uint64_t before_; /* the limiter's word before it and after it: a cancel that finds `after_` */
	uint64_t after_;  /* there (nothing changed since) puts `before_` back */
	uint64_t n2_;     /* n in doubled units */
	uint32_t inf_;    /* reserved under an infinite rate: cancel gives nothing */
} ats_reservation;

/* redis-cell's CL.THROTTLE answer for one acquire. */
typedef struct ats_limiter_result {
	bool allowed;
	uint64_t limit;         /* burst */
	uint64_t remaining;     /* whole tokens left after this call */
	int64_t retry_after_ns; /* -1 when allowed; else ns until n fit; INT64_MAX when they never will */
	int64_t reset_after_ns; /* ns until the bucket is full again; INT64_MAX if never (rate 0) */
} ats_limiter_result;

/* ---- Life cycle (not hot paths) ---- */

/* Initializes a limiter in caller memory (64-byte aligned), full at now_ns. Errors (nothing written
 * that matters): burst > 2^32, rate > 10^12/s, NULL l. ats_limiter_init reads ats_fast_now_ns(). */
ATS_API ATS_NODISCARD ats_err *ats_limiter_init_at(ats_limiter *l, ats_rate rate, uint64_t burst, uint64_t now_ns);
ATS_API ATS_NODISCARD ats_err *ats_limiter_init(ats_limiter *l, ats_rate rate, uint64_t burst);
/* Nothing to release (the limiter owns no memory); present for symmetry. */
ATS_API void ats_limiter_destroy(ats_limiter *l);
/* On the heap (cache-line aligned). *out is NULL on error. */
ATS_API ATS_NODISCARD ats_err *ats_limiter_new(ats_limiter **out, ats_rate rate, uint64_t burst);
ATS_API void ats_limiter_free(ats_limiter *l);

/* ---- Hot paths: static inline, lock-free, no system call, no allocation ---- */

/* Takes n tokens at now_ns if they are there. Lock-free: one CAS per attempt, retried only when
 * another acquire or a setter changed the word; the refusal path is loads only, no write.
 * Release on success. Cost: about row floor.load_cas plus one multiply (rows limiter.allow_at,
 * limiter.deny_at); a refusal is 9 L1 loads and 1 multiply, no write. */
static inline bool ats_limiter_allow_at(ats_limiter *l, uint64_t n, uint64_t now_ns);

static inline bool ats_limiter_allow(ats_limiter *l, uint64_t n);

/* Whether n tokens are there at now_ns, without taking them. Loads only. Wait-free unless a
 * setter is at work; then lock-free (the out-of-line path retries its seqlock read). */
static inline bool ats_limiter_check_at(ats_limiter *l, uint64_t n, uint64_t now_ns);

static inline bool ats_limiter_check(ats_limiter *l, uint64_t n);

/* Whole tokens available at now_ns: 0..burst, negative while reservations hold the bucket in debt
 * (x/time/rate's TokensAt, floored). INT64_MAX for an infinite rate. Loads only. */
static inline int64_t ats_limiter_tokens_at(ats_limiter *l, uint64_t now_ns);

static inline int64_t ats_limiter_tokens(ats_limiter *l);

/* ---- Warm paths (src/limiter.c): lock-free, no allocation ---- */

/* Reserves n tokens at now_ns, to be used after r->delay_ns; refused (r->ok false, nothing taken)
 * when n > burst, when the delay would exceed max_delay_ns (UINT64_MAX: no limit) or be infinite
 * (rate 0), or when the debt would pass 2^61 units (a wait of >= 73 years at 10^9/s). Returns r->ok.
 * Lock-free: one CAS per attempt; one 128-bit division when the delay is not 0. */
ATS_API bool ats_limiter_reserve_within_at(ats_limiter *l, uint64_t n, uint64_t max_delay_ns, uint64_t now_ns,
                                           ats_reservation *r);
ATS_API bool ats_limiter_reserve_at(ats_limiter *l, uint64_t n, uint64_t now_ns, ats_reservation *r);
ATS_API bool ats_limiter_reserve(ats_limiter *l, uint64_t n, ats_reservation *r);
/* Gives back what later callers have not built on (see the header comment); a no-op for a refused
 * reservation, once now_ns is past its time to act, or under an infinite rate. Idempotent only in
 * the sense that a second cancel gives back nothing more: call it at most once. Returns the whole
 * tokens given back (fractions of a token are given back too but not counted). Lock-free. */
ATS_API uint64_t ats_limiter_cancel_at(ats_reservation *r, uint64_t now_ns);
ATS_API uint64_t ats_limiter_cancel(ats_reservation *r);

/* redis-cell's CL.THROTTLE: tries to take n and says how it went. Lock-free; the refusal path
 * writes nothing. One 128-bit division for each of retry_after and reset_after when not 0. */
ATS_API bool ats_limiter_throttle_at(ats_limiter *l, uint64_t n, uint64_t now_ns, ats_limiter_result *res);
ATS_API bool ats_limiter_throttle(ats_limiter *l, uint64_t n, ats_limiter_result *res);

/* ---- Blocking ---- */

/* Blocks until n tokens are there and takes them (x/time/rate's WaitN), following ctx:
 *  - ctx already done: its error (ats_ctx_err), nothing taken;
 *  - n > burst (finite rate): ATS_ERR_INVALID_ARGUMENT, nothing taken;
 *  - the tokens would come after ctx's deadline: ATS_ERR_DEADLINE_EXCEEDED "would exceed deadline"
 *    at once, nothing taken (likewise at rate 0 with a deadline; rate 0 without one: ATS_ERR_LIMITED);
 *  - otherwise reserves them and sleeps until their time with ats_ctx_wait (a futex, no polling);
 *    tokens due exactly at ctx's deadline are taken (NULL); if ctx is done first, cancels the
 *    reservation (giving back what later callers have not built
 *    on) and returns ctx's error (cancelled or deadline exceeded, wrapping the cancel's cause),
 *    wrapped with what was being waited for.
 * NULL on success. Blocking (never past ctx's deadline); times on the CLOCK_MONOTONIC scale
 * (ats_now_ns, the scale of ctx deadlines). No allocation unless it returns an error. */
ATS_API ATS_NODISCARD ats_err *ats_limiter_wait(ats_limiter *l, uint64_t n, ats_ctx *ctx);

/* ---- Runtime changes (not hot paths): see the rule in the header comment ----
 * Errors (nothing changed): burst > 2^32, rate > 10^12/s. Acquirers are never blocked; setters
 * serialize on a spin lock among themselves. */
ATS_API ATS_NODISCARD ats_err *ats_limiter_set_at(ats_limiter *l, ats_rate rate, uint64_t burst, uint64_t now_ns);
ATS_API ATS_NODISCARD ats_err *ats_limiter_set_rate_at(ats_limiter *l, ats_rate rate, uint64_t now_ns);
ATS_API ATS_NODISCARD ats_err *ats_limiter_set_burst_at(ats_limiter *l, uint64_t burst, uint64_t now_ns);
ATS_API ATS_NODISCARD ats_err *ats_limiter_set_rate(ats_limiter *l, ats_rate rate);
ATS_API ATS_NODISCARD ats_err *ats_limiter_set_burst(ats_limiter *l, uint64_t burst);

/* The current configuration (a consistent pair). Loads only. */
ATS_API ats_rate ats_limiter_rate(ats_limiter *l);
ATS_API uint64_t ats_limiter_burst(ats_limiter *l);

/* ---- Sharded limiter ---- */

#define ATS_SHARDED_MAX_BATCH ((UINT64_C(1) << 24) - 2)
#define ATS_SHARDED_MAX_LEASE_NS (UINT64_C(1) << 38)

typedef struct ats_sharded_config {
	ats_rate rate;
	uint64_t burst;
	uint64_t batch;    /* tokens per lease; 0: burst / (2 * shards), at least 1. <= burst, <= 2^24 - 2 */
	uint32_t shards;   /* 0: the configured CPUs (sched_getcpu() picks the shard) */
	uint64_t lease_ns; /* a lease unused for this long expires; 0: 1 ms. <= 2^38 ns */
} ats_sharded_config;

/* The sharded limiter. Transparent (laid out in limiter_inl.h) so that it can live in caller
 * memory; every field is private. */
typedef struct ats_sharded ats_sharded;

/* The largest over-admission the bound allows beyond burst + rate*w: 2 * shards * batch. */
static inline uint64_t ats_sharded_max_excess(const ats_sharded *s);

/* Errors: invalid config (as the exact limiter, plus batch > burst or > 2^24 - 2, lease > 2^38 ns),
 * out of memory. _init allocates the shard array (one cache line per shard); _destroy frees it. */
ATS_API ATS_NODISCARD ats_err *ats_sharded_init_at(ats_sharded *s, const ats_sharded_config *cfg, uint64_t now_ns);
ATS_API ATS_NODISCARD ats_err *ats_sharded_init(ats_sharded *s, const ats_sharded_config *cfg);
ATS_API void ats_sharded_destroy(ats_sharded *s);
ATS_API ATS_NODISCARD ats_err *ats_sharded_new(ats_sharded **out, const ats_sharded_config *cfg);
ATS_API void ats_sharded_free(ats_sharded *s);

/* Takes n tokens from shard `shard` (any number; reduced modulo the shard count). Lock-free: one
 * CAS on the shard's own cache line when its lease covers n; else leases a batch from the exact
 * bucket (one CAS there) or, while another thread leases for this shard, takes n from the exact
 * bucket directly. Never waits. Relaxed (the exact bucket's CAS orders the leases). */
static inline bool ats_sharded_allow_shard_at(ats_sharded *s, unsigned shard, uint64_t n, uint64_t now_ns);

/* Takes n tokens from the calling thread's slot. Wait-free on a hit: one TLS load, a relaxed
 * load and a relaxed store on the thread's own cache line, no locked instruction (row
 * sharded.allow_at). Else (lease empty, short or expired, stale now_ns, n > batch, first call of
 * the thread, more threads than slots) out of line: leases a batch from the exact bucket (one
 * CAS there), or takes n from the exact bucket, or uses the current core's shard (lock-free).
 * Must not be called from a signal handler that interrupts the same thread inside a call on the
 * same limiter (the slot is the thread's alone). */
static inline bool ats_sharded_allow_at(ats_sharded *s, uint64_t n, uint64_t now_ns);

static inline bool ats_sharded_allow(ats_sharded *s, uint64_t n);

/* ---- Multi-limit ---- */

#define ATS_MULTI_MAX 64 /* the most limiters one multi-acquire may span */

/* Takes n from every limiter of ls[0..count) or from none (see the header comment). A first pass
 * only reads (so the usual refusal writes nothing); the second takes in order and, if one
 * refuses, gives back to the earlier ones with the cancel rule. Lock-free. count <=
 * ATS_MULTI_MAX; NULL entries and count 0 give false. */
ATS_API bool ats_multi_allow_at(ats_limiter *const *ls, size_t count, uint64_t n, uint64_t now_ns);
ATS_API bool ats_multi_allow(ats_limiter *const *ls, size_t count, uint64_t n);

#ifdef __cplusplus
}
#endif

#include "atscale/limiter_inl.h" /* the types' layout and the inline bodies (not API) */
#endif
