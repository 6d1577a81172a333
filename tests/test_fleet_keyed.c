/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed fleet limiter tests. Bad input and an unreachable Redis need no server; every test that
 * claims fleet behaviour runs against a real redis-server started on a free loopback port
 * (tests/redis_server.h) and stopped afterwards, even on failure.
 *
 * What they prove: each key is its own fleet limit (its Redis key is the prefix and the key; two
 * instances on one key stay within the bound, and grant at least 90% of rate*w under demand; keys
 * do not take from each other); a cold key follows the policy; the table never holds more than its
 * cap and replaced keys give their tokens back, so every leased token ends granted, given back or
 * expired, exactly. All waits are bounded polls of observed state; nanosleeps only pace demand. */
#include <atscale/fleet_keyed.h>

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>

#include "internal/fleet_hooks.h"
#include "redis_fixture.h"

static ats_fleet_keyed_config base_cfg(const char *prefix, uint16_t port, size_t max_keys)
{
	return (ats_fleet_keyed_config){.fleet = {.host = "127.0.0.1",
	                                          .port = port,
	                                          .key = prefix,
	                                          .rate = ats_rate_per_sec(2000),
	                                          .burst = 20,
	                                          .batch_max = 20,
	                                          .timeout_ns = 200000000},
	                                .max_keys = max_keys};
}

static ats_fleet_keyed *must_new(const ats_fleet_keyed_config *cfg)
{
	ats_fleet_keyed *k = NULL;
	ats_err *err = ats_fleet_keyed_new(&k, cfg);
	cr_assert_null(err, "%s", err ? ats_err_message(err) : "");
	return k;
}

/* Every leased token is granted, given back or expired: exact, after stop. */
static void expect_accounted(ats_fleet_keyed *k, uint64_t granted)
{
	ats_fleet_keyed_stats st;
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_eq(st.leased_tokens, granted + st.given_back + st.expired_tokens,
	             "leased %llu != granted %llu + given back %llu + expired %llu",
	             (unsigned long long)st.leased_tokens, (unsigned long long)granted,
	             (unsigned long long)st.given_back, (unsigned long long)st.expired_tokens);
}

/* ---- Bad input ---- */

static void expect_invalid(const ats_fleet_keyed_config *cfg, const char *what)
{
	ats_fleet_keyed *k = (ats_fleet_keyed *)0x1;
	ats_err *err = ats_fleet_keyed_new(&k, cfg);
	cr_assert_not_null(err, "%s: accepted", what);
	cr_assert_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT, "%s: %s", what, ats_err_message(err));
	cr_assert_null(k, "%s: *out not cleared", what);
	ats_err_unref(err);
}

Test(fleet_keyed, bad_input_is_a_clear_error_and_changes_nothing)
{
	ats_err *err = ats_fleet_keyed_new(NULL, NULL);
	cr_assert_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	expect_invalid(NULL, "NULL config");
	ats_fleet_keyed_config cfg = base_cfg("rl:", 1, 16);
	cfg.max_keys = 0;
	expect_invalid(&cfg, "max_keys 0");
	cfg = base_cfg("", 1, 16);
	expect_invalid(&cfg, "empty prefix");
	cfg = base_cfg(NULL, 1, 16);
	expect_invalid(&cfg, "NULL prefix");
	char longp[ATS_FLEET_KEYED_MAX_PREFIX + 2];
	memset(longp, 'p', sizeof longp - 1);
	longp[sizeof longp - 1] = 0;
	cfg = base_cfg(longp, 1, 16);
	expect_invalid(&cfg, "prefix too long");
	cfg = base_cfg("rl:", 1, 16);
	cfg.fleet.burst = 0;
	expect_invalid(&cfg, "burst 0");
	cfg = base_cfg("rl:", 1, 16);
	cfg.fleet.batch_max = 21;
	expect_invalid(&cfg, "batch_max above burst");

	/* Acquires with bad input: false, nothing added. Port 1: nothing listens there. */
	cfg = base_cfg("rl:", 1, 16);
	ats_fleet_keyed *k = must_new(&cfg);
	char big[ATS_FLEET_KEYED_MAX_KEY + 1];
	memset(big, 'k', sizeof big);
	cr_assert_not(ats_fleet_keyed_allow(k, NULL, 3, 1));
	cr_assert_not(ats_fleet_keyed_allow(k, "abc", 0, 1));
	cr_assert_not(ats_fleet_keyed_allow(k, big, sizeof big, 1));
	cr_assert_not(ats_fleet_keyed_allow(k, "abc", 3, ATS_FLEET_MAX_BATCH + 1));
	cr_assert_not(ats_fleet_keyed_allow(NULL, "abc", 3, 1));
	cr_assert_eq(ats_fleet_keyed_tokens_at(k, NULL, 1, 0), 0);
	ats_fleet_keyed_stats st;
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_eq(st.inserts, 0);
	cr_assert_eq(st.keys, 0);
	cr_assert(ats_fleet_keyed_allow(k, "abc", 3, 0), "n == 0 is granted for a valid key");
	ats_fleet_keyed_free(k);
	ats_fleet_keyed_free(NULL);
	ats_fleet_keyed_stop(NULL);
}

