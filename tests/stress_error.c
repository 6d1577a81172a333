/* SPDX-License-Identifier: BSD-2-Clause */
/* Errors shared across threads: concurrent ref/unref with exact counting, concurrent
 * copy-on-write decoration, concurrent log-hook swaps while logging, and concurrent construction
 * (ids, stacks). Runs under ThreadSanitizer and ASan; threads start together on a barrier and are
 * joined, never slept on.
 *
 * The binary is linked with --wrap=free (see stress_error.cmake) so the test can count exactly how
 * often each watched error is freed.
 */
#include "atscale/error.h"
#include "json_check.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4

void __real_free(void *p);
void __wrap_free(void *p);

/* Errors whose frees are counted. Written before the threads start, read-only while they run. */
#define WATCH 4
static void *watched[WATCH];
static _Atomic int freed[WATCH];

void __wrap_free(void *p)
{
	for (int i = 0; i < WATCH; i++)
		if (p && p == watched[i])
			atomic_fetch_add(&freed[i], 1);
	__real_free(p);
}

static pthread_barrier_t start;

static void run_threads(void *(*fn)(void *), void *arg)
{
	pthread_t th[THREADS];
	pthread_barrier_init(&start, NULL, THREADS);
	for (long i = 0; i < THREADS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, fn, arg), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&start);
}

/* ---- Concurrent ref/unref of one shared chain: freed exactly once, exactly at the last unref ---- */

#define REF_ROUNDS 20000
#define HELD 8

static void *ref_unref(void *arg)
{
	ats_err *chain = arg;
	ats_err *held[HELD];
	pthread_barrier_wait(&start);
	for (int r = 0; r < REF_ROUNDS; r++) {
		/* Take several references, read through them, drop them in another order. */
		for (int i = 0; i < HELD; i++)
			held[i] = ats_err_ref(chain);
		for (int i = 0; i < HELD; i++)
			if (!ats_err_is(held[i], ATS_ERR_DEADLINE_EXCEEDED))
				abort();
		for (int i = HELD - 1; i >= 0; i -= 2)
			ats_err_unref(held[i]);
		for (int i = HELD - 2; i >= 0; i -= 2)
			ats_err_unref(held[i]);
	}
	return NULL;
}

Test(stress_error, shared_chain_ref_unref_exact)
{
	ats_err *root = ats_err_new(ATS_ERR_DEADLINE_EXCEEDED, "timed out");
	ats_err *mid = ats_err_wrap(root, "mid");
	ats_err *top = ats_err_wrap(mid, "top");
	watched[0] = root, watched[1] = mid, watched[2] = top;
	run_threads(ref_unref, top);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(atomic_load(&freed[i]), 0, "error %d freed while referenced", i);
	cr_assert_str_eq(ats_err_message(ats_err_root(top)), "timed out");
	ats_err_unref(top);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(atomic_load(&freed[i]), 1, "error %d freed %d times", i, atomic_load(&freed[i]));
	memset(watched, 0, sizeof watched);
}

/* Every thread drops its own reference to a chain it shares with the others: whoever is last
 * frees it, once. */
struct drop {
	ats_err *refs[THREADS];
	_Atomic int next;
};

static void *drop_one(void *arg)
{
	struct drop *d = arg;
	int i = atomic_fetch_add(&d->next, 1);
	pthread_barrier_wait(&start);
	ats_err_unref(d->refs[i]);
	return NULL;
}

Test(stress_error, last_unref_frees_once)
{
	for (int round = 0; round < 200; round++) {
		ats_err *cause = ats_err_new(ATS_ERR_CLOSED, "c");
		ats_err *top = ats_err_wrap(cause, "t");
		struct drop d = {.refs = {top}};
		for (int i = 1; i < THREADS; i++)
			d.refs[i] = ats_err_ref(top);
		atomic_init(&d.next, 0);
		watched[0] = cause, watched[1] = top;
		atomic_store(&freed[0], 0);
		atomic_store(&freed[1], 0);
		run_threads(drop_one, &d);
		cr_assert_eq(atomic_load(&freed[0]), 1);
		cr_assert_eq(atomic_load(&freed[1]), 1);
		watched[0] = watched[1] = NULL;
	}
}

/* ---- Concurrent decoration of shared errors: copies, never mutation ---- */

#define DECO_ROUNDS 2000

