/* SPDX-License-Identifier: BSD-2-Clause */
/* Concurrent tests of the rate limiters (label "concurrent": also run under ThreadSanitizer).
 * Exact counts where the outcome is determined; otherwise an audit of every grant's time against
 * the limit. Bounded iterations, never sleeps. */
#include <atscale/limiter.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN 1
#endif
#endif
#if defined(TSAN) || defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#include <criterion/criterion.h>

#define THREADS 4
#define ITERS (SANITIZED ? 20000 : 2000000)
#define T0 (UINT64_C(1) << 50)

static void run_threads(void *(*fn)(void *), void *args, size_t size)
{
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, fn, (char *)args + i * size), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
}

/* ---- Exact counts ---- */

struct count_arg {
	ats_limiter *l;
	ats_sharded *s;
	ats_limiter **multi;
	uint64_t now, tries, got;
};

static void *count_exact(void *p)
{
	struct count_arg *a = p;
	for (uint64_t i = 0; i < a->tries; i++)
		a->got += ats_limiter_allow_at(a->l, 1, a->now);
	return NULL;
}

/* x/time/rate's TestSimultaneousRequests at scale: with no refill exactly burst grants. */
Test(stress, exact_count_no_refill)
{
	ats_limiter *l = NULL;
	cr_assert_null(ats_limiter_new(&l, (ats_rate){0, ATS_NS_PER_SEC}, 10000));
	struct count_arg a[THREADS];
	for (int i = 0; i < THREADS; i++)
		a[i] = (struct count_arg){.l = l, .now = ats_now_ns(), .tries = 10000};
	run_threads(count_exact, a, sizeof *a);
	uint64_t total = 0;
	for (int i = 0; i < THREADS; i++)
		total += a[i].got;
	cr_expect_eq(total, 10000);
	ats_limiter_free(l);
}

/* Rate changes under load: at one fixed instant no rate refills anything, so whatever the rates
 * (1/hour with shift 30 to 10^10/s with shift 0) exactly burst tokens are granted in total; any
 * acquire committed under the wrong clock would show. */
struct setter_arg {
	ats_limiter *l;
	uint64_t now;
	atomic_int *stop;
	uint64_t changes;
};

static void *setter(void *p)
{
	struct setter_arg *a = p;
	static const ats_rate rates[] = {{1, 3600000000000u}, {10000000000u, ATS_NS_PER_SEC}, {7, 3}, {0, 1000}};
	while (!atomic_load_explicit(a->stop, memory_order_relaxed)) {
		ats_err *err = ats_limiter_set_rate_at(a->l, rates[a->changes % 4], a->now);
		cr_assert_null(err);
		a->changes++;
	}
	return NULL;
}

Test(stress, set_rate_under_load_keeps_exact_count)
{
	uint64_t burst = SANITIZED ? 5000 : 200000, now = T0 + 1000;
	ats_limiter l;
	cr_assert_null(ats_limiter_init_at(&l, ats_rate_per_sec(1000), burst, T0));
	atomic_int stop = 0;
	struct setter_arg sa = {.l = &l, .now = now, .stop = &stop};
	pthread_t st;
	cr_assert_eq(pthread_create(&st, NULL, setter, &sa), 0);
	/* Drain the refill the init rate gave between T0 and now first (1000/s for 1 us: 0 tokens). */
	struct count_arg a[THREADS];
	for (int i = 0; i < THREADS; i++)
		a[i] = (struct count_arg){.l = &l, .now = now, .tries = burst};
	run_threads(count_exact, a, sizeof *a);
	atomic_store(&stop, 1);
	pthread_join(st, NULL);
	uint64_t total = 0;
	for (int i = 0; i < THREADS; i++)
		total += a[i].got;
	cr_expect_eq(total, burst, "granted %llu of burst %llu across %llu rate changes", (unsigned long long)total,
	             (unsigned long long)burst, (unsigned long long)sa.changes);
	cr_expect_eq(ats_limiter_tokens_at(&l, now), 0);
}

