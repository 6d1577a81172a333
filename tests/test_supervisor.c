/* SPDX-License-Identifier: BSD-2-Clause */
/* Supervision driven by heartbeats and fault injection: a ward frozen on purpose is found stalled
 * and restarted; exits are handled by restart type; one-for-all and rest-for-one restart the
 * right wards; a restart storm gives up and reports to a parent supervisor; a ward that ignores
 * its cancel is quarantined without holding up its replacement, and frees itself when released; a
 * wait ends with the supervisor or with its ctx.
 * The test waits on counters the supervisor and its wards move (polling with sched_yield), never
 * on a sleep. */
#include <atscale/clock.h>
#include <atscale/supervisor.h>
#include "internal/ec_hooks.h"
#include "internal/supervisor_hooks.h"

#include "asleep.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#define MS UINT64_C(1000000)

struct events {
	_Atomic int n[5];
	_Atomic int last_ward;
};

static void on_event(const ats_supervisor_event *ev, void *arg)
{
	struct events *e = arg;
	cr_assert(ev->kind == ATS_SUP_EVENT_RESTART || ev->kind == ATS_SUP_EVENT_EXIT || ev->err != NULL);
	if (ev->err && ev->kind != ATS_SUP_EVENT_EXIT)
		cr_assert_not_null(ats_err_kv_get(ev->err, "supervisor"));
	atomic_store(&e->last_ward, (int)ev->ward);
	atomic_fetch_add(&e->n[ev->kind], 1);
}

static void wait_until(_Atomic int *v, int at_least)
{
	while (atomic_load(v) < at_least)
		sched_yield();
}

/* A ward's fault switches, set by the test. */
struct ward_ctl {
	_Atomic int freeze; /* one-shot: stop beating with work pending */
	_Atomic int fail;   /* one-shot: return an error */
	_Atomic int finish; /* one-shot: return NULL */
	_Atomic int always_fail;
	ats_ctx *ignore_cancel_until; /* if set, a freeze waits for this ctx, not the ward's own */
	_Atomic int runs;
	_Atomic int thawed; /* freezes that ended (the gate or the ward's ctx done) */
	_Atomic pid_t tid;  /* the last incarnation's thread */
};

/* Yields until the thread tid has ended (its task is gone from /proc): a ward's thread ends after
 * its state says it returned. */
static void wait_gone(pid_t tid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/task/%d", (int)tid);
	while (access(path, F_OK) == 0)
		sched_yield();
}

static ats_err *ward_body(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	struct ward_ctl *c = arg;
	atomic_store(&c->tid, asleep_self_tid());
	atomic_fetch_add(&c->runs, 1);
	if (atomic_load(&c->always_fail))
		return ats_err_new(ATS_ERR_INTERNAL, "always fails");
	while (!ats_ctx_done(ctx)) {
		ats_heartbeat_work_begin(hb);
		if (atomic_exchange(&c->freeze, 0)) {
			/* Stuck with work pending: no more beats. */
			ats_ctx_wait(c->ignore_cancel_until ? c->ignore_cancel_until : ctx, ATS_CTX_NO_DEADLINE);
			atomic_fetch_add(&c->thawed, 1); /* the last touch of c or of the gate */
			return NULL;
		}
		if (atomic_exchange(&c->fail, 0))
			return ats_err_new(ATS_ERR_INTERNAL, "injected failure");
		if (atomic_exchange(&c->finish, 0))
			return NULL;
		ats_heartbeat_work_end(hb);
		ats_ctx_wait(ctx, ats_now_ns() + 100000); /* one unit of work: 100 us */
	}
	return NULL;
}

static ats_supervisor *mk(ats_sup_strategy strategy, struct events *e, unsigned max_restarts, uint64_t period)
{
	ats_supervisor *s;
	ats_supervisor_config cfg = {.name = "test",
	                             .strategy = strategy,
	                             .max_restarts = max_restarts,
	                             .period_ns = period,
	                             .on_event = on_event,
	                             .event_arg = e};
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	return s;
}

static unsigned add(ats_supervisor *s, struct ward_ctl *c, ats_ward_restart restart, uint64_t timeout)
{
	ats_ward_spec spec = {.name = NULL, .run = ward_body, .arg = c, .restart = restart};
	spec.watch.timeout_ns = timeout;
	spec.shutdown_timeout_ns = 5 * MS;
	unsigned id;
	cr_assert_null(ats_supervisor_add(s, &spec, &id));
	return id;
}

