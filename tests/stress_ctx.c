/* SPDX-License-Identifier: BSD-2-Clause */
/* Contexts under contention (run under TSan and ASan): every thread creating, cancelling,
 * releasing, merging and waiting on one shared tree, timers firing into releases and cancels.
 * Counts are exact: every waiter wakes, every after-func runs or is stopped exactly once, every
 * context under a cancelled root is done; ASan/LSan check that nothing leaks or is freed twice. */
#include <criterion/criterion.h>

#include "atscale/ctx.h"
#include "atscale/clock.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define SEC ATS_NS_PER_SEC
#define SLOTS 64

static unsigned nthreads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 2 ? 4 : (unsigned)(2 * n > 16 ? 16 : 2 * n);
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
	return *s;
}

/* ---- One shared tree, slots of references that threads trade with atomic exchanges ---- */

static struct {
	ats_ctx *root;
	_Atomic(ats_ctx *) slot[SLOTS];
	_Atomic int ran, stopped, registered;
	_Atomic int waiters_started, waiters_woke;
	_Atomic int stop_waiters;
} tree;

static void count_ran(void *arg)
{
	(void)arg;
	atomic_fetch_add(&tree.ran, 1);
}

static ats_ctx *take(uint64_t *seed)
{
	return atomic_exchange(&tree.slot[rnd(seed) % SLOTS], NULL);
}

static void put(uint64_t *seed, ats_ctx *c)
{
	ats_ctx *expected = NULL;
	if (!atomic_compare_exchange_strong(&tree.slot[rnd(seed) % SLOTS], &expected, c))
		ats_ctx_release(c);
}

static void *churn(void *arg)
{
	uint64_t seed = (uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
	ats_ctx_after handle;
	bool registered = false;
	for (int i = 0; i < 20000; i++) {
		ats_ctx *c = take(&seed);
		if (!c) {
			put(&seed, ats_ctx_ref(tree.root));
			continue;
		}
		ats_ctx *n = NULL;
		uint64_t r = rnd(&seed);
		switch (r % 8) {
		case 0:
		case 1: cr_assert_null(ats_ctx_with_cancel(c, &n)); break;
		case 2: cr_assert_null(ats_ctx_with_timeout(c, (r >> 8) % 300000, &n)); break;
		case 3:
			if ((r >> 8) % 4 == 0)
				ats_ctx_cancel(c, (r >> 12) % 2 ? ats_err_new(ATS_ERR_CLOSED, "churn") : NULL);
			break;
		case 4: {
			ats_ctx *other = take(&seed);
			if (other) {
				ats_ctx *ps[] = {c, other};
				cr_assert_null(ats_ctx_merge(ps, 2, &n));
				put(&seed, other);
			}
			break;
		}
		case 5:
			if (registered && ats_ctx_after_stop(&handle))
				atomic_fetch_add(&tree.stopped, 1);
			ats_ctx_after_func(c, &handle, count_ran, NULL);
			atomic_fetch_add(&tree.registered, 1);
			registered = true;
			break;
		case 6: ats_ctx_wait(c, ats_now_ns() + 20000); break;
		default:
			ats_ctx_release(c); /* dropped, not put back */
			c = NULL;
		}
		if (n)
			put(&seed, n);
		if (c)
			put(&seed, c);
	}
	if (registered && ats_ctx_after_stop(&handle))
		atomic_fetch_add(&tree.stopped, 1);
	return NULL;
}

/* Waits on a node of the tree until it is done; the final cancel of the root wakes it. */
static void *waiter(void *arg)
{
	uint64_t seed = (uintptr_t)arg * 0x2545F4914F6CDD1Dull + 7;
	while (!atomic_load(&tree.stop_waiters)) {
		ats_ctx *c = take(&seed);
		if (!c)
			continue;
		ats_ctx *mine = ats_ctx_ref(c);
		put(&seed, c);
		atomic_fetch_add(&tree.waiters_started, 1);
		if (ats_ctx_wait(mine, ATS_CTX_NO_DEADLINE))
			atomic_fetch_add(&tree.waiters_woke, 1);
		ats_ctx_release(mine);
	}
	return NULL;
}

Test(stress_ctx, shared_tree_churn, .timeout = 600)
{
	unsigned n = nthreads(), w = 2;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &tree.root));
	pthread_t t[32], wt[2];
	for (unsigned i = 0; i < w; i++)
		pthread_create(&wt[i], NULL, waiter, (void *)(uintptr_t)(i + 100));
	for (unsigned i = 0; i < n; i++)
		pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1));
	for (unsigned i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	/* Everything left in the slots descends from the root: cancelling it ends every wait. */
	atomic_store(&tree.stop_waiters, 1);
	ats_ctx_cancel(tree.root, NULL);
	for (unsigned i = 0; i < w; i++)
		pthread_join(wt[i], NULL);
	cr_assert_eq(atomic_load(&tree.waiters_woke), atomic_load(&tree.waiters_started));
	for (int i = 0; i < SLOTS; i++) {
		ats_ctx *c = atomic_exchange(&tree.slot[i], NULL);
		if (c) {
			cr_assert(ats_ctx_done(c));
			ats_ctx_release(c);
		}
	}
	cr_assert_eq(atomic_load(&tree.ran) + atomic_load(&tree.stopped), atomic_load(&tree.registered),
	             "ran %d + stopped %d != registered %d", atomic_load(&tree.ran), atomic_load(&tree.stopped),
	             atomic_load(&tree.registered));
	ats_ctx_release(tree.root);
}

