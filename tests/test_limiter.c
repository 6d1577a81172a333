/* SPDX-License-Identifier: BSD-2-Clause */
/* Unit tests of the rate limiters (include/atscale/limiter.h): x/time/rate's cases ported to
 * synthetic time, plus what x/time/rate gets wrong (jump back, tiny rates, huge n), runtime
 * changes, the redis-cell result, the sharded bound and the multi-limit rollback. */
#include <atscale/limiter.h>

#include <criterion/criterion.h>
#include <pthread.h>

#define MS UINT64_C(1000000)
#define SEC ATS_NS_PER_SEC
#define D (100 * MS)
/* Far from 0 so that "before the epoch" and wrap-around paths are exercised. */
#define T0 (UINT64_C(1) << 50)
#define T(k) (T0 + (uint64_t)(k)*D)

static ats_limiter *mk(ats_rate r, uint64_t burst)
{
	ats_limiter *l = NULL;
	ats_err *err = ats_limiter_new(&l, r, burst);
	cr_assert_null(err, "new: %s", ats_err_message(err));
	/* Synthetic time: start the clock at T0. */
	err = ats_limiter_init_at(l, r, burst, T0);
	cr_assert_null(err);
	return l;
}

struct allow {
	uint64_t t;
	int64_t toks;
	uint64_t n;
	bool ok;
};

static void run(ats_limiter *l, const struct allow *a, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		cr_expect_eq(ats_limiter_tokens_at(l, a[i].t), a[i].toks, "step %zu: tokens %lld want %lld", i,
		             (long long)ats_limiter_tokens_at(l, a[i].t), (long long)a[i].toks);
		cr_expect_eq(ats_limiter_check_at(l, a[i].n, a[i].t), a[i].ok, "step %zu: check", i);
		cr_expect_eq(ats_limiter_allow_at(l, a[i].n, a[i].t), a[i].ok, "step %zu: allow", i);
	}
}

/* Reserve n at t; expect ok and, when ok, the time to act. */
static ats_reservation reserve(ats_limiter *l, uint64_t t, uint64_t n, uint64_t act, bool ok)
{
	ats_reservation r;
	cr_expect_eq(ats_limiter_reserve_at(l, n, t, &r), ok, "reserve(t%lld, %llu) ok", (long long)((t - T0) / D),
	             (unsigned long long)n);
	if (ok && r.ok)
		cr_expect_eq(r.act_ns, act, "reserve(t%lld, %llu) acts at t%.3f want t%lld", (long long)((t - T0) / D),
		             (unsigned long long)n, ((double)r.act_ns - (double)T0) / (double)D,
		             (long long)((act - T0) / D));
	return r;
}

/* ---- The token clock's exactness ---- */

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
	return *x;
}

/* A value spread over every magnitude: a random number of random low bits. */
static uint64_t any_magnitude(uint64_t *x)
{
	unsigned bits = (unsigned)(xorshift(x) % 65);
	return bits == 64 ? xorshift(x) : xorshift(x) & ((UINT64_C(1) << bits) - 1);
}

/* ats_token_clock_units == floor(dt * events * 2^shift / period) mod 2^64 for every dt, against
 * 128-bit division: dt * E / P = dt * (E / P) + dt * (E % P) / P, each term exact. Millions of
 * random (rate, dt) pairs, many of them in the rare case where the frac_lo product carries. */
Test(gcra, token_clock_is_exact)
{
	uint64_t x = 0x9E3779B97F4A7C15u, rare = 0;
	for (int i = 0; i < 4000000; i++) {
		uint64_t period = any_magnitude(&x) | 1, events = any_magnitude(&x);
		if ((unsigned __int128)events * ATS_NS_PER_SEC > (unsigned __int128)ATS_RATE_MAX_PER_SEC * period)
			events %= period * 1000 + 1;
		uint64_t burst = xorshift(&x) % (ATS_GCRA_MAX_N + 1);
		ats_token_clock c;
		ats_err *err = ats_token_clock_make(&c, (ats_rate){events, period}, burst, 0);
		cr_assert_null(err, "rate %llu/%llu", (unsigned long long)events, (unsigned long long)period);
		for (int j = 0; j < 4; j++) {
			uint64_t dt = any_magnitude(&x);
			unsigned __int128 e = (unsigned __int128)events << c.shift;
			uint64_t want = (uint64_t)(dt * (uint64_t)(e / period)) +
			                (uint64_t)((unsigned __int128)dt * (uint64_t)(e % period) / period);
			uint64_t units, hi_lo;
			rare += !ats__token_units_hi(c.base_units, c.mul_int, c.frac_hi, dt, &units, &hi_lo);
			uint64_t got = ats_token_clock_units(&c, dt);
			if (got != want)
				cr_assert_fail("rate %llu/%llu dt %llu: %llu units, want %llu",
				               (unsigned long long)events, (unsigned long long)period,
				               (unsigned long long)dt, (unsigned long long)got,
				               (unsigned long long)want);
		}
	}
	cr_expect_gt(rare, 1000, "the carry case was reached %llu times", (unsigned long long)rare);
}

