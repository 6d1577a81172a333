/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the histogram: each fences a bug that was found and fixed (the spec tests are in
 * test_histogram.c). The comment above each test says what the bug was. */
#include <atscale/histogram.h>

#include <criterion/criterion.h>

/* Bug: the 1.0 quantile read the minimum once the count neared 2^64. q * (double)total rounded to 2^64, whose
 * conversion to uint64_t is undefined (0 here), so the rank became 1. A rank at or past the total is now the total. */
Test(histogram, p100_of_a_count_near_2_64_is_the_max)
{
	ats_histogram *h;
	cr_assert_null(ats_histogram_new(&h, 1));
	ats_histogram_record_n(h, 5, UINT64_MAX - 2);
	ats_histogram_record_n(h, 1000, 1);
	uint64_t p100 = ats_histogram_percentile(h, 1.0);
	cr_expect_eq(p100, ats_histogram_bucket_high(ats_histogram_bucket_of(1000)), "p100 = %llu",
	             (unsigned long long)p100);
	ats_histogram_free(h);
}