/* ---- Creating children of a parent while it is cancelled: each is walked or born done ---- */

static struct {
	ats_ctx *parent;
	_Atomic int go;
} wide;

static void *create_many(void *arg)
{
	(void)arg;
	enum { N = 4000 };
	ats_ctx **mine = malloc(N * sizeof *mine);
	while (!atomic_load(&wide.go))
		;
	for (int i = 0; i < N; i++) {
		cr_assert_null(ats_ctx_with_cancel(wide.parent, &mine[i]));
		if (i % 3 == 0) { /* some released at once, racing the walk */
			ats_ctx_release(mine[i]);
			mine[i] = NULL;
		}
	}
	/* The parent is cancelled by now or later; wait for it, then check every child. */
	cr_assert(ats_ctx_wait(wide.parent, ats_now_ns() + 60 * SEC));
	for (int i = 0; i < N; i++) {
		if (mine[i]) {
			cr_assert(ats_ctx_done(mine[i]));
			ats_ctx_release(mine[i]);
		}
	}
	free(mine);
	return NULL;
}

Test(stress_ctx, create_while_cancelling, .timeout = 600)
{
	for (int round = 0; round < 10; round++) {
		cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &wide.parent));
		atomic_store(&wide.go, 0);
		unsigned n = nthreads();
		pthread_t t[32];
		for (unsigned i = 0; i < n; i++)
			pthread_create(&t[i], NULL, create_many, NULL);
		atomic_store(&wide.go, 1);
		/* Cancel once some children exist, while the others are still being made. */
		while (!ats_ctx_done(wide.parent)) {
			ats_ctx *probe;
			cr_assert_null(ats_ctx_with_cancel(wide.parent, &probe));
			ats_ctx_release(probe);
			if (round % 2 || ats_now_ns() % 3 == 0)
				ats_ctx_cancel(wide.parent, NULL);
		}
		for (unsigned i = 0; i < n; i++)
			pthread_join(t[i], NULL);
		ats_ctx_release(wide.parent);
	}
}

/* ---- Timers: every waiter wakes at or after its deadline; cancels and releases race fires ---- */

static _Atomic int timer_woke, timer_early;

static void *timer_waiter(void *arg)
{
	uint64_t seed = (uintptr_t)arg * 0x9E3779B97F4A7C15ull + 3;
	for (int i = 0; i < 300; i++) {
		ats_ctx *c;
		uint64_t r = rnd(&seed);
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), r % 500000, &c));
		switch ((r >> 20) % 3) {
		case 0: /* the waiter's own futex timeout or the timer, whichever is first */
			if (ats_ctx_wait(c, ATS_CTX_NO_DEADLINE))
				atomic_fetch_add(&timer_woke, 1);
			if (ats_now_ns() < ats_ctx_deadline(c))
				atomic_fetch_add(&timer_early, 1);
			break;
		case 1: /* released around the time it fires */ atomic_fetch_add(&timer_woke, 1); break;
		default: /* cancelled around the time it fires */
			ats_ctx_cancel(c, NULL);
			atomic_fetch_add(&timer_woke, 1);
		}
		ats_ctx_release(c);
	}
	return NULL;
}

Test(stress_ctx, timers_wake_waiters_and_race_releases, .timeout = 600)
{
	unsigned n = nthreads();
	pthread_t t[32];
	for (unsigned i = 0; i < n; i++)
		pthread_create(&t[i], NULL, timer_waiter, (void *)(uintptr_t)(i + 1));
	for (unsigned i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(atomic_load(&timer_woke), (int)n * 300);
	cr_assert_eq(atomic_load(&timer_early), 0);
}

/* Nobody waits: only the timer thread can make these done. */
Test(stress_ctx, timer_thread_cancels_unwatched_contexts, .timeout = 600)
{
	enum { N = 5000 };
	ats_ctx **c = malloc(N * sizeof *c);
	uint64_t now = ats_now_ns();
	for (int i = 0; i < N; i++)
		cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), now + (uint64_t)(i % 50) * 20000, &c[i]));
	for (int i = 0; i < N; i++) {
		uint64_t t0 = ats_now_ns();
		while (!ats_ctx_done(c[i]) && ats_now_ns() - t0 < 30 * SEC)
			;
		cr_assert(ats_ctx_done(c[i]));
		ats_ctx_release(c[i]);
	}
	free(c);
}