/* The limiter's hot paths read the clock without frac_lo and fall back to their full path when it
 * could carry: they agree with the full computation (tokens_at) at every magnitude of time. */
Test(gcra, limiter_hot_paths_agree_with_full_clock)
{
	uint64_t x = 0xD1B54A32D192ED03u;
	for (int i = 0; i < 20000; i++) {
		uint64_t period = any_magnitude(&x) | 1, events = any_magnitude(&x) % (period + 1);
		uint64_t burst = 1 + xorshift(&x) % 1000;
		ats_limiter l;
		cr_assert_null(ats_limiter_init_at(&l, (ats_rate){events, period}, burst, 0));
		for (int j = 0; j < 8; j++) {
			uint64_t t = any_magnitude(&x) >> 1;
			int64_t toks = ats_limiter_tokens_at(&l, t);
			uint64_t n = 1 + xorshift(&x) % burst;
			bool fit = toks >= (int64_t)n;
			cr_assert_eq(ats_limiter_check_at(&l, n, t), fit);
			cr_assert_eq(ats_limiter_allow_at(&l, n, t), fit);
		}
	}
}

/* ---- x/time/rate rate_test.go, ported ---- */

Test(xrate, burst1)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 1);
	struct allow a[] = {{T(0), 1, 1, true},  {T(0), 0, 1, false}, {T(0), 0, 1, false},
	                    {T(1), 1, 1, true},  {T(1), 0, 1, false}, {T(1), 0, 1, false},
	                    {T(2), 1, 2, false}, {T(2), 1, 1, true},  {T(2), 0, 1, false}};
	run(l, a, sizeof a / sizeof *a);
	ats_limiter_free(l);
}

Test(xrate, burst3)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 3);
	struct allow a[] = {{T(0), 3, 2, true},  {T(0), 1, 2, false}, {T(0), 1, 1, true},  {T(0), 0, 1, false},
	                    {T(1), 1, 4, false}, {T(2), 2, 1, true},  {T(3), 2, 1, true},  {T(4), 2, 1, true},
	                    {T(4), 1, 1, true},  {T(4), 0, 1, false}, {T(4), 0, 1, false}, {T(9), 3, 3, true},
	                    {T(9), 0, 0, true}};
	run(l, a, sizeof a / sizeof *a);
	ats_limiter_free(l);
}

/* x/time/rate moves its clock back here and hands out a fifth token (golang/go#71360); an older
 * timestamp must not mint anything: at t0 only the one token left at t1 is there. */
Test(xrate, jump_backwards_never_mints)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 3);
	struct allow a[] = {{T(1), 3, 1, true},  {T(0), 1, 1, true},  {T(0), 0, 1, false}, {T(0), 0, 1, false},
	                    {T(1), 1, 1, true},  {T(1), 0, 1, false}, {T(1), 0, 1, false}, {T(2), 1, 1, true},
	                    {T(2), 0, 1, false}, {T(2), 0, 1, false}};
	run(l, a, sizeof a / sizeof *a);
	ats_limiter_free(l);
}

Test(xrate, no_truncation_errors)
{
	/* 0.7692307692307693 per second = 10 per 13 s, exactly. */
	ats_limiter *l = mk((ats_rate){10, 13 * SEC}, 1);
	cr_assert(ats_limiter_allow_at(l, 1, T0));
	ats_limiter_free(l);
}

Test(xrate, long_running_qps)
{
	ats_limiter *l = mk(ats_rate_per_sec(100), 100);
	uint64_t ok = 0, t = T0, end = T0 + 5 * SEC;
	for (; t < end; t += 2 * MS)
		ok += ats_limiter_allow_at(l, 1, t);
	/* ideal = burst + limit * elapsed; exact here: never above it, and at most one short. */
	uint64_t ideal = 100 + 100 * 5;
	cr_expect_leq(ok, ideal);
	cr_expect_geq(ok, ideal - 1);
	ats_limiter_free(l);
}

Test(xrate, simple_reserve)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	reserve(l, T(0), 2, T(2), true);
	reserve(l, T(3), 2, T(4), true);
	ats_limiter_free(l);
}