/* ---- Redis unreachable: the policy decides, per key ---- */

Test(fleet_keyed, unreachable_redis_fails_closed_or_open_per_key)
{
	ats_fleet_keyed_config cfg = base_cfg("rl:", 1, 16);
	cfg.fleet.timeout_ns = 50000000;
	ats_fleet_keyed *k = must_new(&cfg);
	for (int i = 0; i < 10; i++)
		cr_assert_not(ats_fleet_keyed_allow(k, "alice", 5, 1), "fail closed granted with no lease");
	ats_fleet_keyed_stats st;
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_eq(st.closed_denied, 10);
	cr_assert_eq(st.cold_misses, 10);
	cr_assert_eq(st.inserts, 1);
	cr_assert_eq(st.keys, 1);
	cr_assert_not(st.up);
	ats_err *err = ats_fleet_keyed_status(k);
	cr_assert_not_null(err);
	cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	cr_assert_str_eq(ats_err_kv_get(err, "prefix"), "rl:");
	cr_assert_str_eq(ats_err_kv_get(err, "policy"), "fail_closed");
	cr_assert_not_null(ats_err_kv_get(err, "redis_error"));
	ats_err_unref(err);
	ats_fleet_keyed_free(k);

	/* Fail open: each key has its own fallback bucket (burst 20 / 4 instances = 5). */
	cfg.fleet.policy = ATS_FLEET_FAIL_OPEN;
	cfg.fleet.expected_instances = 4;
	k = must_new(&cfg);
	uint64_t now = ats_now_ns();
	int alice = 0, bob = 0;
	for (int i = 0; i < 20; i++) {
		alice += ats_fleet_keyed_allow_at(k, "alice", 5, 1, now);
		bob += ats_fleet_keyed_allow_at(k, "bob", 3, 1, now);
	}
	cr_assert_eq(alice, 5, "alice's fallback granted %d of a burst of 5", alice);
	cr_assert_eq(bob, 5, "bob's fallback granted %d of a burst of 5", bob);
	cr_assert_eq(ats_fleet_keyed_tokens_at(k, "carol", 5, now), 5, "a new key's fallback is full");
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_eq(st.fallback_allowed, 10);
	cr_assert_eq(st.fallback_denied, 30);
	cr_assert_eq(st.keys, 2, "tokens_at added a key");
	ats_fleet_keyed_free(k);
}

/* ---- Against a real server ---- */

/* Polls until key's lease has tokens (bounded): a cold key warms within a round trip. */
static void wait_warm(ats_fleet_keyed *k, const char *key)
{
	uint64_t end = ats_now_ns() + 5 * ATS_NS_PER_SEC;
	(void)ats_fleet_keyed_allow(k, key, strlen(key), 0);
	while (ats_fleet_keyed_tokens_at(k, key, strlen(key), ats_now_ns()) == 0) {
		(void)ats_fleet_keyed_allow(k, key, strlen(key), 1 << 23); /* refused: adds the key, wakes the thread */
		cr_assert_lt(ats_now_ns(), end, "key %s never got a lease", key);
		pace(100000);
	}
}

