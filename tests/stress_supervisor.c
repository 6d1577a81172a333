/* SPDX-License-Identifier: BSD-2-Clause */
/* Supervision under churn (run under TSan and ASan): many wards, a chaos thread injecting
 * failures and freezes one at a time per ward, the supervisor restarting them all the while.
 * Every injected fault is answered by a restart, every injected failure by exactly one exit,
 * every start runs the ward body once, and the counters agree. A ward preempted for longer than
 * its timeout inside a work section stalls without a fault (a loaded 2-core machine does that):
 * such a restart is legitimate, so the test waits for each fault's own answer (a run that started
 * after the one that took it) rather than for an exact run count, and counts stalls as at least
 * the freezes. The test waits on those counters, never on a sleep. */
#include <criterion/criterion.h>

#include "atscale/clock.h"
#include "atscale/supervisor.h"

#include <sched.h>
#include <stdio.h>
#include <unistd.h>

#include "asleep.h"

#include "slow.h"
#ifdef SLOW
#define FAULTS 200
#else
#define FAULTS 2000
#endif
#define WARDS 16
#define MS UINT64_C(1000000)

struct ward_ctl {
	_Atomic int fault;    /* 1: fail, 2: freeze (one-shot) */
	_Atomic int runs;     /* runs started */
	_Atomic int taken;    /* faults taken */
	_Atomic int taken_in; /* the run that took the last one */
};

static ats_err *body(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	struct ward_ctl *c = arg;
	int run = atomic_fetch_add(&c->runs, 1) + 1;
	while (!ats_ctx_done(ctx)) {
		ats_heartbeat_work_begin(hb);
		int f = atomic_exchange(&c->fault, 0);
		if (f) {
			atomic_store(&c->taken_in, run);
			atomic_fetch_add(&c->taken, 1); /* after taken_in: the test reads them in the other order */
		}
		if (f == 1)
			return ats_err_new(ATS_ERR_INTERNAL, "injected");
		if (f == 2) {
			ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE); /* frozen until stopped */
			return NULL;
		}
		ats_heartbeat_work_end(hb);
		ats_ctx_wait(ctx, ats_now_ns() + 50000);
	}
	return NULL;
}

/* Whether the ward has taken `injected` faults and a run has started since it took the last. */
static bool answered(struct ward_ctl *c, int injected)
{
	int taken = atomic_load(&c->taken);
	return taken == injected && (taken == 0 || atomic_load(&c->runs) > atomic_load(&c->taken_in));
}

Test(supervisor_stress, every_fault_one_restart, .timeout = 300)
{
	ats_supervisor *s;
	ats_supervisor_config cfg = {.name = "stress", .strategy = ATS_SUP_ONE_FOR_ONE};
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	static struct ward_ctl c[WARDS];
	for (int i = 0; i < WARDS; i++) {
		ats_ward_spec spec = {.run = body,
		                      .arg = &c[i],
		                      .restart = ATS_WARD_PERMANENT,
		                      .shutdown_timeout_ns = 10 * ATS_NS_PER_SEC};
		spec.watch.timeout_ns = 5 * MS;
		cr_assert_null(ats_supervisor_add(s, &spec, NULL));
	}
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	uint32_t rng = 12345;
	int injected[WARDS] = {0};
	uint64_t fails = 0, freezes = 0;
	for (int f = 0; f < FAULTS; f++) {
		rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
		int i = (int)(rng % WARDS);
		/* One fault at a time per ward: wait until the last one was taken and answered by a
		 * restart (a run after the one that took it). */
		while (!answered(&c[i], injected[i]))
			sched_yield();
		bool freeze = rng % 16 == 0;
		freezes += freeze;
		fails += !freeze;
		atomic_store(&c[i].fault, freeze ? 2 : 1);
		injected[i]++;
	}
	int runs = 0;
	for (int i = 0; i < WARDS; i++) {
		while (!answered(&c[i], injected[i]))
			sched_yield();
		runs += atomic_load(&c[i].runs);
	}
	/* The monitor counts a start just after the thread is made, so its counters may trail the
	 * runs (and each other: they are separate relaxed counters). A stall that needed no fault
	 * may add runs meanwhile: count again until both sides agree. */
	ats_supervisor_stats st;
	for (;;) {
		ats_supervisor_stats_get(s, &st);
		if (st.starts == (uint64_t)runs && st.restarts == st.starts - WARDS &&
		    st.stalls + st.exits == st.restarts)
			break;
		sched_yield();
		runs = 0;
		for (int i = 0; i < WARDS; i++)
			runs += atomic_load(&c[i].runs);
	}
	/* Each fault ended the run that took it, as an exit or a stall (a failure taken just as its
	 * run was being stopped for a stall counts as the stall); only failures end runs with errors. */
	cr_expect_geq(st.stalls + st.exits, FAULTS, "every fault answered");
	cr_expect_leq(st.exits, fails, "only injected failures end a run with an error");
	cr_expect_geq(st.stalls, freezes, "every freeze found as a stall");
	cr_expect_eq(st.quarantined, 0);
	ats_supervisor_free(s);
}

/* Bug (found by TSan): quarantining a ward read its incarnation's thread handle after the CAS that hands the
 * incarnation to the ward, which frees it when it returns: a use after free whenever the ward returned at that moment.
 * The ward stalls, ignores its cancel, is quarantined, then returns and frees its record; TSan reports the read if it
 * is not ordered before that free. */
struct gate {
	_Atomic int go;
	_Atomic pid_t tid;
};

static ats_err *stalls_until_let_go(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	(void)ctx;
	struct gate *g = arg;
	/* relaxed, the gate's accesses: the test must order nothing between itself and the ward, so that only the
	 * library orders the ward's free after the monitor's last touch. */
	atomic_store_explicit(&g->tid, asleep_self_tid(), memory_order_relaxed);
	ats_heartbeat_work_begin(hb);
	while (!atomic_load_explicit(&g->go, memory_order_relaxed))
		sched_yield();
	return NULL;
}

Test(stress, a_quarantined_ward_frees_its_record_unraced, .timeout = 60)
{
	struct gate g = {0};
	ats_supervisor *s;
	ats_supervisor_config cfg = {.name = "q"};
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	ats_ward_spec spec = {.name = "stuck",
	                      .run = stalls_until_let_go,
	                      .arg = &g,
	                      .restart = ATS_WARD_TEMPORARY,
	                      .shutdown_timeout_ns = MS};
	spec.watch.timeout_ns = 20 * MS;
	cr_assert_null(ats_supervisor_add(s, &spec, NULL));
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	ats_supervisor_stats st;
	do {
		sched_yield();
		ats_supervisor_stats_get(s, &st);
	} while (st.quarantined < 1);
	pid_t tid = atomic_load_explicit(&g.tid, memory_order_relaxed);
	atomic_store_explicit(&g.go, 1, memory_order_relaxed); /* the ward returns and frees its record */
	char path[64];
	snprintf(path, sizeof path, "/proc/self/task/%d", (int)tid);
	while (access(path, F_OK) == 0) /* until its thread is gone */
		sched_yield();
	ats_supervisor_free(s);
}