static void *count_sharded(void *p)
{
	struct count_arg *a = p;
	for (uint64_t i = 0; i < a->tries; i++)
		a->got += ats_sharded_allow_shard_at(a->s, (unsigned)(i % 3), 1, a->now);
	return NULL;
}

/* Shards never grant more than the bucket gave them, with three shards hit by four threads at once. */
Test(stress, sharded_count_no_refill)
{
	ats_sharded *s = NULL;
	ats_sharded_config cfg = {.rate = {0, ATS_NS_PER_SEC}, .burst = 10000, .batch = 7, .shards = 3};
	cr_assert_null(ats_sharded_new(&s, &cfg));
	struct count_arg a[THREADS];
	for (int i = 0; i < THREADS; i++)
		a[i] = (struct count_arg){.s = s, .now = ats_now_ns() + 1000, .tries = 10000};
	for (int i = 1; i < THREADS; i++)
		a[i].now = a[0].now;
	run_threads(count_sharded, a, sizeof *a);
	uint64_t total = 0;
	for (int i = 0; i < THREADS; i++)
		total += a[i].got;
	cr_expect_leq(total, 10000);
	cr_expect_geq(total, 10000 - 3 * 7); /* at most each shard's last lease is left unused */
	ats_sharded_free(s);
}

static void *count_multi(void *p)
{
	struct count_arg *a = p;
	for (uint64_t i = 0; i < a->tries; i++) {
		if (i % 3 == 0)
			a->got += (uint64_t)ats_limiter_allow_at(a->multi[0], 1, a->now) << 32;
		else
			a->got += ats_multi_allow_at(a->multi, 2, 1, a->now);
	}
	return NULL;
}

/* All-or-nothing under contention: multi grants never exceed either limiter, and the first
 * limiter is charged exactly for what was granted plus what refunds could not give back. */
Test(stress, multi_never_over_grants)
{
	ats_limiter *a = NULL, *b = NULL;
	cr_assert_null(ats_limiter_new(&a, (ats_rate){0, ATS_NS_PER_SEC}, 6000));
	cr_assert_null(ats_limiter_new(&b, (ats_rate){0, ATS_NS_PER_SEC}, 3000));
	ats_limiter *ab[] = {a, b};
	struct count_arg args[THREADS];
	uint64_t now = ats_now_ns() + 1000;
	for (int i = 0; i < THREADS; i++)
		args[i] = (struct count_arg){.multi = ab, .now = now, .tries = 6000};
	run_threads(count_multi, args, sizeof *args);
	uint64_t multi = 0, single = 0;
	for (int i = 0; i < THREADS; i++) {
		multi += args[i].got & 0xffffffff;
		single += args[i].got >> 32;
	}
	int64_t left_a = ats_limiter_tokens_at(a, now), left_b = ats_limiter_tokens_at(b, now);
	cr_expect_geq(left_a, 0);
	cr_expect_geq(left_b, 0);
	cr_expect_leq(multi, 3000);
	cr_expect_leq(multi + single, 6000);
	cr_expect_leq(multi + single + (uint64_t)left_a, 6000);
	cr_expect_leq(multi + (uint64_t)left_b, 3000);
	ats_limiter_free(a);
	ats_limiter_free(b);
}

/* ---- The audit: every grant's time, every window checked ---- */

struct audit_arg {
	ats_limiter *l;
	ats_sharded *s;
	uint64_t *times;
	uint64_t count;
};

static void *audit_exact(void *p)
{
	struct audit_arg *a = p;
	for (uint64_t i = 0; i < ITERS; i++) {
		uint64_t now = ats_now_ns();
		if (ats_limiter_allow_at(a->l, 1, now))
			a->times[a->count++] = now;
	}
	return NULL;
}

static void *audit_sharded(void *p)
{
	struct audit_arg *a = p;
	for (uint64_t i = 0; i < ITERS; i++) {
		uint64_t now = ats_now_ns();
		if (ats_sharded_allow_at(a->s, 1, now))
			a->times[a->count++] = now;
	}
	return NULL;
}

