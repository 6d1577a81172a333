/* SPDX-License-Identifier: BSD-2-Clause */
/* Concurrent tests of the fleet limiter (label "concurrent": also run under ThreadSanitizer)
 * against a real redis-server (tests/redis_server.h). Acquirers race the background thread's
 * refills on the lease word while other threads read stats, status, check and tokens; at the end
 * every leased token is accounted for exactly (granted + expired + given back) and the grants stay
 * within the bound. A second test kills and restarts Redis under the same load (fail open), so the
 * down flag, the error text and the fallback limiter are raced too. Bounded loops, no sleeps to
 * synchronize (nanosleep only paces the demand loops). */
#include <atscale/fleet.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <criterion/criterion.h>

#include "redis_server.h"

#define THREADS 4

static struct ats_test_redis srv;

static void cleanup(void)
{
	ats_test_redis_stop(&srv); /* also after a failed assertion (exit runs it) */
}

static void start(void)
{
	const char *why = ats_test_redis_start(&srv, 0);
	cr_assert_null(why, "%s", why);
	atexit(cleanup);
}

struct arg {
	ats_fleet *f;
	uint64_t end_ns, got, tries;
	unsigned id;
	bool ones; /* n = 1 always (else 1 and 2 in turn) */
};

static void *acquirer(void *p)
{
	struct arg *a = p;
	struct timespec pause = {0, 20000};
	while (ats_now_ns() < a->end_ns) {
		uint64_t n = a->ones ? 1 : 1 + (a->tries & 1);
		a->tries++;
		if (ats_fleet_allow(a->f, n))
			a->got += n;
		else
			nanosleep(&pause, NULL); /* pacing demand */
	}
	return NULL;
}

static void *observer(void *p)
{
	struct arg *a = p;
	while (ats_now_ns() < a->end_ns) {
		ats_fleet_stats st;
		ats_fleet_stats_get(a->f, &st);
		ats_err *err = ats_fleet_status(a->f);
		ats_err_unref(err);
		a->got += ats_fleet_check(a->f, 1) + (ats_fleet_tokens(a->f) > 0);
		a->tries++;
	}
	a->got = 0; /* checks grant nothing */
	return NULL;
}

static uint64_t run(ats_fleet *f, uint64_t dur_ns, bool ones, void (*midway)(void))
{
	struct arg a[THREADS + 1];
	pthread_t th[THREADS + 1];
	uint64_t end = ats_now_ns() + dur_ns;
	for (unsigned i = 0; i <= THREADS; i++) {
		a[i] = (struct arg){.f = f, .end_ns = end, .id = i, .ones = ones};
		cr_assert_eq(pthread_create(&th[i], NULL, i < THREADS ? acquirer : observer, &a[i]), 0);
	}
	if (midway)
		midway();
	uint64_t got = 0;
	for (unsigned i = 0; i <= THREADS; i++) {
		pthread_join(th[i], NULL);
		got += a[i].got;
	}
	return got;
}

Test(stress_fleet, refills_race_acquirers_and_every_token_is_accounted)
{
	start();
	ats_fleet_config c = {.port = srv.port,
	                      .key = "stress",
	                      .rate = ats_rate_per_sec(50000),
	                      .burst = 500,
	                      .batch_max = 200,
	                      .refresh_ns = 5000000,
	                      .lease_ns = 100000000};
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	uint64_t t0 = ats_now_ns(), got = 0;
	ats_fleet_stats st;
	/* Rounds of 1.5 s until refills have raced the acquirers more than 10 times: one round does it
	 * on its own, unless a parallel test starves the refresh thread (at most 20 rounds). The
	 * accounting and the bound hold over any number of rounds. */
	for (int round = 0; round < 20; round++) {
		got += run(f, 1500000000u, false, NULL);
		ats_fleet_stats_get(f, &st);
		if (st.leases > 10)
			break;
	}
	double w = (double)(ats_now_ns() - t0) / 1e9;
	ats_fleet_stop(f);
	ats_fleet_stats_get(f, &st);
	cr_assert_eq(st.leased_tokens, got + st.expired_tokens + st.given_back, "leased %llu granted %llu",
	             (unsigned long long)st.leased_tokens, (unsigned long long)got);
	cr_assert_leq((double)got, 500 + 50000 * w + 200, "over the bound");
	cr_assert_gt(st.leases, 10);
	ats_fleet_free(f);
}

static void restart_midway(void)
{
	struct timespec t = {0, 400000000};
	nanosleep(&t, NULL); /* when the kill happens, not synchronization */
	ats_test_redis_kill(&srv);
	nanosleep(&t, NULL);
	const char *why = ats_test_redis_start(&srv, srv.port);
	cr_assert_null(why, "%s", why);
}

Test(stress_fleet, redis_restart_under_load_fail_open)
{
	start();
	ats_fleet_config c = {.port = srv.port,
	                      .key = "stress-restart",
	                      .rate = ats_rate_per_sec(50000),
	                      .burst = 500,
	                      .batch_max = 200,
	                      .refresh_ns = 5000000,
	                      .lease_ns = 100000000,
	                      .timeout_ns = 50000000,
	                      .reconnect_min_ns = 5000000,
	                      .reconnect_max_ns = 50000000,
	                      .policy = ATS_FLEET_FAIL_OPEN,
	                      .fallback_rate = ats_rate_per_sec(1000),
	                      .fallback_burst = 10};
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	uint64_t t0 = ats_now_ns();
	uint64_t got = run(f, 2000000000u, true, restart_midway);
	double w = (double)(ats_now_ns() - t0) / 1e9;
	ats_fleet_stats st;
	/* leasing resumes (bounded poll) */
	uint64_t deadline = ats_now_ns() + 5000000000u;
	do {
		got += ats_fleet_allow(f, 1);
		ats_fleet_stats_get(f, &st);
		cr_assert_lt(ats_now_ns(), deadline, "no lease after the restart");
	} while (!st.up);
	ats_fleet_stop(f);
	ats_fleet_stats_get(f, &st);
	/* n is always 1 here, so each fallback decision is one token */
	cr_assert_eq(st.leased_tokens + st.fallback_allowed, got + st.expired_tokens + st.given_back, "accounting");
	cr_assert_gt(st.reconnects, 0);
	/* Two lease generations (the restarted server's bucket starts full) plus the fallback. */
	cr_assert_leq((double)got, 2 * 500 + 50000 * w + 200 + 10 + 1000 * w, "over the bound");
	ats_fleet_free(f);
}
