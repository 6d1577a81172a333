/* SPDX-License-Identifier: BSD-2-Clause */
/* ats_limiter_wait: x/time/rate's TestWaitSimple, TestWaitCancel, TestWaitTimeout and TestWaitInf,
 * ported. Waits are real but short (about 1 ms); the cancelling thread acts on what it observes
 * (the reservation showing in the tokens), never on a sleep. */
#include <atscale/limiter.h>

#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#define MS UINT64_C(1000000)

static ats_limiter *mk(ats_rate r, uint64_t burst)
{
	ats_limiter *l = NULL;
	cr_assert_null(ats_limiter_new(&l, r, burst));
	cr_assert_null(ats_limiter_init_at(l, r, burst, ats_now_ns()));
	return l;
}

Test(wait, simple)
{
	ats_limiter *l = mk(ats_rate_per_sec(1000), 3);
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c));
	ats_ctx_cancel(c, NULL);
	ats_err *err = ats_limiter_wait(l, 1, c); /* already cancelled */
	cr_expect(ats_err_is(err, ATS_ERR_CANCELLED));
	ats_err_unref(err);
	ats_ctx_release(c);
	cr_expect_eq(ats_limiter_tokens_at(l, ats_now_ns()), 3);

	err = ats_limiter_wait(l, 4, ats_ctx_background()); /* exceeds burst */
	cr_expect(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT));
	ats_err_unref(err);

	cr_expect_null(ats_limiter_wait(l, 2, ats_ctx_background())); /* act now */
	uint64_t t = ats_now_ns();
	cr_expect_null(ats_limiter_wait(l, 3, ats_ctx_background())); /* act later: >= 2 tokens at 1000/s */
	/* The wait sleeps until its time on the default clock, which may be behind CLOCK_MONOTONIC by
	 * its precision (clock.h). */
	cr_expect_geq(ats_now_ns() - t + ats_fast_precision_ns(), 1 * MS);
	ats_limiter_free(l);
}

Test(wait, deadline_too_near_fails_at_once_taking_nothing)
{
	ats_limiter *l = mk(ats_rate_per_sec(1), 3);
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 100 * MS, &c));
	cr_expect_null(ats_limiter_wait(l, 2, c));
	uint64_t t = ats_now_ns();
	ats_err *err = ats_limiter_wait(l, 3, c); /* needs 2 more seconds */
	cr_expect_lt(ats_now_ns() - t, 50 * MS);
	cr_expect_eq(ats_err_code(err), ATS_ERR_DEADLINE_EXCEEDED);
	cr_expect(strstr(ats_err_message(err), "would exceed deadline") != NULL, "%s", ats_err_message(err));
	ats_err_unref(err);
	cr_expect_eq(ats_limiter_tokens_at(l, t), 1);
	ats_ctx_release(c);
	ats_limiter_free(l);
}

struct canceller {
	ats_limiter *l;
	ats_ctx *c;
};

static void *cancel_when_reserved(void *p)
{
	struct canceller *k = p;
	/* The waiter's reservation of 3 puts the bucket (1 token left) in debt: then cancel. */
	while (ats_limiter_tokens(k->l) >= 0)
		sched_yield();
	ats_ctx_cancel(k->c, ats_err_new(ATS_ERR_UNAVAILABLE, "backend going away"));
	return NULL;
}

Test(wait, cancel_returns_the_reservation_and_wraps_the_cause)
{
	ats_limiter *l = mk(ats_rate_every(3600 * ATS_NS_PER_SEC), 3); /* a token per hour */
	ats_ctx *c = NULL;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c));
	cr_expect_null(ats_limiter_wait(l, 2, c));
	struct canceller k = {l, c};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, cancel_when_reserved, &k), 0);
	ats_err *err = ats_limiter_wait(l, 3, c);
	pthread_join(th, NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_CANCELLED);
	cr_expect(ats_err_is(err, ATS_ERR_UNAVAILABLE), "the cause is in the chain");
	const ats_err *cause = ats_err_find(err, ATS_ERR_UNAVAILABLE);
	cr_expect(cause && strstr(ats_err_message(cause), "backend going away"));
	ats_err_unref(err);
	cr_expect_eq(ats_limiter_tokens(l), 1); /* the 3 reserved came back */
	ats_ctx_release(c);
	ats_limiter_free(l);
}

Test(wait, inf_ignores_burst)
{
	ats_limiter *l = mk(ATS_RATE_INF, 0);
	cr_expect_null(ats_limiter_wait(l, 3, ats_ctx_background()));
	ats_limiter_free(l);
}

Test(wait, rate_zero_without_deadline_is_limited)
{
	ats_limiter *l = mk((ats_rate){0, ATS_NS_PER_SEC}, 1);
	cr_expect_null(ats_limiter_wait(l, 1, ats_ctx_background()));
	ats_err *err = ats_limiter_wait(l, 1, ats_ctx_background());
	cr_expect_eq(ats_err_code(err), ATS_ERR_LIMITED);
	ats_err_unref(err);
	ats_limiter_free(l);
}
