/* SPDX-License-Identifier: BSD-2-Clause */
/* The worker pool under contention (run under TSan and ASan): submitters on every core, tasks
 * with their own ctxs cancelled mid-flight, single submits and bursts, stealing, and shutdown
 * racing submit and cancel; and submits racing a worker on its way to sleep.
 * Every task submitted with OK runs or is handed back cancelled exactly once (a per-task counter,
 * checked at the end); every task refused is never seen. Nothing sleeps to synchronize. */
#include <criterion/criterion.h>

#include "atscale/clock.h"
#include "atscale/pool.h"
#include "internal/compiler.h"
#include "internal/pool_hooks.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "slow.h"
#ifdef SLOW
#define TASKS (1u << 13) /* per submitter: TSan runs ~10x slower */
#define ROUNDS 50
#else
#define TASKS (1u << 16)
#define ROUNDS 300
#endif

#define SUBMITTERS 4

struct run {
	ats_pool *p;
	_Atomic uint8_t *ran;       /* ran[id]: times task id ran */
	_Atomic uint8_t *cancelled; /* cancelled[id]: times it was handed back */
	_Atomic uint8_t *accepted;  /* accepted[id]: 1 when its submit said OK */
	ats_ctx *ctxs[4];           /* tasks' ctxs; some get cancelled mid-run */
	_Atomic uint64_t ran_total;
	uint64_t shutdown_after;    /* the shutdown thread starts once this many ran */
	ats_ctx *stop;              /* the shutdown's ctx (cancelled mid-drain in one test) */
	uint64_t cancel_stop_after; /* cancel `stop` once this many ran (0: never) */
	ats_err *shutdown_err;
	_Atomic int shutdown_done;
};

struct task_arg {
	struct run *r;
	uint32_t id;
};

static struct task_arg *args;

static void on_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct task_arg *a = arg;
	atomic_fetch_add_explicit(&a->r->ran[a->id], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&a->r->ran_total, 1, memory_order_relaxed);
}

static void on_cancel(void *arg, const ats_err *why)
{
	struct task_arg *a = arg;
	cr_assert_not_null(why);
	atomic_fetch_add_explicit(&a->r->cancelled[a->id], 1, memory_order_relaxed);
}

struct sub {
	struct run *r;
	unsigned idx;
};

#define BURST 8

/* Task id's descriptor (its ctx one of four, by id). */
static ats_task task_for(struct run *r, uint32_t id)
{
	args[id] = (struct task_arg){r, id};
	return (ats_task){.run = on_run, .cancel = on_cancel, .arg = &args[id], .ctx = r->ctxs[id % 4]};
}

/* Submits tasks first..first+BURST-1 in bursts (what a burst leaves, the next one takes);
 * false once the pool refused one as closed. */
static bool submit_burst(struct run *r, uint32_t first)
{
	ats_task ts[BURST];
	for (uint32_t j = 0; j < BURST; j++)
		ts[j] = task_for(r, first + j);
	for (size_t k = 0; k < BURST;) {
		ats_pool_status st;
		/* Every other burst to the caller's worker, the rest to the less loaded of two. */
		size_t q = first / 64 % 2 ? ats_pool_try_submit_n(r->p, ts + k, BURST - k, &st)
		                          : ats_pool_try_submit_n_to(r->p, ats_pool_pick_less_loaded(r->p), ts + k,
		                                                     BURST - k, &st);
		for (size_t j = k; j < k + q; j++)
			atomic_store_explicit(&r->accepted[first + j], 1, memory_order_relaxed);
		k += q;
		if (st == ATS_POOL_CLOSED)
			return false;
		if (st == ATS_POOL_FULL)
			sched_yield();
		else
			cr_assert_eq(st, ATS_POOL_OK);
	}
	return true;
}

