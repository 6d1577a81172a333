/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of contexts: each fences a bug that was found and fixed, in the state that
 * showed it (the spec tests are in test_ctx.c, the concurrent ones in stress_ctx.c). The comment
 * above each test says what the bug was. */
#include <atscale/ctx.h>
#include "internal/ctx_hooks.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MS UINT64_C(1000000)

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

/* Bug: once an after-func had stopped its own registration, the registration stayed "running" for
 * good (its runner may not touch it again: fn may have freed it), so any later stop waited forever,
 * where ctx.h says that calling stop again returns the same answer. */
static ats_ctx_after self_stopper;
static _Atomic int self_stop_said = -1;

static void stop_self(void *arg)
{
	(void)arg;
	atomic_store(&self_stop_said, ats_ctx_after_stop(&self_stopper));
}

Test(after, stop_again_after_the_func_stopped_itself, .timeout = 30)
{
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c));
	ats_ctx_after_func(c, &self_stopper, stop_self, NULL);
	cr_assert(ats_ctx_cancel(c, NULL));
	cr_assert_eq(atomic_load(&self_stop_said), 0, "fn's own stop says it ran");
	cr_expect_not(ats_ctx_after_stop(&self_stopper)); /* hung here */
	ats_ctx_release(c);
}

/* The same bug, with the second stop already called on another thread while fn runs: that stop
 * waited for good. It now returns once fn has stopped its own registration. */
static ats_ctx_after waited_on;
static _Atomic int fn_running, stopper_started, stopper_said = -1;

static void stop_self_once_another_stops(void *arg)
{
	(void)arg;
	atomic_store(&fn_running, 1);
	while (!atomic_load(&stopper_started))
		sched_yield();
	ats_ctx_after_stop(&waited_on);
}

static void *cancel_it(void *ctx)
{
	ats_ctx_cancel(ctx, NULL);
	return NULL;
}

static void *stop_it(void *arg)
{
	(void)arg;
	while (!atomic_load(&fn_running)) /* a stop before fn ran would just cancel it */
		sched_yield();
	atomic_store(&stopper_started, 1);
	atomic_store(&stopper_said, ats_ctx_after_stop(&waited_on));
	return NULL;
}

Test(after, a_stop_waiting_on_a_func_that_stops_itself_returns, .timeout = 30)
{
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c));
	ats_ctx_after_func(c, &waited_on, stop_self_once_another_stops, NULL);
	pthread_t canceller, stopper;
	cr_assert_eq(pthread_create(&canceller, NULL, cancel_it, c), 0); /* runs fn */
	cr_assert_eq(pthread_create(&stopper, NULL, stop_it, NULL), 0);
	pthread_join(canceller, NULL);
	pthread_join(stopper, NULL); /* hung here */
	cr_expect_eq(atomic_load(&stopper_said), 0);
	ats_ctx_release(c);
}

/* ---- The timer thread ---- */

/* Whether ctx's deadline fires (its fd turns readable) within wait_ms, without this thread
 * calling ats_ctx_wait or ats_ctx_err (which expire a context themselves). */
static bool fires_within(ats_ctx *ctx, int wait_ms)
{
	int fd = -1;
	ats_err *e = ats_ctx_fd(ctx, &fd);
	if (e) {
		ats_err_unref(e);
		return false;
	}
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, wait_ms) == 1 && ats_ctx_done(ctx);
}

/* In the child of a fork, deadlines never fired: the service believed its thread was running,
 * but a child has none of its parent's threads. The child's first arm now starts one, and a
 * deadline the child inherited fires with it. */
#if defined(__SANITIZE_ADDRESS__)
#define ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN_BUILD 1
#endif
#endif

/* Skips a test whose forked child starts a thread where that cannot work. Debian 12's
 * AddressSanitizer runtimes do not lock their allocator across fork(): the child of a process with
 * other threads (Criterion's own, here) may block for good in its first malloc, the new timer
 * thread's start. qemu-user aborts when the child of a multithreaded process starts a thread. */
static void skip_where_a_forked_child_cannot_start_a_thread(void)
{
#ifdef ASAN_BUILD
	cr_skip_test("fork() of a multithreaded process is not safe under this AddressSanitizer runtime");
#endif
#ifdef ATS_TEST_EMULATED
	cr_skip_test("the emulator running this cross build cannot start a thread in a forked child");
#endif
}

Test(timer, deadlines_fire_in_a_forked_child)
{
	skip_where_a_forked_child_cannot_start_a_thread();
	ats_ctx *before = NULL, *inherited = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), MS, &before)); /* the thread starts */
	cr_assert(fires_within(before, 5000));
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 20 * MS, &inherited));
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		ats_ctx *c = NULL;
		if (ats_ctx_with_timeout(ats_ctx_background(), MS, &c))
			_exit(3);
		int code = !fires_within(c, 5000) ? 1 : !fires_within(inherited, 5000) ? 2 : 0;
		_exit(code);
	}
	int st = 0;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st));
	cr_expect_eq(WEXITSTATUS(st), 0, "in the child: %s",
	             WEXITSTATUS(st) == 1   ? "a new deadline did not fire"
	             : WEXITSTATUS(st) == 2 ? "an inherited deadline did not fire"
	                                    : "with_timeout failed");
	cr_expect(fires_within(inherited, 5000), "and in the parent, the same deadline fires");
	ats_ctx_release(inherited);
	ats_ctx_release(before);
}

