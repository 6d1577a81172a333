/* SPDX-License-Identifier: BSD-2-Clause */
/* Contexts: tree cancellation, causes, deadlines and the timer, waiting, fds, after-funcs,
 * without_cancel, merge, values, OOM; and the timing wheel against a reference model.
 * Nothing here sleeps to synchronize: tests wait with ats_ctx_wait, poll on the context's fd,
 * use deadlines in the past or the _at variants, or spin on atomics with a bound. */
#include <criterion/criterion.h>

#include "atscale/ctx.h"
#include "atscale/clock.h"
#include "internal/ctx_hooks.h"
#include "wheel_model.h"

#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MS 1000000ull
#define SEC ATS_NS_PER_SEC

static ats_ctx *child_of(ats_ctx *p)
{
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_cancel(p, &c));
	cr_assert_not_null(c);
	return c;
}

/* Spins until cond or ~10 s (a bound, not a sleep: the condition ends the loop). */
#define SPIN_UNTIL(cond)                                                                                               \
	do {                                                                                                           \
		uint64_t t0_ = ats_now_ns();                                                                           \
		while (!(cond) && ats_now_ns() - t0_ < 10 * SEC)                                                       \
			;                                                                                              \
		cr_assert(cond, "timed out waiting for " #cond);                                                       \
	} while (0)

Test(ctx, background_is_never_done)
{
	ats_ctx *bg = ats_ctx_background();
	cr_assert_not(ats_ctx_done(bg));
	cr_assert_not(ats_ctx_done_at(bg, UINT64_MAX - 1));
	cr_assert_eq(ats_ctx_deadline(bg), ATS_CTX_NO_DEADLINE);
	cr_assert_not(ats_ctx_cancel(bg, ats_err_new(ATS_ERR_INTERNAL, "no")));
	cr_assert_not(ats_ctx_done(bg));
	cr_assert_null(ats_ctx_err(bg));
	cr_assert_null(ats_ctx_cause(bg));
	cr_assert_not(ats_ctx_wait(bg, ats_now_ns()));
	ats_ctx_release(ats_ctx_ref(bg)); /* no-ops */
}

Test(ctx, cancel_without_cause)
{
	ats_ctx *c = child_of(ats_ctx_background());
	cr_assert_not(ats_ctx_done(c));
	cr_assert_null(ats_ctx_err(c));
	cr_assert(ats_ctx_cancel(c, NULL));
	cr_assert(ats_ctx_done(c));
	ats_err *e = ats_ctx_err(c);
	cr_assert_eq(ats_err_code(e), ATS_ERR_CANCELLED);
	cr_assert_str_eq(ats_err_message(e), "context cancelled");
	cr_assert_eq(ats_err_kind_of(e), ATS_KIND_KNOWN);
	cr_assert_eq(ats_ctx_cause(c), e, "no cause: Cause is Err");
	ats_err_unref(e);
	cr_assert_not(ats_ctx_cancel(c, NULL), "second cancel is a no-op");
	ats_ctx_release(c);
	/* The shared "context cancelled" error survives its readers' unrefs. */
	for (int i = 0; i < 3; i++) {
		c = child_of(ats_ctx_background());
		ats_ctx_cancel(c, NULL);
		e = ats_ctx_err(c);
		cr_assert_str_eq(ats_err_message(e), "context cancelled");
		ats_err_unref(e);
		ats_ctx_release(c);
	}
}

Test(ctx, cancel_with_cause_wraps_it)
{
	ats_ctx *c = child_of(ats_ctx_background());
	ats_err *cause = ats_err_new(ATS_ERR_UNAVAILABLE, "backend down");
	cr_assert(ats_ctx_cancel(c, cause));
	ats_err *e = ats_ctx_err(c);
	cr_assert_eq(ats_err_code(e), ATS_ERR_CANCELLED);
	cr_assert_eq(ats_err_cause(e), cause);
	cr_assert_eq(ats_ctx_cause(c), cause);
	cr_assert(ats_err_is(e, ATS_ERR_UNAVAILABLE));
	/* The subtree's record has no place of its own; the cause keeps where it was made. */
	cr_assert(ats_err_is_shared(e));
	cr_assert_str_eq(ats_err_file(cause), __FILE__);
	/* A later cancel neither changes the cause nor leaks its own. */
	cr_assert_not(ats_ctx_cancel(c, ats_err_new(ATS_ERR_INTERNAL, "late")));
	cr_assert_eq(ats_ctx_cause(c), cause);
	ats_err_unref(e);
	ats_ctx_release(c);
}

Test(ctx, parent_cancels_subtree_child_never_parent)
{
	ats_ctx *root = child_of(ats_ctx_background());
	ats_ctx *a = child_of(root), *b = child_of(root);
	ats_ctx *a1 = child_of(a), *a2 = child_of(a);
	cr_assert(ats_ctx_cancel(a, ats_err_new(ATS_ERR_CLOSED, "a closed")));
	cr_assert(ats_ctx_done(a) && ats_ctx_done(a1) && ats_ctx_done(a2));
	cr_assert_not(ats_ctx_done(root));
	cr_assert_not(ats_ctx_done(b));
	cr_assert_eq(ats_err_code(ats_ctx_cause(a1)), ATS_ERR_CLOSED, "the subtree shares the cause");
	cr_assert_not(ats_ctx_cancel(a1, NULL));
	cr_assert(ats_ctx_cancel(root, NULL));
	cr_assert(ats_ctx_done(b));
	cr_assert_eq(ats_err_code(ats_ctx_cause(a1)), ATS_ERR_CLOSED, "first cancel wins");
	ats_ctx *late = child_of(root);
	cr_assert(ats_ctx_done(late), "child of a done parent is born done");
	cr_assert_eq(ats_ctx_cause(late), ats_ctx_cause(root));
	ats_ctx_release(late);
	ats_ctx_release(a1);
	ats_ctx_release(a2);
	ats_ctx_release(a);
	ats_ctx_release(b);
	ats_ctx_release(root);
}

Test(ctx, deep_chain_100k_iterative)
{
	enum { N = 100000 };
	ats_ctx **chain = malloc(N * sizeof *chain);
	chain[0] = child_of(ats_ctx_background());
	for (int i = 1; i < N; i++)
		chain[i] = child_of(chain[i - 1]);
	/* Cancelling a middle node reaches the leaf and leaves the ancestors alone. */
	cr_assert(ats_ctx_cancel(chain[N / 2], NULL));
	cr_assert(ats_ctx_done(chain[N - 1]));
	cr_assert_not(ats_ctx_done(chain[N / 2 - 1]));
	cr_assert(ats_ctx_cancel(chain[0], NULL));
	for (int i = 0; i < N; i++)
		cr_assert(ats_ctx_done(chain[i]));
	/* Releasing the root first: the chain is freed from the leaf, iteratively. */
	for (int i = 0; i < N; i++)
		ats_ctx_release(chain[i]);
	free(chain);
}

Test(ctx, deep_chain_release_leaf_last_frees_iteratively)
{
	enum { N = 100000 };
	ats_ctx *c = child_of(ats_ctx_background());
	ats_ctx *root = c;
	ats_ctx_ref(root);
	for (int i = 1; i < N; i++) {
		ats_ctx *n = child_of(c);
		ats_ctx_release(c); /* only the child's reference keeps it */
		c = n;
	}
	ats_ctx_cancel(root, NULL);
	cr_assert(ats_ctx_done(c));
	ats_ctx_release(root);
	ats_ctx_release(c); /* frees 100,000 contexts in a loop, not a recursion */
}

Test(ctx, wide_100k_children)
{
	enum { N = 100000 };
	ats_ctx *root = child_of(ats_ctx_background());
	ats_ctx **kids = malloc(N * sizeof *kids);
	for (int i = 0; i < N; i++)
		kids[i] = child_of(root);
	/* Release every third child before the cancel: unlinked, never touched by it. */
	for (int i = 0; i < N; i += 3) {
		ats_ctx_release(kids[i]);
		kids[i] = NULL;
	}
	cr_assert(ats_ctx_cancel(root, NULL));
	for (int i = 0; i < N; i++)
		if (kids[i])
			cr_assert(ats_ctx_done(kids[i]));
	for (int i = 0; i < N; i++)
		ats_ctx_release(kids[i]);
	free(kids);
	ats_ctx_release(root);
}

Test(ctx, deadline_in_the_past_cancels_at_once)
{
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), ats_now_ns() - 1, &c));
	cr_assert(ats_ctx_done(c));
	ats_err *e = ats_ctx_err(c);
	cr_assert_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED);
	cr_assert_str_eq(ats_err_message(e), "context deadline exceeded");
	ats_err_unref(e);
	ats_ctx_release(c);
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 0, &c));
	cr_assert(ats_ctx_done(c));
	ats_ctx_release(c);
}