static void *submitter(void *arg)
{
	struct sub *s = arg;
	struct run *r = s->r;
	unsigned n = ats_pool_size(r->p);
	bool cancelled = false;
	for (uint32_t i = 0; i < TASKS;) {
		uint32_t id = s->idx * TASKS + i;
		if (s->idx == 0 && i >= TASKS / 2 && !cancelled) {
			ats_ctx_cancel(r->ctxs[1], NULL); /* a quarter of the later tasks: cancelled */
			cancelled = true;
		}
		if (i % 64 == 0) { /* one task in eight goes in a burst */
			if (!submit_burst(r, id))
				break;
			i += BURST;
			continue;
		}
		ats_task t = task_for(r, id);
		ats_pool_status st;
		for (;;) {
			switch (id % 3) {
			case 0: st = ats_pool_try_submit(r->p, &t); break;
			case 1: st = ats_pool_try_submit_to(r->p, id % n, &t); break;
			default: st = ats_pool_try_submit_to(r->p, ats_pool_pick_less_loaded(r->p), &t);
			}
			if (st != ATS_POOL_FULL)
				break;
			sched_yield();
		}
		if (st == ATS_POOL_CLOSED)
			break;
		cr_assert_eq(st, ATS_POOL_OK);
		atomic_store_explicit(&r->accepted[id], 1, memory_order_relaxed);
		i++;
	}
	return NULL;
}

static void *shutter(void *arg)
{
	struct run *r = arg;
	while (atomic_load(&r->ran_total) < r->shutdown_after)
		sched_yield();
	r->shutdown_err = ats_pool_shutdown(r->p, r->stop);
	atomic_store(&r->shutdown_done, 1);
	return NULL;
}

static void *stop_canceller(void *arg)
{
	struct run *r = arg;
	/* Once the shutdown finished draining there is nothing left to race. */
	while (atomic_load(&r->ran_total) < r->cancel_stop_after && !atomic_load(&r->shutdown_done))
		sched_yield();
	ats_ctx_cancel(r->stop, NULL);
	return NULL;
}

static void run_once(unsigned workers, size_t cap, ats_pool_idle idle, uint64_t shutdown_after,
                     uint64_t cancel_stop_after)
{
	struct run r = {0};
	uint32_t total = SUBMITTERS * TASKS;
	r.ran = calloc(total, 1);
	r.cancelled = calloc(total, 1);
	r.accepted = calloc(total, 1);
	args = calloc(total, sizeof *args);
	cr_assert(r.ran && r.cancelled && r.accepted && args);
	ats_pool_config cfg = {.workers = workers, .queue_capacity = cap, .idle = idle};
	cr_assert_null(ats_pool_new(&r.p, &cfg));
	r.ctxs[0] = NULL;
	for (int i = 1; i < 4; i++)
		cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &r.ctxs[i]));
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &r.stop));
	r.shutdown_after = shutdown_after;
	r.cancel_stop_after = cancel_stop_after;

	pthread_t subs[SUBMITTERS], sh, cs;
	struct sub s[SUBMITTERS];
	for (unsigned i = 0; i < SUBMITTERS; i++) {
		s[i] = (struct sub){&r, i};
		cr_assert_eq(pthread_create(&subs[i], NULL, submitter, &s[i]), 0);
	}
	cr_assert_eq(pthread_create(&sh, NULL, shutter, &r), 0);
	if (cancel_stop_after)
		cr_assert_eq(pthread_create(&cs, NULL, stop_canceller, &r), 0);
	for (unsigned i = 0; i < SUBMITTERS; i++)
		pthread_join(subs[i], NULL);
	pthread_join(sh, NULL);
	if (cancel_stop_after)
		pthread_join(cs, NULL);

	uint64_t accepted = 0, ran = 0, cancelled = 0;
	for (uint32_t id = 0; id < total; id++) {
		unsigned a = atomic_load(&r.accepted[id]), x = atomic_load(&r.ran[id]),
		         c = atomic_load(&r.cancelled[id]);
		if (a)
			cr_assert_eq(x + c, 1, "task %u accepted: ran %u times, cancelled %u times", id, x, c);
		else
			cr_assert_eq(x + c, 0, "task %u refused yet seen", id);
		accepted += a, ran += x, cancelled += c;
	}
	uint64_t wr = 0, wc = 0;
	for (unsigned w = 0; w < workers; w++) {
		ats_pool_worker_stats st;
		cr_assert_null(ats_pool_worker_stats_get(r.p, w, &st));
		wr += st.run, wc += st.cancelled;
		cr_assert_eq(st.depth, 0);
		cr_assert_eq(st.progress % 2, 0);
	}
	cr_assert_eq(wr, ran, "the workers' run counters add up");
	cr_assert_eq(wc, cancelled, "and their cancelled counters");
	cr_assert_eq(ran + cancelled, accepted);
	if (!cancel_stop_after)
		cr_assert_null(r.shutdown_err, "a shutdown with a live ctx drains everything");
	ats_err_unref(r.shutdown_err);
	ats_pool_free(r.p);
	for (int i = 1; i < 4; i++)
		ats_ctx_release(r.ctxs[i]);
	ats_ctx_release(r.stop);
	free(r.ran), free(r.cancelled), free(r.accepted), free(args);
}

