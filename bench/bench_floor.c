/* SPDX-License-Identifier: BSD-2-Clause */
/* The physical floor: what the hardware charges for the primitives every hot path is made of. */
#include "bench.h"
#include "atscale/clock.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

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

/* A CAS whose expected value must first be loaded: the cost of any read-modify-write whose current
 * value is not already known (the load waits for the previous locked instruction to finish). */
static void load_cas_run(void *state, unsigned tid, uint64_t iters)
{
	_Atomic uint64_t *v = &((struct lines *)state)->line[tid].v;
	atomic_store_explicit(v, 0, memory_order_relaxed);
	for (uint64_t i = 0; i < iters; i++) {
		uint64_t old;
		do
			old = atomic_load_explicit(v, memory_order_relaxed);
		while (!atomic_compare_exchange_weak_explicit(v, &old, old + 1, memory_order_acq_rel,
		                                              memory_order_relaxed));
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
static const ats_bench floor_load_cas = {
    "floor.load_cas", ATS_BENCH_1T | ATS_BENCH_MT, lines_setup, load_cas_run, free, NULL, NULL};
static const ats_bench floor_fetch_add = {
    "floor.fetch_add", ATS_BENCH_1T | ATS_BENCH_MT, lines_setup, fetch_add_run, free, NULL, NULL};
static const ats_bench floor_clock_monotonic = {
    "floor.clock_monotonic", ATS_BENCH_1T, NULL, clock_monotonic_run, NULL, NULL, NULL};
static const ats_bench floor_clock_fast = {"floor.clock_fast", ATS_BENCH_1T, NULL, clock_fast_run, NULL, NULL,
                                           clock_fast_extra};
ATS_BENCH(floor_cas)
ATS_BENCH(floor_load_cas)
ATS_BENCH(floor_fetch_add)
ATS_BENCH(floor_clock_monotonic)
ATS_BENCH(floor_clock_fast)

/* One dependent load per op through a random cyclic chain of 64-byte lines over 64 MiB (Sattolo's
 * shuffle: one cycle through every line), so each op waits for one miss the prefetchers cannot
 * guess. The floor for a hash lookup at a million keys. */
#define CHAIN_LINES ((64u << 20) / 64)

struct chain {
	void **lines; /* CHAIN_LINES lines of 8 words; word 0 points to the next line */
	void **cur;
};

static void *chain_setup(unsigned threads)
{
	(void)threads;
	struct chain *c = calloc(1, sizeof *c);
	uint32_t *order = malloc(CHAIN_LINES * sizeof *order);
	if (!c || !order || !(c->lines = aligned_alloc(64, (size_t)CHAIN_LINES * 64))) {
		free(order);
		free(c);
		return NULL;
	}
	for (uint32_t i = 0; i < CHAIN_LINES; i++)
		order[i] = i;
	uint64_t x = 88172645463325252ull;
	for (uint32_t i = CHAIN_LINES - 1; i > 0; i--) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		uint32_t j = (uint32_t)(x % i); /* Sattolo: j < i */
		uint32_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (uint32_t i = 0; i < CHAIN_LINES; i++)
		c->lines[(size_t)order[i] * 8] = &c->lines[(size_t)order[(i + 1) % CHAIN_LINES] * 8];
	c->cur = &c->lines[(size_t)order[0] * 8];
	free(order);
	return c;
}

static void chain_teardown(void *state)
{
	struct chain *c = state;
	free(c->lines);
	free(c);
}

static void chain_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct chain *c = state;
	void **p = c->cur;
	for (uint64_t i = 0; i < iters; i++)
		p = (void **)*p;
	c->cur = p;
	ats_bench_sink(p);
}

static const ats_bench floor_dram_miss = {"floor.dram_miss", ATS_BENCH_1T, chain_setup, chain_run,
                                          chain_teardown,    NULL,         NULL};
ATS_BENCH(floor_dram_miss)

/* ---- The kernel's own wake-up lateness: what ctx.timer_late_* cannot beat ----
 * One thread sleeping in clock_nanosleep(TIMER_ABSTIME) to deadlines drawn as ctx.timer_late_*
 * draws them (200 us .. 2 ms ahead), lateness = wake time - deadline. A context's deadline needs
 * two such wake-ups (the timer thread, then the waiter), so its lateness sits above this. */

static bool sleep_late_measure(bool quick, unsigned percentile, ats_bench_result *out)
{
	enum { MAX_SAMPLES = 2000 };
	static uint64_t late[MAX_SAMPLES];
	size_t n = quick ? 300 : MAX_SAMPLES;
	uint64_t seed = 0x9E3779B97F4A7C15ull;
	/* The timer thread sleeps with a 1 ns timer slack; so does this floor (default: 50 us). */
	int slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	for (size_t i = 0; i < n; i++) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		uint64_t deadline = ats_now_ns() + 200000 + seed % 1800000;
		struct timespec ts = {(time_t)(deadline / ATS_NS_PER_SEC), (long)(deadline % ATS_NS_PER_SEC)};
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0)
			;
		late[i] = ats_now_ns() - deadline;
	}
	prctl(PR_SET_TIMERSLACK, (unsigned long)(slack > 0 ? slack : 50000), 0, 0, 0);
	ats_bench_percentile(late, n, percentile, out);
	snprintf(out->extra, sizeof out->extra, "\"samples\": %zu", n);
	return true;
}

static bool sleep_late_p50(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	return sleep_late_measure(quick, 50, out);
}

static bool sleep_late_p99(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	return sleep_late_measure(quick, 99, out);
}

static const ats_bench floor_sleep_late_p50 = {"floor.sleep_late_p50", ATS_BENCH_1T, NULL, NULL, NULL,
                                               sleep_late_p50,         NULL};
static const ats_bench floor_sleep_late_p99 = {"floor.sleep_late_p99", ATS_BENCH_1T, NULL, NULL, NULL,
                                               sleep_late_p99,         NULL};
ATS_BENCH(floor_sleep_late_p50)
ATS_BENCH(floor_sleep_late_p99)