Test(supervisor, a_frozen_ward_is_found_stalled_and_restarted)
{
	struct events e = {0};
	ats_supervisor *s = mk(ATS_SUP_ONE_FOR_ONE, &e, 0, 0);
	struct ward_ctl c = {0};
	unsigned id = add(s, &c, ATS_WARD_PERMANENT, 20 * MS);
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	wait_until(&c.runs, 1);
	atomic_store(&c.freeze, 1);
	wait_until(&e.n[ATS_SUP_EVENT_RESTART], 1);
	cr_expect_eq(atomic_load(&e.n[ATS_SUP_EVENT_STALL]), 1);
	cr_expect_eq(ats_supervisor_ward_starts(s, id), 2);
	wait_until(&c.runs, 2);
	ats_supervisor_stats st;
	ats_supervisor_stats_get(s, &st);
	cr_expect_eq(st.stalls, 1);
	cr_expect_eq(st.restarts, 1);
	cr_expect_eq(st.quarantined, 0, "the frozen ward honoured its cancel");
	ats_supervisor_free(s);
}

Test(supervisor, exits_follow_the_restart_type)
{
	struct events e = {0};
	ats_supervisor *s = mk(ATS_SUP_ONE_FOR_ONE, &e, 0, 0);
	struct ward_ctl perm = {0}, trans = {0}, temp = {0};
	unsigned p = add(s, &perm, ATS_WARD_PERMANENT, 0);
	unsigned t = add(s, &trans, ATS_WARD_TRANSIENT, 0);
	unsigned m = add(s, &temp, ATS_WARD_TEMPORARY, 0);
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	wait_until(&perm.runs, 1), wait_until(&trans.runs, 1), wait_until(&temp.runs, 1);
	atomic_store(&perm.finish, 1); /* permanent: even a normal exit restarts */
	wait_until(&perm.runs, 2);
	atomic_store(&trans.fail, 1); /* transient: an abnormal exit restarts */
	wait_until(&trans.runs, 2);
	atomic_store(&trans.finish, 1); /* ... a normal one does not */
	atomic_store(&temp.fail, 1);    /* temporary: never */
	wait_until(&e.n[ATS_SUP_EVENT_EXIT], 4);
	cr_expect_eq(ats_supervisor_ward_starts(s, p), 2);
	cr_expect_eq(ats_supervisor_ward_starts(s, t), 2);
	cr_expect_eq(ats_supervisor_ward_starts(s, m), 1);
	atomic_store(&perm.fail, 1);
	wait_until(&perm.runs, 3);
	ats_supervisor_free(s);
	cr_expect_eq(atomic_load(&trans.runs), 2);
	cr_expect_eq(atomic_load(&temp.runs), 1);
}

static void strategy_case(ats_sup_strategy strategy, const uint64_t want[3])
{
	struct events e = {0};
	ats_supervisor *s = mk(strategy, &e, 0, 0);
	struct ward_ctl c[3] = {0};
	for (int i = 0; i < 3; i++)
		add(s, &c[i], ATS_WARD_PERMANENT, 0);
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	for (int i = 0; i < 3; i++)
		wait_until(&c[i].runs, 1);
	atomic_store(&c[1].fail, 1);
	int restarts = (int)(want[0] + want[1] + want[2] - 3);
	wait_until(&e.n[ATS_SUP_EVENT_RESTART], restarts);
	for (unsigned i = 0; i < 3; i++)
		cr_expect_eq(ats_supervisor_ward_starts(s, i), want[i], "strategy %d ward %u", (int)strategy, i);
	ats_supervisor_free(s);
}

Test(supervisor, strategies_restart_the_right_wards)
{
	strategy_case(ATS_SUP_ONE_FOR_ONE, (const uint64_t[3]){1, 2, 1});
	strategy_case(ATS_SUP_ONE_FOR_ALL, (const uint64_t[3]){2, 2, 2});
	strategy_case(ATS_SUP_REST_FOR_ONE, (const uint64_t[3]){1, 2, 2});
}