Test(ctx, deadline_is_earlier_of_own_and_parents)
{
	uint64_t now = ats_now_ns();
	ats_ctx *p = NULL, *early = NULL, *late = NULL;
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), now + 3600 * SEC, &p));
	cr_assert_null(ats_ctx_with_deadline(p, now + 60 * SEC, &early));
	cr_assert_null(ats_ctx_with_deadline(p, now + 7200 * SEC, &late));
	cr_assert_eq(ats_ctx_deadline(p), now + 3600 * SEC);
	cr_assert_eq(ats_ctx_deadline(early), now + 60 * SEC);
	cr_assert_eq(ats_ctx_deadline(late), now + 3600 * SEC);
	cr_assert_not(ats_ctx_done_at(early, now));
	cr_assert(ats_ctx_done_at(early, now + 60 * SEC));
	cr_assert_not(ats_ctx_done_at(late, now + 3599 * SEC));
	cr_assert(ats_ctx_done_at(late, now + 3600 * SEC));
	cr_assert_not(ats_ctx_done(late), "done_at reads the deadline, it does not cancel");
	ats_ctx *v = NULL;
	cr_assert_null(ats_ctx_with_timeout_at(p, 5 * SEC, now, &v));
	cr_assert_eq(ats_ctx_deadline(v), now + 5 * SEC);
	ats_ctx_release(v);
	ats_ctx_release(early);
	ats_ctx_release(late);
	ats_ctx_release(p);
}