Test(xrate, mix)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 3, 0, false); /* n > burst */
	reserve(l, T(0), 2, T(0), true);
	struct allow a1[] = {{T(1), 1, 2, false}};
	run(l, a1, 1);
	reserve(l, T(1), 2, T(2), true);
	struct allow a2[] = {{T(1), -1, 1, false}, {T(3), 1, 1, true}};
	run(l, a2, 2);
	ats_limiter_free(l);
}

Test(xrate, cancel_invalid)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 3, T(3), false);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(0)), 0);
	reserve(l, T(0), 2, T(2), true);
	ats_limiter_free(l);
}

Test(xrate, cancel_last)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 2, T(2), true);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(1)), 2);
	reserve(l, T(1), 2, T(2), true);
	ats_limiter_free(l);
}

Test(xrate, cancel_too_late)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 2, T(2), true);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(3)), 0);
	reserve(l, T(3), 2, T(4), true);
	ats_limiter_free(l);
}

Test(xrate, cancel_0_tokens)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 1, T(1), true);
	reserve(l, T(0), 1, T(2), true);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(0)), 0);
	reserve(l, T(0), 1, T(3), true);
	ats_limiter_free(l);
}

Test(xrate, cancel_1_token)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 2, T(2), true);
	reserve(l, T(0), 1, T(3), true);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(2)), 1);
	reserve(l, T(2), 2, T(4), true);
	ats_limiter_free(l);
}

Test(xrate, cancel_multi)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 4);
	reserve(l, T(0), 4, T(0), true);
	ats_reservation ra = reserve(l, T(0), 3, T(3), true);
	reserve(l, T(0), 1, T(4), true);
	ats_reservation rc = reserve(l, T(0), 1, T(5), true);
	cr_expect_eq(ats_limiter_cancel_at(&rc, T(1)), 1);
	cr_expect_eq(ats_limiter_cancel_at(&ra, T(1)), 2); /* as if C was never reserved */
	reserve(l, T(1), 3, T(5), true);
	ats_limiter_free(l);
}

Test(xrate, cancel_twice_gives_nothing_more)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 2, T(2), true);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(0)), 2);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(0)), 0);
	cr_expect_eq(ats_limiter_tokens_at(l, T(0)), 0);
	ats_limiter_free(l);
}

/* x/time/rate acts at t1, t3, t4, t5 here because the t0 request moves its clock back; with time
 * that never goes back every request after the jump waits one token longer. */
Test(xrate, reserve_jump_back)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(1), 2, T(1), true);
	reserve(l, T(0), 1, T(2), true);
	reserve(l, T(2), 2, T(4), true);
	reserve(l, T(0), 3, 0, false); /* n > burst: nothing changes */
	reserve(l, T(2), 1, T(5), true);
	ats_reservation r;
	cr_expect_not(ats_limiter_reserve_within_at(l, 2, D, T(0), &r)); /* beyond max delay: nothing changes */
	reserve(l, T(2), 1, T(6), true);
	ats_limiter_free(l);
}

/* x/time/rate gives t4 (its cancel at t0 moves time back); the token C holds stays held: t5. */
Test(xrate, reserve_jump_back_cancel)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(1), 2, T(1), true);
	ats_reservation r = reserve(l, T(1), 2, T(3), true);
	reserve(l, T(1), 1, T(4), true);
	cr_expect_eq(ats_limiter_cancel_at(&r, T(0)), 1);
	reserve(l, T(1), 2, T(5), true);
	ats_limiter_free(l);
}

Test(xrate, reserve_set_limit)
{
	ats_limiter *l = mk(ats_rate_per_sec(5), 2);
	reserve(l, T(0), 2, T(0), true);
	reserve(l, T(0), 2, T(4), true);
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(10), T(2)));
	reserve(l, T(2), 1, T(4), true);
	ats_limiter_free(l);
}

/* At t3 the bucket holds -0.5 tokens (2.5 of debt); burst 4 keeps them: -0.5 of 4, so 4 more tokens
 * need 4.5 at 5/s: 0.9 s after t3 (x/time/rate: t9, computed from the stale t0). */
Test(xrate, reserve_set_burst)
{
	ats_limiter *l = mk(ats_rate_per_sec(5), 2);
	reserve(l, T(0), 2, T(0), true);
	reserve(l, T(0), 2, T(4), true);
	cr_assert_null(ats_limiter_set_burst_at(l, 4, T(3)));
	reserve(l, T(0), 4, T(12), true);
	ats_limiter_free(l);
}

Test(xrate, reserve_set_limit_cancel)
{
	ats_limiter *l = mk(ats_rate_per_sec(5), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 2, T(4), true);
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(10), T(2)));
	cr_expect_eq(ats_limiter_cancel_at(&r, T(2)), 2);
	reserve(l, T(2), 2, T(3), true);
	ats_limiter_free(l);
}