Test(supervisor, a_restart_storm_gives_up_and_reports_to_the_parent)
{
	struct events ce = {0}, pe = {0};
	ats_supervisor *child = mk(ATS_SUP_ONE_FOR_ONE, &ce, 3, 60 * ATS_NS_PER_SEC);
	struct ward_ctl bad = {0};
	atomic_store(&bad.always_fail, 1);
	add(child, &bad, ATS_WARD_PERMANENT, 0);
	ats_supervisor *parent = mk(ATS_SUP_ONE_FOR_ONE, &pe, 0, 0);
	ats_ward_spec spec = ats_supervisor_ward(child, "child", ATS_WARD_TEMPORARY);
	unsigned id;
	cr_assert_null(ats_supervisor_add(parent, &spec, &id));
	cr_assert_null(ats_supervisor_start(parent, ats_ctx_background()));
	/* The parent ends once its only (temporary) ward, the child, exits: with the give-up error. */
	ats_err *err = ats_supervisor_wait(parent, ats_ctx_background());
	cr_expect_null(err, "the parent itself ends normally: its temporary ward is gone");
	cr_expect_eq(atomic_load(&ce.n[ATS_SUP_EVENT_GIVE_UP]), 1);
	cr_expect_eq(atomic_load(&bad.runs), 4, "started once, restarted three times, then given up");
	cr_expect_eq(atomic_load(&pe.n[ATS_SUP_EVENT_EXIT]), 1);
	ats_err *cerr = ats_supervisor_wait(child, ats_ctx_background());
	cr_expect_eq(ats_err_code(cerr), ATS_ERR_UNAVAILABLE);
	cr_expect_str_eq(ats_err_kv_get(cerr, "supervisor"), "test");
	ats_err_unref(cerr);
	ats_supervisor_free(parent);
	ats_supervisor_free(child);
}

Test(supervisor, a_ward_that_ignores_cancel_is_quarantined)
{
	struct events e = {0};
	ats_supervisor *s = mk(ATS_SUP_ONE_FOR_ONE, &e, 0, 0);
	struct ward_ctl c = {0};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c.ignore_cancel_until));
	unsigned id = add(s, &c, ATS_WARD_PERMANENT, 20 * MS);
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	wait_until(&c.runs, 1);
	atomic_store(&c.freeze, 1);
	wait_until(&e.n[ATS_SUP_EVENT_RESTART], 1);
	cr_expect_eq(atomic_load(&e.n[ATS_SUP_EVENT_QUARANTINE]), 1);
	cr_expect_eq(ats_supervisor_ward_starts(s, id), 2, "the replacement did not wait for it");
	wait_until(&c.runs, 2);
	ats_supervisor_free(s);
	/* Released after its supervisor is gone: it frees what was its own (ASan would see a leak or
	 * a use after free). */
	ats_ctx_cancel(c.ignore_cancel_until, NULL);
	wait_until(&c.thawed, 1); /* the quarantined thread left the gate (and c, on this stack) */
	ats_ctx_release(c.ignore_cancel_until);
}

struct waiter {
	ats_supervisor *s;
	ats_ctx *ctx;
	_Atomic pid_t tid;
	ats_err *err;
};

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;
	atomic_store(&w->tid, asleep_self_tid());
	w->err = ats_supervisor_wait(w->s, w->ctx);
	return NULL;
}

/* The wait ends with its ctx (cancelled while the waiter sleeps; the supervisor runs on) or with
 * the supervisor (stopped while it sleeps), with futex_waitv and as where the kernel lacks it
 * (Linux < 5.16, forced): there it sleeps on one word with no bound, and either end bumps that
 * word. An end that did not reach the sleeper would hang the test. */
Test(supervisor, a_wait_ends_with_its_ctx_or_the_supervisor, .timeout = 60)
{
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		for (int how = 0; how < 2; how++) { /* cancel, stop */
			struct events e = {0};
			struct ward_ctl c = {0};
			ats_supervisor *s = mk(ATS_SUP_ONE_FOR_ONE, &e, 3, 1000 * MS);
			add(s, &c, ATS_WARD_PERMANENT, 0);
			cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
			struct waiter w = {.s = s, .ctx = ats_ctx_background()};
			if (how == 0)
				cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &w.ctx));
			pthread_t t;
			cr_assert_eq(asleep_start_parked(&t, waiter_main, &w, &w.tid), 0);
			if (how == 0) {
				ats_ctx_cancel(w.ctx, NULL);
				pthread_join(t, NULL);
				cr_expect_eq(ats_err_code(w.err), ATS_ERR_CANCELLED);
				ats_err_unref(w.err);
				cr_expect_eq(ats_supervisor_ward_starts(s, 0), 1, "the supervisor runs on");
				ats_ctx_release(w.ctx);
			} else {
				ats_supervisor_stop(s);
				pthread_join(t, NULL);
				cr_expect_null(w.err);
			}
			ats_supervisor_free(s);
		}
	}
	atomic_store(&ats__ec_force_no_waitv, 0);
}