Test(ctx, timer_fires_for_a_blocked_poller, .timeout = 30)
{
	/* Nothing but the timer thread can make the fd readable: poll blocks until it fires. */
	uint64_t t0 = ats_now_ns();
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 3 * MS, &c));
	int fd = -1;
	cr_assert_null(ats_ctx_fd(c, &fd));
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	cr_assert_eq(poll(&pfd, 1, 20000), 1);
	uint64_t woke = ats_now_ns();
	cr_assert(ats_ctx_done(c));
	cr_assert_geq(woke, ats_ctx_deadline(c), "never early");
	/* The deadline is set on the default clock, which may be behind t0 by its precision. */
	cr_assert_geq(woke - t0 + ats_fast_precision_ns(), 3 * MS);
	ats_err *e = ats_ctx_err(c);
	cr_assert_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED);
	ats_err_unref(e);
	ats_ctx_release(c);
}

Test(ctx, timer_cancels_a_subtree_and_spins_end)
{
	ats_ctx *p = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2 * MS, &p));
	ats_ctx *kid = child_of(p);
	cr_assert_eq(ats_ctx_deadline(kid), ats_ctx_deadline(p));
	SPIN_UNTIL(ats_ctx_done(kid));
	cr_assert_geq(ats_now_ns(), ats_ctx_deadline(p));
	cr_assert_eq(ats_err_code(ats_ctx_cause(kid)), ATS_ERR_DEADLINE_EXCEEDED);
	ats_ctx_release(kid);
	ats_ctx_release(p);
}

Test(ctx, many_timers_all_fire_none_early, .timeout = 30)
{
	enum { N = 2000 };
	ats_ctx **c = malloc(N * sizeof *c);
	uint64_t now = ats_now_ns();
	for (int i = 0; i < N; i++)
		cr_assert_null(
		    ats_ctx_with_deadline(ats_ctx_background(), now + (uint64_t)(i % 97) * 100000 + 1000, &c[i]));
	for (int i = 0; i < N; i++) {
		SPIN_UNTIL(ats_ctx_done(c[i]));
		cr_assert_geq(ats_now_ns(), ats_ctx_deadline(c[i]));
	}
	for (int i = 0; i < N; i++)
		ats_ctx_release(c[i]);
	free(c);
}

Test(ctx, far_deadlines_released_before_they_fire)
{
	uint64_t now = ats_now_ns();
	for (int i = 0; i < 1000; i++) {
		ats_ctx *c = NULL;
		cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), now + (uint64_t)(i + 1) * 3600 * SEC, &c));
		cr_assert_not(ats_ctx_done(c));
		ats_ctx_release(c); /* disarms */
	}
}

/* A deadline in the last tick of the clock's range (it rounds up to a tick past 2^64 ns) is never:
 * the timer thread sleeps while it is the only one armed, as for any far deadline. (It used to
 * shift that tick into a past time and spin on it.) */
Test(ctx, a_deadline_at_the_end_of_time_lets_the_timer_thread_sleep)
{
	ats_ctx *never = NULL;
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), UINT64_MAX - 1, &never));
	/* A deadline that fires: the timer thread has run with the far one armed. */
	ats_ctx *soon = NULL;
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), ats_now_ns() + 2 * MS, &soon));
	cr_assert(ats_ctx_wait(soon, ATS_CTX_NO_DEADLINE));
	ats_ctx_release(soon);
	uint64_t before = atomic_load(&ats__timer_rounds);
	cr_assert_not(ats_ctx_wait(never, ats_now_ns() + 5 * MS)); /* 5 ms with only `never` armed */
	uint64_t rounds = atomic_load(&ats__timer_rounds) - before;
	cr_expect_lt(rounds, 20, "the timer thread ran %llu rounds in 5 ms", (unsigned long long)rounds);
	cr_expect_not(ats_ctx_done(never));
	ats_ctx_release(never);
}

Test(ctx, wait_returns_false_at_its_deadline_true_when_done)
{
	ats_ctx *c = child_of(ats_ctx_background());
	uint64_t t0 = ats_now_ns();
	cr_assert_not(ats_ctx_wait(c, t0 + 2 * MS));
	cr_assert_geq(ats_now_ns(), t0 + 2 * MS);
	cr_assert_not(ats_ctx_wait(c, 0), "past deadline: returns at once");
	ats_ctx_cancel(c, NULL);
	cr_assert(ats_ctx_wait(c, ATS_CTX_NO_DEADLINE));
	ats_ctx_release(c);
}

Test(ctx, wait_wakes_at_the_contexts_deadline)
{
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2 * MS, &c));
	cr_assert(ats_ctx_wait(c, ATS_CTX_NO_DEADLINE));
	cr_assert_geq(ats_now_ns(), ats_ctx_deadline(c));
	ats_err *e = ats_ctx_err(c);
	cr_assert_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED);
	ats_err_unref(e);
	ats_ctx_release(c);
}

struct waiter {
	pthread_t t;
	ats_ctx *c;
	bool woke;
};

static void *wait_main(void *arg)
{
	struct waiter *w = arg;
	w->woke = ats_ctx_wait(w->c, ATS_CTX_NO_DEADLINE);
	return NULL;
}