Test(xrate, reserve_max)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	ats_reservation r;
	cr_expect(ats_limiter_reserve_within_at(l, 2, D, T(0), &r));
	cr_expect(ats_limiter_reserve_within_at(l, 1, D, T(0), &r));
	cr_expect_eq(r.act_ns, T(1));
	cr_expect_not(ats_limiter_reserve_within_at(l, 1, D, T(0), &r));
	cr_expect_eq(ats_limiter_tokens_at(l, T(0)), -1);
	ats_limiter_free(l);
}

Test(xrate, zero_limit)
{
	ats_limiter *l = mk((ats_rate){0, SEC}, 1);
	cr_expect(ats_limiter_allow_at(l, 1, T0));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 + 1000000 * SEC));
	ats_reservation r;
	cr_expect_not(ats_limiter_reserve_at(l, 1, T0, &r)); /* would never be ready */
	ats_limiter_free(l);
}

Test(xrate, inf_allows_everything)
{
	ats_limiter *l = mk(ATS_RATE_INF, 0);
	cr_expect(ats_limiter_allow_at(l, 3, T0));
	cr_expect(ats_limiter_allow_at(l, UINT64_C(1) << 40, T0));
	ats_reservation r;
	cr_expect(ats_limiter_reserve_at(l, 1000, T0, &r));
	cr_expect_eq(r.delay_ns, 0);
	cr_expect_eq(ats_limiter_cancel_at(&r, T0), 0);
	cr_expect_eq(ats_limiter_tokens_at(l, T0), INT64_MAX);
	ats_limiter_free(l);
}

/* ---- Beyond x/time/rate ---- */

Test(limiter, burst_0_and_1)
{
	ats_limiter *l = mk(ats_rate_per_sec(1000), 0);
	cr_expect_not(ats_limiter_allow_at(l, 1, T0));
	cr_expect(ats_limiter_allow_at(l, 0, T0));
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + SEC), 0);
	ats_limiter_free(l);
	l = mk(ats_rate_per_sec(1000), 1);
	cr_expect(ats_limiter_allow_at(l, 1, T0));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 + MS - 1));
	cr_expect(ats_limiter_allow_at(l, 1, T0 + MS));
	ats_limiter_free(l);
}

Test(limiter, one_per_hour_is_exact)
{
	ats_limiter *l = mk(ats_rate_every(3600 * SEC), 1);
	cr_expect(ats_limiter_allow_at(l, 1, T0));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 + 3600 * SEC - 1));
	cr_expect(ats_limiter_allow_at(l, 1, T0 + 3600 * SEC));
	/* After 10 years idle: full again, and exactly one token. */
	uint64_t later = T0 + UINT64_C(10) * 365 * 86400 * SEC;
	cr_expect_eq(ats_limiter_tokens_at(l, later), 1);
	cr_expect(ats_limiter_allow_at(l, 1, later));
	cr_expect_not(ats_limiter_allow_at(l, 1, later + 3599 * SEC));
	ats_limiter_free(l);
	/* One per 584 years: the initial token, then nothing within a lifetime. */
	l = mk((ats_rate){1, UINT64_MAX}, 1);
	cr_expect(ats_limiter_allow_at(l, 1, T0));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 + UINT64_C(100) * 365 * 86400 * SEC));
	ats_limiter_free(l);
}

/* 100 Gbit/s in bytes: 12.5e9 per second, one 1500-byte packet every 120 ns exactly, with no drift
 * over 30 years of uptime (the 63-bit word wraps twice) and with n = 2^32 per call. */
Test(limiter, byte_rate_no_drift)
{
	ats_limiter *l = mk(ats_rate_per_sec(12500000000u), 1500);
	cr_expect(ats_limiter_allow_at(l, 1500, T0));
	for (uint64_t k = 1; k <= 100000; k++) {
		cr_assert_not(ats_limiter_allow_at(l, 1500, T0 + k * 120 - 1), "packet %llu early",
		              (unsigned long long)k);
		cr_assert(ats_limiter_allow_at(l, 1500, T0 + k * 120), "packet %llu on time", (unsigned long long)k);
	}
	for (uint64_t year = 1; year <= 30; year++) {
		uint64_t k = year * 365 * 86400 * SEC / 120; /* on the packet grid */
		cr_expect(ats_limiter_allow_at(l, 1500, T0 + k * 120), "year %llu", (unsigned long long)year);
		cr_expect_not(ats_limiter_allow_at(l, 1500, T0 + (k + 1) * 120 - 1), "year %llu",
		              (unsigned long long)year);
		cr_expect(ats_limiter_allow_at(l, 1500, T0 + (k + 1) * 120), "year %llu", (unsigned long long)year);
	}
	ats_limiter_free(l);

	uint64_t big = UINT64_C(1) << 32;
	l = mk(ats_rate_per_sec(10000000000u), big);
	cr_expect(ats_limiter_allow_at(l, big, T0));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0));
	cr_expect_not(ats_limiter_allow_at(l, big + 1, T0 + 100 * SEC));      /* n > burst: refused, nothing changes */
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 429496730), (int64_t)big); /* 2^32 / 1e10 s, rounded up */
	cr_expect(ats_limiter_allow_at(l, big, T0 + 429496730));
	ats_limiter_free(l);
}