/* ---- When a restart cannot start a ward, and other edges of a restart ---- */

/* One-for-all: ward 1 fails, and the restart's first start (ward 0's) finds no thread. That counts
 * as ward 0 failing at once; every ward still comes back (a failed start used to recurse, and the
 * inner call forgot the wards the outer one had stopped: ward 2 stayed down for good). */
Test(supervisor, a_restart_that_cannot_start_a_ward_brings_every_ward_back, .timeout = 30)
{
	struct events e = {0};
	ats_supervisor *s = mk(ATS_SUP_ONE_FOR_ALL, &e, 0, 0);
	struct ward_ctl c[3] = {0};
	for (unsigned i = 0; i < 3; i++)
		add(s, &c[i], ATS_WARD_PERMANENT, 0);
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	for (unsigned i = 0; i < 3; i++)
		wait_until(&c[i].runs, 1);
	atomic_store(&ats__sup_refuse_starts, 1);
	atomic_store(&c[1].fail, 1);
	for (unsigned i = 0; i < 3; i++)
		wait_until(&c[i].runs, 2);
	ats_supervisor_stop(s); /* the monitor is joined: its events are all in */
	cr_expect_eq(atomic_load(&e.n[ATS_SUP_EVENT_EXIT]), 2, "ward 1's failure and the start that failed");
	for (unsigned i = 0; i < 3; i++)
		cr_expect_eq(ats_supervisor_ward_starts(s, i), 2, "ward %u", i);
	/* The counters agree with the events: the start that failed is an exit (it was an EXIT event
	 * left out of `exits`), and only the three restarts that started count as restarts. */
	ats_supervisor_stats st;
	ats_supervisor_stats_get(s, &st);
	cr_expect_eq(st.exits, 2);
	cr_expect_eq(st.restarts, 3);
	cr_expect_eq(atomic_load(&e.n[ATS_SUP_EVENT_RESTART]), 3);
	cr_expect_eq(st.starts, 6);
	ats_supervisor_free(s);
}

/* A supervisor stopped and started again starts its wards afresh: first starts, not restarts (they
 * used to count as restarts, with a RESTART event each, since each ward had been started before). */
Test(supervisor, a_supervisor_started_again_counts_no_restarts, .timeout = 30)
{
	struct events e = {0};
	ats_supervisor *s = mk(ATS_SUP_ONE_FOR_ONE, &e, 0, 0);
	struct ward_ctl c[2] = {0};
	for (unsigned i = 0; i < 2; i++)
		add(s, &c[i], ATS_WARD_PERMANENT, 0);
	for (int round = 1; round <= 2; round++) {
		cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
		for (unsigned i = 0; i < 2; i++)
			wait_until(&c[i].runs, round);
		ats_supervisor_stop(s);
	}
	ats_supervisor_stats st;
	ats_supervisor_stats_get(s, &st);
	cr_expect_eq(st.starts, 4);
	cr_expect_eq(st.restarts, 0);
	cr_expect_eq(atomic_load(&e.n[ATS_SUP_EVENT_RESTART]), 0);
	for (unsigned i = 0; i < 2; i++)
		cr_expect_eq(ats_supervisor_ward_starts(s, i), 2, "ward %u", i);
	ats_supervisor_free(s);
}

/* A ward that can never be started again (no thread, ever) under a supervisor that never gives up:
 * the monitor tries again at each check, not in a loop (that recursed until the stack overflowed),
 * and the ward comes back once threads can be made again. */
Test(supervisor, a_ward_that_cannot_start_is_tried_again_at_each_check, .timeout = 30)
{
	struct events e = {0};
	ats_supervisor *s;
	const uint64_t check = 20 * MS;
	ats_supervisor_config cfg = {.name = "test", .check_ns = check, .on_event = on_event, .event_arg = &e};
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	struct ward_ctl c = {0};
	add(s, &c, ATS_WARD_PERMANENT, 0);
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	wait_until(&c.runs, 1);
	atomic_store(&ats__sup_refuse_starts, -1);
	uint64_t t0 = ats_now_ns();
	atomic_store(&c.fail, 1);
	/* Its failure, then three starts that failed: the first at once, two at later checks. */
	wait_until(&e.n[ATS_SUP_EVENT_EXIT], 4);
	uint64_t took = ats_now_ns() - t0;
	cr_expect_geq(took, check, "three tries in %llu ns: not one per check", (unsigned long long)took);
	atomic_store(&ats__sup_refuse_starts, 0);
	wait_until(&c.runs, 2);
	cr_expect_eq(atomic_load(&e.n[ATS_SUP_EVENT_GIVE_UP]), 0);
	ats_supervisor_free(s);
}

