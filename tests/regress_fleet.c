/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the fleet limiters, against a real redis-server (tests/redis_server.h), behind
 * the fault proxy where a test needs faults: each fences a bug that was found and fixed. The comment
 * above each test says what the bug was. */
#include <atscale/fleet.h>
#include <atscale/fleet_keyed.h>

#include <criterion/criterion.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define _LGPL_SOURCE
#include <urcu/urcu-memb.h>

#include "asleep.h"
#include "proxy_fixture.h"

struct stopper {
	ats_fleet *f;
	_Atomic pid_t tid;
	_Atomic int done;
};

static void *stop_main(void *arg)
{
	struct stopper *s = arg;
	atomic_store(&s->tid, asleep_self_tid());
	ats_fleet_stop(s->f);
	atomic_store(&s->done, 1);
	return NULL;
}

/* Up and holding a lease of at least `least` tokens (the first lease is taken at start, demand or not), within 5 s. */
static void wait_leased(ats_fleet *f, int64_t least)
{
	uint64_t end = ats_now_ns() + 5 * ATS_NS_PER_SEC;
	while (ats_fleet_tokens(f) < least) {
		cr_assert_lt(ats_now_ns(), end, "no lease of %lld tokens", (long long)least);
		pace(1000000);
	}
}

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

/* Makes Redis stop answering, then asks for n until the background thread has sent a call that hangs. */
static void hang_a_call(ats_fleet *f, uint64_t n)
{
	atomic_store(&proxy.mode, PROXY_BLACKHOLE);
	uint64_t end = ats_now_ns() + 5 * ATS_NS_PER_SEC;
	while (atomic_load(&proxy.swallowed) == 0) {
		(void)ats_fleet_allow(f, n);
		cr_assert_lt(ats_now_ns(), end, "no call reached the proxy");
		pace(1000000);
	}
}

/* Bug: a timeout_ns under 1 us meant no timeout at all. It was truncated to whole microseconds, and a zero socket
 * timeout blocks forever: once Redis stopped answering, the background thread and ats_fleet_stop hung for good. */
Test(fleet, a_sub_microsecond_timeout_still_times_out, .init = start_both, .fini = stop_both, .timeout = 30)
{
	ats_fleet_config cfg = {.port = proxy.port,
	                        .key = "regress:tiny_timeout",
	                        .rate = ats_rate_per_sec(1000),
	                        .burst = 100,
	                        .batch_max = 100,
	                        .timeout_ns = 500};
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &cfg));
	wait_leased(f, 1);
	hang_a_call(f, 1);
	struct stopper s = {.f = f};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, stop_main, &s), 0);
	uint64_t end = ats_now_ns() + 3 * ATS_NS_PER_SEC; /* millions of times the timeout */
	while (!atomic_load(&s.done) && ats_now_ns() < end)
		pace(1000000);
	/* (if it hangs, the fixture's proxy stop closes the connection and the thread returns) */
	cr_assert(atomic_load(&s.done), "ats_fleet_stop still blocked after 3 s with timeout_ns = 500");
	pthread_join(t, NULL);
	ats_fleet_free(f);
}

/* Bug: a second ats_fleet_stop, concurrent with a first one still waiting for the background thread, returned at
 * once, before the limiter was down: a fail-closed limiter went on granting from its lease after the call that
 * promised "down for good" had returned. The second call now waits for the first. */