Test(ctx, cancel_wakes_every_blocked_waiter)
{
	enum { W = 8 };
	ats_ctx *root = child_of(ats_ctx_background());
	ats_ctx *mid = child_of(root), *leaf = child_of(mid);
	struct waiter w[W];
	for (int i = 0; i < W; i++) {
		w[i] = (struct waiter){.c = i % 2 ? leaf : root};
		pthread_create(&w[i].t, NULL, wait_main, &w[i]);
	}
	/* Wait until both words carry the waiter bit: the waiters are in, or entering, the futex. */
	const struct ats__ctx_head *hr = (const void *)root, *hl = (const void *)leaf;
	SPIN_UNTIL((atomic_load(&hr->state) & ATS__CTX_WAITERS) && (atomic_load(&hl->state) & ATS__CTX_WAITERS));
	ats_ctx_cancel(root, NULL);
	int woke = 0;
	for (int i = 0; i < W; i++) {
		pthread_join(w[i].t, NULL);
		woke += w[i].woke;
	}
	cr_assert_eq(woke, W);
	ats_ctx_release(leaf);
	ats_ctx_release(mid);
	ats_ctx_release(root);
}

Test(ctx, fd_made_before_or_after_cancel)
{
	ats_ctx *c = child_of(ats_ctx_background());
	int fd = -1, fd2 = -1;
	cr_assert_null(ats_ctx_fd(c, &fd));
	cr_assert_null(ats_ctx_fd(c, &fd2));
	cr_assert_eq(fd, fd2);
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	cr_assert_eq(poll(&pfd, 1, 0), 0);
	ats_ctx_cancel(c, NULL);
	cr_assert_eq(poll(&pfd, 1, 0), 1);
	ats_ctx_release(c);

	c = child_of(ats_ctx_background());
	ats_ctx_cancel(c, NULL);
	cr_assert_null(ats_ctx_fd(c, &fd));
	pfd.fd = fd;
	cr_assert_eq(poll(&pfd, 1, 0), 1);
	ats_ctx_release(c);
}

static void count_fn(void *arg)
{
	atomic_fetch_add((_Atomic int *)arg, 1);
}

Test(ctx, after_func_runs_once_on_cancel)
{
	_Atomic int n = 0;
	ats_ctx *p = child_of(ats_ctx_background());
	ats_ctx *c = child_of(p);
	ats_ctx_after a;
	ats_ctx_after_func(c, &a, count_fn, &n);
	cr_assert_eq(atomic_load(&n), 0);
	ats_ctx_release(c); /* the registration keeps c alive */
	ats_ctx_cancel(p, NULL);
	cr_assert_eq(atomic_load(&n), 1);
	cr_assert_not(ats_ctx_after_stop(&a), "it ran");
	cr_assert_not(ats_ctx_after_stop(&a), "same answer again");
	ats_ctx_cancel(p, NULL);
	cr_assert_eq(atomic_load(&n), 1);
	ats_ctx_release(p);
}

Test(ctx, after_func_registered_after_cancel_runs_at_once)
{
	_Atomic int n = 0;
	ats_ctx *c = child_of(ats_ctx_background());
	ats_ctx_cancel(c, NULL);
	ats_ctx_after a;
	ats_ctx_after_func(c, &a, count_fn, &n);
	cr_assert_eq(atomic_load(&n), 1);
	cr_assert_not(ats_ctx_after_stop(&a));
	ats_ctx_release(c);
}

Test(ctx, after_func_stopped_never_runs)
{
	_Atomic int n = 0;
	ats_ctx *c = child_of(ats_ctx_background());
	ats_ctx_after a, b;
	ats_ctx_after_func(c, &a, count_fn, &n);
	ats_ctx_after_func(c, &b, count_fn, &n);
	cr_assert(ats_ctx_after_stop(&a));
	cr_assert(ats_ctx_after_stop(&a));
	ats_ctx_cancel(c, NULL);
	cr_assert_eq(atomic_load(&n), 1);
	cr_assert_not(ats_ctx_after_stop(&b));
	ats_ctx_release(c);
	/* On a context that can never be done it never runs. */
	ats_ctx_after_func(ats_ctx_background(), &a, count_fn, &n);
	cr_assert(ats_ctx_after_stop(&a));
	cr_assert_eq(atomic_load(&n), 1);
}

struct self_stop {
	ats_ctx_after *a;
	bool stop_result;
};
static void self_stop_fn(void *arg)
{
	struct self_stop *s = arg;
	s->stop_result = ats_ctx_after_stop(s->a);
	free(s->a); /* safe: the canceller does not touch a handle its callback stopped */
}

Test(ctx, after_func_may_stop_and_free_itself)
{
	struct self_stop s = {.a = malloc(sizeof(ats_ctx_after)), .stop_result = true};
	ats_ctx *c = child_of(ats_ctx_background());
	ats_ctx_after_func(c, s.a, self_stop_fn, &s);
	ats_ctx_cancel(c, NULL);
	cr_assert_not(s.stop_result);
	ats_ctx_release(c);
}

struct slow_after {
	ats_ctx_after a;
	_Atomic int started, finished;
};
static void slow_fn(void *arg)
{
	struct slow_after *s = arg;
	atomic_store(&s->started, 1);
	/* Finish only once the stopper is blocked on the handle (its waiter bit is set). */
	uint64_t t0 = ats_now_ns();
	while (!(atomic_load(&s->a.state_) & 0x100) && ats_now_ns() - t0 < 10 * SEC)
		;
	atomic_store(&s->finished, 1);
}
static void *cancel_main(void *arg)
{
	ats_ctx_cancel(arg, NULL);
	return NULL;
}

