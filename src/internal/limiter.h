/* SPDX-License-Identifier: BSD-2-Clause */
/* Internals of the limiter module shared by src/limiter.c and its tests (not API, not exported). */
#ifndef ATS_INTERNAL_LIMITER_H
#define ATS_INTERNAL_LIMITER_H

#include "atscale/limiter.h"

#include "internal/cpu.h"

/* The same as ats__limiter_view_fast, never failing (out of line: loops, and uses the previous slot
 * while a conversion is pending). Lock-free. */
void ats__limiter_view(ats_limiter *l, struct ats__limiter_view *v);

/* The view-based steps of the warm and cold paths (the hot paths use ats__limiter_fast). */

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
	/* release: limiter.h's "release on success", as in ats__limiter_fast; relaxed on failure: the
	 * caller retries with a new view. */
	return ats__atomic_cas_strong(&l->word_, &w, next, ats__mo_release, ats__mo_relaxed) ? 1 : -1;
}

/* Whether n fit on view v. */
static inline bool ats__limiter_fits(const struct ats__limiter_view *v, uint64_t n, uint64_t now_ns)
{
	uint64_t next;
	return ats__limiter_next(v, n, now_ns, &next);
}

/* Takes between min_n and max_n tokens (as many as there are, up to max_n) at now_ns; returns the
 * number taken, 0 when fewer than min_n are there (nothing written). min_n >= 1. Lock-free. The
 * sharded limiter leases its batches with it. */
uint64_t ats__limiter_take_upto_at(ats_limiter *l, uint64_t min_n, uint64_t max_n, uint64_t now_ns);

#endif
