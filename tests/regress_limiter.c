/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the limiters: each fences a bug that was found and fixed, in the state that
 * showed it (the spec tests are in test_limiter.c). The comment above each test says what the bug
 * was. */
#include <atscale/limiter.h>
#include "internal/limiter.h" /* ats__limiter_try */

#include <criterion/criterion.h>
#include <pthread.h>

#define SEC ATS_NS_PER_SEC
#define T0 (UINT64_C(1) << 50)

/* A limiter on the heap, full at t. */
static ats_limiter *limiter_at(ats_rate rate, uint64_t burst, uint64_t t)
{
	ats_limiter *l = NULL;
	cr_assert_null(ats_limiter_new(&l, rate, burst));
	cr_assert_null(ats_limiter_init_at(l, rate, burst, t));
	return l;
}

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
	ats_limiter *l = limiter_at(ats_rate_every(UINT64_C(3600000000000)), 5000, T0);
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

/* Bug: a cancel after a smaller burst over-granted. The change clamped the bucket to the new burst, forgiving the
 * reservation's debt, yet the cancel still gave the reservation's tokens back on top: 2 + 2 tokens in no time from a
 * bucket of burst 2. What a reservation gives back across a change is capped at the debt the change kept. */
Test(cancel, forgiven_by_a_smaller_burst_gives_nothing_back)
{
	ats_limiter *l = limiter_at(ats_rate_per_sec(1), 10, T0);
	ats_reservation r;
	cr_assert(ats_limiter_reserve_at(l, 5, T0, &r));
	cr_assert_null(ats_limiter_set_burst_at(l, 2, T0));
	cr_assert_eq(ats_limiter_tokens_at(l, T0), 2);
	cr_assert(ats_limiter_allow_at(l, 2, T0));
	cr_expect_eq(ats_limiter_cancel_at(&r, T0), 0);
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 0);
	cr_expect_not(ats_limiter_allow_at(l, 1, T0));
	ats_limiter_free(l);
}

/* Bug: a setter given a time before the current clock's epoch minted a burst. Its new clock started at that older
 * time and so ran ahead of the old one: 10 tokens taken at T0 + 10 s were there again at T0 + 10 s. */
Test(set, stale_time_mints_nothing)
{
	ats_limiter *l = limiter_at(ats_rate_per_sec(1), 10, T0);
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(1), T0 + 10 * SEC));
	cr_assert(ats_limiter_allow_at(l, 10, T0 + 10 * SEC));
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(1), T0));
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 10 * SEC), 0);
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 + 10 * SEC));
	cr_expect(ats_limiter_allow_at(l, 1, T0 + 11 * SEC));
	ats_limiter_free(l);
}

/* Bug: cancel kept tokens that later callers had taken from what was left over. With a burst of 10, reserve 5 and
 * then allow 3 at the same instant: the 3 did not wait for the 5 (they acted at once), so cancelling the 5 gives all
 * 5 back, as x/time/rate does; it gave 2. */
Test(cancel, tokens_later_callers_took_from_the_surplus_come_back)
{
	ats_limiter *l = limiter_at(ats_rate_per_sec(1), 10, T0);
	ats_reservation r;
	cr_assert(ats_limiter_reserve_at(l, 5, T0, &r));
	cr_assert(ats_limiter_allow_at(l, 3, T0));
	cr_expect_eq(ats_limiter_cancel_at(&r, T0), 5);
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 7);
	/* A later caller that had to wait past this reservation's time still keeps what it counted on. */
	cr_assert(ats_limiter_reserve_at(l, 5, T0, &r)); /* tokens 2, acts now */
	ats_reservation q;
	cr_assert(ats_limiter_reserve_at(l, 4, T0, &q)); /* tokens -2: acts at T0 + 2 s, on 2 of r's tokens */
	cr_expect_eq(q.delay_ns, 2 * SEC);
	cr_expect_eq(ats_limiter_cancel_at(&r, T0), 3);
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 1);
	ats_limiter_free(l);
}

/* Bug: at a burst near 2^32 a bucket emptied once refused every reservation. Its burst took 2^61 units, the whole
 * debt limit, so an empty bucket had no room left to reserve even one token for later. */
Test(reserve, an_empty_bucket_of_the_largest_burst_reserves_a_whole_burst)
{
	ats_limiter *l = limiter_at(ats_rate_per_sec(1), ATS_GCRA_MAX_N, T0);
	cr_assert(ats_limiter_allow_at(l, ATS_GCRA_MAX_N, T0));
	ats_reservation r;
	cr_assert(ats_limiter_reserve_at(l, 1, T0, &r));
	cr_expect_eq(r.delay_ns, SEC);
	cr_assert(ats_limiter_reserve_at(l, ATS_GCRA_MAX_N - 1, T0, &r));
	cr_expect_eq(r.delay_ns, ATS_GCRA_MAX_N * SEC);
	ats_limiter_free(l);
}

