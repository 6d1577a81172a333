/* The physical floor: what the hardware charges for the primitives every hot path is made of. */
#include "bench.h"
#include "atscale/clock.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_THREADS 256

/* One counter per thread, each on its own cache line: the uncontended cost. */
struct lines {
	struct {
		_Alignas(64) _Atomic uint64_t v;
	} line[MAX_THREADS];
};

static void *lines_setup(unsigned threads)
{
	return threads <= MAX_THREADS ? aligned_alloc(64, sizeof(struct lines)) : NULL;
}

static void cas_run(void *state, unsigned tid, uint64_t iters)
{
	_Atomic uint64_t *v = &((struct lines *)state)->line[tid].v;
	atomic_store_explicit(v, 0, memory_order_relaxed);
	for (uint64_t i = 0; i < iters; i++) {
		uint64_t expected = i;
		atomic_compare_exchange_strong_explicit(v, &expected, i + 1, memory_order_acq_rel,
		                                        memory_order_relaxed);
	}
}

static void fetch_add_run(void *state, unsigned tid, uint64_t iters)
{
	_Atomic uint64_t *v = &((struct lines *)state)->line[tid].v;
	for (uint64_t i = 0; i < iters; i++)
		atomic_fetch_add_explicit(v, 1, memory_order_acq_rel);
}

static void clock_monotonic_run(void *state, unsigned tid, uint64_t iters)
{
	(void)state, (void)tid;
	for (uint64_t i = 0; i < iters; i++)
		ats_bench_sink(ats_now_ns());
}

static void clock_fast_run(void *state, unsigned tid, uint64_t iters)
{
	(void)state, (void)tid;
	for (uint64_t i = 0; i < iters; i++)
		ats_bench_sink(ats_fast_now_ns());
}

static void clock_fast_extra(void *state, char *buf, size_t len)
{
	(void)state;
	snprintf(buf, len, "\"source\": \"%s\", \"precision_ns\": %llu", ats_fast_source(),
	         (unsigned long long)ats_fast_precision_ns());
}

static const ats_bench floor_cas = {"floor.cas", ATS_BENCH_1T | ATS_BENCH_MT, lines_setup, cas_run, free, NULL, NULL};
static const ats_bench floor_fetch_add = {
    "floor.fetch_add", ATS_BENCH_1T | ATS_BENCH_MT, lines_setup, fetch_add_run, free, NULL, NULL};
static const ats_bench floor_clock_monotonic = {
    "floor.clock_monotonic", ATS_BENCH_1T, NULL, clock_monotonic_run, NULL, NULL, NULL};
static const ats_bench floor_clock_fast = {"floor.clock_fast", ATS_BENCH_1T, NULL, clock_fast_run, NULL, NULL,
                                           clock_fast_extra};
ATS_BENCH(floor_cas)
ATS_BENCH(floor_fetch_add)
ATS_BENCH(floor_clock_monotonic)
ATS_BENCH(floor_clock_fast)
