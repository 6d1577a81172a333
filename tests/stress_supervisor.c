/* SPDX-License-Identifier: BSD-2-Clause */
/* Supervision under churn (run under TSan and ASan): many wards, a chaos thread injecting
 * failures and freezes one at a time per ward, the supervisor restarting them all the while.
 * Every injected fault is answered by exactly one restart, every start runs the ward body once,
 * and the counters agree. The test waits on those counters, never on a sleep. */
#include <criterion/criterion.h>

#include "atscale/clock.h"
#include "atscale/supervisor.h"

#include <sched.h>

#include "slow.h"
#ifdef SLOW
#define FAULTS 200
#else
#define FAULTS 2000
#endif
#define WARDS 16
#define MS UINT64_C(1000000)

struct ward_ctl {
	_Atomic int fault; /* 1: fail, 2: freeze (one-shot) */
	_Atomic int runs;
};

static ats_err *body(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	struct ward_ctl *c = arg;
	atomic_fetch_add(&c->runs, 1);
	while (!ats_ctx_done(ctx)) {
		ats_heartbeat_work_begin(hb);
		int f = atomic_exchange(&c->fault, 0);
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
	for (int f = 0; f < FAULTS; f++) {
		rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
		int i = (int)(rng % WARDS);
		/* One fault at a time per ward: wait until the last one was answered by a restart. */
		while (atomic_load(&c[i].runs) != injected[i] + 1)
			sched_yield();
		atomic_store(&c[i].fault, rng % 16 == 0 ? 2 : 1);
		injected[i]++;
	}
	for (int i = 0; i < WARDS; i++)
		while (atomic_load(&c[i].runs) != injected[i] + 1)
			sched_yield();
	/* The monitor counts a start just after the thread is made, so its counters may trail the
	 * run (and each other: they are separate relaxed counters). */
	ats_supervisor_stats st;
	for (ats_supervisor_stats_get(s, &st); st.restarts < FAULTS || st.starts < FAULTS + WARDS;
	     ats_supervisor_stats_get(s, &st))
		sched_yield();
	cr_expect_eq(st.restarts, FAULTS);
	cr_expect_eq(st.starts, FAULTS + WARDS);
	cr_expect_eq(st.stalls + st.exits, FAULTS);
	cr_expect_eq(st.quarantined, 0);
	ats_supervisor_free(s);
	int runs = 0;
	for (int i = 0; i < WARDS; i++)
		runs += atomic_load(&c[i].runs);
	cr_expect_eq(runs, FAULTS + WARDS);
}