Test(limiter, stale_time_never_mints_nor_moves_back)
{
	ats_limiter *l = mk(ats_rate_per_sec(1), 2);
	cr_expect(ats_limiter_allow_at(l, 2, T0 + 100 * SEC));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 + 10 * SEC));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 - 10 * SEC)); /* before the epoch */
	cr_expect_leq(ats_limiter_tokens_at(l, T0), 0);
	/* Stored time did not move back: one second after the last grant, one token. */
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 101 * SEC), 1);
	ats_limiter_free(l);
}

Test(limiter, bad_input)
{
	ats_limiter *l = NULL;
	ats_err *err = ats_limiter_new(&l, ats_rate_per_sec(1), (UINT64_C(1) << 32) + 1);
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	cr_expect_null(l);
	ats_err_unref(err);
	err = ats_limiter_new(&l, ats_rate_per_sec(UINT64_C(2000000000000)), 1);
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	ats_err_unref(err);
	err = ats_limiter_init(NULL, ats_rate_per_sec(1), 1);
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	ats_err_unref(err);

	l = mk(ats_rate_per_sec(10), 5);
	cr_expect(ats_limiter_allow_at(l, 2, T0));
	err = ats_limiter_set_burst_at(l, (UINT64_C(1) << 32) + 1, T0);
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	ats_err_unref(err);
	err = ats_limiter_set_rate_at(l, ats_rate_per_sec(UINT64_C(10000000000000)), T0);
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	ats_err_unref(err);
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 3);
	cr_expect_eq(ats_limiter_burst(l), 5);
	cr_expect_eq(ats_limiter_rate(l).events, 10);
	cr_expect_not(ats_limiter_allow_at(l, 6, T0)); /* n > burst */
	cr_expect_not(ats_limiter_allow_at(l, UINT64_MAX, T0));
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 3);
	ats_limiter_free(l);
}

Test(limiter, caller_memory_is_aligned)
{
	ats_limiter l;
	cr_expect_eq((uintptr_t)&l % 64, 0);
	cr_assert_null(ats_limiter_init(&l, ats_rate_per_sec(1000), 10));
	cr_expect(ats_limiter_allow(&l, 10));
	cr_expect_not(ats_limiter_allow(&l, 10));
	cr_expect(ats_limiter_check(&l, 0));
	ats_limiter_destroy(&l);
}

/* ---- Runtime changes ---- */

Test(set, rate_keeps_tokens)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 10);
	cr_expect(ats_limiter_allow_at(l, 6, T0));
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(100), T0));
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 4);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 10 * MS), 5);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 60 * MS), 10);
	ats_limiter_free(l);
}

Test(set, burst_clamps_then_refills)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 10);
	cr_assert_null(ats_limiter_set_burst_at(l, 3, T0));
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 3);
	cr_assert_null(ats_limiter_set_burst_at(l, 20, T0));
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 3);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + SEC), 13);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 5 * SEC), 20);
	ats_limiter_free(l);
}

/* 1 per second (shift 30) to 10^10 per second (shift 0) and back: debt in tokens survives both
 * rescalings exactly. */
Test(set, shift_changes_carry_debt)
{
	ats_limiter *l = mk(ats_rate_per_sec(1), 4);
	ats_reservation r;
	cr_expect(ats_limiter_reserve_at(l, 4, T0, &r));
	cr_expect(ats_limiter_reserve_at(l, 2, T0, &r));
	cr_expect_eq(r.delay_ns, 2 * SEC);
	cr_expect_eq(ats_limiter_tokens_at(l, T0), -2);
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(1000000000u), T0)); /* one per ns */
	cr_expect_eq(ats_limiter_tokens_at(l, T0), -2);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 1), -1);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 2), 0);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 6), 4);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 7), 4);
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_every(3600 * SEC), T0));
	cr_expect_eq(ats_limiter_tokens_at(l, T0), -2);
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 2 * 3600 * SEC), 0);
	cr_expect(ats_limiter_allow_at(l, 1, T0 + 3 * 3600 * SEC));
	ats_limiter_free(l);
}

