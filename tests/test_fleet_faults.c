/* SPDX-License-Identifier: BSD-2-Clause */
/* The fleet limiters against a real redis-server behind a fault-injecting proxy
 * (tests/fault_proxy.h): garbled replies, a slow server, a server that never answers and
 * connections that die. What they prove: a fault never grants a token that was not leased, every
 * leased token is still accounted for exactly, an acquire never waits on the network, the state is
 * reported as a well-formed error with Redis's text, and leasing resumes once the fault is gone.
 * Waits are bounded polls of observed state; nanosleeps only pace demand. */
#include <atscale/fleet.h>
#include <atscale/fleet_keyed.h>

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "proxy_fixture.h"

static ats_fleet_config cfg_via_proxy(const char *key, ats_fleet_policy policy)
{
	return (ats_fleet_config){.port = proxy.port,
	                          .key = key,
	                          .rate = ats_rate_per_sec(20000),
	                          .burst = 100,
	                          .batch_max = 100,
	                          .timeout_ns = 100000000,
	                          .reconnect_min_ns = 5000000,
	                          .reconnect_max_ns = 50000000,
	                          .policy = policy,
	                          .fallback_rate = ats_rate_per_sec(100),
	                          .fallback_burst = 5};
}

/* Acquires for `ns`, counting grants; fails if one call took 50 ms or more: a call that waited on
 * the network would take the timeout (100 ms) or the injected delay (500 ms). */
static uint64_t demand(ats_fleet *f, uint64_t ns)
{
	uint64_t got = 0, end = ats_now_ns() + ns, worst = 0;
	while (ats_now_ns() < end) {
		uint64_t t = ats_now_ns();
		got += ats_fleet_allow(f, 1);
		uint64_t d = ats_now_ns() - t;
		worst = d > worst ? d : worst;
		pace(50000);
	}
	cr_assert_lt(worst, 50000000, "an acquire took %llu ns", (unsigned long long)worst);
	return got;
}

static void wait_up(ats_fleet *f, bool up)
{
	uint64_t end = ats_now_ns() + 10 * ATS_NS_PER_SEC;
	ats_fleet_stats st;
	for (;;) {
		(void)ats_fleet_allow(f, 1 << 20); /* refused: a hint of demand */
		ats_fleet_stats_get(f, &st);
		if (st.up == up)
			return;
		cr_assert_lt(ats_now_ns(), end, "the limiter never went %s", up ? "up" : "down");
		pace(1000000);
	}
}

static void expect_accounted(ats_fleet *f, uint64_t granted)
{
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	cr_assert_eq(st.leased_tokens, granted + st.given_back + st.expired_tokens,
	             "leased %llu != granted %llu + given back %llu + expired %llu",
	             (unsigned long long)st.leased_tokens, (unsigned long long)granted,
	             (unsigned long long)st.given_back, (unsigned long long)st.expired_tokens);
}

Test(fleet_faults, garbled_replies_never_grant, .init = start_both, .fini = stop_both, .timeout = 60)
{
	atomic_store(&proxy.mode, PROXY_GARBLE);
	ats_fleet_config cfg = cfg_via_proxy("faults:garble", ATS_FLEET_FAIL_CLOSED);
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &cfg));
	/* Every reply garbled: nothing is ever leased, so nothing is granted. */
	uint64_t got = 0;
	for (uint64_t end = ats_now_ns() + 300000000; ats_now_ns() < end;)
		got += demand(f, 10000000);
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	cr_assert_eq(got, 0, "granted %llu with every reply garbled", (unsigned long long)got);
	cr_assert_eq(st.leased_tokens, 0);
	cr_assert_gt(st.redis_errors, 3, "errors counted: %llu", (unsigned long long)st.redis_errors);
	cr_assert_gt(atomic_load(&proxy.garbled), 3);
	ats_err *err = ats_fleet_status(f);
	cr_assert_not_null(err);
	cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	cr_assert_not_null(ats_err_kv_get(err, "redis_error"));
	ats_err_unref(err);

	/* The fault goes away: leasing resumes. */
	atomic_store(&proxy.mode, PROXY_PASS);
	wait_up(f, true);
	got += demand(f, 100000000);
	cr_assert_gt(got, 0);
	/* And comes back mid-stream: only what was leased is granted. */
	atomic_store(&proxy.mode, PROXY_GARBLE);
	wait_up(f, false);
	got += demand(f, 100000000);
	ats_fleet_stop(f);
	expect_accounted(f, got);
	ats_fleet_free(f);
}