Test(ctx, after_stop_waits_while_it_runs)
{
	struct slow_after s = {0};
	ats_ctx *c = child_of(ats_ctx_background());
	ats_ctx_after_func(c, &s.a, slow_fn, &s);
	pthread_t t;
	pthread_create(&t, NULL, cancel_main, c);
	SPIN_UNTIL(atomic_load(&s.started));
	cr_assert_not(ats_ctx_after_stop(&s.a));
	cr_assert_eq(atomic_load(&s.finished), 1, "stop returned before the callback did");
	pthread_join(t, NULL);
	ats_ctx_release(c);
}

struct race {
	ats_ctx *c;
	ats_ctx_after a[4];
	_Atomic int n;
	_Atomic int go;
	int stopped;
};
static void *race_stop(void *arg)
{
	struct race *r = arg;
	while (!atomic_load(&r->go))
		;
	int s = 0;
	for (int i = 0; i < 4; i++)
		s += ats_ctx_after_stop(&r->a[i]);
	r->stopped = s;
	return NULL;
}

Test(ctx, after_func_exactly_once_under_races)
{
	for (int round = 0; round < 2000; round++) {
		struct race r = {.c = child_of(ats_ctx_background())};
		for (int i = 0; i < 4; i++)
			ats_ctx_after_func(r.c, &r.a[i], count_fn, &r.n);
		pthread_t t;
		pthread_create(&t, NULL, race_stop, &r);
		atomic_store(&r.go, 1);
		ats_ctx_cancel(r.c, NULL);
		pthread_join(t, NULL);
		cr_assert_eq(atomic_load(&r.n) + r.stopped, 4, "ran %d + stopped %d", atomic_load(&r.n), r.stopped);
		ats_ctx_release(r.c);
	}
}

Test(ctx, timer_after_func_runs_once)
{
	_Atomic int n = 0;
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 1 * MS, &c));
	ats_ctx_after a;
	ats_ctx_after_func(c, &a, count_fn, &n);
	SPIN_UNTIL(atomic_load(&n) == 1);
	cr_assert_not(ats_ctx_after_stop(&a));
	cr_assert_eq(atomic_load(&n), 1);
	ats_ctx_release(c);
}

static ATS_CTX_KEY(key_user);
static ATS_CTX_KEY(key_trace);

Test(ctx, without_cancel_keeps_values_drops_cancel)
{
	ats_ctx *p = NULL, *v = NULL, *wc = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 3600 * SEC, &p));
	cr_assert_null(ats_ctx_with_value(p, &key_user, (void *)"ann", &v));
	cr_assert_null(ats_ctx_without_cancel(v, &wc));
	cr_assert_eq(ats_ctx_deadline(wc), ATS_CTX_NO_DEADLINE);
	ats_ctx_cancel(p, NULL);
	cr_assert(ats_ctx_done(v));
	cr_assert_not(ats_ctx_done(wc));
	cr_assert_not(ats_ctx_cancel(wc, NULL));
	cr_assert_str_eq(ats_ctx_value(wc, &key_user), "ann");
	ats_ctx *kid = child_of(wc);
	cr_assert_not(ats_ctx_done(kid));
	cr_assert_str_eq(ats_ctx_value(kid, &key_user), "ann");
	cr_assert(ats_ctx_cancel(kid, NULL));
	cr_assert_not(ats_ctx_done(wc));
	ats_ctx_release(kid);
	ats_ctx_release(v);
	ats_ctx_release(p);
	ats_ctx_release(wc); /* frees the chain it kept alive */
}

Test(ctx, merge_done_when_any_parent_is)
{
	uint64_t now = ats_now_ns();
	ats_ctx *a = NULL, *b = child_of(ats_ctx_background()), *c = child_of(ats_ctx_background());
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), now + 3600 * SEC, &a));
	ats_ctx *va = NULL;
	cr_assert_null(ats_ctx_with_value(a, &key_user, (void *)"first", &va));
	ats_ctx *m = NULL;
	ats_ctx *ps[] = {va, b, c};
	cr_assert_null(ats_ctx_merge(ps, 3, &m));
	cr_assert_eq(ats_ctx_deadline(m), now + 3600 * SEC);
	cr_assert_str_eq(ats_ctx_value(m, &key_user), "first");
	cr_assert_not(ats_ctx_done(m));
	ats_ctx_cancel(c, ats_err_new(ATS_ERR_CLOSED, "c went away"));
	cr_assert(ats_ctx_done(m));
	cr_assert_eq(ats_err_code(ats_ctx_cause(m)), ATS_ERR_CLOSED);
	cr_assert_not(ats_ctx_done(va));
	ats_ctx_release(m);
	/* A merge of a done parent is born done; releasing a live merge stops its after-funcs. */
	cr_assert_null(ats_ctx_merge(ps, 3, &m));
	cr_assert(ats_ctx_done(m));
	ats_ctx_release(m);
	ats_ctx *ps2[] = {ats_ctx_background(), b};
	cr_assert_null(ats_ctx_merge(ps2, 2, &m));
	cr_assert_not(ats_ctx_done(m));
	ats_ctx_release(m);
	cr_assert_null(ats_ctx_merge(ps2, 2, &m));
	ats_ctx_cancel(b, NULL);
	cr_assert(ats_ctx_done(m));
	ats_ctx_release(m);
	ats_err *bad = ats_ctx_merge(ps, 0, &m);
	cr_assert_eq(ats_err_code(bad), ATS_ERR_INVALID_ARGUMENT);
	cr_assert_null(m);
	ats_err_unref(bad);
	ats_ctx_release(va);
	ats_ctx_release(a);
	ats_ctx_release(b);
	ats_ctx_release(c);
}