Test(set, inf_and_zero)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	cr_expect(ats_limiter_allow_at(l, 2, T0));
	cr_assert_null(ats_limiter_set_rate_at(l, ATS_RATE_INF, T0));
	cr_expect(ats_limiter_allow_at(l, 1000, T0));
	cr_assert_null(ats_limiter_set_rate_at(l, (ats_rate){0, SEC}, T0));
	/* Leaving Inf: full, then no refill at rate 0. */
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 2);
	cr_expect(ats_limiter_allow_at(l, 2, T0));
	cr_expect_not(ats_limiter_allow_at(l, 1, T0 + 1000 * SEC));
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(1), T0 + 1000 * SEC));
	cr_expect_eq(ats_limiter_tokens_at(l, T0 + 1001 * SEC), 1);
	ats_limiter_free(l);
}

Test(set, cancel_two_changes_later_gives_nothing)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 2);
	reserve(l, T(0), 2, T(0), true);
	ats_reservation r = reserve(l, T(0), 2, T(2), true);
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(20), T(0)));
	cr_assert_null(ats_limiter_set_rate_at(l, ats_rate_per_sec(10), T(0)));
	cr_expect_eq(ats_limiter_cancel_at(&r, T(0)), 0);
	cr_expect_eq(ats_limiter_tokens_at(l, T(0)), -2);
	ats_limiter_free(l);
}

/* ---- redis-cell result ---- */

Test(throttle, redis_cell_fields)
{
	ats_limiter *l = mk(ats_rate_per_sec(10), 5);
	ats_limiter_result res;
	cr_expect(ats_limiter_throttle_at(l, 1, T0, &res));
	cr_expect(res.allowed);
	cr_expect_eq(res.limit, 5);
	cr_expect_eq(res.remaining, 4);
	cr_expect_eq(res.retry_after_ns, -1);
	cr_expect_eq(res.reset_after_ns, (int64_t)(100 * MS));
	cr_expect(ats_limiter_throttle_at(l, 4, T0, &res));
	cr_expect_eq(res.remaining, 0);
	cr_expect_eq(res.reset_after_ns, (int64_t)(500 * MS));
	cr_expect_not(ats_limiter_throttle_at(l, 1, T0, &res));
	cr_expect_not(res.allowed);
	cr_expect_eq(res.remaining, 0);
	cr_expect_eq(res.retry_after_ns, (int64_t)(100 * MS));
	cr_expect_eq(res.reset_after_ns, (int64_t)(500 * MS));
	cr_expect_not(ats_limiter_throttle_at(l, 2, T0 + 50 * MS, &res));
	cr_expect_eq(res.retry_after_ns, (int64_t)(150 * MS));
	cr_expect_not(ats_limiter_throttle_at(l, 6, T0, &res));
	cr_expect_eq(res.retry_after_ns, INT64_MAX);
	cr_expect_eq(ats_limiter_tokens_at(l, T0), 0); /* refusals took nothing */
	ats_limiter_free(l);
	l = mk((ats_rate){0, SEC}, 1);
	cr_expect(ats_limiter_throttle_at(l, 1, T0, &res));
	cr_expect_eq(res.reset_after_ns, INT64_MAX);
	cr_expect_not(ats_limiter_throttle_at(l, 1, T0, &res));
	cr_expect_eq(res.retry_after_ns, INT64_MAX);
	ats_limiter_free(l);
}

/* ---- Sharded ---- */

static ats_sharded *mk_sharded(uint32_t shards, uint64_t batch, uint64_t burst, uint64_t lease_ns)
{
	ats_sharded *s = NULL;
	ats_sharded_config cfg = {
	    .rate = ats_rate_per_sec(100), .burst = burst, .batch = batch, .shards = shards, .lease_ns = lease_ns};
	cr_assert_null(ats_sharded_new(&s, &cfg));
	ats_sharded_destroy(s);
	cr_assert_null(ats_sharded_init_at(s, &cfg, T0));
	return s;
}

static uint64_t drain(ats_sharded *s, uint64_t now)
{
	uint64_t got = 0;
	for (int miss = 0; miss < 64;) {
		bool ok = ats_sharded_allow_shard_at(s, (unsigned)(got + miss), 1, now);
		got += ok;
		miss += !ok;
	}
	return got;
}

/* The worst case of the stated bound, reached exactly: every shard holds a fresh lease of batch-1
 * tokens taken before the window, the exact bucket has refilled, and the window sees both. */