Test(fleet_faults, a_slow_silent_or_dying_redis_never_blocks_an_acquire, .init = start_both, .fini = stop_both,
     .timeout = 60)
{
	ats_fleet_config cfg = cfg_via_proxy("faults:slow", ATS_FLEET_FAIL_OPEN);
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &cfg));
	wait_up(f, true);
	uint64_t got = demand(f, 50000000);
	static const int modes[] = {PROXY_DELAY, PROXY_BLACKHOLE, PROXY_DROP};
	for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
		int mode = modes[m];
		atomic_store(&proxy.delay_ms, 500); /* five times the timeout */
		atomic_store(&proxy.mode, mode);
		wait_up(f, false);
		ats_fleet_stats before, after;
		ats_fleet_stats_get(f, &before);
		uint64_t t0 = ats_now_ns();
		uint64_t during = demand(f, 200000000);
		double w = (double)(ats_now_ns() - t0) / 1e9;
		ats_fleet_stats_get(f, &after);
		/* While down: the lease left over plus the fallback (100/s, burst 5), nothing more. */
		uint64_t fb = after.fallback_allowed - before.fallback_allowed;
		cr_assert_leq((double)fb, 5 + 100 * w + 1, "fallback granted %llu", (unsigned long long)fb);
		cr_assert_gt(after.fallback_allowed + after.fallback_denied,
		             before.fallback_allowed + before.fallback_denied, "no fallback decision counted");
		got += during;
		ats_err *err = ats_fleet_status(f);
		cr_assert_not_null(err);
		cr_assert_str_eq(ats_err_kv_get(err, "policy"), "fail_open");
		ats_err_unref(err);
		atomic_store(&proxy.mode, PROXY_PASS);
		wait_up(f, true);
		got += demand(f, 50000000);
	}
	ats_fleet_stop(f);
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	/* n is 1, so each fallback grant is one token: everything granted came from a lease or the
	 * fallback, and every leased token was granted, given back or expired. */
	cr_assert_eq(st.leased_tokens + st.fallback_allowed, got + st.given_back + st.expired_tokens,
	             "leased %llu + fallback %llu != granted %llu + given back %llu + expired %llu",
	             (unsigned long long)st.leased_tokens, (unsigned long long)st.fallback_allowed,
	             (unsigned long long)got, (unsigned long long)st.given_back, (unsigned long long)st.expired_tokens);
	ats_fleet_free(f);
}

Test(fleet_faults, keyed_limits_grant_nothing_unleased_on_garbled_pipelines, .init = start_both, .fini = stop_both,
     .timeout = 60)
{
	ats_fleet_keyed_config cfg = {.fleet = cfg_via_proxy("faults:keyed:", ATS_FLEET_FAIL_CLOSED), .max_keys = 64};
	ats_fleet_keyed *k;
	cr_assert_null(ats_fleet_keyed_new(&k, &cfg));
	char key[16];
	uint64_t got = 0;
	/* Up first: 32 keys get leases. */
	uint64_t end = ats_now_ns() + 10 * ATS_NS_PER_SEC;
	for (int i = 0; i < 32; i++) {
		int len = snprintf(key, sizeof key, "u%d", i);
		while (!ats_fleet_keyed_allow(k, key, (size_t)len, 1)) {
			cr_assert_lt(ats_now_ns(), end, "key %s never leased", key);
			pace(200000);
		}
		got++;
	}
	/* Every reply garbled: the keys held serve what they hold, new keys get nothing. */
	atomic_store(&proxy.mode, PROXY_GARBLE);
	ats_fleet_keyed_stats st;
	end = ats_now_ns() + 10 * ATS_NS_PER_SEC;
	do {
		for (int i = 0; i < 64; i++) {
			int len = snprintf(key, sizeof key, "u%d", i);
			uint64_t g = ats_fleet_keyed_allow(k, key, (size_t)len, 1);
			cr_assert(i < 32 || !g, "new key %s granted with every reply garbled", key);
			got += g;
		}
		pace(200000);
		ats_fleet_keyed_stats_get(k, &st);
		cr_assert_lt(ats_now_ns(), end, "the limiter never noticed the garbled replies");
	} while (st.up || atomic_load(&proxy.garbled) < 5);
	ats_err *err = ats_fleet_keyed_status(k);
	cr_assert_not_null(err);
	cr_assert_not_null(ats_err_kv_get(err, "redis_error"));
	ats_err_unref(err);
	ats_fleet_keyed_stop(k);
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_gt(st.redis_errors, 0);
	cr_assert_eq(st.leased_tokens, got + st.given_back + st.expired_tokens,
	             "leased %llu != granted %llu + given back %llu + expired %llu",
	             (unsigned long long)st.leased_tokens, (unsigned long long)got, (unsigned long long)st.given_back,
	             (unsigned long long)st.expired_tokens);
	ats_fleet_keyed_free(k);
}
