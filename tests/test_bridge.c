/* SPDX-License-Identifier: BSD-2-Clause */
/* Bridge channels: order across segments, late sends of a superseded producer, close, free with
 * values left, bad input, and a producer ward restarted by a supervisor (frozen, then failing)
 * whose consumer receives every value exactly once, in order. */
#include <atscale/bridge.h>
#include <atscale/supervisor.h>

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#define MS UINT64_C(1000000)
#define V(i) ((void *)(uintptr_t)(i))

static void expect_recv(ats_bridge *b, uintptr_t want)
{
	void *v = NULL;
	cr_assert_null(ats_bridge_recv(b, &v, ats_ctx_background()));
	cr_expect_eq((uintptr_t)v, want);
}

Test(bridge, segments_in_order_and_a_superseded_producer_is_refused)
{
	ats_bridge *b = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_SPMC, 8);
	cr_assert_null(ats_bridge_new(&b, &cfg));
	ats_chan *first = NULL, *second = NULL;
	cr_assert_null(ats_bridge_open(b, &first));
	cr_assert_null(ats_chan_send(first, V(1), ats_ctx_background()));
	cr_assert_null(ats_chan_send(first, V(2), ats_ctx_background()));
	cr_assert_null(ats_bridge_open(b, &second));
	/* The first incarnation woke up late: its send is refused, not slipped into the stream. */
	cr_expect_eq(ats_chan_try_send(first, V(99)), ATS_CHAN_CLOSED);
	ats_bridge_leave(first);
	cr_assert_null(ats_chan_send(second, V(3), ats_ctx_background()));
	expect_recv(b, 1);
	expect_recv(b, 2);
	expect_recv(b, 3);
	void *v;
	cr_expect_eq(ats_bridge_try_recv(b, &v), ATS_CHAN_WOULD_BLOCK);
	cr_expect_eq(ats_bridge_opened(b), 2);
	cr_assert_null(ats_bridge_close(b));
	ats_err *err = ats_bridge_close(b);
	cr_expect_eq(ats_err_code(err), ATS_ERR_CLOSED);
	ats_err_unref(err);
	ats_chan *late = NULL;
	err = ats_bridge_open(b, &late);
	cr_expect_eq(ats_err_code(err), ATS_ERR_CLOSED);
	cr_expect_null(late);
	ats_err_unref(err);
	cr_expect_eq(ats_chan_try_send(second, V(4)), ATS_CHAN_CLOSED, "the bridge's close closes the current segment");
	err = ats_bridge_recv(b, &v, ats_ctx_background());
	cr_expect_eq(ats_err_code(err), ATS_ERR_CLOSED);
	ats_err_unref(err);
	cr_expect_eq(ats_bridge_try_recv(b, &v), ATS_CHAN_CLOSED);
	ats_bridge_leave(second);
	ats_bridge_free(b, NULL, NULL);
}

Test(bridge, a_crashed_producers_values_stay_and_consumers_wait_for_the_next)
{
	ats_bridge *b = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_MPMC, 4);
	cr_assert_null(ats_bridge_new(&b, &cfg));
	ats_chan *seg = NULL;
	cr_assert_null(ats_bridge_open(b, &seg));
	cr_assert_null(ats_chan_send(seg, V(7), ats_ctx_background()));
	ats_bridge_leave(seg); /* it crashed: leaving does not close */
	expect_recv(b, 7);
	/* Nothing more until the next incarnation: a receive waits (here until its deadline). */
	ats_ctx *ctx = NULL;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2 * MS, &ctx));
	void *v = NULL;
	ats_err *err = ats_bridge_recv(b, &v, ctx);
	cr_expect_eq(ats_err_code(err), ATS_ERR_DEADLINE_EXCEEDED);
	ats_err_unref(err);
	ats_ctx_release(ctx);
	cr_assert_null(ats_bridge_open(b, &seg));
	cr_assert_null(ats_chan_send(seg, V(8), ats_ctx_background()));
	expect_recv(b, 8);
	ats_bridge_leave(seg);
	ats_bridge_free(b, NULL, NULL);
}

static void count_drop(void *value, void *arg)
{
	_Atomic uintptr_t *sum = arg;
	atomic_fetch_add(sum, (uintptr_t)value);
}

Test(bridge, free_hands_every_value_left_to_drop_even_in_a_segment_still_held)
{
	ats_bridge *b = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_MPSC, 4);
	cr_assert_null(ats_bridge_new(&b, &cfg));
	ats_chan *old = NULL, *cur = NULL;
	cr_assert_null(ats_bridge_open(b, &old));
	cr_assert_null(ats_chan_send(old, V(1), ats_ctx_background()));
	cr_assert_null(ats_chan_send(old, V(2), ats_ctx_background()));
	ats_bridge_leave(old);
	cr_assert_null(ats_bridge_open(b, &cur));
	cr_assert_null(ats_chan_send(cur, V(4), ats_ctx_background()));
	_Atomic uintptr_t sum = 0;
	ats_bridge_free(b, count_drop, &sum);
	cr_expect_eq(atomic_load(&sum), 3, "the left segment's values dropped at free");
	/* A producer that outlived the bridge: refused, and its values go to drop when it leaves. */
	cr_expect_eq(ats_chan_try_send(cur, V(8)), ATS_CHAN_CLOSED);
	ats_bridge_leave(cur);
	cr_expect_eq(atomic_load(&sum), 7);
}