Test(sharded, over_admission_bound_is_shards_times_batch)
{
	ats_sharded *s = mk_sharded(4, 8, 64, SEC);
	for (unsigned i = 0; i < 4; i++)
		cr_expect(ats_sharded_allow_shard_at(s, i, 1, T0));
	uint64_t t = T0 + 320 * MS; /* 32 tokens refilled at 100/s: the exact bucket is full again */
	cr_expect_eq(ats_limiter_tokens_at(&s->exact_, t), 64);
	uint64_t got = drain(s, t);
	cr_expect_eq(got, 64 + 4 * 7);
	cr_expect_leq(got, 64 + 4 * 8);
	ats_sharded_free(s);
}

struct slot_owner {
	ats_sharded *s;
	pthread_barrier_t *b;
	uint64_t t;
	uint64_t got;
};

/* Takes one token at T0 (leasing batch for its slot), waits while the shards are drained, then
 * drains its slot at t. */
static void *slot_owner(void *p)
{
	struct slot_owner *o = p;
	cr_expect(ats_sharded_allow_at(o->s, 1, T0));
	pthread_barrier_wait(o->b);
	pthread_barrier_wait(o->b);
	while (ats_sharded_allow_at(o->s, 1, o->t))
		o->got++;
	return NULL;
}

/* The worst case of the bound with both kinds of cache: 4 threads alive at once own the 4 slots,
 * and the 4 shared shards hold leases too: burst + 2 * shards * (batch - 1) in one window. */
Test(sharded, over_admission_bound_with_slots_and_shards)
{
	ats_sharded *s = mk_sharded(4, 8, 64, SEC);
	uint64_t t = T0 + 640 * MS; /* 64 tokens refilled at 100/s: the exact bucket is full again */
	pthread_barrier_t b;
	pthread_barrier_init(&b, NULL, 5);
	struct slot_owner o[4];
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		o[i] = (struct slot_owner){.s = s, .b = &b, .t = t};
		cr_assert_eq(pthread_create(&th[i], NULL, slot_owner, &o[i]), 0);
	}
	pthread_barrier_wait(&b); /* the 4 slots hold 7 tokens each, the bucket has 32 */
	for (unsigned i = 0; i < 4; i++)
		cr_expect(ats_sharded_allow_shard_at(s, i, 1, T0));
	cr_expect_eq(ats_limiter_tokens_at(&s->exact_, T0), 0);
	cr_expect_eq(ats_limiter_tokens_at(&s->exact_, t), 64);
	uint64_t got = drain(s, t);
	pthread_barrier_wait(&b);
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		got += o[i].got;
	}
	pthread_barrier_destroy(&b);
	cr_expect_eq(got, 64 + 2 * 4 * 7);
	cr_expect_leq(got, 64 + ats_sharded_max_excess(s));
	ats_sharded_free(s);
}

Test(sharded, idle_leases_expire)
{
	ats_sharded *s = mk_sharded(4, 8, 64, 100 * MS);
	for (unsigned i = 0; i < 4; i++)
		cr_expect(ats_sharded_allow_shard_at(s, i, 1, T0));
	uint64_t t = T0 + 101 * MS + 320 * MS; /* leases idle for longer than 100 ms: dropped */
	cr_expect_eq(drain(s, t), 64);
	ats_sharded_free(s);
}

/* Idle for 2^39 ns (about nine minutes) and a little more: the 40-bit time in the lease word
 * wraps to a "last use in the future", which read as a stale caller and sent every call to the
 * exact bucket for the next nine minutes. It is an expired lease: leased again, once. */
Test(sharded, a_lease_idle_past_the_word_s_time_range_is_leased_again)
{
	ats_sharded_config c = {
	    .rate = ats_rate_per_sec(1000), .burst = 1000, .batch = 100, .shards = 1, .lease_ns = MS};
	ats_sharded s;
	cr_assert_null(ats_sharded_init_at(&s, &c, T0));
	cr_assert(ats_sharded_allow_shard_at(&s, 0, 1, T0)); /* leases 100, 99 left in the shard */
	uint64_t t = T0 + (UINT64_C(1) << 39) + 5 * MS;
	for (int i = 0; i < 10; i++)
		cr_assert(ats_sharded_allow_shard_at(&s, 0, 1, t + (uint64_t)i * 1000));
	cr_expect_eq(ats_limiter_tokens_at(&s.exact_, t + 10000), 900, "one lease of 100, not ten calls of 1");
	ats_sharded_destroy(&s);
}

