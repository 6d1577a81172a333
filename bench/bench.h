/* SPDX-License-Identifier: BSD-2-Clause */
/* The benchmark runner's registry. Each bench/bench_<module>.c defines rows with ATS_BENCH and
 * the one runner, atscale-bench, measures them all the same way: warm-up, then repeated timed
 * runs, reporting the median, min and max ns per operation. At N threads ns_per_op is wall time
 * over all operations of all threads (aggregate: perfect scaling halves it from 1 to 2 threads). */
#ifndef ATS_BENCH_H
#define ATS_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <stdint.h>

enum {
	ATS_BENCH_1T = 1,       /* run at 1 thread */
	ATS_BENCH_MT = 2,       /* run at every thread count above 1 (default: all cores) */
	ATS_BENCH_PEER = 4,     /* a peer row (name starts with "peer.") */
	ATS_BENCH_FIXED_2T = 8, /* run at exactly 2 threads (e.g. contention on one object) */
};

/* A row that measures itself (timer lateness, memory per key) fills this in. */
typedef struct ats_bench_result {
	double ns_per_op, min, max;
	char extra[256]; /* extra JSON members without braces, e.g. "\"bytes_per_key\": 88" */
} ats_bench_result;

typedef struct ats_bench {
	const char *name;
	unsigned flags;
	/* Optional: builds the shared state for `threads` threads (NULL return = skip row). */
	void *(*setup)(unsigned threads);
	/* Performs `iters` operations on thread `tid`. Must not be optimized away (use ats_bench_sink). */
	void (*run)(void *state, unsigned tid, uint64_t iters);
	/* Optional: frees the state. */
	void (*teardown)(void *state);
	/* Optional, instead of run: measures the row itself (quick = smaller sample). */
	bool (*measure)(void *state, bool quick, ats_bench_result *out);
	/* Optional: extra JSON members for the row after it ran (e.g. memory per key). */
	void (*extra)(void *state, char *buf, size_t len);
} ats_bench;

void ats_bench_register(const ats_bench *b);

/* For rows that measure a distribution (lateness): sorts samples[0..n) and sets out's ns_per_op to
 * the given percentile, min and max to the extremes. n > 0. */
void ats_bench_percentile(uint64_t *samples, size_t n, unsigned percentile, ats_bench_result *out);

/* For rows that measure what an idle component costs. The rows that ran before leave their threads
 * parked (a pool's idle workers still wake for their steal period), so such a row counts only the
 * threads its component started: it takes the process's threads before making the component, then
 * ats_bench_cpu_per_sec sleeps window_ns and returns the CPU time that the threads not in `before`
 * used meanwhile, per wall-clock second (1e7 = 1% of one core); *threads gets how many it counted.
 * ats_bench_threads_get returns false when /proc/self/task cannot be read. */
typedef struct ats_bench_threads {
	pid_t *tid; /* sorted */
	size_t n;
} ats_bench_threads;
bool ats_bench_threads_get(ats_bench_threads *out);
void ats_bench_threads_free(ats_bench_threads *t);
double ats_bench_cpu_per_sec(const ats_bench_threads *before, uint64_t window_ns, size_t *threads);

#define ATS_BENCH(var)                                                                                                 \
	__attribute__((constructor)) static void ats_bench_register_##var(void)                                        \
	{                                                                                                              \
		ats_bench_register(&var);                                                                              \
	}

/* Keeps a value alive without a memory access the compiler could hoist. */
#define ats_bench_sink(v) __asm__ __volatile__("" : : "r"(v) : "memory")

#endif