Test(pool_stress, every_task_once_when_draining, .timeout = 300)
{
	/* Shutdown after most ran (the submitters are finishing) ... */
	run_once(3, 64, ATS_POOL_SPIN_PARK, (uint64_t)SUBMITTERS * TASKS * 3 / 4 - 1, 0);
}

Test(pool_stress, every_task_once_when_shutdown_races_submits, .timeout = 300)
{
	/* ... and racing the submitters, on the other idle policies. */
	run_once(2, 16, ATS_POOL_PARK, TASKS / 2, 0);
	run_once(2, 4, ATS_POOL_POLL, TASKS, 0);
}

Test(pool_stress, every_task_once_when_shutdown_cancels, .timeout = 300)
{
	run_once(3, 128, ATS_POOL_SPIN_PARK, TASKS / 4, TASKS / 2);
	run_once(2, 1024, ATS_POOL_PARK, 1, 2);
}

/* Many short pools: a shutdown racing the first submits and the workers' first parks. */
Test(pool_stress, start_and_shutdown_race, .timeout = 300)
{
	for (int round = 0; round < ROUNDS; round++) {
		ats_pool *p;
		ats_pool_config cfg = {.workers = 2, .queue_capacity = 4, .idle = (ats_pool_idle)(round % 3)};
		cr_assert_null(ats_pool_new(&p, &cfg));
		struct run r = {.p = p};
		_Atomic uint8_t ran[64] = {0}, cancelled[64] = {0};
		r.ran = ran, r.cancelled = cancelled;
		struct task_arg a[64];
		unsigned ok = 0;
		for (uint32_t i = 0; i < 64; i++) {
			a[i] = (struct task_arg){&r, i};
			ats_task t = {.run = on_run, .cancel = on_cancel, .arg = &a[i]};
			ok += ats_pool_try_submit_to(p, i % 2, &t) == ATS_POOL_OK;
		}
		ats_pool_free(p); /* no drain: what is queued is cancelled */
		unsigned seen = 0;
		for (int i = 0; i < 64; i++) {
			cr_assert_leq(ran[i] + cancelled[i], 1);
			seen += ran[i] + cancelled[i];
		}
		cr_assert_eq(seen, ok, "round %d", round);
	}
}

/* ---- Replacements racing the ends of tasks ---- */

#ifdef SLOW
#define SLOW_TASKS 2000u
#else
#define SLOW_TASKS 20000u
#endif

static _Atomic uint8_t slow_ran[SLOW_TASKS];
static _Atomic int watching;

/* Runs about as long as the stuck time, so that many ends race a replacement's CAS. */
static void slow_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	uintptr_t id = (uintptr_t)arg;
	uint64_t until = ats_now_ns() + 2000 + (id % 7) * 3000;
	while (ats_now_ns() < until)
		;
	atomic_fetch_add_explicit(&slow_ran[id], 1, memory_order_relaxed);
}

static void *watcher(void *arg)
{
	ats_pool *p = arg;
	while (atomic_load(&watching)) {
		cr_assert_null(ats_pool_replace_stuck(p, 10000, NULL));
		sched_yield();
	}
	return NULL;
}

