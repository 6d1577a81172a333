/* SPDX-License-Identifier: BSD-2-Clause */
/* Fleet limiter rows against a real redis-server (started once on a free loopback port in a
 * scratch folder, persistence off, stopped at exit; tests/redis_server.h). Skipped with a note
 * when redis-server is not installed.
 *  - fleet.allow_at, fleet.allow: acquires served from the local lease (the background thread
 *    keeps it filled); extra: redis_ops_per_grant (script calls per token granted) and the share
 *    of acquires granted.
 *  - fleet.allow_4proc: four processes on one global limit well above their demand, each taking
 *    tokens from its own lease as fast as it can; ns per operation over all four (the longest
 *    process's loop / the operations of all), with each process's own ns/op and the Redis
 *    commands per grant in the extra.
 *  - fleet_keyed.allow_at_1k: the keyed fleet limiter, a random one of 1024 keys (all held, their
 *    leases filled) per acquire; extra: redis_ops_per_grant and the share granted.
 *  - peer.redis.gcra_lua: what a client without leases pays: one EVALSHA of the same GCRA script
 *    per acquire, through hiredis.
 *  - peer.redis.incr_window: the common fixed-window counter, INCR + EXPIRE per acquire (one round
 *    trip, pipelined). */
#include "bench.h"
#include "atscale/fleet.h"
#include "atscale/fleet_keyed.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "redis_server.h"

static struct ats_test_redis server;
static int server_state; /* 0 not tried, 1 running, -1 unavailable */

static void server_stop(void)
{
	ats_test_redis_stop(&server);
}

static bool server_up(const char *row)
{
	if (server_state == 0) {
		const char *why = ats_test_redis_start(&server, 0);
		if (why) {
			fprintf(stderr, "atscale-bench: fleet rows skipped: %s\n", why);
			server_state = -1;
		} else {
			server_state = 1;
			atexit(server_stop);
		}
	}
	if (server_state < 0)
		fprintf(stderr, "atscale-bench: %s skipped (no redis-server)\n", row);
	return server_state > 0;
}

struct fleet_state {
	ats_fleet *f;
	uint64_t calls, grants;
};

static void *fleet_setup(unsigned threads)
{
	(void)threads;
	if (!server_up("fleet"))
		return NULL;
	ats_fleet_config c = {.port = server.port,
	                      .key = "bench:fleet",
	                      .rate = ats_rate_per_sec(1000000000),
	                      .burst = ATS_FLEET_MAX_BATCH,
	                      .batch_min = 1 << 20,
	                      .batch_max = ATS_FLEET_MAX_BATCH,
	                      /* the runner times 20 ms runs with pauses between them: a long refresh keeps
	                       * the batch (and the lease) large across the pauses, so the rows time hits */
	                      .refresh_ns = 100000000,
	                      .lease_ns = 10 * ATS_NS_PER_SEC};
	struct fleet_state *s = calloc(1, sizeof *s);
	ats_err *err = ats_fleet_new(&s->f, &c);
	if (err) {
		ats_err_print(err, stderr);
		ats_err_unref(err);
		free(s);
		return NULL;
	}
	/* the first lease: a bounded wait on the observed state */
	uint64_t deadline = ats_now_ns() + 5000000000u;
	while (ats_fleet_tokens(s->f) < (1 << 20) && ats_now_ns() < deadline) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	return s;
}

static void fleet_teardown(void *state)
{
	struct fleet_state *s = state;
	ats_fleet_free(s->f);
	free(s);
}

static void fleet_allow_at_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct fleet_state *s = state;
	uint64_t now = ats_fast_now_ns(), ok = 0;
	for (uint64_t i = 0; i < iters; i++)
		ok += ats_fleet_allow_at(s->f, 1, now + i);
	s->calls += iters;
	s->grants += ok;
}

static void fleet_allow_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct fleet_state *s = state;
	uint64_t ok = 0;
	for (uint64_t i = 0; i < iters; i++)
		ok += ats_fleet_allow(s->f, 1);
	s->calls += iters;
	s->grants += ok;
}