/* One failed start of the timer thread (a momentary thread limit) failed every later deadline
 * for the life of the process, and those later errors said errno 0. Each arm now tries again. */
Test(timer, a_failed_start_is_tried_again)
{
	ats_ctx *ctx = NULL;
	atomic_store(&ats__timer_refuse_starts, 2);
	for (int i = 0; i < 2; i++) {
		ats_err *e = ats_ctx_with_timeout(ats_ctx_background(), 1000 * MS, &ctx);
		cr_assert_not_null(e, "attempt %d: the timer thread could not start", i);
		cr_assert_null(ctx);
		cr_expect_eq(ats_err_code(e), ATS_ERR_UNAVAILABLE);
		const char *why = ats_err_kv_get(e, "errno");
		cr_expect(why && strstr(why, "EAGAIN"), "attempt %d says errno %s", i, why ? why : "(none)");
		ats_err_unref(e);
	}
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), MS, &ctx), "the limit is gone: a deadline works");
	cr_expect(fires_within(ctx, 5000));
	ats_ctx_release(ctx);
}

/* A fork from an after-func that the timer thread runs: the child's only thread is the copy of
 * the timer thread, inside its round, holding round_lock; the thread the child's first arm starts
 * waited on that lock for good, so no deadline fired in the child. */
static _Atomic pid_t child_pid;
static pthread_t test_thread;

/* Runs where its context's deadline fired: on the timer thread, it forks a child that needs a
 * deadline of its own (-2 when it ran on the test's thread: registered too late, try again). */
static void fork_on_deadline(void *arg)
{
	(void)arg;
	if (pthread_equal(pthread_self(), test_thread)) {
		atomic_store(&child_pid, -2);
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		ats_ctx *c = NULL;
		if (ats_ctx_with_timeout(ats_ctx_background(), MS, &c))
			_exit(3);
		_exit(fires_within(c, 2000) ? 0 : 1);
	}
	atomic_store(&child_pid, pid);
}

Test(timer, a_child_forked_from_an_after_func_gets_its_deadlines)
{
	skip_where_a_forked_child_cannot_start_a_thread();
	test_thread = pthread_self();
	pid_t pid;
	do {
		atomic_store(&child_pid, 0);
		ats_ctx *ctx = NULL;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 5 * MS, &ctx));
		ats_ctx_after a;
		ats_ctx_after_func(ctx, &a, fork_on_deadline, NULL);
		while ((pid = atomic_load(&child_pid)) == 0)
			sched_yield();
		ats_ctx_after_stop(&a); /* the after-func has returned: `a` may go */
		ats_ctx_release(ctx);
	} while (pid == -2);
	cr_assert_neq(pid, -1);
	int st = 0;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st));
	cr_expect_eq(WEXITSTATUS(st), 0, "in the child forked from an after-func: %s",
	             WEXITSTATUS(st) == 1 ? "a new deadline did not fire within 2 s" : "with_timeout failed");
}

/* ---- Out of memory at a cancel or an expiry ---- */

/* The first cancel (or expiry) of a process makes the shared "context cancelled" record. When
 * that allocation failed, the context reported ATS_ERR_OUT_OF_MEMORY for good, although
 * cancelling allocates nothing by contract and ats_ctx_err reports CANCELLED or
 * DEADLINE_EXCEEDED. (The test's malloc can be made to fail: regress_ctx.cmake.) */
void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);
static _Atomic int malloc_fails_in; /* > 0: the malloc that brings it to 0 fails */

void *__wrap_malloc(size_t n)
{
	if (atomic_load(&malloc_fails_in) > 0 && atomic_fetch_sub(&malloc_fails_in, 1) == 1)
		return NULL;
	return __real_malloc(n);
}

Test(oom, a_cancel_reports_cancelled)
{
	ats_ctx *ctx = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &ctx));
	atomic_store(&malloc_fails_in, 1);
	cr_assert(ats_ctx_cancel(ctx, NULL));
	atomic_store(&malloc_fails_in, 0);
	ats_err *e = ats_ctx_err(ctx);
	cr_expect_eq(ats_err_code(e), ATS_ERR_CANCELLED, "code %s (\"%s\")", ats_code_name(ats_err_code(e)),
	             ats_err_message(e));
	ats_err_unref(e);
	ats_ctx_release(ctx);
	/* Memory is back: the next cancel makes the shared record. */
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &ctx));
	cr_assert(ats_ctx_cancel(ctx, NULL));
	e = ats_ctx_err(ctx);
	cr_expect_eq(ats_err_code(e), ATS_ERR_CANCELLED);
	ats_err_unref(e);
	ats_ctx_release(ctx);
}

Test(oom, an_expiry_reports_deadline_exceeded)
{
	atomic_store(&malloc_fails_in, 2); /* the context's own allocation works, the record's fails */
	ats_ctx *ctx = NULL;
	ats_err *made = ats_ctx_with_timeout(ats_ctx_background(), 0, &ctx);
	atomic_store(&malloc_fails_in, 0);
	cr_assert_null(made);
	cr_assert(ats_ctx_done(ctx));
	ats_err *e = ats_ctx_err(ctx);
	cr_expect_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED, "code %s (\"%s\")", ats_code_name(ats_err_code(e)),
	             ats_err_message(e));
	ats_err_unref(e);
	ats_ctx_release(ctx);
}
