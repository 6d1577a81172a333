/* SPDX-License-Identifier: BSD-2-Clause */
/* Latency histograms: the bucket layout against a brute-force check (contiguous, 1/64 relative
 * width), percentiles of known distributions against the exact order statistics, min/max, merge,
 * reset, the edges (0, the top, clamping), caller memory and bad input. */
#include <atscale/histogram.h>

#include <criterion/criterion.h>
#include <stdlib.h>

static void expect_code(ats_err *err, ats_code code)
{
	cr_expect_not_null(err);
	cr_expect_eq(ats_err_code(err), code);
	ats_err_unref(err);
}

Test(histogram, buckets_are_contiguous_and_within_one_64th)
{
	cr_expect_eq(ats_histogram_bucket_low(0), 0);
	for (unsigned i = 0; i < ATS_HISTOGRAM_BUCKETS; i++) {
		uint64_t lo = ats_histogram_bucket_low(i), hi = ats_histogram_bucket_high(i);
		cr_assert_leq(lo, hi);
		cr_assert_eq(ats_histogram_bucket_of(lo), i, "bucket %u", i);
		cr_assert_eq(ats_histogram_bucket_of(hi), i, "bucket %u", i);
		if (i + 1 < ATS_HISTOGRAM_BUCKETS)
			cr_assert_eq(hi + 1, ats_histogram_bucket_low(i + 1), "gap after bucket %u", i);
		/* Width at most 1/64 of the values it holds (exact below 64). */
		cr_assert_leq((hi - lo) * 64, lo, "bucket %u [%llu, %llu]", i, (unsigned long long)lo,
		              (unsigned long long)hi);
	}
	cr_expect_eq(ats_histogram_bucket_high(ATS_HISTOGRAM_BUCKETS - 1), (UINT64_C(1) << 40) - 1);
	cr_expect_eq(ats_histogram_bucket_of(UINT64_C(1) << 40), ATS_HISTOGRAM_BUCKETS - 1);
	cr_expect_eq(ats_histogram_bucket_of(UINT64_MAX), ATS_HISTOGRAM_BUCKETS - 1);
	cr_expect_eq(ats_histogram_bucket_low(ATS_HISTOGRAM_BUCKETS), 0);
	/* Every small value, and random large ones, fall inside their bucket. */
	for (uint64_t v = 0; v < (1u << 16); v++) {
		unsigned b = ats_histogram_bucket_of(v);
		cr_assert(ats_histogram_bucket_low(b) <= v && v <= ats_histogram_bucket_high(b));
	}
	srand(7);
	for (int k = 0; k < 100000; k++) {
		uint64_t v = (((uint64_t)rand() << 31) ^ (uint64_t)rand()) & ((UINT64_C(1) << 40) - 1);
		unsigned b = ats_histogram_bucket_of(v);
		cr_assert(ats_histogram_bucket_low(b) <= v && v <= ats_histogram_bucket_high(b));
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

Test(histogram, percentiles_bound_the_exact_quantile_within_one_64th)
{
	ats_histogram *h = NULL;
	cr_assert_null(ats_histogram_new(&h, 0));
	enum { N = 20000 };
	static uint64_t v[N];
	srand(11);
	for (int i = 0; i < N; i++) {
		/* A long-tailed mix: mostly ~100 us, some ms, a few near a second. */
		int r = rand() % 100;
		v[i] = r < 90   ? 50000 + (uint64_t)(rand() % 100000)
		       : r < 99 ? 1000000 + (uint64_t)(rand() % 9000000)
		                : 100000000 + (uint64_t)(rand() % 900000000);
		ats_histogram_record(h, v[i]);
	}
	qsort(v, N, sizeof v[0], cmp_u64);
	cr_expect_eq(ats_histogram_count(h), N);
	const double qs[] = {0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1};
	for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
		size_t rank = qs[k] == 0 ? 1 : (size_t)(qs[k] * N + 0.999999);
		uint64_t exact = v[rank - 1], got = ats_histogram_percentile(h, qs[k]);
		cr_expect(got >= exact && got - exact <= exact / 64, "q %g: exact %llu, got %llu", qs[k],
		          (unsigned long long)exact, (unsigned long long)got);
	}
	ats_histogram_snapshot *s = malloc(sizeof *s);
	cr_assert_not_null(s);
	ats_histogram_snapshot_get(h, s);
	cr_expect_eq(s->count, N);
	uint64_t sum = 0;
	for (int i = 0; i < N; i++)
		sum += v[i];
	cr_expect_eq(s->sum, sum);
	cr_expect_eq(ats_histogram_snapshot_min(s), ats_histogram_bucket_high(ats_histogram_bucket_of(v[0])));
	cr_expect_eq(ats_histogram_snapshot_max(s), ats_histogram_bucket_high(ats_histogram_bucket_of(v[N - 1])));
	cr_expect_eq(ats_histogram_snapshot_percentile(s, 0.5), ats_histogram_percentile(h, 0.5));
	free(s);
	ats_histogram_free(h);
}

Test(histogram, exact_below_64_and_rank_rounding)
{
	ats_histogram *h = NULL;
	cr_assert_null(ats_histogram_new(&h, 1));
	for (uint64_t v = 1; v <= 50; v++)
		ats_histogram_record(h, v);
	cr_expect_eq(ats_histogram_percentile(h, 0), 1);
	cr_expect_eq(ats_histogram_percentile(h, 0.5), 25);
	cr_expect_eq(ats_histogram_percentile(h, 0.98), 49, "0.98 * 50 = 49 exactly, despite rounding");
	cr_expect_eq(ats_histogram_percentile(h, 1), 50);
	cr_expect_eq(ats_histogram_percentile(h, -0.1), 0);
	cr_expect_eq(ats_histogram_percentile(h, 1.5), 0);
	cr_expect_eq(ats_histogram_percentile(h, 0.0 / 0.0), 0);
	/* Billions of values: a fraction of a rank still rounds up. 10^9 of 10 and 10^9 + 1 of 20:
	 * the median is the 1000000001st value, a 20 (half a rank past 10^9). */
	ats_histogram_reset(h);
	ats_histogram_record_n(h, 10, 1000000000);
	ats_histogram_record_n(h, 20, 1000000001);
	cr_expect_eq(ats_histogram_percentile(h, 0.5), 20);
	/* 3 * 10^9 - 1 of 100 and one of 1000: q * count = 2999999999.7, so the last value. */
	ats_histogram_reset(h);
	ats_histogram_record_n(h, 100, 2999999999u);
	ats_histogram_record_n(h, 1000, 1);
	cr_expect_eq(ats_histogram_percentile(h, 1 - 1e-10), ats_histogram_bucket_high(ats_histogram_bucket_of(1000)));
	cr_expect_eq(ats_histogram_percentile(h, 0.5), 100);
	ats_histogram_free(h);
}

Test(histogram, edges_zero_top_and_clamped)
{
	ats_histogram *h = NULL;
	cr_assert_null(ats_histogram_new(&h, 2));
	cr_expect_eq(ats_histogram_percentile(h, 0.5), 0, "empty");
	ats_histogram_record(h, 0);
	ats_histogram_record(h, (UINT64_C(1) << 40) - 1);
	ats_histogram_record_n(h, UINT64_MAX, 2);
	ats_histogram_snapshot *s = malloc(sizeof *s);
	cr_assert_not_null(s);
	ats_histogram_snapshot_get(h, s);
	cr_expect_eq(s->count, 4);
	cr_expect_eq(s->clamped, 2);
	cr_expect_eq(s->buckets[0], 1);
	cr_expect_eq(s->buckets[ATS_HISTOGRAM_BUCKETS - 1], 3);
	cr_expect_eq(ats_histogram_snapshot_min(s), 0);
	cr_expect_eq(ats_histogram_snapshot_max(s), (UINT64_C(1) << 40) - 1);
	free(s);
	ats_histogram_record_n(h, 5, 0); /* a weight of 0 counts nothing */
	cr_expect_eq(ats_histogram_count(h), 4);
	ats_histogram_free(h);
}

Test(histogram, merge_adds_and_reset_zeroes)
{
	ats_histogram *a = NULL, *b = NULL;
	cr_assert_null(ats_histogram_new(&a, 1));
	cr_assert_null(ats_histogram_new(&b, 4));
	for (uint64_t v = 1; v <= 100; v++)
		ats_histogram_record(a, v * 1000);
	for (uint64_t v = 101; v <= 200; v++)
		ats_histogram_record(b, v * 1000);
	cr_assert_null(ats_histogram_merge(a, b));
	cr_expect_eq(ats_histogram_count(a), 200);
	cr_expect_eq(ats_histogram_count(b), 100, "src unchanged");
	uint64_t p50 = ats_histogram_percentile(a, 0.5);
	cr_expect(p50 >= 100000 && p50 <= 100000 + 100000 / 64, "p50 %llu", (unsigned long long)p50);
	expect_code(ats_histogram_merge(a, a), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_histogram_merge(NULL, a), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_histogram_merge(a, NULL), ATS_ERR_INVALID_ARGUMENT);
	ats_histogram_reset(a);
	cr_expect_eq(ats_histogram_count(a), 0);
	cr_expect_eq(ats_histogram_percentile(a, 0.99), 0);
	ats_histogram_reset(NULL);
	ats_histogram_free(a);
	ats_histogram_free(b);
}

Test(histogram, caller_memory_and_bad_input)
{
	size_t bytes = ats_histogram_footprint(3); /* rounded up to 4 shards */
	cr_expect_eq(bytes, ats_histogram_footprint(4));
	cr_expect_eq(ats_histogram_footprint(ATS_HISTOGRAM_MAX_SHARDS + 1), 0);
	void *mem = aligned_alloc(64, bytes + 64);
	cr_assert_not_null(mem);
	ats_histogram *h = mem;
	expect_code(ats_histogram_init(h, bytes - 1, 3), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_histogram_init((ats_histogram *)((char *)mem + 8), bytes, 3), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_histogram_init(NULL, bytes, 3), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_histogram_init(h, bytes, ATS_HISTOGRAM_MAX_SHARDS + 1), ATS_ERR_INVALID_ARGUMENT);
	cr_assert_null(ats_histogram_init(h, bytes, 3));
	ats_histogram_record(h, 777);
	cr_expect_eq(ats_histogram_count(h), 1);
	ats_histogram_free(h); /* caller memory: nothing freed */
	free(mem);
	ats_histogram *out = (ats_histogram *)1;
	expect_code(ats_histogram_new(&out, ATS_HISTOGRAM_MAX_SHARDS + 1), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_null(out);
	expect_code(ats_histogram_new(NULL, 1), ATS_ERR_INVALID_ARGUMENT);
	ats_histogram_record(NULL, 1);
	cr_expect_eq(ats_histogram_count(NULL), 0);
	cr_expect_eq(ats_histogram_percentile(NULL, 0.5), 0);
	ats_histogram_free(NULL);
}