static void fleet_extra(void *state, char *buf, size_t len)
{
	struct fleet_state *s = state;
	ats_fleet_stats st;
	ats_fleet_stats_get(s->f, &st);
	snprintf(buf, len, "\"redis_ops_per_grant\": %.3g, \"granted_share\": %.4f, \"redis_ops\": %llu",
	         s->grants ? (double)st.redis_ops / (double)s->grants : 0.0,
	         s->calls ? (double)s->grants / (double)s->calls : 0.0, (unsigned long long)st.redis_ops);
}

/* ---- The keyed fleet limiter: 1024 keys, all held ---- */

#define KEYED_KEYS 1024

struct keyed_state {
	ats_fleet_keyed *k;
	char keys[KEYED_KEYS][12];
	size_t lens[KEYED_KEYS];
	uint64_t calls, grants, x;
};

static void *keyed_setup(unsigned threads)
{
	(void)threads;
	if (!server_up("fleet_keyed"))
		return NULL;
	ats_fleet_keyed_config c = {.fleet = {.port = server.port,
	                                      .key = "bench:fk:",
	                                      .rate = ats_rate_per_sec(1000000000),
	                                      .burst = ATS_FLEET_MAX_BATCH,
	                                      .batch_min = 1 << 16,
	                                      .batch_max = ATS_FLEET_MAX_BATCH,
	                                      .refresh_ns = 100000000, /* as fleet_setup: hits, not refills */
	                                      .lease_ns = 10 * ATS_NS_PER_SEC},
	                            .max_keys = KEYED_KEYS};
	struct keyed_state *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	ats_err *err = ats_fleet_keyed_new(&s->k, &c);
	if (err) {
		ats_err_print(err, stderr);
		ats_err_unref(err);
		free(s);
		return NULL;
	}
	s->x = 0x9e3779b97f4a7c15u;
	for (unsigned i = 0; i < KEYED_KEYS; i++) {
		s->lens[i] = (size_t)snprintf(s->keys[i], sizeof s->keys[i], "user:%04u", i);
		(void)ats_fleet_keyed_allow(s->k, s->keys[i], s->lens[i], 1); /* adds the key */
	}
	/* every lease filled: a bounded wait on the observed state */
	uint64_t deadline = ats_now_ns() + 10000000000u;
	for (unsigned i = 0; i < KEYED_KEYS && ats_now_ns() < deadline;) {
		if (ats_fleet_keyed_tokens_at(s->k, s->keys[i], s->lens[i], ats_now_ns()) >= (1 << 16)) {
			i++;
			continue;
		}
		(void)ats_fleet_keyed_allow(s->k, s->keys[i], s->lens[i], 1);
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	return s;
}

static void keyed_teardown(void *state)
{
	struct keyed_state *s = state;
	ats_fleet_keyed_free(s->k);
	free(s);
}

static void keyed_allow_at_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct keyed_state *s = state;
	uint64_t now = ats_fast_now_ns(), ok = 0, x = s->x;
	for (uint64_t i = 0; i < iters; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		unsigned k = (unsigned)x & (KEYED_KEYS - 1);
		ok += ats_fleet_keyed_allow_at(s->k, s->keys[k], s->lens[k], 1, now + i);
	}
	s->x = x;
	s->calls += iters;
	s->grants += ok;
}

static void keyed_extra(void *state, char *buf, size_t len)
{
	struct keyed_state *s = state;
	ats_fleet_keyed_stats st;
	ats_fleet_keyed_stats_get(s->k, &st);
	snprintf(buf, len, "\"redis_ops_per_grant\": %.3g, \"granted_share\": %.4f, \"keys\": %zu",
	         s->grants ? (double)st.redis_ops / (double)s->grants : 0.0,
	         s->calls ? (double)s->grants / (double)s->calls : 0.0, st.keys);
}

/* ---- Four processes on one limit ---- */

#define PROCS 4

/* What a child process reports through its pipe. */
struct proc_result {
	uint64_t ops, grants, ns, redis_ops;
	int ok;
};