Test(fleet_keyed, each_key_is_its_own_fleet_limit, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	ats_fleet_keyed_config cfg = base_cfg("rl:t1:", srv.port, 64);
	ats_fleet_keyed *a = must_new(&cfg), *b = must_new(&cfg);
	wait_warm(a, "alice");
	wait_warm(b, "alice");
	wait_warm(a, "bob");
	ats_fleet_keyed_stats st;
	ats_fleet_keyed_stats_get(a, &st);
	cr_assert(st.up);
	cr_assert_null(ats_fleet_keyed_status(a));

	/* The Redis keys are the prefix and the key. */
	redisContext *rc = redisConnect("127.0.0.1", srv.port);
	cr_assert(rc && !rc->err);
	redisReply *r = redisCommand(rc, "EXISTS rl:t1:alice rl:t1:bob rl:t1:carol");
	cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
	cr_assert_eq(r->integer, 2);
	freeReplyObject(r);
	redisFree(rc);

	/* Two instances hammer alice for 1 s at 2000/s burst 20; bob is used at a trickle. Alice is
	 * granted at most burst + rate*w + 2*batch_max and at least 90% of rate*w; bob gets what he
	 * asks for, whatever alice does. */
	uint64_t t0 = ats_now_ns(), end = t0 + ATS_NS_PER_SEC;
	uint64_t got_alice = 0, got_bob = 0, bob_tries = 0, got_a = 0, got_b = 0;
	uint64_t next_bob = t0;
	while (ats_now_ns() < end) {
		got_a += ats_fleet_keyed_allow(a, "alice", 5, 1);
		got_b += ats_fleet_keyed_allow(b, "alice", 5, 1);
		if (ats_now_ns() >= next_bob) {
			bob_tries++;
			got_bob += ats_fleet_keyed_allow(a, "bob", 3, 1);
			next_bob += ATS_NS_PER_SEC / 200; /* 200/s, a tenth of bob's limit */
		}
		pace(20000);
	}
	uint64_t w_ns = ats_now_ns() - t0;
	got_alice = got_a + got_b;
	double rate_w = 2000.0 * (double)w_ns / 1e9;
	/* burst + rate*w + instances*batch_max (tokens leased before t0 are in the last term) */
	cr_assert_leq((double)got_alice, 20 + rate_w + 2 * 20, "alice granted %llu in %.3f s",
	              (unsigned long long)got_alice, (double)w_ns / 1e9);
	cr_assert_geq((double)got_alice, 0.9 * rate_w, "alice granted only %llu of %.0f", (unsigned long long)got_alice,
	              rate_w);
	cr_assert_geq((double)got_bob, 0.9 * (double)bob_tries, "bob got %llu of %llu (alice took from him?)",
	              (unsigned long long)got_bob, (unsigned long long)bob_tries);
	cr_assert_gt(got_a, 0);
	cr_assert_gt(got_b, 0);

	/* Below its limit a key is served in batches, not one Redis call per grant: bob alone at
	 * 1000/s, whose batch is then about 10 (one refresh interval of 10 ms). */
	ats_fleet_keyed_stats_get(a, &st);
	uint64_t ops0 = st.redis_ops, bob_got = 0;
	t0 = ats_now_ns();
	for (uint64_t i = 0; ats_now_ns() < t0 + ATS_NS_PER_SEC / 2; i++) {
		while (ats_now_ns() < t0 + i * (ATS_NS_PER_SEC / 1000))
			pace(100000);
		bob_got += ats_fleet_keyed_allow(a, "bob", 3, 1);
	}
	ats_fleet_keyed_stats_get(a, &st);
	cr_assert_gt(bob_got, 400);
	cr_assert_lt(st.redis_ops - ops0, bob_got / 3, "%llu Redis calls for %llu grants",
	             (unsigned long long)(st.redis_ops - ops0), (unsigned long long)bob_got);
	ats_fleet_keyed_free(a);
	ats_fleet_keyed_free(b);
}

Test(fleet_keyed, the_table_is_capped_and_replaced_keys_give_tokens_back, .init = start_redis, .fini = stop_redis,
     .timeout = 60)
{
	ats_fleet_keyed_config cfg = base_cfg("rl:t2:", srv.port, 16);
	cfg.fleet.lease_ns = 30 * ATS_NS_PER_SEC; /* nothing expires: every token is granted or given back */
	ats_fleet_keyed *k = must_new(&cfg);
	uint64_t granted = 0;
	char key[32];
	/* 200 keys through a table of 16: each is warmed (its lease arrives), used once, and then
	 * pushed out by later keys while it still holds tokens. */
	for (int i = 0; i < 200; i++) {
		snprintf(key, sizeof key, "user-%d", i);
		wait_warm(k, key);
		cr_assert(ats_fleet_keyed_allow(k, key, strlen(key), 1), "%s: warm but refused", key);
		granted++;
		ats_fleet_keyed_stats st;
		ats_fleet_keyed_stats_get(k, &st);
		cr_assert_leq(st.keys, 16, "the table holds %zu keys", st.keys);
	}
	ats_fleet_keyed_stats st;
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_eq(st.key_limit, 16);
	cr_assert_geq(st.inserts, 200);
	cr_assert_eq(st.inserts - st.keys, st.evicted_idle + st.evicted_forced);
	cr_assert_gt(st.evicted_forced, 0, "no key was replaced while holding tokens");
	ats_fleet_keyed_stop(k);
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_gt(st.given_back, 0);
	cr_assert_eq(st.expired_tokens, 0, "tokens were dropped instead of given back");
	expect_accounted(k, granted);

	ats_fleet_keyed_free(k);
}

