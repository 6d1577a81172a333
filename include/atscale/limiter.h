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
 * 10^12 per second, n and burst up to 2^32, no drift (gcra.h), any uptime (the word wraps freely;
 * a bucket left untouched for 2^62 units, >= 146 years at rates up to 10^9/s and 14 years at 10^10/s,
 * may read as empty once).
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
 * `delay_ns`; cancel gives back n tokens minus those that later reservations have already taken on
 * top of this one (x/time/rate's restore = n - (lastEvent - timeToAct)*rate, in TAT arithmetic:
 * restore = n - (TAT_now - TAT_after_this_reservation)), and nothing once the time to act has passed.
 * The bucket never rises above full. Across one rate/burst change the rule is applied in both
 * generations' units; a reservation two or more changes old gives nothing back (never over-grants).
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
 * the next thread given that index.
 *
 * ---- Multi-limit (ats_multi_allow_at) ----
 * All-or-nothing across several limiters: either every limiter grants n or none is charged.
 * Guarantee: never over-grants any limiter; a refused multi-acquire gives back what it took with the
 * cancel rule, so single-threaded every limiter is left exactly as it was, and concurrently its
 * tokens may be briefly unavailable to others (or partly kept when later callers reserved on top).
 *
 * Threads: every function may be called from any thread at once. `_at` variants take the time from
 * the caller (CLOCK_MONOTONIC scale ns); the others read ats_fast_now_ns().
 */
#ifndef ATSCALE_LIMITER_H
#define ATSCALE_LIMITER_H

#include <limits.h>
#include <sched.h>
#ifndef _GNU_SOURCE
extern int sched_getcpu(void); /* glibc declares it only with _GNU_SOURCE */
#endif
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atscale/clock.h"
#include "atscale/ctx.h"
#include "atscale/error.h"
#include "atscale/gcra.h"

#if defined(__has_include)
#if __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#if defined(RSEQ_SIG)
#define ATS_HAVE_RSEQ 1
#endif
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* A configuration slot (private). The first cache line holds what an acquire reads; the first six
 * fields are all the usual acquire and refusal load (frac_lo only when its carry can matter). */
struct ats__limiter_slot {
	_Alignas(64) _Atomic uint64_t epoch_ns;
	_Atomic uint64_t base_units;
	_Atomic uint64_t mul_int;
	_Atomic uint64_t frac_hi;
	_Atomic uint64_t burst2;    /* burst << (shift + 1): burst in doubled units (infinite rate: burst) */
	_Atomic uint64_t shift_inf; /* shift | inf << 32 */
	_Atomic uint64_t frac_lo;
	_Atomic uint64_t burst; /* tokens */
	/* cold: reservations, setters, conversions */
	_Atomic uint64_t events;
	_Atomic uint64_t period_ns;
	_Atomic uint64_t conv_old;       /* the word this generation converted (previous units) */
	_Atomic uint64_t conv_new;       /* the word it became */
	_Atomic uint64_t prev_shift_inf; /* the previous generation's shift_inf */
};

/* The exact limiter. Transparent for inlining; every field is private. 256 bytes, 64-aligned. */
typedef struct ats_limiter {
	_Alignas(64) _Atomic uint64_t word; /* (TAT << 1) | generation parity */
	_Atomic uint64_t gen;               /* configuration generation; slot[gen & 1] is current */
	atomic_flag setting;                /* serializes setters */
	struct ats__limiter_slot slot[2];
} ats_limiter;