Test(ctx, merge_first_parent_cancel_reaches_it)
{
	ats_ctx *a = child_of(ats_ctx_background()), *b = child_of(ats_ctx_background());
	ats_ctx *ps[] = {a, b}, *m = NULL;
	cr_assert_null(ats_ctx_merge(ps, 2, &m));
	ats_ctx *kid = child_of(m);
	ats_ctx_cancel(a, NULL);
	cr_assert(ats_ctx_done(m) && ats_ctx_done(kid));
	ats_ctx_release(kid);
	ats_ctx_release(m);
	ats_ctx_release(a);
	ats_ctx_release(b);
}

Test(ctx, values_shadow_inherit_and_overflow)
{
	static ats_ctx_key many[20];
	for (int i = 0; i < 20; i++) {
		many[i].name = "many";
		atomic_init(&many[i].slot_, ATS__CTX_KEY_UNASSIGNED);
	}
	ats_ctx *c = ats_ctx_background();
	ats_ctx_ref(c);
	cr_assert_null(ats_ctx_value(c, &key_trace));
	ats_ctx *n = NULL;
	cr_assert_null(ats_ctx_with_value(c, &key_user, (void *)"u1", &n));
	ats_ctx_release(c);
	c = n;
	cr_assert_null(ats_ctx_with_value(c, &key_user, (void *)"u2", &n));
	ats_ctx *older = c;
	c = n;
	cr_assert_str_eq(ats_ctx_value(c, &key_user), "u2");
	cr_assert_str_eq(ats_ctx_value(older, &key_user), "u1");
	void *out = (void *)1;
	cr_assert_not(ats_ctx_lookup(c, &key_trace, &out));
	cr_assert_null(ats_ctx_with_value(c, &key_trace, NULL, &n));
	ats_ctx_release(c);
	c = n;
	cr_assert(ats_ctx_lookup(c, &key_trace, &out), "a NULL value is still a value");
	cr_assert_null(out);
	for (intptr_t i = 0; i < 20; i++) {
		cr_assert_null(ats_ctx_with_value(c, &many[i], (void *)(i + 100), &n));
		ats_ctx_release(c);
		c = n;
	}
	ats_ctx *kid = child_of(c);
	for (intptr_t i = 0; i < 20; i++)
		cr_assert_eq((intptr_t)ats_ctx_value(kid, &many[i]), i + 100);
	cr_assert_str_eq(ats_ctx_value(kid, &key_user), "u2");
	ats_ctx_release(kid);
	ats_ctx_release(c);
	ats_ctx_release(older);
}

Test(ctx, oom_changes_nothing)
{
	ats_ctx *p = child_of(ats_ctx_background());
	ats_ctx *c = (ats_ctx *)1;
	atomic_store(&ats__ctx_fail_allocs, 1);
	cr_assert_eq(ats_ctx_with_cancel(p, &c), ats_err_oom);
	cr_assert_null(c);
	atomic_store(&ats__ctx_fail_allocs, 1);
	cr_assert_eq(ats_ctx_with_timeout(p, SEC, &c), ats_err_oom);
	atomic_store(&ats__ctx_fail_allocs, 1);
	cr_assert_eq(ats_ctx_with_value(p, &key_user, NULL, &c), ats_err_oom);
	atomic_store(&ats__ctx_fail_allocs, 1);
	cr_assert_eq(ats_ctx_without_cancel(p, &c), ats_err_oom);
	ats_ctx *ps[] = {p};
	atomic_store(&ats__ctx_fail_allocs, 1);
	cr_assert_eq(ats_ctx_merge(ps, 1, &c), ats_err_oom);
	cr_assert_null(c);
	/* p is untouched: no child was linked; cancel and release as usual. */
	cr_assert(ats_ctx_cancel(p, NULL));
	ats_ctx_release(p);
}

Test(ctx, release_while_cancelling)
{
	/* Children released by another thread while the parent's cancel walks them. */
	for (int round = 0; round < 200; round++) {
		enum { N = 500 };
		ats_ctx *root = child_of(ats_ctx_background());
		ats_ctx *kids[N];
		for (int i = 0; i < N; i++)
			kids[i] = child_of(i % 2 || i == 0 ? root : kids[i - 1]);
		pthread_t t;
		pthread_create(&t, NULL, cancel_main, root);
		for (int i = N - 1; i >= 0; i--)
			ats_ctx_release(kids[i]);
		pthread_join(t, NULL);
		cr_assert(ats_ctx_done(root));
		ats_ctx_release(root);
	}
}