static int cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
	return (a > b) - (a < b);
}

/* Checks that no window [t, t+w] holds more than burst + rate*w + slack grants, for windows from
 * 0 to the whole run. The limiter's clock floors to units of 2^-shift tokens, so the exact bound
 * is burst + rate*w + 2^-shift: count * 2^shift * period <= (burst * 2^shift + 1) * period +
 * events * w * 2^shift, in 128-bit integers. Returns the number of grants. */
static uint64_t audit(struct audit_arg *args, ats_rate rate, uint64_t burst, uint64_t slack)
{
	uint64_t n = 0;
	for (int i = 0; i < THREADS; i++)
		n += args[i].count;
	uint64_t *all = malloc(sizeof *all * (n + 1));
	cr_assert_not_null(all);
	uint64_t k = 0;
	for (int i = 0; i < THREADS; i++)
		for (uint64_t j = 0; j < args[i].count; j++)
			all[k++] = args[i].times[j];
	qsort(all, n, sizeof *all, cmp_u64);
	ats_token_clock c;
	ats_err *err = ats_token_clock_make(&c, rate, burst, 0);
	cr_assert_null(err);
	unsigned __int128 scale = (unsigned __int128)1 << c.shift;
	static const uint64_t windows[] = {0, 1000, 10000, 100000, 1000000, 10000000, UINT64_MAX};
	for (size_t wi = 0; wi < sizeof windows / sizeof *windows; wi++) {
		uint64_t w = windows[wi];
		for (uint64_t i = 0, j = 0; i < n; i++) {
			if (j < i)
				j = i;
			while (j + 1 < n && all[j + 1] - all[i] <= w)
				j++;
			uint64_t count = j - i + 1, span = w == UINT64_MAX ? all[n - 1] - all[0] : w;
			unsigned __int128 lhs =
			    (unsigned __int128)(count > slack ? count - slack : 0) * scale * rate.period_ns;
			unsigned __int128 rhs = ((unsigned __int128)burst * scale + 1) * rate.period_ns +
			                        (unsigned __int128)rate.events * span * scale;
			cr_assert(lhs <= rhs,
			          "window %llu ns from grant %llu holds %llu grants: over burst %llu + rate*w + %llu",
			          (unsigned long long)w, (unsigned long long)i, (unsigned long long)count,
			          (unsigned long long)burst, (unsigned long long)slack);
		}
	}
	free(all);
	return n;
}

Test(stress, audit_exact_limiter)
{
	ats_rate rate = ats_rate_per_sec(2000000); /* below what 4 threads attempt, so it binds */
	uint64_t burst = 50;
	ats_limiter *l = NULL;
	cr_assert_null(ats_limiter_new(&l, rate, burst));
	struct audit_arg args[THREADS];
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct audit_arg){.l = l, .times = malloc(sizeof(uint64_t) * ITERS)};
		cr_assert_not_null(args[i].times);
	}
	run_threads(audit_exact, args, sizeof *args);
	uint64_t n = audit(args, rate, burst, 0);
	cr_expect_geq(n, burst);
	for (int i = 0; i < THREADS; i++)
		free(args[i].times);
	ats_limiter_free(l);
}

Test(stress, audit_sharded_limiter)
{
	ats_rate rate = ats_rate_per_sec(2000000);
	uint64_t burst = 64;
	ats_sharded *s = NULL;
	ats_sharded_config cfg = {.rate = rate, .burst = burst, .batch = 8, .lease_ns = 100000};
	cr_assert_null(ats_sharded_new(&s, &cfg));
	struct audit_arg args[THREADS];
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct audit_arg){.s = s, .times = malloc(sizeof(uint64_t) * ITERS)};
		cr_assert_not_null(args[i].times);
	}
	run_threads(audit_sharded, args, sizeof *args);
	uint64_t n = audit(args, rate, burst, ats_sharded_max_excess(s));
	cr_expect_geq(n, burst);
	for (int i = 0; i < THREADS; i++)
		free(args[i].times);
	ats_sharded_free(s);
}