Test(fleet_keyed, the_byte_cap_holds, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	ats_fleet_keyed_config cfg = base_cfg("rl:t3:", srv.port, 1000);
	cfg.max_bytes = 1;
	expect_invalid(&cfg, "max_bytes below the table");
	/* Room for the table and a few records: keys beyond them are replaced or refused. */
	cfg.max_bytes = 2048 * 8 + 4096 + 8 * 512;
	ats_fleet_keyed *k = must_new(&cfg);
	char key[16];
	uint64_t granted = 0;
	ats_fleet_keyed_stats st;
	for (int i = 0; i < 100; i++) {
		int len = snprintf(key, sizeof key, "b%d", i);
		granted += ats_fleet_keyed_allow(k, key, (size_t)len, 1);
		ats_fleet_keyed_stats_get(k, &st);
		cr_assert_leq(st.bytes, cfg.max_bytes, "holds %zu bytes", st.bytes);
	}
	ats_fleet_keyed_stats_get(k, &st);
	cr_assert_gt(st.insert_failures, 0, "the byte cap never refused a key");
	cr_assert_lt(st.keys, 100);
	ats_fleet_keyed_stop(k);
	expect_accounted(k, granted);
	ats_fleet_keyed_free(k);
}

/* Polls (bounded) until the limiter's stats satisfy `cond`. */
#define WAIT_STATS(k, st, cond, what)                                                                                  \
	do {                                                                                                           \
		uint64_t end_ = ats_now_ns() + 5 * ATS_NS_PER_SEC;                                                     \
		for (ats_fleet_keyed_stats_get((k), &(st)); !(cond); ats_fleet_keyed_stats_get((k), &(st))) {          \
			cr_assert_lt(ats_now_ns(), end_, "never: %s", what);                                           \
			pace(100000);                                                                                  \
		}                                                                                                      \
	} while (0)

/* Another instance has taken the whole bucket of a key (rate 1 an hour): this instance's first
 * lease call for it is answered with no token. The key is then warm, not cold: its acquires are
 * refused as the fleet's, not handed to the fallback (failing open, the fallback granted at its
 * own rate while the fleet limit was spent and Redis was up). */
Test(fleet_keyed, a_key_answered_with_no_token_is_refused_not_handed_to_the_fallback, .init = start_redis,
     .fini = stop_redis, .timeout = 60)
{
	ats_fleet_keyed_config cfg = base_cfg("rl:t5:", srv.port, 16);
	cfg.fleet.rate = ats_rate_every(3600 * ATS_NS_PER_SEC);
	cfg.fleet.burst = cfg.fleet.batch_max = 5;
	ats_fleet_keyed *other = must_new(&cfg);
	wait_warm(other, "k"); /* its first lease takes all 5 */
	cfg.fleet.policy = ATS_FLEET_FAIL_OPEN;
	cfg.fleet.fallback_rate = ats_rate_per_sec(1000);
	cfg.fleet.fallback_burst = 5;
	ats_fleet_keyed *k = must_new(&cfg);
	/* Cold until its lease call is answered (the fallback decides meanwhile); then an acquire is
	 * a lease miss. */
	ats_fleet_keyed_stats st;
	WAIT_STATS(k, st, (ats_fleet_keyed_allow(k, "k", 1, 1), st.lease_misses >= 1), "the key warm");
	uint64_t before = st.fallback_allowed + st.fallback_denied, granted = 0;
	for (int i = 0; i < 100; i++)
		granted += ats_fleet_keyed_allow(k, "k", 1, 1);
	ats_fleet_keyed_stats_get(k, &st);
	cr_expect_eq(granted, 0, "granted %llu of a spent fleet limit", (unsigned long long)granted);
	cr_expect_eq(st.fallback_allowed + st.fallback_denied, before, "the fallback was asked");
	cr_expect_geq(st.lease_misses, 100);
	ats_fleet_keyed_free(k);
	ats_fleet_keyed_free(other);
}

/* One key's Redis key holds a string (WRONGTYPE for its lease script): that key alone fails (it
 * goes by the policy: fail closed, refused) and the limiter stays up for the others (the error
 * used to put the whole limiter down, every key on the policy, the connection in backoff). */