/* One-for-all, run by the events: when the temporary ward 2 exits, the transient ward 1 returns
 * normally and the permanent ward 0 fails, both before the monitor looks again. Ward 0's restart
 * takes ward 1 down with it: ward 1 had already exited normally, so it is reaped (its EXIT
 * reported) and stays down, as a transient ward does (it used to be joined silently and
 * started again). */
struct orchestra {
	struct events e;
	struct ward_ctl c[3];
};

static void orchestrate(const ats_supervisor_event *ev, void *arg)
{
	struct orchestra *o = arg;
	on_event(ev, &o->e);
	if (ev->kind == ATS_SUP_EVENT_EXIT && ev->ward == 2) { /* on the monitor thread: it waits */
		atomic_store(&o->c[1].finish, 1);
		wait_gone(atomic_load(&o->c[1].tid));
		atomic_store(&o->c[0].fail, 1);
		wait_gone(atomic_load(&o->c[0].tid));
	}
}

Test(supervisor, a_sibling_that_exited_normally_is_reaped_not_restarted, .timeout = 30)
{
	struct orchestra o = {0};
	ats_supervisor *s;
	ats_supervisor_config cfg = {
	    .name = "test", .strategy = ATS_SUP_ONE_FOR_ALL, .on_event = orchestrate, .event_arg = &o};
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	add(s, &o.c[0], ATS_WARD_PERMANENT, 0);
	add(s, &o.c[1], ATS_WARD_TRANSIENT, 0);
	add(s, &o.c[2], ATS_WARD_TEMPORARY, 0);
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	for (unsigned i = 0; i < 3; i++)
		wait_until(&o.c[i].runs, 1);
	atomic_store(&o.c[2].finish, 1);
	wait_until(&o.c[0].runs, 2);
	wait_until(&o.e.n[ATS_SUP_EVENT_RESTART], 1); /* reported after the new incarnation starts */
	cr_expect_eq(atomic_load(&o.c[1].runs), 1, "the transient ward that exited normally stays down");
	cr_expect_eq(ats_supervisor_ward_starts(s, 1), 1);
	cr_expect_eq(atomic_load(&o.e.n[ATS_SUP_EVENT_EXIT]), 3, "ward 2's exit, ward 1's, ward 0's failure");
	cr_expect_eq(atomic_load(&o.e.n[ATS_SUP_EVENT_RESTART]), 1, "ward 0 alone");
	ats_supervisor_free(s);
}

/* A ward that takes a while to return after its cancel. */
static ats_err *slow_to_stop(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	(void)hb;
	uint64_t *linger_ns = arg;
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
	struct timespec ts = {.tv_sec = (time_t)(*linger_ns / ATS_NS_PER_SEC),
	                      .tv_nsec = (long)(*linger_ns % ATS_NS_PER_SEC)};
	nanosleep(&ts, NULL); /* its clean-up */
	return NULL;
}

/* A shutdown timeout of UINT64_MAX waits however long (the deadline wrapped and quarantined the
 * ward at once). */
Test(supervisor, a_shutdown_timeout_of_forever_waits)
{
	struct events e = {0};
	ats_supervisor *s = mk(ATS_SUP_ONE_FOR_ONE, &e, 0, 0);
	uint64_t linger = 20 * MS;
	ats_ward_spec spec = {.run = slow_to_stop, .arg = &linger, .shutdown_timeout_ns = UINT64_MAX};
	cr_assert_null(ats_supervisor_add(s, &spec, NULL));
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	ats_supervisor_stop(s);
	ats_supervisor_stats st;
	ats_supervisor_stats_get(s, &st);
	cr_expect_eq(st.quarantined, 0);
	ats_supervisor_free(s);
}