Test(sharded, big_n_stale_time_and_bad_config)
{
	ats_sharded *s = mk_sharded(2, 4, 64, SEC);
	cr_expect(ats_sharded_allow_shard_at(s, 0, 1, T0 + SEC));
	cr_expect(ats_sharded_allow_shard_at(s, 0, 20, T0 + SEC)); /* n > batch: straight from the bucket */
	cr_expect_eq(ats_limiter_tokens_at(&s->exact_, T0 + SEC), 64 - 4 - 20);
	/* A stale now_ns does not use the shard's lease (still 3 tokens) but the exact bucket. */
	cr_expect(ats_sharded_allow_shard_at(s, 0, 1, T0 + SEC - 1));
	cr_expect_eq(ats_limiter_tokens_at(&s->exact_, T0 + SEC), 64 - 4 - 20 - 1);
	cr_expect(ats_sharded_allow_shard_at(s, 0, 0, T0));
	ats_sharded_free(s);

	ats_sharded_config bad = {.rate = ats_rate_per_sec(100), .burst = 4, .batch = 5};
	ats_sharded *b = NULL;
	ats_err *err = ats_sharded_new(&b, &bad);
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	cr_expect_null(b);
	ats_err_unref(err);
	bad = (ats_sharded_config){.rate = ats_rate_per_sec(100), .burst = 4, .lease_ns = UINT64_C(1) << 39};
	err = ats_sharded_new(&b, &bad);
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	ats_err_unref(err);
}

Test(sharded, current_cpu)
{
	ats_sharded *s = NULL;
	ats_sharded_config cfg = {.rate = ats_rate_per_sec(1000), .burst = 100};
	cr_assert_null(ats_sharded_new(&s, &cfg));
	cr_expect_geq(s->nshards_, 1);
	cr_expect_geq(s->batch_, 1);
	uint64_t got = 0;
	for (int i = 0; i < 200; i++)
		got += ats_sharded_allow(s, 1);
	cr_expect_geq(got, 100 - s->nshards_ * s->batch_);
	ats_sharded_free(s);
}

/* ---- Multi-limit ---- */

Test(multi, per_second_and_per_minute)
{
	ats_limiter *sec = mk(ats_rate_per_sec(10), 10);
	ats_limiter *min = mk(ats_rate_every(3 * SEC), 20); /* 20 per minute */
	ats_limiter *both[] = {sec, min};
	uint64_t got = 0;
	for (int k = 0; k < 5; k++)
		for (int i = 0; i < 15; i++)
			got += ats_multi_allow_at(both, 2, 1, T0 + (uint64_t)k * SEC);
	/* 10 in second 0, 10 in second 1 (20 of the minute's 20, none refilled yet at 3 s per token),
	 * then the minute limit: 1 more at 3 s and 4 s... (one token per 3 s). */
	cr_expect_eq(got, 21);
	cr_expect_eq(ats_limiter_tokens_at(sec, T0 + 4 * SEC), 10); /* refusals by `min` charged nothing */
	ats_limiter_free(sec);
	ats_limiter_free(min);
}

Test(multi, refusal_changes_nothing)
{
	ats_limiter *a = mk(ats_rate_per_sec(10), 10);
	ats_limiter *b = mk(ats_rate_per_sec(10), 10);
	ats_limiter *c = mk(ats_rate_per_sec(10), 10);
	cr_expect(ats_limiter_allow_at(a, 7, T0));
	cr_expect(ats_limiter_allow_at(b, 9, T0));
	ats_limiter *abc[] = {a, b, c};
	cr_expect_not(ats_multi_allow_at(abc, 3, 2, T0));
	cr_expect_eq(ats_limiter_tokens_at(a, T0), 3);
	cr_expect_eq(ats_limiter_tokens_at(c, T0), 10);
	/* The same limiter twice: the check passes (3 >= 2), the second take fails, the first is
	 * given back exactly, down to the unit (the refill times are unchanged). */
	ats_limiter *aa[] = {a, a};
	cr_expect_not(ats_multi_allow_at(aa, 2, 2, T0));
	cr_expect_eq(ats_limiter_tokens_at(a, T0), 3);
	cr_expect_eq(ats_limiter_tokens_at(a, T0 + 100 * MS - 1), 3);
	cr_expect_eq(ats_limiter_tokens_at(a, T0 + 100 * MS), 4);
	cr_expect(ats_multi_allow_at(aa, 2, 1, T0));
	cr_expect_eq(ats_limiter_tokens_at(a, T0), 1);
	cr_expect_not(ats_multi_allow_at(NULL, 2, 1, T0));
	cr_expect_not(ats_multi_allow_at(abc, 0, 1, T0));
	ats_limiter_free(a);
	ats_limiter_free(b);
	ats_limiter_free(c);
}
