/* SPDX-License-Identifier: BSD-2-Clause */
/* What every C peer program shares: the runner's command line (--quick, --filter; --threads is
 * accepted and ignored, each row says how many threads it runs), the calibration and sampling of a
 * row, and its JSON line. A row is a function that runs `iters` operations and returns the
 * nanoseconds they took, so a peer can leave its own set-up (allocating nodes, starting threads'
 * work) outside the timed part when the row is defined that way.
 *
 * Calibration: iters grows until one run takes a quarter of the target (2 ms quick, 20 ms
 * otherwise), is scaled to the target, then one warm-up run and 3 (quick) or 11 timed runs; the
 * median, min and max per operation are printed, as atscale-bench prints its own rows. */
#ifndef ATS_BENCH_PEER_H
#define ATS_BENCH_PEER_H

#include "../filter.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct peer_opts {
	bool quick;
	const char *filter;
};

typedef uint64_t (*peer_run_fn)(void *state, uint64_t iters);

static inline uint64_t peer_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline struct peer_opts peer_parse(int argc, char **argv)
{
	struct peer_opts o = {false, NULL};
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			o.quick = true;
		else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
			o.filter = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			i++;
	}
	return o;
}

static inline bool peer_selects(const struct peer_opts *o, const char *name)
{
	return ats_bench_filter_selects(o->filter, name);
}

static inline int peer_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Times `run` and prints the row. `threads` is what the JSON line reports. */
static inline void peer_measure(const struct peer_opts *o, const char *name, unsigned threads, peer_run_fn run,
                                void *state)
{
	uint64_t target = o->quick ? 2000000u : 20000000u, iters = 64, t = 0;
	for (;;) {
		t = run(state, iters);
		if (t >= target / 4 || iters > (UINT64_C(1) << 40))
			break;
		iters *= 4;
	}
	if (t < target && t > 0)
		iters = (uint64_t)((double)iters * (double)target / (double)t) + 1;
	run(state, iters);
	int reps = o->quick ? 3 : 11;
	double s[11];
	for (int i = 0; i < reps; i++)
		s[i] = (double)run(state, iters) / (double)iters;
	qsort(s, (size_t)reps, sizeof *s, peer_cmp_double);
	printf(
	    "{\"name\": \"%s\", \"ns_per_op\": %.3f, \"min\": %.3f, \"max\": %.3f, \"threads\": %u, \"peer\": true}\n",
	    name, s[reps / 2], s[0], s[reps - 1], threads);
	fflush(stdout);
}

/* The CPU's spin-wait hint. */
static inline void peer_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield");
#endif
}

/* The waiting end of a spinning row that found nothing to do: a pause, and a yield after 64 misses
 * in a row, so a row with more threads than cores lets the thread it waits for run (with a core
 * each, the yield never comes). */
static inline void peer_backoff(unsigned *misses)
{
	if (++*misses < 64) {
		peer_pause();
		return;
	}
	*misses = 0;
	sched_yield();
}

/* Runs part(arg, 0, iters) on the calling thread and part(arg, i, iters) on n - 1 threads of its
 * own, and returns the nanoseconds until all have finished (thread start included: a few tens of
 * microseconds against the 20 ms a row's run is calibrated to). */
typedef void (*peer_part_fn)(void *arg, unsigned idx, uint64_t iters);

struct peer_thread {
	pthread_t th;
	peer_part_fn part;
	void *arg;
	unsigned idx;
	uint64_t iters;
};

static inline void *peer_thread_main(void *p)
{
	struct peer_thread *t = p;
	t->part(t->arg, t->idx, t->iters);
	return NULL;
}

static inline uint64_t peer_run_threads(unsigned n, peer_part_fn part, void *arg, uint64_t iters)
{
	struct peer_thread t[8];
	if (n < 1 || n > 8)
		abort();
	uint64_t t0 = peer_mono_ns();
	for (unsigned i = 1; i < n; i++) {
		t[i] = (struct peer_thread){.part = part, .arg = arg, .idx = i, .iters = iters};
		if (pthread_create(&t[i].th, NULL, peer_thread_main, &t[i]) != 0)
			abort();
	}
	part(arg, 0, iters);
	for (unsigned i = 1; i < n; i++)
		pthread_join(t[i].th, NULL);
	return peer_mono_ns() - t0;
}

#endif