/* A child supervisor whose stop takes longer than the default shutdown timeout (its ward's
 * clean-up does), restarted by its parent's one-for-all: the parent waits for the child's stop
 * and starts it again (it used to quarantine the old incarnation, still stopping the child, and
 * start the child again beside it: "already running", restart after restart). */
static ats_err *fails_once(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	(void)hb;
	_Atomic int *runs = arg;
	if (atomic_fetch_add(runs, 1) == 0)
		return ats_err_new(ATS_ERR_INTERNAL, "injected failure");
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
	return NULL;
}

Test(supervisor, a_child_supervisor_slow_to_stop_is_waited_for, .timeout = 30)
{
	struct events ce = {0}, pe = {0};
	ats_supervisor *child = mk(ATS_SUP_ONE_FOR_ONE, &ce, 0, 0);
	uint64_t linger = ATS_SUP_DEFAULT_SHUTDOWN_NS + 200 * MS;
	ats_ward_spec slow = {.run = slow_to_stop, .arg = &linger, .shutdown_timeout_ns = 2 * linger};
	cr_assert_null(ats_supervisor_add(child, &slow, NULL));
	ats_supervisor *parent = mk(ATS_SUP_ONE_FOR_ALL, &pe, 0, 0);
	ats_ward_spec cw = ats_supervisor_ward(child, "child", ATS_WARD_PERMANENT);
	cr_assert_null(ats_supervisor_add(parent, &cw, NULL));
	_Atomic int flaky_runs = 0;
	ats_ward_spec flaky = {.run = fails_once, .arg = &flaky_runs, .restart = ATS_WARD_PERMANENT};
	cr_assert_null(ats_supervisor_add(parent, &flaky, NULL));
	cr_assert_null(ats_supervisor_start(parent, ats_ctx_background()));
	/* The flaky ward failed, then came back with the child. */
	wait_until(&flaky_runs, 2);
	while (ats_supervisor_ward_starts(child, 0) < 2) /* the child's ward, started again with the child */
		sched_yield();
	ats_supervisor_stats st;
	ats_supervisor_stats_get(parent, &st);
	cr_expect_eq(st.quarantined, 0);
	cr_expect_eq(st.restarts, 2, "the flaky ward and the child, once each");
	cr_expect_eq(atomic_load(&pe.n[ATS_SUP_EVENT_EXIT]), 1, "only the flaky ward's failure");
	ats_supervisor_free(parent);
	/* The child was started twice, each time starting its ward afresh: two starts, no restart. */
	ats_supervisor_stats cst;
	ats_supervisor_stats_get(child, &cst);
	cr_expect_eq(cst.starts, 2);
	cr_expect_eq(cst.restarts, 0);
	cr_expect_eq(atomic_load(&ce.n[ATS_SUP_EVENT_RESTART]), 0);
	ats_supervisor_free(child);
}

