/* SPDX-License-Identifier: BSD-2-Clause */
/* Fleet limiter tests. Local side (bad input, reply parsing, Redis unreachable) needs no server;
 * every test that claims fleet behaviour runs against a real redis-server started on a free
 * loopback port (tests/redis_server.h) and stopped afterwards, even on failure.
 *
 * Proofs against a real server:
 *  - audit: 4 processes x 2 threads on one limit; every grant logged with its CLOCK_MONOTONIC
 *    time; no window (all windows between grant points) exceeds burst + rate*w +
 *    instances*batch_max, and the fleet grants >= 95% of rate*w (demand above the limit);
 *  - a process killed mid-run: the fleet still grants >= 95% of rate*w less one batch_max;
 *  - Redis stopped and restarted on the same port: fail closed grants nothing beyond the lease,
 *    fail open at most the fallback rate beyond it, and leasing resumes.
 * All waits are bounded polls of observed state; nanosleeps only pace demand loops. */
#include <atscale/fleet.h>

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "redis_fixture.h"

static ats_fleet_config base_cfg(const char *key, uint16_t port)
{
	return (ats_fleet_config){.host = "127.0.0.1",
	                          .port = port,
	                          .key = key,
	                          .rate = ats_rate_per_sec(20000),
	                          .burst = 100,
	                          .batch_max = 100,
	                          .timeout_ns = 200000000};
}

/* ---- Bad input ---- */

static void expect_invalid(const ats_fleet_config *cfg, const char *what)
{
	ats_fleet *f = (ats_fleet *)0x1;
	ats_err *err = ats_fleet_new(&f, cfg);
	cr_assert_not_null(err, "%s: accepted", what);
	cr_assert_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT, "%s: %s", what, ats_err_message(err));
	cr_assert_eq(ats_err_kind_of(err), ATS_KIND_KNOWN);
	cr_assert_null(f, "%s: *out not cleared", what);
	ats_err_unref(err);
}

Test(fleet, bad_input_is_a_clear_error_and_changes_nothing)
{
	ats_err *err = ats_fleet_new(NULL, NULL);
	cr_assert_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);
	ats_fleet *f = (ats_fleet *)0x1;
	err = ats_fleet_new(&f, NULL);
	cr_assert_eq(ats_err_code(err), ATS_ERR_INVALID_ARGUMENT);
	cr_assert_null(f);
	ats_err_unref(err);
	cr_assert_eq(ats_err_code(err = ats_fleet_init(NULL, NULL)), ATS_ERR_INVALID_ARGUMENT);
	ats_err_unref(err);

	ats_fleet_config c = base_cfg("k", 1);
	c.key = NULL;
	expect_invalid(&c, "NULL key");
	c.key = "";
	expect_invalid(&c, "empty key");
	char longkey[ATS_FLEET_MAX_KEY + 2];
	memset(longkey, 'k', sizeof longkey - 1);
	longkey[sizeof longkey - 1] = 0;
	c.key = longkey;
	expect_invalid(&c, "key over the cap");
	longkey[ATS_FLEET_MAX_KEY] = 0; /* exactly the cap: fine (checked below with a real limiter) */
	c = base_cfg("k", 1);
	c.rate = (ats_rate){0, ATS_NS_PER_SEC};
	expect_invalid(&c, "zero rate");
	c.rate = ATS_RATE_INF;
	expect_invalid(&c, "infinite rate");
	c = base_cfg("k", 1);
	c.burst = 0;
	expect_invalid(&c, "zero burst");
	c.burst = ATS_GCRA_MAX_N + 1;
	expect_invalid(&c, "burst over 2^32");
	c = base_cfg("k", 1);
	c.batch_max = 101;
	expect_invalid(&c, "batch_max over burst");
	c = base_cfg("k", 1);
	c.batch_min = 50;
	c.batch_max = 10;
	expect_invalid(&c, "batch_min over batch_max");
	c = base_cfg("k", 1);
	c.lease_ns = ATS_FLEET_MAX_LEASE_NS + 1;
	expect_invalid(&c, "lease too long");
	/* A lease that expires before it can serve used to be taken: Redis charged every token of
	 * each lease, acquirers got almost none (1 of 300 with a 1 us lease), and status said up. */
	c = base_cfg("k", 1);
	c.lease_ns = ATS_FLEET_MIN_LEASE_NS - 1;
	expect_invalid(&c, "lease too short");
	c = base_cfg("k", 1);
	c.rate = ats_rate_every(UINT64_C(1) << 50); /* one per 13 days: period_us * burst > 2^52 */
	c.burst = 1000;
	c.batch_max = 10;
	expect_invalid(&c, "burst * period too large");
	c = base_cfg("k", 1);
	c.policy = (ats_fleet_policy)7;
	expect_invalid(&c, "unknown policy");
	c = base_cfg("k", 1);
	c.refresh_ns = ATS_FLEET_MAX_LEASE_NS + 1;
	expect_invalid(&c, "refresh past the lease word's range");
	c = base_cfg("k", 1);
	c.timeout_ns = ATS_FLEET_MAX_TIMEOUT_NS + 1;
	expect_invalid(&c, "timeout hiredis refuses");
	c = base_cfg("k", 1);
	c.reconnect_max_ns = UINT64_MAX; /* now + delay wrapped: reconnects at once */
	expect_invalid(&c, "reconnect delay that wraps");
	c = base_cfg("k", 1);
	c.reconnect_min_ns = ATS_FLEET_MAX_RECONNECT_NS + 1;
	expect_invalid(&c, "reconnect delay that wraps");

	/* The cap itself is accepted. Port 1: nothing listens, so the limiter stays down. */
	c = base_cfg(longkey, 1);
	cr_assert_null(ats_fleet_new(&f, &c));
	ats_fleet_free(f);
}