/* A reservation (x/time/rate's Reservation). ok, n, delay_ns and act_ns are for the caller. */
typedef struct ats_reservation {
	bool ok;           /* false: refused (n > burst, rate 0, or beyond max delay); nothing taken */
	uint64_t n;        /* tokens reserved */
	uint64_t delay_ns; /* wait this long after the now_ns given before acting */
	uint64_t act_ns;   /* now_ns + delay_ns */
	/* private */
	ats_limiter *lim;
	uint64_t gen;  /* generation whose units tat2 is in */
	uint64_t tat2; /* TAT after this reservation, doubled units */
	uint64_t n2;   /* n in doubled units */
	uint32_t inf;  /* reserved under an infinite rate: cancel gives nothing */
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
ATS_NODISCARD ats_err *ats_limiter_init_at(ats_limiter *l, ats_rate rate, uint64_t burst, uint64_t now_ns);
ATS_NODISCARD ats_err *ats_limiter_init(ats_limiter *l, ats_rate rate, uint64_t burst);
/* Nothing to release (the limiter owns no memory); present for symmetry. */
void ats_limiter_destroy(ats_limiter *l);
/* On the heap (cache-line aligned). *out is NULL on error. */
ATS_NODISCARD ats_err *ats_limiter_new(ats_limiter **out, ats_rate rate, uint64_t burst);
void ats_limiter_free(ats_limiter *l);

/* ---- Hot paths: static inline, lock-free, no syscall, no allocation ---- */

/* A configuration slot and the word it applies to, read consistently: the warm and cold paths
 * (src/limiter.c) and ats_limiter_tokens_at compute on it; allow and check use ats__limiter_fast. */
struct ats__limiter_view {
	ats_token_clock c; /* burst_units holds burst2 (doubled units) */
	uint64_t burst;    /* derived from burst2 (no load) */
	uint64_t gen;      /* generation whose units the word is in */
	uint64_t word;
};

/* Loads a slot into v: seven loads from one cache line. */
static inline void ats__limiter_load_slot(struct ats__limiter_slot *s, struct ats__limiter_view *v)
{
	v->c.epoch_ns = atomic_load_explicit(&s->epoch_ns, memory_order_relaxed);
	v->c.base_units = atomic_load_explicit(&s->base_units, memory_order_relaxed);
	v->c.mul_int = atomic_load_explicit(&s->mul_int, memory_order_relaxed);
	v->c.frac_hi = atomic_load_explicit(&s->frac_hi, memory_order_relaxed);
	v->c.frac_lo = atomic_load_explicit(&s->frac_lo, memory_order_relaxed);
	v->c.burst_units = atomic_load_explicit(&s->burst2, memory_order_relaxed);
	uint64_t si = atomic_load_explicit(&s->shift_inf, memory_order_relaxed);
	v->c.shift = (uint32_t)si;
	v->c.inf = (uint32_t)(si >> 32);
	/* burst2 = burst << (shift + 1) exactly (burst << shift <= 2^61): no need to load burst. */
	v->burst = v->c.inf ? v->c.burst_units : v->c.burst_units >> (v->c.shift + 1);
}

/* A consistent (config, word) pair: the config is the one the word is expressed in. A seqlock
 * read: false while a setter publishes or converts (rare), and the caller takes its out-of-line
 * path, which uses the previous slot meanwhile and so never waits. 10 L1 loads, no write. */
static inline bool ats__limiter_view_fast(ats_limiter *l, struct ats__limiter_view *v)
{
	uint64_t g = atomic_load_explicit(&l->gen, memory_order_acquire);
	ats__limiter_load_slot(&l->slot[g & 1], v);
	atomic_thread_fence(memory_order_acquire);
	uint64_t w = atomic_load_explicit(&l->word, memory_order_acquire);
	if (atomic_load_explicit(&l->gen, memory_order_relaxed) != g || ((w ^ g) & 1))
		return false;
	v->gen = g;
	v->word = w;
	return true;
}

/* The same, never failing (out of line: loops, and uses the previous slot while a conversion is
 * pending). Lock-free. */
void ats__limiter_view(ats_limiter *l, struct ats__limiter_view *v);

/* The clock's reading at now_ns in doubled units (the word's scale). */
static inline uint64_t ats__limiter_now2(const struct ats__limiter_view *v, uint64_t now_ns)
{
	return ats_token_clock_units(&v->c, now_ns) << 1;
}

/* The GCRA step on the word's scale: the word after taking n (<= 2^32) at now2 (the clock in
 * doubled units), parity kept; false when they do not fit, n > burst included, since
 * next - now2 = debt + n2 + parity with debt >= 0 (no wrap: debt < 2^63 and n2 <= 2^63, both
 * even). The parity rides on the increment, which is ready early, rather than being or-ed into the
 * result last, one step further along the CAS's dependency chain. Pure. */
static inline bool ats__limiter_step(uint64_t word, uint64_t now2, uint64_t n, uint32_t shift, uint64_t burst2,
                                     uint64_t *next)
{
	uint64_t parity = word & 1;
	*next = ats__gcra_start(word - parity, now2) + ((n << (shift + 1)) | parity);
	return *next - now2 <= burst2 + parity;
}

/* Where the word goes if n are taken on view v: true when they fit (*next set; an infinite rate
 * always fits and sets nothing). Pure. */
static inline bool ats__limiter_next(const struct ats__limiter_view *v, uint64_t n, uint64_t now_ns, uint64_t *next)
{
	if (v->c.inf)
		return true;
	return n <= ATS_GCRA_MAX_N &&
	       ats__limiter_step(v->word, ats__limiter_now2(v, now_ns), n, v->c.shift, v->c.burst_units, next);
}

/* One attempt to take n tokens on view v: 1 granted, 0 refused (nothing written), -1 the CAS lost
 * (retry with a new view). */
static inline int ats__limiter_try(ats_limiter *l, const struct ats__limiter_view *v, uint64_t n, uint64_t now_ns)
{
	uint64_t next;
	if (!ats__limiter_next(v, n, now_ns, &next))
		return 0;
	if (v->c.inf || n == 0)
		return 1;
	uint64_t w = v->word;
	return atomic_compare_exchange_strong_explicit(&l->word, &w, next, memory_order_release, memory_order_relaxed)
	           ? 1
	           : -1;
}

/* Whether n fit on view v. */
static inline bool ats__limiter_fits(const struct ats__limiter_view *v, uint64_t n, uint64_t now_ns)
{
	uint64_t next;
	return ats__limiter_next(v, n, now_ns, &next);
}

static inline int64_t ats__limiter_tokens(const struct ats__limiter_view *v, uint64_t now_ns)
{
	if (v->c.inf)
		return INT64_MAX;
	uint64_t now2 = ats__limiter_now2(v, now_ns);
	uint64_t debt2 = ats__gcra_start(v->word & ~(uint64_t)1, now2) - now2;
	__int128 avail2 = (__int128)v->c.burst_units - (__int128)debt2;
	return (int64_t)(avail2 >> (v->c.shift + 1)); /* arithmetic shift: floor */
}

/* Out-of-line versions for when a setter is at work or the fast path cannot decide. */
bool ats__limiter_allow_slow(ats_limiter *l, uint64_t n, uint64_t now_ns);
bool ats__limiter_check_slow(ats_limiter *l, uint64_t n, uint64_t now_ns);
int64_t ats__limiter_tokens_slow(ats_limiter *l, uint64_t now_ns);

/* One attempt on the word's current generation, straight from the limiter: the seqlock read of
 * ats__limiter_view_fast and ats__limiter_step, without a view struct and without frac_lo, so that
 * a caller's loop keeps it all in registers. 1 n fit (and, with take, were taken; an infinite rate
 * writes nothing), 0 refused (nothing written), -1 the CAS lost (retry), -2 take the out-of-line
 * path (a setter at work, now_ns before the clock's epoch, n > 2^32, or a reading that needs
 * frac_lo). */
static inline int ats__limiter_fast(ats_limiter *l, uint64_t n, uint64_t now_ns, bool take)
{
	/* Opaque to the optimizer, so that a caller's loop does not keep &l->gen, &l->slot[0] and
	 * &l->slot[1] in three registers of their own (they are all l plus a displacement). */
	__asm__ volatile("" : "+r"(l));
	uint64_t g = atomic_load_explicit(&l->gen, memory_order_acquire);
	/* A (well predicted) branch rather than an index or a cmov: the CPU starts the slot loads
	 * without waiting for gen, which is on the critical path right after the previous CAS. The
	 * empty asm keeps the compiler from turning the branch into a cmov. */
	struct ats__limiter_slot *s = &l->slot[0];
	if (__builtin_expect(g & 1, 0)) {
		s = &l->slot[1];
		__asm__("" : "+r"(s));
	}
	uint64_t epoch = atomic_load_explicit(&s->epoch_ns, memory_order_relaxed);
	uint64_t base = atomic_load_explicit(&s->base_units, memory_order_relaxed);
	uint64_t mul = atomic_load_explicit(&s->mul_int, memory_order_relaxed);
	uint64_t frac_hi = atomic_load_explicit(&s->frac_hi, memory_order_relaxed);
	uint64_t burst2 = atomic_load_explicit(&s->burst2, memory_order_relaxed);
	uint64_t shift_inf = atomic_load_explicit(&s->shift_inf, memory_order_relaxed);
	atomic_thread_fence(memory_order_acquire);
	uint64_t w = atomic_load_explicit(&l->word, memory_order_acquire);
	if (__builtin_expect(atomic_load_explicit(&l->gen, memory_order_relaxed) != g || ((w ^ g) & 1) ||
	                         now_ns < epoch || n > ATS_GCRA_MAX_N,
	                     0))
		return -2;
	if (__builtin_expect(shift_inf >> 32, 0))
		return 1;
	uint64_t dt = now_ns - epoch;
	unsigned __int128 hi = (unsigned __int128)dt * frac_hi;
	if (__builtin_expect((uint64_t)hi > ~dt, 0))
		return -2;
	uint64_t now2 = (base + dt * mul + (uint64_t)(hi >> 64)) << 1;
	uint64_t next;
	if (!ats__limiter_step(w, now2, n, (uint32_t)shift_inf, burst2, &next))
		return 0;
	if (!take || n == 0)
		return 1;
	uint64_t expected = w;
	return atomic_compare_exchange_strong_explicit(&l->word, &expected, next, memory_order_release,
	                                               memory_order_relaxed)
	           ? 1
	           : -1;
}

/* Takes n tokens at now_ns if they are there. Lock-free: one CAS per attempt, retried only when
 * another acquire or a setter changed the word; the refusal path is loads only, no write. Release
 * on success. Cost: ~floor.load_cas + 1 multiply; a refusal 9 L1 loads and 1 multiply, no write. */
static inline bool ats_limiter_allow_at(ats_limiter *l, uint64_t n, uint64_t now_ns)
{
	for (;;) {
		int r = ats__limiter_fast(l, n, now_ns, true);
		if (r >= 0)
			return r;
		if (r == -2)
			return ats__limiter_allow_slow(l, n, now_ns);
	}
}

static inline bool ats_limiter_allow(ats_limiter *l, uint64_t n)
{
	return ats_limiter_allow_at(l, n, ats_fast_now_ns());
}

/* Whether n tokens are there at now_ns, without taking them. Loads only; wait-free but for a
 * seqlock retry while a setter is at work. */
static inline bool ats_limiter_check_at(ats_limiter *l, uint64_t n, uint64_t now_ns)
{
	int r = ats__limiter_fast(l, n, now_ns, false);
	if (__builtin_expect(r < 0, 0))
		return ats__limiter_check_slow(l, n, now_ns);
	return r;
}

static inline bool ats_limiter_check(ats_limiter *l, uint64_t n)
{
	return ats_limiter_check_at(l, n, ats_fast_now_ns());
}

/* Whole tokens available at now_ns: 0..burst, negative while reservations hold the bucket in debt
 * (x/time/rate's TokensAt, floored). INT64_MAX for an infinite rate. Loads only. */
static inline int64_t ats_limiter_tokens_at(ats_limiter *l, uint64_t now_ns)
{
	struct ats__limiter_view v;
	if (!ats__limiter_view_fast(l, &v))
		return ats__limiter_tokens_slow(l, now_ns);
	return ats__limiter_tokens(&v, now_ns);
}

static inline int64_t ats_limiter_tokens(ats_limiter *l)
{
	return ats_limiter_tokens_at(l, ats_fast_now_ns());
}

/* ---- Warm paths (src/limiter.c): lock-free, no allocation ---- */

/* Reserves n tokens at now_ns, to be used after r->delay_ns; refused (r->ok false, nothing taken)
 * when n > burst, when the delay would exceed max_delay_ns (UINT64_MAX: no limit) or be infinite
 * (rate 0), or when the debt would pass 2^61 units (a wait of >= 73 years at 10^9/s). Returns r->ok.
 * Lock-free: one CAS per attempt; one 128-bit division when the delay is not 0. */
bool ats_limiter_reserve_within_at(ats_limiter *l, uint64_t n, uint64_t max_delay_ns, uint64_t now_ns,
                                   ats_reservation *r);
bool ats_limiter_reserve_at(ats_limiter *l, uint64_t n, uint64_t now_ns, ats_reservation *r);
bool ats_limiter_reserve(ats_limiter *l, uint64_t n, ats_reservation *r);
/* Gives back what later callers have not built on (see the header comment); a no-op for a refused
 * reservation, once now_ns is past its time to act, or under an infinite rate. Idempotent only in
 * the sense that a second cancel gives back nothing more: call it at most once. Returns the whole
 * tokens given back (fractions of a token are given back too but not counted). Lock-free. */
uint64_t ats_limiter_cancel_at(ats_reservation *r, uint64_t now_ns);
uint64_t ats_limiter_cancel(ats_reservation *r);

/* redis-cell's CL.THROTTLE: tries to take n and says how it went. Lock-free; the refusal path
 * writes nothing. One 128-bit division for each of retry_after and reset_after when not 0. */
bool ats_limiter_throttle_at(ats_limiter *l, uint64_t n, uint64_t now_ns, ats_limiter_result *res);
bool ats_limiter_throttle(ats_limiter *l, uint64_t n, ats_limiter_result *res);

/* ---- Blocking ---- */

/* Blocks until n tokens are there and takes them (x/time/rate's WaitN), following ctx:
 *  - ctx already done: its error (ats_ctx_err), nothing taken;
 *  - n > burst (finite rate): ATS_ERR_INVALID_ARGUMENT, nothing taken;
 *  - the tokens would come after ctx's deadline: ATS_ERR_DEADLINE_EXCEEDED "would exceed deadline"
 *    at once, nothing taken (likewise at rate 0 with a deadline; rate 0 without one: ATS_ERR_LIMITED);
 *  - otherwise reserves them and sleeps until their time with ats_ctx_wait (a futex, no polling);
 *    if ctx is done first, cancels the reservation (giving back what later callers have not built
 *    on) and returns ctx's error (cancelled or deadline exceeded, wrapping the cancel's cause),
 *    wrapped with what was being waited for.
 * NULL on success. Blocking (never past ctx's deadline); times on the CLOCK_MONOTONIC scale
 * (ats_now_ns, the scale of ctx deadlines). No allocation unless it returns an error. */
ATS_NODISCARD ats_err *ats_limiter_wait(ats_limiter *l, uint64_t n, ats_ctx *ctx);

/* ---- Runtime changes (not hot paths): see the rule in the header comment ----
 * Errors (nothing changed): burst > 2^32, rate > 10^12/s. Acquirers are never blocked; setters
 * serialize on a spin lock among themselves. */
ATS_NODISCARD ats_err *ats_limiter_set_at(ats_limiter *l, ats_rate rate, uint64_t burst, uint64_t now_ns);
ATS_NODISCARD ats_err *ats_limiter_set_rate_at(ats_limiter *l, ats_rate rate, uint64_t now_ns);
ATS_NODISCARD ats_err *ats_limiter_set_burst_at(ats_limiter *l, uint64_t burst, uint64_t now_ns);
ATS_NODISCARD ats_err *ats_limiter_set_rate(ats_limiter *l, ats_rate rate);
ATS_NODISCARD ats_err *ats_limiter_set_burst(ats_limiter *l, uint64_t burst);

/* The current configuration (a consistent pair). Loads only. */
ats_rate ats_limiter_rate(ats_limiter *l);
uint64_t ats_limiter_burst(ats_limiter *l);

/* ---- Internals shared with the sharded limiter ---- */

/* Takes between min_n and max_n tokens (as many as there are, up to max_n) at now_ns; returns the
 * number taken, 0 when fewer than min_n are there (nothing written). min_n >= 1. Lock-free. */
uint64_t ats__limiter_take_upto_at(ats_limiter *l, uint64_t min_n, uint64_t max_n, uint64_t now_ns);

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

/* One shard or slot: (last use time mod 2^40) << 24 | tokens left (ATS__SHARD_LEASING: being
 * leased; shards only). */
struct ats__shard {
	_Alignas(64) _Atomic uint64_t word;
};
#define ATS__SHARD_TOKENS UINT64_C(0xFFFFFF)
#define ATS__SHARD_LEASING ATS__SHARD_TOKENS

typedef struct ats_sharded {
	ats_limiter exact;         /* the bucket the caches lease from (rate and burst can be changed on it) */
	struct ats__shard *shards; /* nshards shared per-core shards, then nshards per-thread slots */
	struct ats__shard *slots;
	uint32_t nshards;
	uint64_t batch;
	uint64_t lease_ns;
} ats_sharded;

/* The calling thread's process-wide index plus one: 0 before its first ats_sharded_allow_at,
 * UINT32_MAX once it is exiting (private). Initial-exec TLS: one %fs-relative load. */
extern __thread uint32_t ats__thread_index1 __attribute__((tls_model("initial-exec")));

/* The largest over-admission the bound allows beyond burst + rate*w: 2 * shards * batch. */
static inline uint64_t ats_sharded_max_excess(const ats_sharded *s)
{
	return 2 * (uint64_t)s->nshards * s->batch;
}

/* Errors: invalid config (as the exact limiter, plus batch > burst or > 2^24 - 2, lease > 2^38 ns),
 * out of memory. _init allocates the shard array (one cache line per shard); _destroy frees it. */
ATS_NODISCARD ats_err *ats_sharded_init_at(ats_sharded *s, const ats_sharded_config *cfg, uint64_t now_ns);
ATS_NODISCARD ats_err *ats_sharded_init(ats_sharded *s, const ats_sharded_config *cfg);
void ats_sharded_destroy(ats_sharded *s);
ATS_NODISCARD ats_err *ats_sharded_new(ats_sharded **out, const ats_sharded_config *cfg);
void ats_sharded_free(ats_sharded *s);

/* Cold: lease a batch for shard p or fall back to the exact bucket. */
bool ats__sharded_slow(ats_sharded *s, _Atomic uint64_t *p, uint64_t n, uint64_t now_ns);

/* Takes n tokens from shard `shard` (any number; reduced modulo the shard count). Lock-free: one
 * CAS on the shard's own cache line when its lease covers n; else leases a batch from the exact
 * bucket (one CAS there) or, while another thread leases for this shard, takes n from the exact
 * bucket directly. Never waits. Relaxed (the exact bucket's CAS orders the leases). */
static inline bool ats_sharded_allow_shard_at(ats_sharded *s, unsigned shard, uint64_t n, uint64_t now_ns)
{
	if (shard >= s->nshards)
		shard %= s->nshards;
	_Atomic uint64_t *p = &s->shards[shard].word;
	uint64_t w = atomic_load_explicit(p, memory_order_relaxed);
	for (;;) {
		uint64_t tok = w & ATS__SHARD_TOKENS;
		/* age of the lease's last use, as a signed 40-bit difference: < 0 means a stale now_ns */
		int64_t age = (int64_t)((now_ns - (w >> 24)) << 24) >> 24;
		if (tok == ATS__SHARD_LEASING || tok < n || age < 0 || (uint64_t)age > s->lease_ns)
			return ats__sharded_slow(s, p, n, now_ns);
		if (n == 0)
			return true;
		if (atomic_compare_exchange_weak_explicit(p, &w, (now_ns << 24) | (tok - n), memory_order_relaxed,
		                                          memory_order_relaxed))
			return true;
	}
}

/* The calling thread's current CPU: the kernel-maintained rseq area when glibc registered one
 * (glibc >= 2.35: one TLS load, ~1 ns), else sched_getcpu() (a call, ~6 ns here). Only a hint: the
 * thread may migrate right after, which the shards tolerate. */
static inline unsigned ats__current_cpu(void)
{
#if defined(__x86_64__) && defined(ATS_HAVE_RSEQ)
	if (__builtin_expect(__rseq_size >= 8, 1)) {
		char *tp;
		__asm__("mov %%fs:0, %0" : "=r"(tp));
		int32_t cpu = *(volatile int32_t *)(tp + __rseq_offset + 4); /* struct rseq.cpu_id */
		if (cpu >= 0)
			return (unsigned)cpu;
	}
#endif
	int cpu = sched_getcpu();
	return cpu < 0 ? 0u : (unsigned)cpu;
}

/* Cold: index assignment, leasing for the thread's slot, and the fallbacks. */
bool ats__sharded_thread_slow(ats_sharded *s, uint64_t n, uint64_t now_ns);

/* Takes n tokens from the calling thread's slot. Wait-free on a hit: one TLS load, a relaxed load
 * and a relaxed store on the thread's own cache line, no locked instruction (~2 ns). Else
 * (lease empty, short or expired, stale now_ns, n > batch, first call of the thread, more threads
 * than slots) out of line: leases a batch from the exact bucket (one CAS there), or takes n from
 * the exact bucket, or uses the current core's shard (lock-free). Must not be called from a signal
 * handler that interrupts the same thread inside a call on the same limiter (the slot is the
 * thread's alone). */
static inline bool ats_sharded_allow_at(ats_sharded *s, uint64_t n, uint64_t now_ns)
{
	uint32_t i = ats__thread_index1 - 1; /* 0 (no index yet) wraps to UINT32_MAX: slow path */
	if (__builtin_expect(i < s->nshards, 1)) {
		_Atomic uint64_t *p = &s->slots[i].word;
		uint64_t w = atomic_load_explicit(p, memory_order_relaxed);
		uint64_t tok = w & ATS__SHARD_TOKENS;
		int64_t age = (int64_t)((now_ns - (w >> 24)) << 24) >> 24;
		if (__builtin_expect(tok >= n && n != 0 && age >= 0 && (uint64_t)age <= s->lease_ns, 1)) {
			atomic_store_explicit(p, (now_ns << 24) | (tok - n), memory_order_relaxed);
			return true;
		}
	}
	return ats__sharded_thread_slow(s, n, now_ns);
}

static inline bool ats_sharded_allow(ats_sharded *s, uint64_t n)
{
	return ats_sharded_allow_at(s, n, ats_fast_now_ns());
}

/* ---- Multi-limit ---- */

/* Takes n from every limiter of ls[0..count) or from none (see the header comment). A first pass
 * only reads (so the usual refusal writes nothing); the second takes in order and, if one refuses,
 * gives back to the earlier ones with the cancel rule. Lock-free. count <= 64; NULL entries and
 * count 0 give false. */
bool ats_multi_allow_at(ats_limiter *const *ls, size_t count, uint64_t n, uint64_t now_ns);
bool ats_multi_allow(ats_limiter *const *ls, size_t count, uint64_t n);

#ifdef __cplusplus
}
#endif
#endif
