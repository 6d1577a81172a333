/* SPDX-License-Identifier: BSD-2-Clause */
/* Not API: the inline internals of atscale/gcra.h. Included by gcra.h; never include it directly.
 * Every name here may change in any release. */
#ifndef ATSCALE_GCRA_INL_H
#define ATSCALE_GCRA_INL_H

#ifndef ATSCALE_GCRA_H
#error "include <atscale/gcra.h>, not atscale/gcra_inl.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The high half of the fraction's product: true when the low half (dt * frac_lo / 2^64, which is
 * < dt) cannot carry into the result, i.e. when the low 64 bits of dt * frac_hi are more than dt
 * below 2^64 (all but a dt / 2^64 share of times). *units is then the exact reading; otherwise
 * the caller adds the low half (ats_token_clock_units) or takes a path that has frac_lo. */
static inline bool ats__token_units_hi(uint64_t base_units, uint64_t mul_int, uint64_t frac_hi, uint64_t dt,
                                       uint64_t *units, uint64_t *hi_lo)
{
	ats__u128 hi = (ats__u128)dt * frac_hi;
	*units = base_units + dt * mul_int + (uint64_t)(hi >> 64);
	*hi_lo = (uint64_t)hi;
	return (uint64_t)hi <= ~dt;
}

static inline uint64_t ats_token_clock_units(const ats_token_clock *c, uint64_t now_ns)
{
	uint64_t dt = now_ns > c->epoch_ns ? now_ns - c->epoch_ns : 0;
	uint64_t units, hi_lo;
	if (__builtin_expect(!ats__token_units_hi(c->base_units, c->mul_int, c->frac_hi, dt, &units, &hi_lo), 0)) {
		uint64_t lo = (uint64_t)(((ats__u128)dt * c->frac_lo) >> 64);
		units += hi_lo + lo < hi_lo; /* the carry */
	}
	return units;
}

/* max(tat, now) on the modular unit clock: tat counts as "ahead" when within 2^63 units. */
static inline uint64_t ats__gcra_start(uint64_t tat, uint64_t now_units)
{
	return (int64_t)(tat - now_units) > 0 ? tat : now_units;
}

/* The GCRA step, the one every atscale limiter takes: the TAT after adding `inc` units at
 * now_units, and whether its debt (next - now_units) stays within `limit` units. The callers
 * differ only in the scale of their units: the exact limiter works in doubled units with a
 * generation parity riding on the increment and the limit (limiter_inl.h), its reservations
 * against the largest debt a reservation may leave (limiter.c), the keyed maps and the plain
 * callers in token units (ats_gcra_next). No wrap as long as the debt stays below 2^63. Pure. */
static inline bool ats__gcra_step(uint64_t tat, uint64_t now_units, uint64_t inc, uint64_t limit, uint64_t *next)
{
	uint64_t after = ats__gcra_start(tat, now_units) + inc;
	*next = after;
	return after - now_units <= limit;
}

static inline bool ats_gcra_next(const ats_token_clock *c, uint64_t tat, uint64_t now_units, uint64_t n, uint64_t *next)
{
	return ats__gcra_step(tat, now_units, n << c->shift, c->burst_units, next);
}

static inline bool ats_gcra_take_at(const ats_token_clock *c, ATS_ATOMIC(uint64_t) * tat, uint64_t now_ns, uint64_t n)
{
	if (c->inf)
		return true;
	uint64_t now = ats_token_clock_units(c, now_ns);
	/* relaxed: the CAS below validates it. */
	uint64_t cur = ats__atomic_load(tat, ats__mo_relaxed);
	for (;;) {
		uint64_t next;
		if (!ats_gcra_next(c, cur, now, n, &next))
			return false;
		/* relaxed, both: the TAT is the bucket's whole state and publishes no other data; the
		 * modification order of *tat alone rules out an over-grant (gcra.h). */
		if (ats__atomic_cas_weak(tat, &cur, next, ats__mo_relaxed, ats__mo_relaxed))
			return true;
	}
}

static inline uint64_t ats_gcra_tokens(const ats_token_clock *c, uint64_t tat, uint64_t now_ns)
{
	uint64_t now = ats_token_clock_units(c, now_ns);
	uint64_t debt = ats__gcra_start(tat, now) - now;
	return debt >= c->burst_units ? 0 : (c->burst_units - debt) >> c->shift;
}

static inline bool ats_gcra_is_full(const ats_token_clock *c, uint64_t tat, uint64_t now_ns)
{
	return (int64_t)(tat - ats_token_clock_units(c, now_ns)) <= 0;
}

#ifdef __cplusplus
}
#endif
#endif