Test(bridge, bad_input_is_a_clear_error)
{
	ats_bridge *b = (ats_bridge *)1;
	ats_err *err = ats_bridge_new(&b, NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_null(b);
	ats_err_unref(err);
	ats_chan_config bad = ATS_CHAN_CONFIG(ATS_CHAN_MPMC, 0);
	err = ats_bridge_new(&b, &bad);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	err = ats_bridge_new(NULL, &bad);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_MPMC, 1);
	cr_assert_null(ats_bridge_new(&b, &cfg));
	err = ats_bridge_open(b, NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	ats_chan *seg = (ats_chan *)1;
	err = ats_bridge_open(NULL, &seg);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_null(seg);
	ats_err_unref(err);
	void *v;
	err = ats_bridge_recv(b, &v, NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	cr_expect_eq(ats_bridge_try_recv(NULL, &v), ATS_CHAN_INVALID);
	cr_expect_eq(ats_bridge_try_recv(b, NULL), ATS_CHAN_INVALID);
	err = ats_bridge_close(NULL);
	cr_expect_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	cr_expect_eq(ats_bridge_opened(b), 0, "nothing opened by the bad calls");
	ats_bridge_leave(NULL);
	ats_bridge_free(b, NULL, NULL);
	ats_bridge_free(NULL, NULL, NULL);
}

/* ---- A producer ward restarted by a supervisor ---- */

#define ITEMS 3000u

struct producer {
	ats_bridge *bridge;
	_Atomic uint64_t next; /* the producer's record of progress: the first value not yet sent */
	_Atomic int freeze, fail, runs;
};

static ats_err *produce(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	struct producer *p = arg;
	atomic_fetch_add(&p->runs, 1);
	ats_chan *out = NULL;
	ats_err *err = ats_bridge_open(p->bridge, &out);
	if (err)
		return err;
	for (;;) {
		uint64_t i = atomic_load(&p->next);
		if (i == ITEMS)
			break;
		ats_heartbeat_work_begin(hb);
		if (atomic_exchange(&p->freeze, 0)) {
			/* Stuck with work pending: no more beats until the supervisor cancels us. */
			ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
			ats_bridge_leave(out);
			return NULL;
		}
		if (atomic_exchange(&p->fail, 0)) {
			ats_bridge_leave(out);
			return ats_err_new(ATS_ERR_INTERNAL, "injected failure");
		}
		ats_heartbeat_work_end(hb);
		/* Blocked on a full segment is back-pressure, not a stall: outside the unit of work. */
		err = ats_chan_send(out, V(i + 1), ctx);
		if (err) {
			ats_bridge_leave(out);
			return err; /* not sent: the next incarnation sends i again */
		}
		atomic_store(&p->next, i + 1);
	}
	ats_bridge_leave(out);
	return NULL;
}

Test(bridge, the_consumer_never_notices_the_producer_restarting, .timeout = 60)
{
	struct producer p = {0};
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, 16);
	cr_assert_null(ats_bridge_new(&p.bridge, &cfg));
	ats_supervisor *s = NULL;
	ats_supervisor_config scfg = {.name = "bridge-test"};
	cr_assert_null(ats_supervisor_new(&s, &scfg));
	ats_ward_spec spec = {.name = "producer", .run = produce, .arg = &p, .restart = ATS_WARD_TRANSIENT};
	spec.watch.timeout_ns = 20 * MS;
	cr_assert_null(ats_supervisor_add(s, &spec, NULL));
	cr_assert_null(ats_supervisor_start(s, ats_ctx_background()));
	for (uintptr_t want = 1; want <= ITEMS; want++) {
		if (want == ITEMS / 3)
			atomic_store(&p.freeze, 1);
		if (want == 2 * ITEMS / 3)
			atomic_store(&p.fail, 1);
		expect_recv(p.bridge, want);
	}
	cr_assert_null(ats_supervisor_wait(s, ats_ctx_background()));
	cr_expect_eq(atomic_load(&p.runs), 3, "frozen once, failed once");
	ats_supervisor_stats st;
	ats_supervisor_stats_get(s, &st);
	cr_expect_eq(st.stalls, 1);
	cr_expect_eq(st.restarts, 2);
	void *v;
	cr_expect_eq(ats_bridge_try_recv(p.bridge, &v), ATS_CHAN_WOULD_BLOCK, "nothing duplicated");
	cr_expect_eq(ats_bridge_opened(p.bridge), 3);
	ats_supervisor_free(s);
	ats_bridge_free(p.bridge, NULL, NULL);
}