/* One child: its own fleet limiter on the shared key, the first lease awaited, then a timed loop. */
static struct proc_result proc_run(uint64_t ops, int start_fd)
{
	struct proc_result r = {0};
	ats_fleet_config c = {.port = server.port,
	                      .key = "bench:fleet4",
	                      .rate = ats_rate_per_sec(4000000000u),
	                      .burst = ATS_FLEET_MAX_BATCH,
	                      .batch_min = 1 << 20,
	                      .batch_max = ATS_FLEET_MAX_BATCH,
	                      .refresh_ns = 100000000,
	                      .lease_ns = 10 * ATS_NS_PER_SEC,
	                      .expected_instances = PROCS};
	ats_fleet *f = NULL;
	ats_err *err = ats_fleet_new(&f, &c);
	if (err) {
		ats_err_unref(err);
		return r;
	}
	uint64_t deadline = ats_now_ns() + 5000000000u;
	while (ats_fleet_tokens(f) < (1 << 20) && ats_now_ns() < deadline) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	char go;
	if (read(start_fd, &go, 1) == 1) { /* every process starts at once */
		uint64_t t0 = ats_now_ns(), ok = 0;
		for (uint64_t i = 0; i < ops; i++)
			ok += ats_fleet_allow(f, 1);
		r.ns = ats_now_ns() - t0;
		r.ops = ops;
		r.grants = ok;
		ats_fleet_stats st;
		ats_fleet_stats_get(f, &st);
		r.redis_ops = st.redis_ops;
		r.ok = 1;
	}
	ats_fleet_free(f);
	return r;
}

static bool allow_4proc_measure(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	if (!server_up("fleet.allow_4proc"))
		return false;
	uint64_t ops = quick ? 2000000u : 50000000u;
	int start[2], res[PROCS][2];
	if (pipe(start) != 0)
		return false;
	pid_t pid[PROCS];
	int made = 0;
	for (; made < PROCS; made++) {
		if (pipe(res[made]) != 0)
			break;
		fflush(NULL);
		pid[made] = fork();
		if (pid[made] < 0)
			break;
		if (pid[made] == 0) {
			close(start[1]);
			struct proc_result r = proc_run(ops, start[0]);
			ssize_t w = write(res[made][1], &r, sizeof r);
			_exit(w == (ssize_t)sizeof r ? 0 : 1);
		}
		close(res[made][1]);
	}
	close(start[0]);
	/* The children wait for their first lease, then for a byte each on this pipe. */
	if (made == PROCS) {
		char go[PROCS] = {0};
		ssize_t w = write(start[1], go, sizeof go);
		(void)w;
	}
	close(start[1]);
	struct proc_result all = {0}, r;
	double per[PROCS] = {0}, slowest_ns = 0; /* each process's ns/op; the longest loop */
	bool ok = made == PROCS;
	for (int i = 0; i < made; i++) {
		if (read(res[i][0], &r, sizeof r) != (ssize_t)sizeof r || !r.ok)
			ok = false;
		else {
			all.ops += r.ops, all.grants += r.grants, all.redis_ops += r.redis_ops;
			per[i] = (double)r.ns / (double)r.ops;
			slowest_ns = (double)r.ns > slowest_ns ? (double)r.ns : slowest_ns;
		}
		close(res[i][0]);
		int st;
		waitpid(pid[i], &st, 0);
	}
	if (!ok || all.ops == 0)
		return false;
	/* The processes loop side by side: the longest loop over every operation of all four (the
	 * children's wait for their first lease is not timed). */
	out->ns_per_op = slowest_ns / (double)all.ops;
	out->min = per[0], out->max = per[0];
	for (int i = 1; i < PROCS; i++) {
		out->min = per[i] < out->min ? per[i] : out->min;
		out->max = per[i] > out->max ? per[i] : out->max;
	}
	snprintf(out->extra, sizeof out->extra,
	         "\"procs\": %d, \"proc_ns_per_op\": [%.2f, %.2f, %.2f, %.2f], \"redis_ops_per_grant\": %.3g, "
	         "\"granted_share\": %.4f",
	         PROCS, per[0], per[1], per[2], per[3], (double)all.redis_ops / (double)(all.grants ? all.grants : 1),
	         (double)all.grants / (double)all.ops);
	return true;
}

/* ---- Peers: one round trip per acquire ---- */

struct peer_state {
	redisContext *rc;
	char sha[48];
	uint64_t calls, grants;
};