/* ---- Reply parsing (pure) ---- */

/* Parses RESP bytes with hiredis's reader, then the lease reply. */
static ats_err *parse_resp(const char *resp, uint64_t asked, ats__fleet_reply *out)
{
	redisReader *rd = redisReaderCreate();
	cr_assert_not_null(rd);
	cr_assert_eq(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
	void *reply = NULL;
	cr_assert_eq(redisReaderGetReply(rd, &reply), REDIS_OK, "bad RESP in the test: %s", resp);
	cr_assert_not_null(reply);
	ats_err *err = ats__fleet_parse_reply(reply, asked, out);
	freeReplyObject(reply);
	redisReaderFree(rd);
	return err;
}

Test(fleet, reply_parser_accepts_only_the_scripts_answer)
{
	ats__fleet_reply r;
	cr_assert_null(parse_resp("*2\r\n:5\r\n:0\r\n", 5, &r));
	cr_assert_eq(r.granted, 5);
	cr_assert_eq(r.wait_us, 0);
	cr_assert_null(parse_resp("*2\r\n:0\r\n:50\r\n", 5, &r));
	cr_assert_eq(r.granted, 0);
	cr_assert_eq(r.wait_us, 50);

	const char *bad[] = {
	    "*2\r\n:6\r\n:0\r\n",                /* more than asked */
	    "*2\r\n:-1\r\n:0\r\n",               /* negative */
	    "*2\r\n:1\r\n:-5\r\n",               /* negative wait */
	    "*2\r\n:1\r\n:9007199254740993\r\n", /* wait beyond 2^53 us */
	    "*1\r\n:1\r\n",                      /* short */
	    "*3\r\n:1\r\n:0\r\n:0\r\n",          /* long */
	    "*2\r\n$1\r\n5\r\n:0\r\n",           /* a string where a number goes */
	    "*2\r\n*0\r\n:0\r\n",                /* nested */
	    "*-1\r\n",                           /* nil array */
	    "$-1\r\n",                           /* nil */
	    ":5\r\n",                            /* a bare integer */
	    "+OK\r\n",                           /* a status */
	    "$5\r\nhello\r\n",                   /* a string */
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		r.granted = 99;
		ats_err *err = parse_resp(bad[i], 5, &r);
		cr_assert_not_null(err, "accepted %s", bad[i]);
		cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
		cr_assert_eq(r.granted, 0, "granted on garbage %s", bad[i]);
		cr_assert(!r.noscript);
		ats_err_unref(err);
	}
	ats_err *err = parse_resp("-ERR Error running script (call to f_x): user_script:1: boom\r\n", 5, &r);
	cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	cr_assert_eq(r.granted, 0);
	cr_assert(!r.noscript);
	cr_assert_not_null(strstr(ats_err_kv_get(err, "redis_error"), "boom"));
	ats_err_unref(err);
	err = parse_resp("-NOSCRIPT No matching script. Please use EVAL.\r\n", 5, &r);
	cr_assert(r.noscript);
	cr_assert_eq(r.granted, 0);
	ats_err_unref(err);
	err = ats__fleet_parse_reply(NULL, 5, &r);
	cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	ats_err_unref(err);
}

/* ---- Redis unreachable (no server: nothing listens on the port) ---- */

static void wait_errors(ats_fleet *f)
{
	uint64_t deadline = ats_now_ns() + 5000000000u;
	ats_fleet_stats st;
	do {
		ats_fleet_stats_get(f, &st);
		if (st.redis_errors > 0)
			return;
		pace(1000000);
	} while (ats_now_ns() < deadline);
	cr_assert_fail("no connect error within 5 s");
}

Test(fleet, unreachable_fail_closed_grants_nothing_and_reports)
{
	uint16_t port = ats_test_free_port(); /* free now: nothing listens */
	ats_fleet_config c = base_cfg("unreachable", port);
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	wait_errors(f);
	for (int i = 0; i < 1000; i++)
		cr_assert(!ats_fleet_allow(f, 1));
	cr_assert(!ats_fleet_check(f, 1));
	cr_assert_eq(ats_fleet_tokens(f), 0);
	cr_assert(ats_fleet_allow(f, 0));
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	cr_assert_eq(st.closed_denied, 1000);
	cr_assert(!st.up);
	ats_err *err = ats_fleet_status(f);
	cr_assert_not_null(err);
	cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	cr_assert_eq(ats_err_kind_of(err), ATS_KIND_KNOWN);
	cr_assert_str_eq(ats_err_kv_get(err, "policy"), "fail_closed");
	cr_assert_str_eq(ats_err_kv_get(err, "key"), "unreachable");
	const char *text = ats_err_kv_get(err, "redis_error");
	cr_assert_not_null(text);
	cr_assert_not_null(strstr(text, "connect"), "%s", text);
	ats_err_unref(err);
	ats_fleet_free(f);
}

Test(fleet, unreachable_fail_open_uses_the_fallback)
{
	uint16_t port = ats_test_free_port();
	ats_fleet_config c = base_cfg("unreachable", port);
	c.policy = ATS_FLEET_FAIL_OPEN;
	c.fallback_rate = ats_rate_per_sec(1); /* 1/s: the test's few ms add nothing */
	c.fallback_burst = 7;
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	wait_errors(f);
	uint64_t now = ats_now_ns();
	cr_assert(ats_fleet_check_at(f, 7, now));
	cr_assert_geq(ats_fleet_tokens_at(f, now), 7);
	unsigned got = 0;
	for (int i = 0; i < 100; i++)
		got += ats_fleet_allow_at(f, 1, now);
	cr_assert_eq(got, 7);
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	cr_assert_eq(st.fallback_allowed, 7);
	cr_assert_eq(st.fallback_denied, 93);
	ats_err *err = ats_fleet_status(f);
	cr_assert_str_eq(ats_err_kv_get(err, "policy"), "fail_open");
	ats_err_unref(err);
	ats_fleet_free(f);

	/* The default fallback: rate / expected_instances, burst / expected_instances. */
	c.fallback_rate = (ats_rate){0, 0};
	c.fallback_burst = 0;
	c.expected_instances = 4;
	cr_assert_null(ats_fleet_new(&f, &c));
	wait_errors(f);
	got = 0;
	now = ats_now_ns();
	for (int i = 0; i < 100; i++)
		got += ats_fleet_allow_at(f, 1, now);
	cr_assert_eq(got, 25);
	ats_rate fr = ats_limiter_rate(&f->fallback_);
	cr_assert_eq(fr.events * ATS_NS_PER_SEC / fr.period_ns, 5000);
	ats_fleet_free(f);
}

/* ---- The scripts, driven directly (exact GCRA on Redis's clock) ---- */

static redisReply *eval(redisContext *rc, const char *src, const char *key, uint64_t ev, uint64_t per, uint64_t burst,
                        uint64_t n)
{
	redisReply *r = redisCommand(rc, "EVAL %s 1 %s %llu %llu %llu %llu", src, key, (unsigned long long)ev,
	                             (unsigned long long)per, (unsigned long long)burst, (unsigned long long)n);
	cr_assert_not_null(r);
	return r;
}

Test(fleet, scripts_are_an_exact_gcra, .init = start_redis, .fini = stop_redis)
{
	redisContext *rc = redisConnect("127.0.0.1", srv.port);
	cr_assert(rc && !rc->err);
	/* 1 token per 100 s (ev 1, per 10^8 us): nothing refills during the test. */
	ats__fleet_reply rep;
	redisReply *r = eval(rc, ats__fleet_lease_lua, "g", 1, 100000000, 5, 3);
	cr_assert_null(ats__fleet_parse_reply(r, 3, &rep));
	cr_assert_eq(rep.granted, 3);
	cr_assert_eq(rep.wait_us, 0);
	freeReplyObject(r);
	r = eval(rc, ats__fleet_lease_lua, "g", 1, 100000000, 5, 10);
	cr_assert_null(ats__fleet_parse_reply(r, 10, &rep));
	cr_assert_eq(rep.granted, 2, "only what is left");
	cr_assert_gt(rep.wait_us, 99000000);
	cr_assert_leq(rep.wait_us, 100000000);
	freeReplyObject(r);
	r = eval(rc, ats__fleet_lease_lua, "g", 1, 100000000, 5, 10);
	cr_assert_null(ats__fleet_parse_reply(r, 10, &rep));
	cr_assert_eq(rep.granted, 0);
	freeReplyObject(r);
	/* The key expires when the bucket would be full again: ~500 s. */
	r = redisCommand(rc, "PTTL g");
	cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
	cr_assert_gt(r->integer, 499000);
	cr_assert_leq(r->integer, 500001);
	freeReplyObject(r);
	/* Give 2 back: 2 are there again; giving back more than was taken stops at a full bucket. */
	r = eval(rc, ats__fleet_giveback_lua, "g", 1, 100000000, 5, 2);
	freeReplyObject(r);
	r = eval(rc, ats__fleet_lease_lua, "g", 1, 100000000, 5, 10);
	cr_assert_null(ats__fleet_parse_reply(r, 10, &rep));
	cr_assert_eq(rep.granted, 2);
	freeReplyObject(r);
	r = eval(rc, ats__fleet_giveback_lua, "g", 1, 100000000, 5, 1000);
	freeReplyObject(r);
	r = redisCommand(rc, "EXISTS g");
	cr_assert_eq(r->integer, 0, "a full bucket is no key");
	freeReplyObject(r);
	r = eval(rc, ats__fleet_lease_lua, "g", 1, 100000000, 5, 10);
	cr_assert_null(ats__fleet_parse_reply(r, 10, &rep));
	cr_assert_eq(rep.granted, 5, "never above full");
	freeReplyObject(r);
	/* A rate that is no whole number of microseconds per token (3 per second) has no drift:
	 * 3 per s with burst 1, asked every ~ms for 1.2 s, grants 1 + 3 = 4 (at 0, 1/3, 2/3, 1 s). */
	uint64_t got = 0, t0 = ats_now_ns();
	while (ats_now_ns() - t0 < 1200000000u) {
		r = eval(rc, ats__fleet_lease_lua, "third", 3, 1000000, 1, 1);
		cr_assert_null(ats__fleet_parse_reply(r, 1, &rep));
		got += rep.granted;
		freeReplyObject(r);
		pace(1000000);
	}
	cr_assert_eq(got, 4);
	redisFree(rc);
}

/* ---- A limiter on a real server: lease, hits, give-back ---- */

static void wait_tokens(ats_fleet *f, int64_t want)
{
	uint64_t deadline = ats_now_ns() + 5000000000u;
	while (ats_fleet_tokens(f) < want) {
		cr_assert_lt(ats_now_ns(), deadline, "no lease within 5 s");
		pace(1000000);
	}
}

Test(fleet, leases_serves_and_gives_back, .init = start_redis, .fini = stop_redis)
{
	ats_fleet_config c = base_cfg("basic", srv.port);
	c.rate = ats_rate_every(100 * ATS_NS_PER_SEC); /* no refill during the test */
	c.burst = 100;
	c.batch_min = 40;
	c.batch_max = 40;
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	wait_tokens(f, 40);
	cr_assert_null(ats_fleet_status(f));
	for (int i = 0; i < 10; i++)
		cr_assert(ats_fleet_allow(f, 1));
	cr_assert(ats_fleet_allow(f, 5));
	cr_assert(ats_fleet_check(f, 1));
	ats_fleet_stop(f);
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	/* Every leased token is granted, expired or given back. */
	cr_assert_eq(st.leased_tokens, 15 + st.expired_tokens + st.given_back, "leased %llu given back %llu",
	             (unsigned long long)st.leased_tokens, (unsigned long long)st.given_back);
	cr_assert_gt(st.given_back, 0);
	cr_assert(!ats_fleet_allow(f, 1), "stopped: fail closed grants nothing");
	ats_fleet_free(f);
	/* Redis has 100 - 15 tokens: exactly what was not granted came back. */
	redisContext *rc = redisConnect("127.0.0.1", srv.port);
	ats__fleet_reply rep;
	redisReply *r = eval(rc, ats__fleet_lease_lua, "basic", 1, 100000000, 100, 100);
	cr_assert_null(ats__fleet_parse_reply(r, 100, &rep));
	cr_assert_eq(rep.granted, 85);
	freeReplyObject(r);
	redisFree(rc);
}

Test(fleet, noscript_reloads, .init = start_redis, .fini = stop_redis)
{
	ats_fleet_config c = base_cfg("flush", srv.port);
	c.rate = ats_rate_per_sec(1000);
	c.batch_max = 10;
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	wait_tokens(f, 1);
	redisContext *rc = redisConnect("127.0.0.1", srv.port);
	freeReplyObject(redisCommand(rc, "SCRIPT FLUSH"));
	redisFree(rc);
	ats_fleet_stats st0, st;
	ats_fleet_stats_get(f, &st0);
	uint64_t deadline = ats_now_ns() + 5000000000u;
	do {
		ats_fleet_allow(f, 1);
		ats_fleet_stats_get(f, &st);
		cr_assert_lt(ats_now_ns(), deadline, "no lease after SCRIPT FLUSH");
		pace(200000);
	} while (st.leases < st0.leases + 3);
	cr_assert_null(ats_fleet_status(f));
	cr_assert_eq(st.redis_errors, 0, "NOSCRIPT is handled, not an error");
	ats_fleet_free(f);
}

/* ---- Fleet audit: processes x threads, every grant logged ---- */

#define PROCS 4
#define THREADS 2
#define CAP 200000
#define RATE 20000
#define BURST 100
#define BATCH_MAX 100
#define RUN_NS 3000000000u
#define STARTUP_NS 300000000u

struct tlog {
	uint64_t n;
	uint64_t t[CAP];
};
struct shared {
	_Atomic uint64_t go_ns;
	_Atomic int ready;
	struct tlog log[PROCS][THREADS];
	ats_fleet_stats st[PROCS];
	uint64_t granted[PROCS];
};

struct worker {
	ats_fleet *f;
	struct tlog *log;
	uint64_t end_ns;
};

static void *work(void *p)
{
	struct worker *w = p;
	while (ats_now_ns() < w->end_ns) {
		if (ats_fleet_allow(w->f, 1)) {
			uint64_t t = ats_now_ns(); /* after the grant: at most one in flight per thread */
			if (w->log->n < CAP)
				w->log->t[w->log->n] = t;
			w->log->n++;
		} else {
			pace(50000); /* demand stays far above the limit; the pause keeps 8 threads off the cores */
		}
	}
	return NULL;
}

static void child(struct shared *sh, int p, const char *key)
{
	ats_fleet_config c = base_cfg(key, srv.port);
	c.rate = ats_rate_per_sec(RATE);
	c.burst = BURST;
	c.batch_max = BATCH_MAX;
	c.lease_ns = 500000000;
	ats_fleet *f;
	if (ats_fleet_new(&f, &c))
		_exit(10);
	sh->ready++;
	/* bounded wait for the start signal */
	uint64_t deadline = ats_now_ns() + 10000000000u;
	while (!atomic_load(&sh->go_ns)) {
		if (ats_now_ns() > deadline)
			_exit(11);
		pace(100000);
	}
	struct worker w[THREADS];
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){f, &sh->log[p][i], atomic_load(&sh->go_ns) + RUN_NS};
		pthread_create(&th[i], NULL, work, &w[i]);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	ats_fleet_stop(f);
	ats_fleet_stats_get(f, &sh->st[p]);
	uint64_t g = 0;
	for (int i = 0; i < THREADS; i++)
		g += sh->log[p][i].n;
	sh->granted[p] = g;
	ats_fleet_free(f);
	_exit(0);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Runs the fleet; kill_proc >= 0 is SIGKILLed kill_at_ns after the start. */
static struct shared *run_fleet(const char *key, int kill_proc, uint64_t kill_at_ns, uint64_t *go)
{
	struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(sh, MAP_FAILED);
	pid_t pid[PROCS];
	for (int p = 0; p < PROCS; p++) {
		pid[p] = fork();
		cr_assert_geq(pid[p], 0);
		if (pid[p] == 0)
			child(sh, p, key);
	}
	/* Start together, once every process has its limiter (and its thread is leasing). */
	uint64_t deadline = ats_now_ns() + 10000000000u;
	while (atomic_load(&sh->ready) < PROCS) {
		cr_assert_lt(ats_now_ns(), deadline, "children did not start");
		pace(1000000);
	}
	*go = ats_now_ns();
	atomic_store(&sh->go_ns, *go);
	if (kill_proc >= 0) {
		while (ats_now_ns() < *go + kill_at_ns)
			pace(1000000); /* the kill's moment, not synchronization */
		kill(pid[kill_proc], SIGKILL);
	}
	for (int p = 0; p < PROCS; p++) {
		int st;
		cr_assert_eq(waitpid(pid[p], &st, 0), pid[p]);
		if (p == kill_proc)
			cr_assert(WIFSIGNALED(st));
		else
			cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed (%d)", p, st);
	}
	return sh;
}

/* Merges the logs; checks every window between grant points and returns the grant count in
 * [from, to]. max over i <= j of (j - i + 1) - rate*(t_j - t_i) is found in one pass: the largest
 * (j - rate*t_j) minus the smallest (i - rate*t_i) before it. */
static uint64_t audit(struct shared *sh, uint64_t from, uint64_t to, uint64_t *total)
{
	uint64_t n = 0;
	for (int p = 0; p < PROCS; p++)
		for (int i = 0; i < THREADS; i++) {
			cr_assert_leq(sh->log[p][i].n, CAP, "log overflow");
			n += sh->log[p][i].n;
		}
	uint64_t *t = malloc(n * sizeof *t), k = 0;
	for (int p = 0; p < PROCS; p++)
		for (int i = 0; i < THREADS; i++)
			for (uint64_t j = 0; j < sh->log[p][i].n; j++)
				t[k++] = sh->log[p][i].t[j];
	qsort(t, n, sizeof *t, cmp_u64);
	double r = RATE / 1e9, best = 0, lo = 1e300;
	uint64_t in = 0;
	for (uint64_t j = 0; j < n; j++) {
		double v = (double)j - r * (double)(t[j] - t[0]);
		if (v < lo)
			lo = v;
		if (v - lo + 1 > best)
			best = v - lo + 1;
		in += t[j] >= from && t[j] <= to;
	}
	free(t);
	/* The bound: burst + rate*w + instances*batch_max; one more per thread because a grant is
	 * logged just after it was taken (a thread preempted between the two shifts one grant). */
	double bound = BURST + (double)PROCS * BATCH_MAX + PROCS * THREADS;
	cr_log_info("fleet audit: %llu grants, worst window excess %.1f (bound %.0f)\n", (unsigned long long)n, best,
	            bound);
	cr_assert_leq(best, bound, "a window exceeded burst + rate*w + instances*batch_max: excess %.1f > %.0f", best,
	              bound);
	*total = n;
	return in;
}

Test(fleet, audit_bound_and_admission, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	uint64_t go, total;
	struct shared *sh = run_fleet("audit", -1, 0, &go);
	uint64_t from = go + STARTUP_NS, to = go + RUN_NS;
	uint64_t in = audit(sh, from, to, &total);
	double want = 0.95 * RATE * (double)(to - from) / 1e9;
	cr_log_info("fleet admission: %llu grants in the %.2f s after startup, %.1f%% of rate*w\n",
	            (unsigned long long)in, (double)(to - from) / 1e9,
	            100.0 * (double)in / (RATE * (double)(to - from) / 1e9));
	cr_assert_geq((double)in, want, "under-admission: %llu < 95%% of rate*w (%.0f)", (unsigned long long)in, want);
	/* No token went missing in any process: granted + expired + given back == leased. */
	for (int p = 0; p < PROCS; p++)
		cr_assert_eq(sh->st[p].leased_tokens, sh->granted[p] + sh->st[p].expired_tokens + sh->st[p].given_back,
		             "process %d: leased %llu, granted %llu, expired %llu, given back %llu", p,
		             (unsigned long long)sh->st[p].leased_tokens, (unsigned long long)sh->granted[p],
		             (unsigned long long)sh->st[p].expired_tokens, (unsigned long long)sh->st[p].given_back);
	munmap(sh, sizeof *sh);
}

Test(fleet, killed_process_loses_only_its_lease, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	uint64_t go, total;
	struct shared *sh = run_fleet("crash", 0, 1000000000u, &go);
	uint64_t from = go + STARTUP_NS, to = go + RUN_NS;
	uint64_t in = audit(sh, from, to, &total);
	double want = 0.95 * RATE * (double)(to - from) / 1e9 - BATCH_MAX;
	cr_log_info("fleet with a killed process: %llu grants after startup (want >= %.0f)\n", (unsigned long long)in,
	            want);
	cr_assert_geq((double)in, want, "lost more than the killed lease: %llu < %.0f", (unsigned long long)in, want);
	for (int p = 1; p < PROCS; p++)
		cr_assert_eq(sh->st[p].leased_tokens, sh->granted[p] + sh->st[p].expired_tokens + sh->st[p].given_back,
		             "survivor %d lost tokens", p);
	munmap(sh, sizeof *sh);
}

/* ---- Redis stopped and started again on the same port ---- */

static void restart_case(ats_fleet_policy policy)
{
	ats_fleet_config c = base_cfg(policy == ATS_FLEET_FAIL_OPEN ? "open" : "closed", srv.port);
	c.rate = ats_rate_per_sec(2000);
	c.burst = 100;
	c.batch_max = 100;
	c.lease_ns = 300000000;
	c.timeout_ns = 50000000;
	c.reconnect_min_ns = 20000000;
	c.reconnect_max_ns = 100000000;
	c.policy = policy;
	c.fallback_rate = ats_rate_per_sec(500);
	c.fallback_burst = 10;
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	ats_fleet_stats st;
	uint64_t deadline = ats_now_ns() + 5000000000u;
	do { /* leasing works */
		ats_fleet_allow(f, 1);
		ats_fleet_stats_get(f, &st);
		cr_assert_lt(ats_now_ns(), deadline, "no leases");
		pace(100000);
	} while (st.leases < 3 || !st.up);

	ats_test_redis_kill(&srv);
	uint64_t t_kill = ats_now_ns(), after_kill = 0, after_lease = 0;
	deadline = t_kill + 5000000000u;
	do { /* the limiter notices */
		after_kill += ats_fleet_allow(f, 1);
		ats_fleet_stats_get(f, &st);
		cr_assert_lt(ats_now_ns(), deadline, "Redis down not noticed");
		pace(100000);
	} while (st.up);
	ats_err *err = ats_fleet_status(f);
	cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	cr_assert_not_null(ats_err_kv_get(err, "redis_error"));
	cr_assert_gt(strlen(ats_err_kv_get(err, "redis_error")), 0);
	ats_err_unref(err);
	/* Down for ~1.2 s, demand on all along. */
	uint64_t down_until = t_kill + 1200000000u;
	while (ats_now_ns() < down_until) {
		bool ok = ats_fleet_allow(f, 1);
		after_kill += ok;
		if (ats_now_ns() > t_kill + c.lease_ns + 50000000u)
			after_lease += ok;
		pace(100000);
	}
	double down_s = (double)(ats_now_ns() - t_kill) / 1e9;
	ats_fleet_stats_get(f, &st);
	if (policy == ATS_FLEET_FAIL_CLOSED) {
		cr_assert_leq(after_kill, c.batch_max, "fail closed granted %llu beyond the lease",
		              (unsigned long long)after_kill);
		cr_assert_eq(after_lease, 0, "fail closed granted after the lease expired");
		cr_assert_gt(st.closed_denied, 0);
		cr_assert_eq(st.fallback_allowed, 0);
	} else {
		double bound = (double)c.batch_max + 10 + 500 * down_s;
		cr_assert_leq((double)after_kill, bound, "fail open granted %llu > lease + fallback %.0f",
		              (unsigned long long)after_kill, bound);
		cr_assert_gt(st.fallback_allowed, 0);
		cr_assert_eq(st.closed_denied, 0);
	}
	cr_log_info("redis down %.2f s: %llu granted after the kill (%s)\n", down_s, (unsigned long long)after_kill,
	            policy == ATS_FLEET_FAIL_OPEN ? "fail open" : "fail closed");

	const char *why = ats_test_redis_start(&srv, srv.port);
	cr_assert_null(why, "%s", why);
	ats_fleet_stats st0 = st;
	deadline = ats_now_ns() + 5000000000u;
	do { /* leasing resumes */
		ats_fleet_allow(f, 1);
		ats_fleet_stats_get(f, &st);
		if (ats_now_ns() > deadline) {
			ats_err *e = ats_fleet_status(f);
			cr_assert_fail("leasing did not resume after the restart: up %d leases %llu errors %llu: %s",
			               st.up, (unsigned long long)st.leases, (unsigned long long)st.redis_errors,
			               e ? ats_err_kv_get(e, "redis_error") : "up");
		}
		pace(100000);
	} while (!st.up || st.leases < st0.leases + 3);
	cr_assert_geq(st.reconnects, 1);
	cr_assert_null(ats_fleet_status(f));
	ats_fleet_free(f);
}

Test(fleet, redis_restart_fail_closed, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	restart_case(ATS_FLEET_FAIL_CLOSED);
}

Test(fleet, redis_restart_fail_open, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	restart_case(ATS_FLEET_FAIL_OPEN);
}

/* ---- Redis slow: CLIENT PAUSE holds every command of every client for a second ---- */

Test(fleet, slow_redis_times_out_never_blocks_an_acquire, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	ats_fleet_config c = base_cfg("slow", srv.port);
	c.rate = ats_rate_per_sec(2000);
	c.timeout_ns = 100000000;
	c.reconnect_min_ns = 20000000;
	c.reconnect_max_ns = 100000000;
	c.lease_ns = 200000000;
	c.policy = ATS_FLEET_FAIL_OPEN;
	c.fallback_rate = ats_rate_per_sec(500);
	c.fallback_burst = 10;
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	ats_fleet_stats st;
	uint64_t deadline = ats_now_ns() + 5000000000u;
	do {
		ats_fleet_allow(f, 1);
		ats_fleet_stats_get(f, &st);
		cr_assert_lt(ats_now_ns(), deadline, "no leases");
		pace(100000);
	} while (st.leases < 3 || !st.up);

	redisContext *rc = redisConnect("127.0.0.1", srv.port);
	cr_assert(rc && !rc->err);
	redisReply *r = redisCommand(rc, "CLIENT PAUSE 1000 ALL");
	cr_assert(r && r->type == REDIS_REPLY_STATUS, "CLIENT PAUSE refused");
	freeReplyObject(r);
	redisFree(rc);
	uint64_t t_pause = ats_now_ns(), worst = 0;
	/* During the pause: the limiter goes down by timeout, and no acquire waits for the network. */
	while (ats_now_ns() < t_pause + 900000000u) {
		uint64_t t = ats_now_ns();
		ats_fleet_allow(f, 1);
		t = ats_now_ns() - t;
		if (t > worst)
			worst = t;
		pace(100000);
	}
	ats_fleet_stats_get(f, &st);
	cr_assert(!st.up, "a paused Redis was not noticed");
	cr_assert_gt(st.fallback_allowed, 0);
	ats_err *err = ats_fleet_status(f);
	cr_assert_not_null(err);
	cr_log_info("slow Redis: %s; slowest acquire %.3f ms\n", ats_err_kv_get(err, "redis_error"), worst / 1e6);
	ats_err_unref(err);
	/* An acquire that waited on the network would take the whole timeout (100 ms) or the pause. */
	cr_assert_lt(worst, 50000000u, "an acquire took %llu ns", (unsigned long long)worst);
	deadline = ats_now_ns() + 5000000000u;
	ats_fleet_stats st0 = st;
	do { /* and back once the pause ends */
		ats_fleet_allow(f, 1);
		ats_fleet_stats_get(f, &st);
		cr_assert_lt(ats_now_ns(), deadline, "leasing did not resume after the pause");
		pace(100000);
	} while (!st.up || st.leases < st0.leases + 3);
	ats_fleet_free(f);
}

/* ---- A script error (the key holds a string): reported, never a grant ---- */

Test(fleet, script_error_is_reported_and_grants_nothing, .init = start_redis, .fini = stop_redis)
{
	redisContext *rc = redisConnect("127.0.0.1", srv.port);
	cr_assert(rc && !rc->err);
	freeReplyObject(redisCommand(rc, "SET wrongtype hello"));
	ats_fleet_config c = base_cfg("wrongtype", srv.port);
	c.reconnect_min_ns = 10000000;
	c.reconnect_max_ns = 20000000;
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	wait_errors(f);
	ats_err *err = ats_fleet_status(f);
	cr_assert_eq(ats_err_code(err), ATS_ERR_UNAVAILABLE);
	const char *text = ats_err_kv_get(err, "redis_error");
	cr_assert_not_null(strstr(text, "WRONGTYPE"), "%s", text);
	ats_err_unref(err);
	for (int i = 0; i < 100; i++)
		cr_assert(!ats_fleet_allow(f, 1));
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	cr_assert_eq(st.leased_tokens, 0);
	/* Fix the key: leasing starts. */
	freeReplyObject(redisCommand(rc, "DEL wrongtype"));
	redisFree(rc);
	wait_tokens(f, 1);
	cr_assert_null(ats_fleet_status(f));
	ats_fleet_free(f);
}

/* ---- A steady stream: served from the lease, the batch follows its rate ---- */

Test(fleet, steady_stream_never_waits_and_batch_follows_rate, .init = start_redis, .fini = stop_redis, .timeout = 60)
{
	ats_fleet_config c = base_cfg("steady", srv.port);
	c.rate = ats_rate_per_sec(200000); /* ten times the stream: the limit never refuses it */
	c.burst = 20000;
	c.batch_max = 20000;
	/* 50 ms: the lease's slack (one refresh interval of the stream) then covers a background
	 * thread that a loaded 2-core host leaves without a CPU for tens of ms */
	c.refresh_ns = 50000000;
	ats_fleet *f;
	cr_assert_null(ats_fleet_new(&f, &c));
	wait_tokens(f, 1);
	/* 20000/s for 1 s, in steps of ~200 us: the tokens due so far are asked for at each step. */
	const double per_ns = 20000 / 1e9;
	uint64_t t0 = ats_now_ns(), asked = 0, refused = 0, refused_late = 0, steps = 0;
	ats_fleet_stats st0;
	for (;;) {
		uint64_t now = ats_now_ns();
		if (now - t0 >= 1000000000u)
			break;
		uint64_t due = (uint64_t)((double)(now - t0) * per_ns);
		for (; asked < due; asked++) {
			bool ok = ats_fleet_allow(f, 1);
			refused += !ok;
			refused_late += !ok && now - t0 > 200000000u; /* after a 200 ms warm-up */
		}
		if (++steps == 1)
			ats_fleet_stats_get(f, &st0);
		pace(200000);
	}
	ats_fleet_stats st;
	ats_fleet_stats_get(f, &st);
	double ops_per_grant = (double)(st.redis_ops - st0.redis_ops) / (double)(asked - refused);
	cr_log_info(
	    "steady 20000/s: %llu asked, %llu refused (%llu after warm-up), batch %llu, %.4f redis ops per grant\n",
	    (unsigned long long)asked, (unsigned long long)refused, (unsigned long long)refused_late,
	    (unsigned long long)st.batch, ops_per_grant);
	cr_assert_leq(refused_late, asked / 50, "a steady stream waited on Redis: %llu refused after warm-up",
	              (unsigned long long)refused_late);
	/* one refresh interval of the stream: 1000 tokens (x2 for hungry doubling, /2 for a slow window) */
	cr_assert_geq(st.batch, 500, "batch %llu", (unsigned long long)st.batch);
	cr_assert_leq(st.batch, 4000, "batch %llu", (unsigned long long)st.batch);
	cr_assert_leq(ops_per_grant, 0.01);
	ats_fleet_free(f);
}