/* ---- The timing wheel against a reference model ---- */

Test(timer_wheel, matches_model)
{
	static struct wheel_model m;
	uint64_t seed = 88172645463325252ull;
#define RND() (seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17, seed)
	wheel_model_init(&m, WHEEL_MODEL_MAX_NODES, 12345);
	for (int step = 0; step < 200000; step++) {
		uint64_t r = RND();
		int k = (int)(r % WHEEL_MODEL_MAX_NODES);
		const char *why = NULL;
		switch ((r >> 8) % 4) {
		case 0:
		case 1: {
			/* Spread over every level: 1 .. 2^40 ticks ahead, and sometimes the past. */
			uint64_t d = (RND() & ((1ull << ((r >> 16) % 41)) - 1));
			why = wheel_model_add(&m, k, m.w.now + d - ((r >> 24) % 8 == 0 ? d : 0));
			break;
		}
		case 2: wheel_model_del(&m, k); break;
		default: {
			uint64_t next;
			why = wheel_model_next(&m, &next);
			if (!why)
				why = wheel_model_advance(
				    &m,
				    (r >> 32) % 3 == 0 ? next : m.w.now + (RND() & ((1ull << ((r >> 40) % 36)) - 1)));
		}
		}
		cr_assert_null(why, "step %d: %s", step, why);
	}
}

/* ---- Honest deadline and cancel records, and deadline causes ---- */

/* Two contexts expiring in different places and at different times: neither record claims a
 * place or time it does not have; both say they are shared. */
Test(ctx, expiry_records_are_marked_shared)
{
	ats_ctx *a = NULL, *b = NULL;
	cr_assert_null(ats_ctx_with_deadline(ats_ctx_background(), 1, &a)); /* born expired */
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 1 * MS, &b));
	cr_assert(ats_ctx_wait(b, ATS_CTX_NO_DEADLINE));
	ats_err *ea = ats_ctx_err(a), *eb = ats_ctx_err(b);
	ats_ctx *c = child_of(ats_ctx_background());
	cr_assert(ats_ctx_cancel(c, NULL));
	ats_err *ec = ats_ctx_err(c);
	const ats_err *errs[] = {ea, eb, ec};
	for (size_t i = 0; i < 3; i++) {
		cr_assert(ats_err_is_shared(errs[i]), "record %zu", i);
		cr_assert_str_eq(ats_err_file(errs[i]), "");
		cr_assert_eq(ats_err_line(errs[i]), 0);
		cr_assert_eq(ats_err_thread_id(errs[i]), 0);
		cr_assert_eq(ats_err_wall_ns(errs[i]), 0);
		char text[1024];
		ats_err_format(errs[i], text, sizeof text);
		cr_assert(strstr(text, "shared record: no place or time"), "%s", text);
		cr_assert_null(strstr(text, "ctx.c"), "no fake place: %s", text);
		ats_err_format_json(errs[i], text, sizeof text);
		cr_assert(strstr(text, "\"shared\":true"), "%s", text);
		cr_assert_null(strstr(text, "\"file\""), "%s", text);
	}
	cr_assert_eq(ats_err_code(ea), ATS_ERR_DEADLINE_EXCEEDED);
	cr_assert_eq(ats_err_code(ec), ATS_ERR_CANCELLED);
	/* Decorating the shared record copies it (the copy is the caller's) and stays shared. */
	ats_err *d = ats_err_with_user(ats_err_ref(ea), "Too slow.");
	cr_assert_neq(d, ea);
	cr_assert(ats_err_is_shared(d));
	ats_err_unref(d);
	/* A wrap where the caller checked records the caller's place. */
	ats_err *w = ats_err_wrap(ats_err_ref(eb), "GET k0");
	cr_assert_not(ats_err_is_shared(w));
	cr_assert_str_eq(ats_err_file(w), __FILE__);
	ats_err_unref(w);
	ats_err_unref(ea);
	ats_err_unref(eb);
	ats_err_unref(ec);
	ats_ctx_release(a);
	ats_ctx_release(b);
	ats_ctx_release(c);
}

/* Go's WithDeadlineCause: the error stays deadline exceeded, the cause is the given one, for the
 * context and its subtree, whichever path expires it (born expired, ats_ctx_err, the timer). */
