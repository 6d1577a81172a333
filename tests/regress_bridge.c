/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of bridge channels: each fences a bug that was found and fixed, in the state
 * that showed it (the spec tests are in test_bridge.c, the concurrent ones in stress_bridge.c).
 * The comment above each test says what the bug was. */
#include <atscale/bridge.h>

#include <criterion/criterion.h>
#include <stdint.h>

#define V(i) ((void *)(uintptr_t)(i))

/* A producer that closed the segment it was given (an ordinary channel call on a channel it
 * holds, meant as "I am done") made every consumer see the bridge closed while it was open, and
 * the next incarnation's values then came after that end of stream. Closing a segment is now
 * refused: the bridge alone ends segments. */
Test(regress_bridge, a_producer_cannot_end_the_stream_by_closing_its_segment)
{
	ats_bridge *b = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_SPMC, 8);
	cr_assert_null(ats_bridge_new(&b, &cfg));
	ats_chan *seg = NULL;
	cr_assert_null(ats_bridge_open(b, &seg));
	cr_assert_null(ats_chan_send(seg, V(1), ats_ctx_background()));
	ats_err *e = ats_chan_close(seg);
	cr_expect_eq(ats_err_code(e), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(e);
	cr_expect_not(ats_chan_closed(seg), "the refused close changed nothing");
	cr_expect_null(ats_chan_send(seg, V(2), ats_ctx_background()));
	ats_bridge_leave(seg);
	void *v = NULL;
	cr_assert_null(ats_bridge_recv(b, &v, ats_ctx_background()));
	cr_expect_eq(v, V(1));
	cr_assert_null(ats_bridge_recv(b, &v, ats_ctx_background()));
	cr_expect_eq(v, V(2));
	cr_expect_eq(ats_bridge_try_recv(b, &v), ATS_CHAN_WOULD_BLOCK, "the bridge is open: nothing yet, not closed");
	/* The next incarnation's values follow, and the bridge's close ends the stream. */
	cr_assert_null(ats_bridge_open(b, &seg));
	cr_assert_null(ats_chan_send(seg, V(3), ats_ctx_background()));
	ats_bridge_leave(seg);
	cr_assert_null(ats_bridge_close(b));
	cr_assert_null(ats_bridge_recv(b, &v, ats_ctx_background()));
	cr_expect_eq(v, V(3));
	e = ats_bridge_recv(b, &v, ats_ctx_background());
	cr_expect_eq(ats_err_code(e), ATS_ERR_CLOSED);
	ats_err_unref(e);
	ats_bridge_free(b, NULL, NULL);
}
