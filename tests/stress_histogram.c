/* SPDX-License-Identifier: BSD-2-Clause */
/* Latency histograms under contention (run under TSan and ASan): recorders on every core with
 * known values while a reader takes percentiles and snapshots; at the end every count is exact.
 * Nothing sleeps to synchronize. */
#include <criterion/criterion.h>

#include "atscale/histogram.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "slow.h"
#ifdef SLOW
#define PER_THREAD 50000u
#else
#define PER_THREAD 1000000u
#endif
#define RECORDERS 4

static ats_histogram *h;
static _Atomic int running;

static void *recorder(void *arg)
{
	uint64_t base = (uint64_t)(uintptr_t)arg;
	for (uint64_t i = 0; i < PER_THREAD; i++)
		ats_histogram_record(h, base + i % 1000);
	return NULL;
}

static void *reader(void *arg)
{
	(void)arg;
	ats_histogram_snapshot *s = malloc(sizeof *s);
	cr_assert_not_null(s);
	while (atomic_load(&running)) {
		uint64_t p = ats_histogram_percentile(h, 0.99);
		cr_assert_leq(p, ats_histogram_bucket_high(ats_histogram_bucket_of(4 * 1000000 + 999)));
		ats_histogram_snapshot_get(h, s);
		cr_assert_leq(s->count, (uint64_t)RECORDERS * PER_THREAD);
	}
	free(s);
	return NULL;
}

Test(histogram, concurrent_records_are_all_counted, .timeout = 120)
{
	cr_assert_null(ats_histogram_new(&h, 0));
	atomic_store(&running, 1);
	pthread_t r, t[RECORDERS];
	cr_assert_eq(pthread_create(&r, NULL, reader, NULL), 0);
	for (uintptr_t i = 0; i < RECORDERS; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, recorder, (void *)((i + 1) * 1000000)), 0);
	for (int i = 0; i < RECORDERS; i++)
		cr_assert_eq(pthread_join(t[i], NULL), 0);
	atomic_store(&running, 0);
	cr_assert_eq(pthread_join(r, NULL), 0);
	ats_histogram_snapshot *s = malloc(sizeof *s);
	cr_assert_not_null(s);
	ats_histogram_snapshot_get(h, s);
	cr_assert_eq(s->count, (uint64_t)RECORDERS * PER_THREAD);
	uint64_t sum = 0, in_buckets = 0;
	for (uint64_t k = 1; k <= RECORDERS; k++)
		for (uint64_t i = 0; i < 1000; i++)
			sum += (k * 1000000 + i) * (PER_THREAD / 1000);
	cr_assert_eq(s->sum, sum);
	for (unsigned b = 0; b < ATS_HISTOGRAM_BUCKETS; b++)
		in_buckets += s->buckets[b];
	cr_assert_eq(in_buckets, (uint64_t)RECORDERS * PER_THREAD);
	/* Each recorder's values sit in [k ms, k ms + 999 ns]: a quarter of the counts each. */
	uint64_t q1 = 0;
	for (unsigned b = ats_histogram_bucket_of(1000000); b <= ats_histogram_bucket_of(1000999); b++)
		q1 += s->buckets[b];
	cr_assert_eq(q1, PER_THREAD);
	free(s);
	ats_histogram_free(h);
}
