/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the fleet limiter, against a real redis-server (tests/redis_server.h): each
 * fences a bug that was found and fixed. The comment above each test says what the bug was. */
#include <atscale/fleet.h>

#include <criterion/criterion.h>
#include <time.h>

#include "redis_fixture.h"

/* Bug: stopping with an expired lease dropped its tokens without counting them, so leased_tokens
 * no longer equalled granted + expired + given back (stress_fleet saw one batch missing when the
 * background thread was held off its CPU past the lease's expiry). The stop path now counts an
 * expired lease's tokens, and tokens Redis could not take back, as expired. Here the thread polls
 * rarely (a long refresh) and the lease is short, so at stop the lease has expired and no round
 * has counted it. */
Test(fleet, stop_counts_an_expired_lease, .init = start_redis, .fini = stop_redis, .timeout = 30)
{
	ats_fleet_config c = {.port = srv.port,
	                      .key = "regress:expired",
	                      .rate = ats_rate_per_sec(1000),
	                      .burst = 100,
	                      .batch_min = 50,
	                      .batch_max = 100,
	                      .refresh_ns = 20 * ATS_NS_PER_SEC, /* a round every 5 s */
	                      .lease_ns = 2000000};              /* 2 ms */
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	ats_fleet_stats st;
	uint64_t deadline = ats_now_ns() + 5 * ATS_NS_PER_SEC;
	do { /* the first lease (taken at start, demand or not) */
		ats_fleet_stats_get(f, &st);
		cr_assert_lt(ats_now_ns(), deadline, "no lease");
	} while (st.leased_tokens == 0);
	uint64_t leased_at = ats_now_ns();
	uint64_t granted = ats_fleet_allow(f, 1); /* likely from the fresh lease (unless it expired already) */
	/* Past the lease's expiry: time has to pass, which is what this waits for. */
	struct timespec ts = {0, 5000000};
	while (ats_now_ns() < leased_at + 4 * c.lease_ns)
		nanosleep(&ts, NULL);
	ats_fleet_stop(f);
	ats_fleet_stats_get(f, &st);
	cr_expect_eq(st.leased_tokens, granted + st.expired_tokens + st.given_back,
	             "leased %llu granted %llu expired %llu back %llu", (unsigned long long)st.leased_tokens,
	             (unsigned long long)granted, (unsigned long long)st.expired_tokens,
	             (unsigned long long)st.given_back);
	cr_expect_gt(st.expired_tokens, 0);
	ats_fleet_free(f);
}
