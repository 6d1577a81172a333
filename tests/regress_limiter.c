/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the limiters: each fences a bug that was found and fixed, in the state that
 * showed it (the spec tests are in test_limiter.c). The comment above each test says what the bug
 * was. */
#include <atscale/limiter.h>
#include "internal/limiter.h" /* ats__limiter_try */

#include <criterion/criterion.h>

#define SEC ATS_NS_PER_SEC
#define T0 (UINT64_C(1) << 50)

/* Bug: a fresh cache (sharded shard or slot) never leased for half of all times. Its word once read as used at time 0
 * mod 2^40, "after" every now_ns with bit 39 set, and such a cache sent every call to the exact bucket, forever. */
Test(sharded, fresh_caches_lease_at_any_time)
{
	uint64_t t1 = T0 | (UINT64_C(1) << 39);
	ats_sharded *s = NULL;
	ats_sharded_config cfg = {.rate = ats_rate_per_sec(100), .burst = 64, .batch = 8, .shards = 2, .lease_ns = SEC};
	cr_assert_null(ats_sharded_new(&s, &cfg));
	ats_sharded_destroy(s);
	cr_assert_null(ats_sharded_init_at(s, &cfg, t1));
	cr_expect(ats_sharded_allow_shard_at(s, 0, 1, t1));
	cr_expect_eq(ats_limiter_tokens_at(&s->exact_, t1), 64 - 8);
	cr_expect(ats_sharded_allow_at(s, 1, t1));
	cr_expect_eq(ats_limiter_tokens_at(&s->exact_, t1), 64 - 16);
	ats_sharded_free(s);
}

/* Bug: a stale acquire could commit two rate changes later. An acquirer that read the limiter, then stalled while the
 * rate changed twice (1/hour, shift 30, to 10^10/s, shift 0, and back to shift 30) at the same instant, must lose its
 * CAS: its word and clock belong to a generation two changes old. Before each new clock started past the word, a full
 * bucket's word came back identical two changes later and the stale acquire committed one token's worth of shift-30
 * units into shift-0 units (2^30 tokens of debt). */
Test(set, stale_acquire_after_two_changes_loses)
{
	ats_limiter *l = NULL;
	cr_assert_null(ats_limiter_new(&l, ats_rate_every(UINT64_C(3600000000000)), 5000));
	cr_assert_null(ats_limiter_init_at(l, ats_rate_every(UINT64_C(3600000000000)), 5000, T0));
	struct ats__limiter_view stale;
	cr_assert(ats__limiter_view_fast(l, &stale));
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(UINT64_C(10000000000)), T0));
	cr_assert_null(ats_limiter_set_rate_at(l, (ats_rate){0, 1000}, T0));
	cr_assert_eq(ats__limiter_try(l, &stale, 1, T0), -1, "a two-changes-old view committed");
	cr_assert_eq(ats_limiter_tokens_at(l, T0), 5000);
	uint64_t granted = 0;
	while (granted <= 5000 && ats_limiter_allow_at(l, 1, T0))
		granted++;
	cr_assert_eq(granted, 5000);
	ats_limiter_free(l);
}