Test(ctx, deadline_cause)
{
	/* Born expired. */
	ats_err *cause = ats_err_new(ATS_ERR_UNAVAILABLE, "backend budget spent");
	ats_ctx *a = NULL;
	cr_assert_null(ats_ctx_with_deadline_cause(ats_ctx_background(), 1, cause, &a));
	cr_assert(ats_ctx_done(a));
	ats_err *e = ats_ctx_err(a);
	cr_assert_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED);
	cr_assert_str_eq(ats_err_message(e), "context deadline exceeded");
	cr_assert_eq(ats_ctx_cause(a), cause, "the cause given, not a copy");
	cr_assert_eq(ats_err_cause(e), cause);
	cr_assert(ats_err_is_shared(e));
	cr_assert_str_eq(ats_err_kv_get(e, "deadline_ns"), "1");
	ats_err_unref(e);
	ats_ctx_release(a);

	/* Fired by the timer, seen through a child made before. */
	cause = ats_err_new(ATS_ERR_LIMITED, "request budget");
	ats_ctx *p = NULL;
	cr_assert_null(ats_ctx_with_timeout_cause(ats_ctx_background(), 2 * MS, cause, &p));
	ats_ctx *kid = child_of(p);
	SPIN_UNTIL(ats_ctx_done(kid));
	cr_assert_eq(ats_ctx_cause(kid), cause);
	cr_assert_eq(ats_ctx_cause(p), cause);
	e = ats_ctx_err(kid);
	cr_assert_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED);
	ats_err_unref(e);
	ats_ctx_release(kid);

	/* A child made after, with a later deadline of its own, keeps the parent's deadline and cause
	 * and drops its own; expired through ats_ctx_err (no timer involved). */
	ats_ctx *late = NULL;
	cr_assert_null(
	    ats_ctx_with_deadline_cause(p, ATS_CTX_NO_DEADLINE - 1, ats_err_new(ATS_ERR_CLOSED, "x"), &late));
	cr_assert_eq(ats_ctx_cause(late), cause);
	ats_ctx_release(late);
	ats_ctx_release(p);

	/* A descendant without a deadline of its own, expired by ats_ctx_err before any timer ran. */
	uint64_t now = ats_now_ns();
	cause = ats_err_new(ATS_ERR_UNAVAILABLE, "soon");
	cr_assert_null(ats_ctx_with_deadline_cause(ats_ctx_background(), now + 1 * MS, cause, &p));
	kid = child_of(p);
	while (ats_fast_now_ns() < now + 1 * MS) /* the clock ats_ctx_err reads (clock.h) */
		;
	e = ats_ctx_err(kid);
	cr_assert_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED);
	cr_assert_eq(ats_ctx_cause(kid), cause);
	ats_err_unref(e);
	ats_ctx_release(kid);
	ats_ctx_release(p);

	/* A cancel first: the cancel's cause wins, the deadline cause is never used. */
	cr_assert_null(
	    ats_ctx_with_timeout_cause(ats_ctx_background(), 10 * SEC, ats_err_new(ATS_ERR_LIMITED, "t"), &p));
	ats_err *stop = ats_err_new(ATS_ERR_CLOSED, "shutdown");
	cr_assert(ats_ctx_cancel(p, stop));
	cr_assert_eq(ats_ctx_cause(p), stop);
	e = ats_ctx_err(p);
	cr_assert_eq(ats_err_code(e), ATS_ERR_CANCELLED);
	ats_err_unref(e);
	ats_ctx_release(p);
}

Test(ctx, deadline_cause_null_oom)
{
	ats_ctx *c = (ats_ctx *)1;
	/* Out of memory for the context: ats_err_oom, *out NULL, the cause dropped (ASan checks that
	 * it is freed, not leaked). First, while no freed context is cached for reuse. */
	atomic_store(&ats__ctx_fail_allocs, 1);
	cr_assert_eq(ats_ctx_with_deadline_cause(ats_ctx_background(), 1, ats_err_new(ATS_ERR_CLOSED, "c"), &c),
	             ats_err_oom);
	cr_assert_null(c);
	atomic_store(&ats__ctx_fail_allocs, 0);

	/* NULL cause: plain with_deadline, the shared record is its own cause. */
	cr_assert_null(ats_ctx_with_deadline_cause(ats_ctx_background(), 1, NULL, &c));
	ats_err *e = ats_ctx_err(c);
	cr_assert_eq(ats_err_code(e), ATS_ERR_DEADLINE_EXCEEDED);
	cr_assert_eq(ats_ctx_cause(c), e);
	ats_err_unref(e);
	ats_ctx_release(c);

	/* The static OOM error as the cause is kept like any other. */
	cr_assert_null(ats_ctx_with_timeout_cause(ats_ctx_background(), 0, ats_err_oom, &c));
	cr_assert(ats_ctx_done(c));
	cr_assert_eq(ats_ctx_cause(c), ats_err_oom);
	cr_assert_eq(ats_err_code(ats_ctx_cause(c)), ATS_ERR_OUT_OF_MEMORY);
	ats_ctx_release(c);
}

/* A merge takes the deadline, and with it the cause, of the parent whose deadline is earliest. */
Test(ctx, merge_takes_the_earliest_deadline_cause)
{
	ats_ctx *far = NULL, *near = NULL, *m = NULL;
	ats_err *near_cause = ats_err_new(ATS_ERR_LIMITED, "near");
	cr_assert_null(
	    ats_ctx_with_timeout_cause(ats_ctx_background(), 10 * SEC, ats_err_new(ATS_ERR_CLOSED, "far"), &far));
	cr_assert_null(ats_ctx_with_deadline_cause(ats_ctx_background(), ats_now_ns() + 1 * MS, near_cause, &near));
	ats_ctx *ps[] = {far, near};
	cr_assert_null(ats_ctx_merge(ps, 2, &m));
	cr_assert_eq(ats_ctx_deadline(m), ats_ctx_deadline(near));
	cr_assert(ats_ctx_wait(m, ATS_CTX_NO_DEADLINE));
	cr_assert_eq(ats_ctx_cause(m), near_cause);
	ats_ctx_release(m);
	ats_ctx_release(near);
	ats_ctx_release(far);
}
