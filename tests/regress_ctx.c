/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of contexts: each fences a bug that was found and fixed, in the state that
 * showed it (the spec tests are in test_ctx.c, the concurrent ones in stress_ctx.c). The comment
 * above each test says what the bug was. */
#include <atscale/ctx.h>
#include "internal/ctx_hooks.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>

static _Atomic int fired;
static ats_ctx *victim;

static void count_fire(void *arg)
{
	(void)arg;
	atomic_fetch_add(&fired, 1);
}

/* Another thread cancels the context and drops the user's reference: the canceller runs the
 * after-func and drops the registration's reference, the last one, and the context is freed. */
static void *cancel_and_release(void *arg)
{
	(void)arg;
	ats_ctx_cancel(victim, NULL);
	ats_ctx_release(victim);
	return NULL;
}

static void cancel_in_the_gap(ats_ctx_after *a)
{
	(void)a;
	ats__ctx_after_stop_gap = NULL;
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, cancel_and_release, NULL), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
}

/* Bug: ats_ctx_after_stop read "armed", then locked the context. A canceller on another thread
 * could run the after-func in between and drop the registration's reference, the context's last,
 * freeing the context the stopper was about to lock (found by ThreadSanitizer in a shared-tree
 * churn; ASan reports the use after free here on the old code). The stopper now takes the
 * registration's reference over before it touches the context. */
Test(after, stop_racing_the_last_release)
{
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c));
	victim = c;
	ats_ctx_after a;
	ats_ctx_after_func(c, &a, count_fire, NULL);
	ats__ctx_after_stop_gap = cancel_in_the_gap;
	cr_expect_not(ats_ctx_after_stop(&a), "the callback ran before the stop");
	cr_expect_eq(atomic_load(&fired), 1);
}

/* The same gap with the stop winning: the stopper holds the registration's reference, so the
 * context outlives the user's release until the stop is done, and the callback never runs. */
static void *release_only(void *arg)
{
	(void)arg;
	ats_ctx_release(victim);
	return NULL;
}

static void release_in_the_gap(ats_ctx_after *a)
{
	(void)a;
	ats__ctx_after_stop_gap = NULL;
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, release_only, NULL), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
}

Test(after, stop_after_the_users_release)
{
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c));
	victim = c;
	ats_ctx_after a;
	atomic_store(&fired, 0);
	ats_ctx_after_func(c, &a, count_fire, NULL);
	ats__ctx_after_stop_gap = release_in_the_gap;
	cr_expect(ats_ctx_after_stop(&a), "stopped before it ran");
	cr_expect_eq(atomic_load(&fired), 0);
}
