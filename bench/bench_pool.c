/* SPDX-License-Identifier: BSD-2-Clause */
/* The worker pool: submit one task from a thread outside the pool and wait for it to finish (the
 * round trip a server's I/O thread pays to hand work to a core), and a fan-out of 1000 tasks
 * waited for together (per fan-out), submitted one by one and as one burst. One worker, so the
 * submitting thread keeps a core of its own on a small machine (more workers than free cores
 * would measure the scheduler). The waiting thread spins on a completion flag, as a
 * latency-critical caller would. Go peers: bench/peers/go/pool.go (go + WaitGroup). */
#include "bench.h"
#include "atscale/pool.h"
#include "internal/compiler.h"
#include "internal/futex.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FANOUT 1000

struct pb {
	ats_pool *p;
	/* Its own line: the submitter reads p for every task while the worker bumps done. */
	_Alignas(64) _Atomic uint64_t done;
	/* The fan-outs' latch: the tasks count `left` down on its own line, and the last one raises
	 * `finished`, on another, which the submitter waits on. (Waiting on a counter every task
	 * bumps would move its line between the cores once per task: the waiter's cost, not the
	 * pool's. Go's WaitGroup parks its waiter.) */
	_Alignas(64) _Atomic uint64_t left;
	_Alignas(64) _Atomic uint64_t finished;
};

static void *pb_setup(unsigned threads)
{
	(void)threads;
	struct pb *b = aligned_alloc(64, sizeof *b);
	if (!b)
		return NULL;
	memset(b, 0, sizeof *b);
	ats_pool_config cfg = {.workers = 1, .queue_capacity = 2 * FANOUT};
	ats_err *err = ats_pool_new(&b->p, &cfg);
	if (err) {
		ats_err_unref(err);
		free(b);
		return NULL;
	}
	return b;
}

static void pb_teardown(void *state)
{
	struct pb *b = state;
	ats_pool_free(b->p);
	free(b);
}

static void bump(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct pb *b = arg;
	/* release: the waiter's acquire load sees the task's work. */
	atomic_fetch_add_explicit(&b->done, 1, memory_order_release);
}

static void count_down(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct pb *b = arg;
	/* acq_rel: the last task's release of `finished` carries every task's work. */
	if (atomic_fetch_sub_explicit(&b->left, 1, memory_order_acq_rel) == 1)
		atomic_fetch_add_explicit(&b->finished, 1, memory_order_release);
}

/* Arms the latch for one fan-out; returns the `finished` value its end will bring. */
static uint64_t latch_arm(struct pb *b)
{
	atomic_store_explicit(&b->left, FANOUT, memory_order_relaxed);
	return atomic_load_explicit(&b->finished, memory_order_relaxed) + 1;
}

static void latch_wait(struct pb *b, uint64_t target)
{
	while (atomic_load_explicit(&b->finished, memory_order_acquire) < target)
		ats__cpu_relax();
}

static void wait_done(struct pb *b, uint64_t target)
{
	while (atomic_load_explicit(&b->done, memory_order_acquire) < target)
		ats__cpu_relax();
}

static void submit_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct pb *b = state;
	ats_task t = {.run = bump, .arg = b};
	uint64_t base = atomic_load(&b->done);
	for (uint64_t i = 0; i < iters; i++) {
		while (ats_pool_try_submit(b->p, &t) != ATS_POOL_OK)
			;
		wait_done(b, base + i + 1);
	}
}

static void fanout(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct pb *b = state;
	ats_task t = {.run = count_down, .arg = b};
	for (uint64_t i = 0; i < iters; i++) {
		uint64_t target = latch_arm(b); /* the submits below release it to the tasks */
		for (int k = 0; k < FANOUT; k++)
			while (ats_pool_try_submit(b->p, &t) != ATS_POOL_OK)
				;
		latch_wait(b, target);
	}
}

/* The same fan-out as one burst (ats_pool_try_submit_n): one ticket CAS, one publication of the
 * queue's index and one wake-up check for the 1000. */
static void fanout_batch(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct pb *b = state;
	ats_task ts[FANOUT];
	for (int k = 0; k < FANOUT; k++)
		ts[k] = (ats_task){.run = count_down, .arg = b};
	for (uint64_t i = 0; i < iters; i++) {
		uint64_t target = latch_arm(b);
		for (size_t k = 0; k < FANOUT;)
			k += ats_pool_try_submit_n(b->p, ts + k, FANOUT - k, NULL);
		latch_wait(b, target);
	}
}

/* ---- floor.spin_roundtrip: the physical floor of a hand-off and its answer ----
 * Two threads, one word each way, both spinning: the least any cross-thread submit-and-wait can
 * cost on this machine (two cache-line transfers per round trip). The echo thread spins only
 * during a run and parks on a futex between runs: a thread spinning while other rows run would
 * take one of the machine's cores from them (on 2 cores, every pool row would then wait for a
 * scheduler tick to wake its worker). */
#define RT_PARK UINT64_MAX

struct rt {
	_Alignas(64) _Atomic uint64_t ping;
	_Alignas(64) _Atomic uint64_t pong;
	_Alignas(64) _Atomic uint32_t gen; /* bumped to start a run (and to quit) */
	_Atomic uint32_t quit;
	pthread_t th;
};

