/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the supervisor: each fences a bug that was found and fixed, in the state that showed it (the
 * spec tests are in test_supervisor.c; the race on a quarantined ward's record is fenced in stress_supervisor.c, which
 * runs under TSan). The comment above each test says what the bug was. */
#include <atscale/supervisor.h>

#include <criterion/criterion.h>
#include <limits.h>
#include <sched.h>

static ats_err *until_done(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	(void)hb;
	atomic_fetch_add((_Atomic int *)arg, 1);
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
	return NULL;
}

/* Bug: cancelling the ctx given to ats_supervisor_start restarted permanent wards without end instead of stopping
 * them. Each ward saw its ctx done and returned; the monitor took that for an ordinary exit and started it again under
 * the same cancelled parent (a thousand restarts a second, and ats_supervisor_wait never returned). */
Test(supervisor, cancelling_the_start_ctx_stops_the_wards, .timeout = 30)
{
	ats_supervisor *s;
	ats_supervisor_config cfg = {.name = "sup"};
	cr_assert_null(ats_supervisor_new(&s, &cfg));
	_Atomic int runs = 0;
	ats_ward_spec spec = {.name = "w", .run = until_done, .arg = &runs, .restart = ATS_WARD_PERMANENT};
	cr_assert_null(ats_supervisor_add(s, &spec, NULL));
	ats_ctx *ctx, *bound;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &ctx));
	cr_assert_null(ats_supervisor_start(s, ctx));
	while (atomic_load(&runs) < 1)
		sched_yield();
	ats_ctx_cancel(ctx, NULL);
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2 * ATS_NS_PER_SEC, &bound)); /* a bound only */
	ats_err *err = ats_supervisor_wait(s, bound);
	ats_supervisor_stats st;
	ats_supervisor_stats_get(s, &st);
	cr_expect_null(err, "wait: %s", ats_err_message(err));
	cr_expect_eq(st.restarts, 0, "%llu restarts after the cancel", (unsigned long long)st.restarts);
	cr_expect_eq(atomic_load(&runs), 1);
	ats_err_unref(err);
	ats_supervisor_free(s);
	ats_ctx_release(bound);
	ats_ctx_release(ctx);
}

/* Bug: max_restarts UINT_MAX with a period (a natural "practically never give up") made a ring of max_restarts + 1 = 0
 * restart times: the first restart wrote past it and took a remainder by 0. It is refused. */
Test(supervisor, max_restarts_uint_max_with_a_period_is_refused)
{
	ats_supervisor *s = NULL;
	ats_supervisor_config cfg = {.name = "big", .max_restarts = UINT_MAX, .period_ns = ATS_NS_PER_SEC};
	ats_err *err = ats_supervisor_new(&s, &cfg);
	cr_assert_not_null(err);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_null(s);
	ats_err_unref(err);
}
