/* SPDX-License-Identifier: BSD-2-Clause */
/* Concurrent tests of the keyed fleet limiter (label "concurrent": also run under ThreadSanitizer)
 * against a real redis-server (tests/redis_server.h). Acquirers on several threads use more keys
 * than the table holds, so adding keys, replacing keys that hold tokens, the background thread's
 * pipelined refills and the give-backs of replaced keys all race the lock-free acquire path, while
 * another thread reads stats, status and tokens. At the end every leased token is accounted for
 * exactly (granted + expired + given back), every key stays within its bound, and the table never
 * held more keys than its cap. Bounded loops, no sleeps to synchronize (nanosleep only paces
 * demand). */
#include <atscale/fleet_keyed.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <criterion/criterion.h>

#include "redis_server.h"
#include "slow.h"

#define THREADS 4
#define KEYS 48 /* three times the table */
#define RATE 20000
#define BURST 100
#define BATCH_MAX 50

static struct ats_test_redis srv;

static void cleanup(void)
{
	ats_test_redis_stop(&srv); /* also after a failed assertion (exit runs it) */
}

static _Atomic uint64_t granted[KEYS];
static _Atomic size_t most_keys;

struct arg {
	ats_fleet_keyed *k;
	uint64_t end_ns, seed;
};

static void *acquirer(void *p)
{
	struct arg *a = p;
	struct timespec pause = {0, 20000};
	uint64_t x = a->seed;
	char key[16];
	while (ats_now_ns() < a->end_ns) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		unsigned i = (unsigned)(x % KEYS);
		int len = snprintf(key, sizeof key, "k%u", i);
		if (ats_fleet_keyed_allow(a->k, key, (size_t)len, 1))
			atomic_fetch_add_explicit(&granted[i], 1, memory_order_relaxed);
		else
			nanosleep(&pause, NULL); /* pacing demand */
	}
	return NULL;
}

static void *observer(void *p)
{
	struct arg *a = p;
	while (ats_now_ns() < a->end_ns) {
		ats_fleet_keyed_stats st;
		ats_fleet_keyed_stats_get(a->k, &st);
		size_t m = atomic_load(&most_keys);
		while (st.keys > m && !atomic_compare_exchange_weak(&most_keys, &m, st.keys))
			;
		ats_err_unref(ats_fleet_keyed_status(a->k));
		(void)ats_fleet_keyed_tokens_at(a->k, "k1", 2, ats_now_ns());
	}
	return NULL;
}

Test(stress_fleet_keyed, churn_races_acquirers_and_every_token_is_accounted, .timeout = 120)
{
	const char *why = ats_test_redis_start(&srv, 0);
	cr_assert_null(why, "%s", why);
	atexit(cleanup);
	ats_fleet_keyed_config c = {.fleet = {.port = srv.port,
	                                      .key = "stress:",
	                                      .rate = ats_rate_per_sec(RATE),
	                                      .burst = BURST,
	                                      .batch_max = BATCH_MAX,
	                                      .refresh_ns = 5000000,
	                                      .lease_ns = 100000000},
	                            .max_keys = 16};
	ats_fleet_keyed *k;
	cr_assert_null(ats_fleet_keyed_new(&k, &c));
#ifdef SLOW
	uint64_t dur = 600000000u;
#else
	uint64_t dur = 1500000000u;
#endif
	/* Rounds until the race did what it is for: keys replaced, refills, and grants. With three
	 * times more keys than slots, a key can be replaced before its first lease lands; on a loaded
	 * machine (the background thread late) a whole round can pass so, with nothing granted and
	 * nothing wrong. The checks below hold over every round together. */
	uint64_t t0 = ats_now_ns(), total = 0;
	ats_fleet_keyed_stats st;
	for (unsigned round = 0; round < 10; round++) {
		uint64_t end = ats_now_ns() + dur;
		struct arg a[THREADS + 1];
		pthread_t th[THREADS + 1];
		for (unsigned i = 0; i <= THREADS; i++) {
			a[i] = (struct arg){.k = k, .end_ns = end, .seed = 0x9e3779b97f4a7c15u * (i + 1) + round};
			cr_assert_eq(pthread_create(&th[i], NULL, i < THREADS ? acquirer : observer, &a[i]), 0);
		}
		for (unsigned i = 0; i <= THREADS; i++)
			pthread_join(th[i], NULL);
		total = 0;
		for (unsigned i = 0; i < KEYS; i++)
			total += atomic_load(&granted[i]);
		ats_fleet_keyed_stats_get(k, &st);
		if (total > 0 && st.leases > 10 && st.evicted_forced + st.evicted_idle > 0)
			break;
	}
	double w = (double)(ats_now_ns() - t0) / 1e9;
	ats_fleet_keyed_stop(k);
	ats_fleet_keyed_stats_get(k, &st);
	for (unsigned i = 0; i < KEYS; i++) {
		uint64_t g = atomic_load(&granted[i]);
		/* one instance: burst + rate*w + batch_max per key */
		cr_assert_leq((double)g, BURST + RATE * w + BATCH_MAX, "key k%u granted %llu in %.2f s", i,
		              (unsigned long long)g, w);
	}
	cr_assert_eq(st.leased_tokens, total + st.expired_tokens + st.given_back,
	             "leased %llu != granted %llu + expired %llu + given back %llu",
	             (unsigned long long)st.leased_tokens, (unsigned long long)total,
	             (unsigned long long)st.expired_tokens, (unsigned long long)st.given_back);
	cr_assert_leq(atomic_load(&most_keys), 16, "the table held %zu keys", atomic_load(&most_keys));
	cr_assert_gt(st.evicted_forced + st.evicted_idle, 0, "no key was replaced");
	cr_assert_gt(st.leases, 10);
	cr_assert_gt(total, 0);
	ats_fleet_keyed_free(k);
}