static void *peer_setup(unsigned threads)
{
	(void)threads;
	if (!server_up("peer.redis"))
		return NULL;
	struct peer_state *s = calloc(1, sizeof *s);
	s->rc = redisConnect("127.0.0.1", server.port);
	if (!s->rc || s->rc->err) {
		if (s->rc)
			redisFree(s->rc);
		free(s);
		return NULL;
	}
	redisReply *r = redisCommand(s->rc, "SCRIPT LOAD %s", ats__fleet_lease_lua);
	if (!r || r->type != REDIS_REPLY_STRING || r->len >= sizeof s->sha) {
		if (r)
			freeReplyObject(r);
		redisFree(s->rc);
		free(s);
		return NULL;
	}
	snprintf(s->sha, sizeof s->sha, "%s", r->str);
	freeReplyObject(r);
	return s;
}

static void peer_teardown(void *state)
{
	struct peer_state *s = state;
	redisFree(s->rc);
	free(s);
}

/* The fleet's own GCRA script asked for one token per acquire (10^9/s: always granted). */
static void gcra_lua_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct peer_state *s = state;
	for (uint64_t i = 0; i < iters; i++) {
		redisReply *r = redisCommand(s->rc, "EVALSHA %s 1 bench:peer 1000000000 1000000 16777215 1", s->sha);
		ats__fleet_reply rep;
		ats_err *err = ats__fleet_parse_reply(r, 1, &rep);
		s->grants += rep.granted;
		ats_err_unref(err);
		if (r)
			freeReplyObject(r);
	}
	s->calls += iters;
}

/* Fixed window of one second: INCR the window's counter, EXPIRE it, compare with the limit. */
static void incr_window_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct peer_state *s = state;
	for (uint64_t i = 0; i < iters; i++) {
		unsigned long long win = ats_fast_now_ns() / ATS_NS_PER_SEC;
		redisAppendCommand(s->rc, "INCR bench:win:%llu", win);
		redisAppendCommand(s->rc, "EXPIRE bench:win:%llu 2", win);
		redisReply *r1 = NULL, *r2 = NULL;
		if (redisGetReply(s->rc, (void **)&r1) == REDIS_OK && redisGetReply(s->rc, (void **)&r2) == REDIS_OK)
			s->grants += r1 && r1->type == REDIS_REPLY_INTEGER && r1->integer <= 1000000000;
		if (r1)
			freeReplyObject(r1);
		if (r2)
			freeReplyObject(r2);
	}
	s->calls += iters;
}

static void peer_extra(void *state, char *buf, size_t len)
{
	struct peer_state *s = state;
	snprintf(buf, len, "\"granted_share\": %.4f", s->calls ? (double)s->grants / (double)s->calls : 0.0);
}

static const ats_bench fleet_allow_at = {"fleet.allow_at", ATS_BENCH_1T, fleet_setup, fleet_allow_at_run,
                                         fleet_teardown,   NULL,         fleet_extra};
static const ats_bench fleet_allow = {"fleet.allow",  ATS_BENCH_1T, fleet_setup, fleet_allow_run,
                                      fleet_teardown, NULL,         fleet_extra};
static const ats_bench peer_gcra_lua = {
    "peer.redis.gcra_lua", ATS_BENCH_1T | ATS_BENCH_PEER, peer_setup, gcra_lua_run, peer_teardown, NULL, peer_extra};
static const ats_bench peer_incr_window = {"peer.redis.incr_window",
                                           ATS_BENCH_1T | ATS_BENCH_PEER,
                                           peer_setup,
                                           incr_window_run,
                                           peer_teardown,
                                           NULL,
                                           peer_extra};
static const ats_bench fleet_allow_4proc = {"fleet.allow_4proc", ATS_BENCH_1T, NULL, NULL, NULL,
                                            allow_4proc_measure, NULL};
static const ats_bench fleet_keyed_allow_at = {
    "fleet_keyed.allow_at_1k", ATS_BENCH_1T, keyed_setup, keyed_allow_at_run, keyed_teardown, NULL, keyed_extra};
ATS_BENCH(fleet_allow_at)
ATS_BENCH(fleet_keyed_allow_at)
ATS_BENCH(fleet_allow_4proc)
ATS_BENCH(fleet_allow)
ATS_BENCH(peer_gcra_lua)
ATS_BENCH(peer_incr_window)