/* Bug: concurrent set_rate and set_burst lost one of the changes. Each read the other value outside the setters'
 * lock and wrote it back, so a set_burst landing between set_rate's read and its write was undone. Two threads set
 * distinct values in lockstep; after each round both must be in force. */
#define SET_ROUNDS 20000

struct setter {
	ats_limiter *l;
	pthread_barrier_t *bar;
	bool rate; /* set the rate (else the burst) */
};

static void *setter_main(void *arg)
{
	struct setter *s = arg;
	for (uint64_t i = 1; i <= SET_ROUNDS; i++) {
		pthread_barrier_wait(s->bar);
		ats_err *err = s->rate ? ats_limiter_set_rate_at(s->l, ats_rate_per_sec(i), T0)
		                       : ats_limiter_set_burst_at(s->l, i, T0);
		cr_assert_null(err);
		pthread_barrier_wait(s->bar);
		pthread_barrier_wait(s->bar); /* the main thread checks in between */
	}
	return NULL;
}

Test(set, concurrent_rate_and_burst_changes_both_land)
{
	ats_limiter *l = NULL;
	cr_assert_null(ats_limiter_new(&l, ats_rate_per_sec(1), 1));
	pthread_barrier_t bar;
	pthread_barrier_init(&bar, NULL, 3);
	struct setter a = {l, &bar, true}, b = {l, &bar, false};
	pthread_t ta, tb;
	cr_assert_eq(pthread_create(&ta, NULL, setter_main, &a), 0);
	cr_assert_eq(pthread_create(&tb, NULL, setter_main, &b), 0);
	uint64_t lost = 0;
	for (uint64_t i = 1; i <= SET_ROUNDS; i++) {
		pthread_barrier_wait(&bar);
		pthread_barrier_wait(&bar);
		lost += ats_limiter_rate(l).events != i || ats_limiter_rate(l).period_ns != SEC ||
		        ats_limiter_burst(l) != i;
		pthread_barrier_wait(&bar);
	}
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	pthread_barrier_destroy(&bar);
	cr_expect_eq(lost, 0, "%llu of %d rounds lost a change", (unsigned long long)lost, SET_ROUNDS);
	ats_limiter_free(l);
}

/* Bug: ats_limiter_wait failed when the tokens came due exactly at the ctx's deadline, and kept them. The wait woke
 * at the deadline, found the ctx done and reported "deadline exceeded"; the cancel, now at the time to act, gave
 * nothing back. At 10^9/s one token is one ns, so the time to act is exactly the instant the test names. */
Test(wait, tokens_due_at_the_deadline_are_taken)
{
	const uint64_t burst = 20 * 1000 * 1000; /* 20 ms of tokens */
	uint64_t t = ats_fast_now_ns();
	ats_limiter *l = limiter_at(ats_rate_per_sec(ATS_NS_PER_SEC), burst, t);
	cr_assert(ats_limiter_allow_at(l, burst, t)); /* empty: the next burst is due at t + 20 ms */
	ats_ctx *ctx = NULL;
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), t + burst, &ctx));
	ats_err *err = ats_limiter_wait(l, burst, ctx);
	cr_expect_null(err, "%s", ats_err_message(err));
	ats_err_unref(err);
	cr_expect_eq(ats_limiter_tokens_at(l, t + burst), 0); /* taken, once */
	ats_ctx_release(ctx);
	ats_limiter_free(l);
}

/* Bug: a refused multi-acquire did not leave a full limiter exactly as it was. Its rollback cancels, and a cancel can
 * lower the TAT only to now: a limiter that had been full for a while read one token short to a caller 100 ms behind.
 * A cancel that finds the word as its reservation left it now puts back the word from before. */
Test(multi, a_refusal_leaves_a_full_limiter_as_it_was_at_earlier_times_too)
{
	ats_limiter *a = limiter_at(ats_rate_per_sec(10), 10, T0);
	uint64_t t = T0 + 10 * SEC, before = t - SEC / 10;
	ats_limiter *twice[] = {a, a};
	cr_expect_not(ats_multi_allow_at(twice, 2, 6, t)); /* 6 + 6 > 10: the second refuses, the first is given back */
	cr_expect_eq(ats_limiter_tokens_at(a, before), 10);
	cr_expect_eq(ats_limiter_tokens_at(a, t), 10);
	/* The same through a plain reservation, which reports what it gave back. */
	ats_reservation r;
	cr_assert(ats_limiter_reserve_at(a, 4, t, &r));
	cr_expect_eq(ats_limiter_cancel_at(&r, t), 4);
	cr_expect_eq(ats_limiter_tokens_at(a, before), 10);
	ats_limiter_free(a);
}