Test(pool_stress, replacements_racing_task_ends_lose_and_repeat_nothing, .timeout = 300)
{
	ats_pool *p = NULL;
	ats_pool_config cfg = {.workers = 3, .queue_capacity = 256};
	cr_assert_null(ats_pool_new(&p, &cfg));
	atomic_store(&watching, 1);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, watcher, p), 0);
	for (uintptr_t id = 0; id < SLOW_TASKS; id++) {
		ats_task task = {.run = slow_run, .arg = (void *)id};
		cr_assert_null(ats_pool_submit(p, &task, ats_ctx_background()));
	}
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	atomic_store(&watching, 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	uint64_t run = 0, returned = 0, replaced = 0;
	for (unsigned i = 0; i < 3; i++) {
		ats_pool_worker_stats st;
		cr_assert_null(ats_pool_worker_stats_get(p, i, &st));
		run += st.run;
		returned += st.returned;
		replaced += st.replaced;
	}
	for (unsigned id = 0; id < SLOW_TASKS; id++)
		cr_assert_eq(atomic_load(&slow_ran[id]), 1, "task %u ran %u times", id,
		             (unsigned)atomic_load(&slow_ran[id]));
	cr_assert_eq(returned, replaced, "every quarantined thread returned and was joined");
	cr_assert_eq(run + returned, SLOW_TASKS, "each task counted once: by its thread, or as returned");
	ats_pool_free(p);
}

/* No wake-up is lost between a submit and a worker going to sleep: one worker that parks at once
 * (no spin) with no steal period to fall back on (an hour), and a submitter whose next task lands
 * at every phase of the worker's way to sleep (a random number of pauses after the last task ran:
 * before it arms its eventcount, between the arming and its re-check, asleep), its publication
 * delayed at random after it looked for the worker's waiter flag (hook ats__pool_before_publish).
 * A wake-up lost once leaves a task queued for an hour: the round fails at its bound. */
#ifdef SLOW
#define WAKE_ROUNDS 3000u
#else
#define WAKE_ROUNDS 30000u
#endif

static _Atomic uint64_t wake_ran;
static _Thread_local uint64_t hook_rng = 0x2545f4914f6cdd1du;

/* A random wait of up to 2048 pauses. Between a submit's look at the flag and its publication
 * (the hook): sometimes long enough for the worker to arm its flag and re-check in it. */
static void wait_a_little(void)
{
	hook_rng ^= hook_rng << 13, hook_rng ^= hook_rng >> 7, hook_rng ^= hook_rng << 17;
	for (uint64_t k = hook_rng % 2048; k > 0; k--)
		ats__cpu_relax();
}

/* Counts itself, then lingers a random while: the next submit, which the count lets go, may land
 * before the worker even starts on its way to sleep. */
static void wake_bump(void *arg, ats_ctx *ctx)
{
	(void)arg, (void)ctx;
	atomic_fetch_add_explicit(&wake_ran, 1, memory_order_release);
	wait_a_little();
}

Test(pool_stress, a_submit_racing_a_worker_going_to_sleep_always_wakes_it, .timeout = 300)
{
	atomic_store(&ats__pool_steal_period_ns, UINT64_C(3600) * ATS_NS_PER_SEC);
	ats_pool_config cfg = {.workers = 1, .idle = ATS_POOL_PARK};
	ats_pool *p;
	cr_assert_null(ats_pool_new(&p, &cfg));
	atomic_store(&ats__pool_before_publish, wait_a_little);
	uint64_t rng = 0x9e3779b97f4a7c15u;
	ats_task t = {.run = wake_bump};
	for (uint64_t i = 1; i <= WAKE_ROUNDS; i++) {
		cr_assert_eq(ats_pool_try_submit(p, &t), ATS_POOL_OK);
		uint64_t bound = ats_now_ns() + 10 * ATS_NS_PER_SEC;
		for (unsigned n = 0; atomic_load_explicit(&wake_ran, memory_order_acquire) < i; n++) {
			if (n % 1024 == 1023) {
				cr_assert_lt(ats_now_ns(), bound, "round %llu: a wake-up was lost",
				             (unsigned long long)i);
				sched_yield();
			}
			ats__cpu_relax();
		}
		rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
		/* Land the next submit somewhere else: in half the rounds soon (while the task lingers, or
		 * on the worker's way to sleep), in the others anywhere up to its sleep. */
		for (uint64_t k = rng % (i % 2 ? 64 : 4096); k > 0; k--)
			ats__cpu_relax();
	}
	atomic_store(&ats__pool_before_publish, NULL);
	cr_assert_null(ats_pool_shutdown(p, ats_ctx_background()));
	ats_pool_free(p);
	atomic_store(&ats__pool_steal_period_ns, 0);
}
