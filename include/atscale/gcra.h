/* SPDX-License-Identifier: BSD-2-Clause */
/* The GCRA core shared by every atscale rate limiter (exact, sharded, multi, keyed).
 *
 * GCRA keeps one number per bucket, the theoretical arrival time (TAT): the moment the bucket
 * would be full again. A request for n tokens at `now` is allowed iff
 *     max(TAT, now) + n*T - now <= burst*T        (T = time per token)
 * and then TAT becomes max(TAT, now) + n*T. A bucket whose TAT <= now is full, so it is
 * indistinguishable from a new one.
 *
 * Exact integer math, no drift: TAT is not kept in nanoseconds (T = 1e9/rate ns is rarely an
 * integer, and rounding it per token would drift) but on a "token clock" that counts units of
 * 2^-shift tokens. The clock converts caller time to units as floor(dt * events * 2^shift /
 * period_ns), exactly, for any dt < 2^64 ns: the fraction is a 0.128 fixed-point multiplier
 * rounded up, whose error (< 2^-128 per ns) can never reach the next multiple of 1/period_ns.
 * One 64x64->128 multiply, a second only when its carry can matter (probability dt / 2^64), no division. n tokens are
 * exactly n << shift units. `shift` is the largest value (<= 30) that keeps the clock at <= 1 unit per ns, so one unit
 * is at most 2 ns of refill (below the clock's own resolution) and the 64-bit TAT, compared modulo 2^64, stays
 * unambiguous for 2^63 units: >= 292 years of idleness at rates up to 10^9/s and 29 years at 10^10/s. The word itself
 * may wrap any number of times: uptime is unbounded.
 *
 * Stale time: TAT only ever grows (max(TAT, now) + n), and an older `now` only makes
 * max(TAT, now) - now larger, so a timestamp older than one already seen can neither mint tokens
 * nor move stored time back (the x/time/rate bug golang/go#71360 cannot happen here).
 */
#ifndef ATSCALE_GCRA_H
#define ATSCALE_GCRA_H

#include "atscale/common.h"

#include <stdbool.h>
#include <stdint.h>

#include "atscale/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A rate: `events` per `period_ns` nanoseconds (exact rational, so 1 per hour and 12.5e9 bytes
 * per second are both exact). period_ns == 0 means infinite: everything is allowed. */
typedef struct ats_rate {
	uint64_t events;
	uint64_t period_ns;
} ats_rate;

#ifdef __cplusplus
#define ATS_RATE_INF (ats_rate{1, 0})
#else
#define ATS_RATE_INF ((ats_rate){1, 0})
#endif
#define ATS_RATE_MAX_PER_SEC UINT64_C(1000000000000) /* 10^12 per second */

static inline ats_rate ats_rate_per_sec(uint64_t events)
{
	ats_rate r = {events, ATS_NS_PER_SEC};
	return r;
}
/* One event every `interval_ns` (Go's rate.Every). */
static inline ats_rate ats_rate_every(uint64_t interval_ns)
{
	ats_rate r = {1, interval_ns};
	return r;
}
static inline bool ats_rate_is_inf(ats_rate r)
{
	return r.period_ns == 0;
}

/* The token clock: caller time -> units (2^shift units per token). Immutable once made. */
typedef struct ats_token_clock {
	uint64_t epoch_ns;    /* caller time at which the clock reads base_units */
	uint64_t base_units;  /* the clock's reading at epoch_ns */
	uint64_t mul_int;     /* whole units per ns */
	uint64_t frac_hi;     /* fraction of a unit per ns, 0.128 fixed point rounded up: high half */
	uint64_t frac_lo;     /* ... low half */
	uint64_t burst_units; /* burst << shift */
	uint32_t shift;       /* log2(units per token) */
	uint32_t inf;         /* infinite rate: allow everything, ignore burst */
} ats_token_clock;

#define ATS_GCRA_MAX_N (UINT64_C(1) << 32) /* largest n (and burst) one call may ask for */

/* Makes a token clock for `rate` and `burst` reading 0 units at `epoch_ns` (a bucket with TAT 0
 * starts full). Errors (invalid argument, nothing written): burst > 2^32, a rate above
 * ATS_RATE_MAX_PER_SEC, or events == 0 with a non-zero period is allowed (rate 0: the initial
 * burst, then nothing). Not a hot path: one 128-bit division. */
ATS_API ATS_NODISCARD ats_err *ats_token_clock_make(ats_token_clock *clock, ats_rate rate, uint64_t burst,
                                                    uint64_t epoch_ns);
/* The same with shift capped at max_shift (<= 30): coarser units for callers that need headroom
 * in the TAT word (the exact limiter keeps burst << shift <= 2^60). */
ATS_API ATS_NODISCARD ats_err *ats_token_clock_make_max_shift(ats_token_clock *clock, ats_rate rate, uint64_t burst,
                                                              uint64_t epoch_ns, uint32_t max_shift);

/* The clock's reading at now_ns, in units (modulo 2^64). Times before the epoch read as the
 * epoch. Wait-free, no memory access beyond the clock; two multiplies (the dt * frac_lo one only
 * in the rare case where it can carry: see gcra_inl.h). */
static inline uint64_t ats_token_clock_units(const ats_token_clock *c, uint64_t now_ns);

/* The TAT after taking n tokens from a bucket at `tat` when the clock reads `now_units`, or false
 * when they do not fit. Pure function. n must be <= ATS_GCRA_MAX_N. */
static inline bool ats_gcra_next(const ats_token_clock *c, uint64_t tat, uint64_t now_units, uint64_t n,
                                 uint64_t *next);

/* Takes n tokens from the bucket whose TAT is *tat if they fit. Lock-free: one relaxed load and
 * one CAS per attempt (the modification order of *tat alone guarantees no over-grant); the deny
 * path writes nothing. Cost: ~1 CAS when uncontended. n must be <= ATS_GCRA_MAX_N. */
static inline bool ats_gcra_take_at(const ats_token_clock *c, ATS_ATOMIC(uint64_t) * tat, uint64_t now_ns, uint64_t n);

/* Whole tokens available in a bucket at `tat` (0..burst). Pure function. */
static inline uint64_t ats_gcra_tokens(const ats_token_clock *c, uint64_t tat, uint64_t now_ns);

/* True when the bucket is full at now_ns (TAT <= now): it may be forgotten with no change in
 * behaviour. Pure function. */
static inline bool ats_gcra_is_full(const ats_token_clock *c, uint64_t tat, uint64_t now_ns);

#ifdef __cplusplus
}
#endif

#include "atscale/gcra_inl.h" /* the inline bodies (not API) */
#endif