static void *rt_echo(void *arg)
{
	struct rt *r = arg;
	uint32_t gen_seen = 0;
	uint64_t seen = 0;
	for (;;) {
		uint32_t g;
		/* acquire: a run's start (or quit) is seen with what was written before the bump. */
		while ((g = atomic_load_explicit(&r->gen, memory_order_acquire)) == gen_seen)
			ats__futex_wait(&r->gen, gen_seen, ATS__FUTEX_FOREVER);
		gen_seen = g;
		if (atomic_load_explicit(&r->quit, memory_order_relaxed))
			return NULL;
		for (;;) {
			uint64_t v;
			while ((v = atomic_load_explicit(&r->ping, memory_order_acquire)) == seen)
				ats__cpu_relax();
			seen = v;
			if (v == RT_PARK)
				break; /* the run is over: park until the next */
			atomic_store_explicit(&r->pong, v, memory_order_release);
		}
	}
}

static void *rt_setup(unsigned threads)
{
	(void)threads;
	struct rt *r = aligned_alloc(64, sizeof *r);
	if (!r)
		return NULL;
	atomic_init(&r->ping, 0);
	atomic_init(&r->pong, 0);
	atomic_init(&r->gen, 0);
	atomic_init(&r->quit, 0);
	if (pthread_create(&r->th, NULL, rt_echo, r) != 0) {
		free(r);
		return NULL;
	}
	return r;
}

static void rt_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct rt *r = state;
	/* release: the echo thread wakes into this run. */
	atomic_fetch_add_explicit(&r->gen, 1, memory_order_release);
	ats__futex_wake(&r->gen, 1);
	uint64_t v = atomic_load_explicit(&r->pong, memory_order_relaxed); /* only the echo writes it */
	for (uint64_t i = 0; i < iters; i++) {
		atomic_store_explicit(&r->ping, ++v, memory_order_release);
		while (atomic_load_explicit(&r->pong, memory_order_acquire) != v)
			ats__cpu_relax();
	}
	atomic_store_explicit(&r->ping, RT_PARK, memory_order_release);
}

static void rt_teardown(void *state)
{
	struct rt *r = state;
	atomic_store_explicit(&r->quit, 1, memory_order_relaxed); /* published by the release bump */
	atomic_fetch_add_explicit(&r->gen, 1, memory_order_release);
	ats__futex_wake(&r->gen, 1);
	pthread_join(r->th, NULL);
	free(r);
}

static const ats_bench floor_roundtrip = {
    "floor.spin_roundtrip", ATS_BENCH_1T, rt_setup, rt_run, rt_teardown, NULL, NULL};
ATS_BENCH(floor_roundtrip)

static const ats_bench pool_submit_run = {"pool.submit_run", ATS_BENCH_1T, pb_setup, submit_run,
                                          pb_teardown,       NULL,         NULL};
static const ats_bench pool_fanout = {"pool.fanout_1000", ATS_BENCH_1T, pb_setup, fanout, pb_teardown, NULL, NULL};
ATS_BENCH(pool_submit_run)
ATS_BENCH(pool_fanout)
static const ats_bench pool_fanout_batch = {
    "pool.fanout_1000_batch", ATS_BENCH_1T, pb_setup, fanout_batch, pb_teardown, NULL, NULL};
ATS_BENCH(pool_fanout_batch)

/* ---- pool.idle_8: what an idle pool costs ----
 * The CPU time per wall second of a pool of 8 workers (the default spin and idle policy; its
 * threads only, not those other rows left parked) while it has nothing to do, after a task for
 * each worker, past the spin that followed it. Its workers wake only for their steal period
 * (ATS_POOL_STEAL_PERIOD_NS) and park again. Measures itself, in ns of CPU per second, with the
 * share of one core in `core_percent`. */
#define IDLE_WORKERS 8

static void nothing(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	atomic_fetch_add_explicit((_Atomic uint64_t *)arg, 1, memory_order_release);
}

static bool idle_measure(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	ats_bench_threads before;
	if (!ats_bench_threads_get(&before))
		return false;
	ats_pool *p;
	ats_pool_config cfg = {.workers = IDLE_WORKERS};
	ats_err *err = ats_pool_new(&p, &cfg);
	if (err) {
		ats_err_unref(err);
		ats_bench_threads_free(&before);
		return false;
	}
	_Atomic uint64_t ran = 0;
	for (unsigned i = 0; i < IDLE_WORKERS; i++) {
		ats_task t = {.run = nothing, .arg = (void *)&ran};
		while (ats_pool_try_submit_to(p, i, &t) != ATS_POOL_OK)
			;
	}
	while (atomic_load_explicit(&ran, memory_order_acquire) < IDLE_WORKERS)
		ats__cpu_relax();
	/* Past every worker's spin (config.spin_ns, 40 us by default) before the window opens. */
	struct timespec settle = {0, 50 * 1000000L};
	nanosleep(&settle, NULL);
	size_t threads;
	double per_sec = ats_bench_cpu_per_sec(&before, quick ? 300000000u : 1000000000u, &threads);
	ats_bench_threads_free(&before);
	ats_pool_free(p);
	if (per_sec < 0 || threads < IDLE_WORKERS) /* every worker, or the figure is not this row's */
		return false;
	out->ns_per_op = out->min = out->max = per_sec;
	snprintf(out->extra, sizeof out->extra, "\"workers\": %d, \"core_percent\": %.3f", IDLE_WORKERS, per_sec / 1e7);
	return true;
}

static const ats_bench pool_idle = {"pool.idle_8", ATS_BENCH_1T, NULL, NULL, NULL, idle_measure, NULL};
ATS_BENCH(pool_idle)