static void *decorate(void *arg)
{
	ats_err *shared = arg;
	static _Atomic int ids;
	int me = atomic_fetch_add(&ids, 1);
	pthread_barrier_wait(&start);
	char want[64], json[4096];
	for (int r = 0; r < DECO_ROUNDS; r++) {
		snprintf(want, sizeof want, "t%d-%d", me, r);
		ats_err *d = ats_err_with_user(ats_err_ref(shared), "%s", want);
		d = ats_err_with_kv(d, "a", "%s", want);
		d = ats_err_with_hint(d, "%s", want);
		if (d == shared || strcmp(ats_err_user(d), want) || strcmp(ats_err_kv_get(d, "a"), want) ||
		    strcmp(ats_err_hint(d), want) || strcmp(ats_err_kv_get(d, "b"), "2"))
			abort();
		/* The shared original, read while the others copy it. */
		if (strcmp(ats_err_user(shared), "orig") || strcmp(ats_err_kv_get(shared, "a"), "1") ||
		    ats_err_hint(shared) != NULL)
			abort();
		size_t n = ats_err_format_json(shared, json, sizeof json);
		if (n >= sizeof json || !json_valid(json, n))
			abort();
		ats_err_unref(d);
	}
	return NULL;
}

Test(stress_error, concurrent_decoration_copies)
{
	ats_err *e = ats_err_wrap(ats_err_new(ATS_ERR_NOT_FOUND, "no key"), "lookup");
	e = ats_err_with_user(e, "orig");
	e = ats_err_with_kv(e, "a", "1");
	e = ats_err_with_kv(e, "b", "2");
	char before[4096], after[4096];
	ats_err_format_json(e, before, sizeof before);
	run_threads(decorate, e);
	ats_err_format_json(e, after, sizeof after);
	cr_assert_str_eq(after, before, "a shared error changed");
	ats_err_unref(e);
}

/* ---- Log hook swaps while logging: every record reaches exactly one hook ---- */

#define LOGS_PER_THREAD 20000
#define HOOKS 3

static _Atomic long hook_calls[HOOKS];
static _Atomic long hook_bad;
static ats_err *logged;
static _Atomic int loggers_done;

static void count_hook(const ats_err *err, void *arg)
{
	if (err != logged)
		atomic_fetch_add(&hook_bad, 1);
	atomic_fetch_add((_Atomic long *)arg, 1);
}

static void *log_or_swap(void *arg)
{
	(void)arg;
	static _Atomic int ids;
	int me = atomic_fetch_add(&ids, 1);
	pthread_barrier_wait(&start);
	if (me == 0) {
		/* The swapper: rotates the hooks until the loggers are done. */
		for (unsigned i = 0; atomic_load(&loggers_done) < THREADS - 1; i++)
			ats_err_set_log_hook(count_hook, (void *)&hook_calls[i % HOOKS]);
		return NULL;
	}
	for (int i = 0; i < LOGS_PER_THREAD; i++)
		ats_err_log(logged);
	atomic_fetch_add(&loggers_done, 1);
	return NULL;
}

Test(stress_error, log_hook_swaps_while_logging)
{
	logged = ats_err_bug(NULL, "logged from every thread");
	ats_err_set_log_hook(count_hook, (void *)&hook_calls[0]);
	run_threads(log_or_swap, NULL);
	long total = 0;
	for (int i = 0; i < HOOKS; i++)
		total += atomic_load(&hook_calls[i]);
	cr_assert_eq(total, (long)(THREADS - 1) * LOGS_PER_THREAD, "records lost or duplicated");
	cr_assert_eq(atomic_load(&hook_bad), 0);
	ats_err_set_log_hook(NULL, NULL);
	ats_err_unref(logged);
}

/* ---- Concurrent construction: unique ids, stacks on every thread, user text of bugs ---- */

#define MAKE_ROUNDS 3000

struct made {
	uint64_t ids[MAKE_ROUNDS];
};

static void quiet_hook(const ats_err *err, void *arg)
{
	(void)err;
	atomic_fetch_add((_Atomic long *)arg, 1);
}

static void *make_many(void *arg)
{
	struct made *out = arg;
	static _Atomic int ids;
	int me = atomic_fetch_add(&ids, 1);
	pthread_barrier_wait(&start);
	char text[128];
	for (int r = 0; r < MAKE_ROUNDS; r++) {
		ats_err *e = (r & 1) ? ats_err_bug(ats_err_raw(ATS_ERR_SYSTEM, "raw %d", r), "bug %d", r)
		                     : ats_err_new(ATS_ERR_CLOSED, "closed %d", r);
		void *const *frames;
		if ((r & 1) && ats_err_stack(e, &frames) == 0)
			abort();
		ats_err_user_text(e, text, sizeof text);
		out[me].ids[r] = ats_err_log_id(e);
		ats_err_unref(e);
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

Test(stress_error, concurrent_construction)
{
	static _Atomic long logged_bugs;
	ats_err_set_log_hook(quiet_hook, (void *)&logged_bugs);
	static struct made made[THREADS];
	run_threads(make_many, made);
	cr_assert_eq(atomic_load(&logged_bugs), (long)THREADS * MAKE_ROUNDS / 2);
	uint64_t *all = (uint64_t *)made;
	size_t n = (size_t)THREADS * MAKE_ROUNDS;
	qsort(all, n, sizeof *all, cmp_u64);
	for (size_t i = 1; i < n; i++)
		cr_assert_neq(all[i], all[i - 1], "duplicate log id");
	ats_err_set_log_hook(NULL, NULL);
}
