/* SPDX-License-Identifier: BSD-2-Clause */
/* Histogram rows: histogram.record (one value into the caller's CPU's shard; at one thread and at
 * every thread count, where per-core shards keep the recorders off each other's lines) and
 * histogram.percentile (a read: the shards summed, then a walk of the buckets). */
#include "bench.h"
#include "atscale/histogram.h"

#include <stdlib.h>

static void *setup(unsigned threads)
{
	(void)threads;
	ats_histogram *h = NULL;
	return ats_histogram_new(&h, 0) ? NULL : h;
}

static void teardown(void *state)
{
	ats_histogram_free(state);
}

static void record_run(void *state, unsigned tid, uint64_t iters)
{
	ats_histogram *h = state;
	uint64_t v = 100000 + tid;
	for (uint64_t i = 0; i < iters; i++)
		ats_histogram_record(h, v + (i & 1023) * 97);
}

static void percentile_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	ats_histogram *h = state;
	if (ats_histogram_count(h) == 0)
		for (uint64_t v = 0; v < 100000; v++)
			ats_histogram_record(h, 1000 + v * 13);
	for (uint64_t i = 0; i < iters; i++)
		ats_bench_sink((void *)(uintptr_t)ats_histogram_percentile(h, 0.99));
}

static const ats_bench histogram_record = {
    "histogram.record", ATS_BENCH_1T | ATS_BENCH_MT, setup, record_run, teardown, NULL, NULL};
static const ats_bench histogram_percentile = {
    "histogram.percentile", ATS_BENCH_1T, setup, percentile_run, teardown, NULL, NULL};
ATS_BENCH(histogram_record)
ATS_BENCH(histogram_percentile)