Test(fleet, a_concurrent_second_stop_returns_once_stopped, .init = start_both, .fini = stop_both, .timeout = 30)
{
	ats_fleet_config cfg = {.port = proxy.port,
	                        .key = "regress:two_stops",
	                        .rate = ats_rate_per_sec(1000),
	                        .burst = 100,
	                        .batch_min = 50,
	                        .batch_max = 100,
	                        .timeout_ns = ATS_NS_PER_SEC,
	                        .policy = ATS_FLEET_FAIL_CLOSED};
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &cfg));
	wait_leased(f, 50);
	hang_a_call(f, 1000); /* a hungry miss (more than the lease): the thread asks Redis */
	cr_assert_geq(ats_fleet_tokens(f), 1, "the lease is still held");
	struct stopper s = {.f = f};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, stop_main, &s), 0);
	while (!atomic_load(&s.tid))
		sched_yield();
	asleep_wait(atomic_load(&s.tid)); /* the first stop waits for the thread, whose call hangs for 1 s */
	ats_fleet_stop(f);
	bool granted = ats_fleet_allow(f, 1);
	pthread_join(t, NULL);
	cr_expect_not(granted, "fail closed, after ats_fleet_stop returned: an acquire was granted");
	ats_fleet_free(f);
}

/* Bug: the keyed limiter's max_bytes stopped counting a replaced record when it was handed to call_rcu, not when it
 * was freed. While a grace period was held up (by any reader of the process's liburcu flavour: an application's, a
 * keyed map's, another keyed fleet limiter's slow round), new records were made beside the unfreed ones without
 * bound: the heap grew by 170 times the cap. No Redis is needed: nothing listens on port 1. */
static _Atomic int reader_state; /* 1: in its read section; 2: told to leave */

static void *rcu_reader(void *arg)
{
	(void)arg;
	urcu_memb_register_thread();
	urcu_memb_read_lock();
	atomic_store(&reader_state, 1);
	while (atomic_load(&reader_state) != 2)
		sched_yield();
	urcu_memb_read_unlock();
	urcu_memb_unregister_thread();
	return NULL;
}

Test(fleet_keyed, the_byte_cap_counts_records_until_they_are_freed, .timeout = 60)
{
	ats_fleet_keyed_config cfg = {.fleet = {.port = 1,
	                                        .key = "regress:bytes:",
	                                        .rate = ats_rate_per_sec(1000),
	                                        .burst = 100,
	                                        .refresh_ns = 1000000,
	                                        .reconnect_min_ns = ATS_NS_PER_SEC,
	                                        .reconnect_max_ns = ATS_NS_PER_SEC},
	                              .max_keys = 8};
	ats_fleet_keyed *probe;
	cfg.max_bytes = 1; /* refused, saying the least it takes */
	ats_err *err = ats_fleet_keyed_new(&probe, &cfg);
	cr_assert_not_null(err);
	size_t least = (size_t)strtoull(ats_err_kv_get(err, "least"), NULL, 10);
	ats_err_unref(err);
	cfg.max_bytes = least + 8 * 256; /* room for a few records */
	pthread_t rd;
	cr_assert_eq(pthread_create(&rd, NULL, rcu_reader, NULL), 0);
	while (atomic_load(&reader_state) != 1)
		sched_yield();
	ats_fleet_keyed *k;
	cr_assert_null(ats_fleet_keyed_new(&k, &cfg));
	size_t before = mallinfo2().uordblks;
	char key[32];
	for (int i = 0; i < 4000; i++) { /* new keys, paced so that the thread replaces and retires records */
		int len = snprintf(key, sizeof key, "user-%d", i);
		(void)ats_fleet_keyed_allow(k, key, (size_t)len, 1);
		if (i % 8 == 7)
			pace(2000000);
	}
	size_t grown = mallinfo2().uordblks - before;
	ats_fleet_keyed_stats st;
	ats_fleet_keyed_stats_get(k, &st);
	atomic_store(&reader_state, 2);
	pthread_join(rd, NULL);
	ats_fleet_keyed_free(k);
	cr_expect_leq(st.bytes, cfg.max_bytes);
	/* 4 times: room for malloc's own overhead, liburcu's call_rcu thread and the connect attempts */
	cr_expect_lt(grown, 4 * cfg.max_bytes,
	             "max_bytes %zu, stats.bytes %zu, but the heap grew by %zu bytes (inserts %llu)", cfg.max_bytes,
	             st.bytes, grown, (unsigned long long)st.inserts);
}