Test(supervisor, bad_input_changes_nothing)
{
	ats_supervisor *s = NULL;
	ats_supervisor_config cfg = {.strategy = (ats_sup_strategy)9};
	ats_err *err = ats_supervisor_new(&s, &cfg);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	cfg = (ats_supervisor_config){.period_ns = 1};
	err = ats_supervisor_new(&s, &cfg);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	cr_expect_null(s);
	cfg = (ats_supervisor_config){0};
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	ats_ward_spec spec = {.run = NULL};
	err = ats_supervisor_add(s, &spec, NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	spec = (ats_ward_spec){.run = ward_body, .restart = (ats_ward_restart)7};
	err = ats_supervisor_add(s, &spec, NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	/* A watch the heartbeat module refuses: refused here, not found at the first check (a phi
	 * threshold below 0 made the monitor crash on a watch that was never set up). */
	double bad_phi[] = {-1, 0.0 / 0.0, ATS_HEARTBEAT_PHI_MAX};
	for (unsigned i = 0; i < 3; i++) {
		spec =
		    (ats_ward_spec){.run = ward_body, .watch = {.timeout_ns = 100 * MS, .phi_threshold = bad_phi[i]}};
		err = ats_supervisor_add(s, &spec, NULL);
		cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT, "phi threshold %g", bad_phi[i]);
		ats_err_unref(err);
	}
	err = ats_supervisor_start(s, NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	cr_expect_eq(ats_supervisor_ward_starts(s, 0), 0);
	spec = (ats_ward_spec){.run = ward_body, .restart = ATS_WARD_TEMPORARY};
	unsigned id = 9;
	cr_assert_null(ats_supervisor_add(s, &spec, &id));
	cr_expect_eq(id, 0, "nothing was added before");
	ats_supervisor_free(s);
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	/* No wards: it ends at once. */
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	cr_expect_null(ats_supervisor_wait(s, ats_ctx_background()));
	ats_supervisor_free(s);
	ats_supervisor_free(NULL);
}

/* ---- A pool's workers under supervision ---- */

struct hang {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool open;
	_Atomic int entered;
};

/* A task that never returns until the test opens the gate, whatever its ctx says: stuck. */
static void hang_task(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	struct hang *h = arg;
	atomic_store(&h->entered, 1);
	pthread_mutex_lock(&h->mu);
	while (!h->open)
		pthread_cond_wait(&h->cv, &h->mu);
	pthread_mutex_unlock(&h->mu);
}

static void count_task(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	atomic_fetch_add((_Atomic int *)arg, 1);
}

static void count_replace(unsigned worker, const ats_err *why, void *arg)
{
	(void)worker;
	cr_assert_not_null(why);
	atomic_fetch_add((_Atomic int *)arg, 1);
}

Test(supervisor, a_pool_steward_replaces_a_stuck_worker)
{
	_Atomic int replaced = 0, ran = 0;
	ats_pool_config pc = {.workers = 1, .on_replace = count_replace, .replace_arg = (void *)&replaced};
	ats_pool *p = NULL;
	cr_assert_null(ats_pool_new(&p, &pc));
	ats_supervisor_config sc = {.name = "pool supervisor"};
	ats_supervisor *s = NULL;
	cr_assert_null(ats_supervisor_new(&s, &sc));
	ats_pool_steward st = {.pool = p, .stuck_ns = 20 * MS};
	ats_ward_spec spec = ats_pool_steward_ward(&st, NULL);
	unsigned id;
	cr_assert_null(ats_supervisor_add(s, &spec, &id));
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));

	/* The only worker gets stuck; 50 tasks queue behind it, which only a replacement can run. */
	struct hang h = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
	ats_task t = {.run = hang_task, .arg = &h};
	cr_assert_eq(ats_pool_try_submit_to(p, 0, &t), ATS_POOL_OK);
	wait_until(&h.entered, 1);
	for (int i = 0; i < 50; i++) {
		ats_task c = {.run = count_task, .arg = (void *)&ran};
		cr_assert_eq(ats_pool_try_submit_to(p, 0, &c), ATS_POOL_OK);
	}
	wait_until(&ran, 50); /* the steward found the worker stuck and replaced it */
	/* on_replace is called once the new thread is started, so it may come after the tasks ran. */
	wait_until(&replaced, 1);
	cr_expect_eq(atomic_load(&replaced), 1);
	ats_supervisor_stats ss;
	ats_supervisor_stats_get(s, &ss);
	cr_expect_eq(ss.stalls, 0, "the steward itself never stalled");

	/* The stuck task returns at last; shutdown accounts for every task exactly once. */
	pthread_mutex_lock(&h.mu);
	h.open = true;
	pthread_cond_broadcast(&h.cv);
	pthread_mutex_unlock(&h.mu);
	ats_supervisor_stop(s);
	cr_expect_null(ats_pool_shutdown(p, ats_ctx_background()));
	ats_pool_worker_stats ws;
	cr_assert_null(ats_pool_worker_stats_get(p, 0, &ws));
	cr_expect_eq(ws.replaced, 1);
	cr_expect_eq(ws.run, 50, "every queued task ran once");
	cr_expect_eq(ws.returned, 1, "the stuck task returned on its quarantined thread");
	ats_pool_free(p);
	ats_supervisor_free(s);
}

Test(supervisor, a_pool_steward_with_bad_input_exits_abnormally)
{
	struct events e = {0};
	ats_supervisor_config sc = {.on_event = on_event, .event_arg = &e};
	ats_supervisor *s = NULL;
	cr_assert_null(ats_supervisor_new(&s, &sc));
	ats_pool_steward st = {.pool = NULL, .stuck_ns = MS};
	ats_ward_spec spec = ats_pool_steward_ward(&st, "no pool");
	spec.restart = ATS_WARD_TEMPORARY;
	unsigned id;
	cr_assert_null(ats_supervisor_add(s, &spec, &id));
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	wait_until(&e.n[ATS_SUP_EVENT_EXIT], 1);
	ats_supervisor_stop(s);
	ats_supervisor_free(s);
}
