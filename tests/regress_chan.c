/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of channels: each fences a bug that was found and fixed, in the state that
 * showed it (the spec tests are in test_chan.c, the concurrent ones in stress_chan.c). The
 * comment above each test says what the bug was. */
#include <atscale/chan.h>
#include <atscale/clock.h>

#include <criterion/criterion.h>
#include <stdint.h>
#include <time.h>

#define MS UINT64_C(1000000)
#define V(i) ((void *)(uintptr_t)(i))

static ats_chan *mk(ats_chan_kind k, size_t cap)
{
	ats_chan *c = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(k, cap);
	cr_assert_null(ats_chan_new(&c, &cfg));
	return c;
}

/* A select tried its cases in order from a random start: a ready case after a run of k cases not
 * ready fired k+1 times as often as one right after another ready case. Two ready cases with 62
 * never-ready ones between them fired 57 and 3943 times in 4000; each should fire about half. */
Test(regress_chan, select_is_fair_among_ready_cases)
{
	ats_chan *a = mk(ATS_CHAN_MPMC, 4), *b = mk(ATS_CHAN_MPMC, 4), *empty = mk(ATS_CHAN_MPMC, 4);
	ats_chan_case cs[ATS_CHAN_SELECT_MAX];
	for (size_t i = 0; i < ATS_CHAN_SELECT_MAX; i++)
		cs[i] = (ats_chan_case){.chan = empty};
	cs[0].chan = a;
	cs[ATS_CHAN_SELECT_MAX - 1].chan = b;
	int hits_a = 0, hits_b = 0;
	for (int i = 0; i < 4000; i++) {
		ats_chan_try_send(a, V(1));
		ats_chan_try_send(b, V(2));
		size_t fired;
		cr_assert_null(ats_chan_select(cs, ATS_CHAN_SELECT_MAX, false, &fired, ats_ctx_background()));
		if (fired == 0)
			hits_a++;
		else if (fired == ATS_CHAN_SELECT_MAX - 1)
			hits_b++;
		else
			cr_assert_fail("case %zu fired", fired);
	}
	cr_expect(hits_b > 1000 && hits_a > 1000, "a %d times, b %d times (expected about 2000 each)", hits_a, hits_b);
	ats_chan_free(a, NULL, NULL);
	ats_chan_free(b, NULL, NULL);
	ats_chan_free(empty, NULL, NULL);
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A select whose cases all have a NULL channel (Go's nil channels) blocks until ctx is done; it
 * spun on a CPU for the whole wait (with the background ctx, for good) instead of parking. */
Test(regress_chan, select_over_nil_cases_parks)
{
	ats_ctx *x;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 300 * MS, &x));
	ats_chan_case cs[1] = {{.chan = NULL}};
	size_t fired;
	uint64_t cpu0 = thread_cpu_ns();
	ats_err *err = ats_chan_select(cs, 1, false, &fired, x);
	uint64_t cpu = thread_cpu_ns() - cpu0;
	cr_expect_not_null(err);
	ats_err_unref(err);
	cr_expect(cpu < 50 * MS, "the wait used %llu ms of CPU in 300 ms", (unsigned long long)(cpu / MS));
	ats_ctx_release(x);
}