Test(fleet_keyed, one_key_s_redis_error_leaves_the_others_up, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	redisContext *rc = redisConnect("127.0.0.1", srv.port);
	cr_assert(rc && !rc->err);
	redisReply *r = redisCommand(rc, "SET rl:t6:bad x");
	cr_assert_not_null(r);
	freeReplyObject(r);
	redisFree(rc);
	ats_fleet_keyed_config cfg = base_cfg("rl:t6:", srv.port, 16);
	ats_fleet_keyed *k = must_new(&cfg);
	wait_warm(k, "good");
	cr_expect_not(ats_fleet_keyed_allow(k, "bad", 3, 1), "cold, fail closed");
	ats_fleet_keyed_stats st;
	WAIT_STATS(k, st, st.redis_errors >= 1, "the bad key's lease call answered");
	cr_expect(st.up, "one key's error put the limiter down");
	ats_err *status = ats_fleet_keyed_status(k);
	cr_expect_null(status, "status: %s", status ? ats_err_message(status) : "");
	ats_err_unref(status);
	cr_expect_not(ats_fleet_keyed_allow(k, "bad", 3, 1), "the bad key stays on the policy");
	/* The good key goes on being leased: drain it, and it is leased again. */
	while (ats_fleet_keyed_allow(k, "good", 4, 1))
		;
	wait_warm(k, "good");
	ats_fleet_keyed_stats_get(k, &st);
	cr_expect(st.up);
	ats_fleet_keyed_free(k);
}

/* After stop, acquires of new keys follow the policy without adding them: each added key past the
 * cap replaced a record that nothing freed until free (200,000 keys held about 50 MB). */
Test(fleet_keyed, after_stop_new_keys_are_not_added)
{
	ats_fleet_keyed_config cfg = base_cfg("rl:", 1, 16);
	cfg.fleet.timeout_ns = 50000000;
	ats_fleet_keyed *k = must_new(&cfg);
	ats_fleet_keyed_stop(k);
	ats_fleet_keyed_stats before, after;
	ats_fleet_keyed_stats_get(k, &before);
	char key[32];
	for (int i = 0; i < 200000; i++) {
		int n = snprintf(key, sizeof key, "user-%d", i);
		cr_assert_not(ats_fleet_keyed_allow(k, key, (size_t)n, 1), "stopped, fail closed");
	}
	ats_fleet_keyed_stats_get(k, &after);
	cr_expect_eq(after.inserts, before.inserts);
	cr_expect_eq(after.bytes, before.bytes);
	cr_expect_eq(after.closed_denied - before.closed_denied, 200000);
	ats_fleet_keyed_free(k);
}

/* Takes every token key's lease holds (each refusal after that also asks for more). */
static void drain_key(ats_fleet_keyed *k, const char *key)
{
	while (ats_fleet_keyed_allow(k, key, strlen(key), 1))
		;
}

/* Refusals of a key the fleet has nothing for (its bucket spent for an hour) do not each wake the
 * background thread for a walk of the table: while the key can ask for nothing, they wait for the
 * next round (each refusal after a round used to wake it: about one walk per refusal). */
Test(fleet_keyed, refusals_of_an_exhausted_key_do_not_each_walk_the_table, .init = start_redis, .fini = stop_redis,
     .timeout = 60)
{
	ats_fleet_keyed_config cfg = base_cfg("rl:t7:", srv.port, 16);
	cfg.fleet.rate = ats_rate_every(3600 * ATS_NS_PER_SEC);
	cfg.fleet.burst = cfg.fleet.batch_max = 5;
	ats_fleet_keyed *k = must_new(&cfg);
	ats_fleet_keyed_stats st;
	/* Take the whole bucket (5), lease by lease. */
	WAIT_STATS(k, st, (drain_key(k, "x"), st.leased_tokens >= 5), "x's 5 tokens leased");
	drain_key(k, "x");
	/* Its next lease call is answered with nothing: from then on it can ask for nothing. */
	uint64_t ops = (ats_fleet_keyed_stats_get(k, &st), st.redis_ops);
	WAIT_STATS(k, st, (ats_fleet_keyed_allow(k, "x", 1, 1), st.redis_ops > ops), "a lease call for x");
	/* (Refusals while its answer is on the way may each wake the thread: the slack below.) */
	uint64_t before = atomic_load(&ats__fleet_keyed_rounds), t0 = ats_now_ns();
	for (int i = 0; i < 2000; i++) {
		cr_assert_not(ats_fleet_keyed_allow(k, "x", 1, 1));
		pace(20000);
	}
	uint64_t took = ats_now_ns() - t0, rounds = atomic_load(&ats__fleet_keyed_rounds) - before;
	uint64_t polls = took / (10 * 1000000 / 4) + 1; /* the default refresh_ns / 4 */
	cr_expect_leq(rounds, 2 * polls + 10, "%llu walks in %llu ms for 2000 refusals", (unsigned long long)rounds,
	              (unsigned long long)(took / 1000000));
	ats_fleet_keyed_free(k);
}
