/* SPDX-License-Identifier: BSD-2-Clause */
/* Built outside the tree against the installed atscale, with pkg-config and with CMake, as strict
 * ISO C11 (gcc, clang: -std=c11 -Wall -Wextra -Wpedantic -Werror) and as C++17 (g++, clang++,
 * the same warnings): it includes every public header and calls a hot path of each module. */
#include <atscale/atscale.h>
#include <atscale/bridge.h>
#include <atscale/chan.h>
#include <atscale/clock.h>
#include <atscale/common.h>
#include <atscale/ctx.h>
#include <atscale/error.h>
#include <atscale/export.h>
#include <atscale/fleet.h>
#include <atscale/gcra.h>
#include <atscale/heartbeat.h>
#include <atscale/hedge.h>
#include <atscale/histogram.h>
#include <atscale/keyed.h>
#include <atscale/limiter.h>
#include <atscale/pool.h>
#include <atscale/supervisor.h>

#include <stdio.h>
#include <string.h>

/* Not static: with -rdynamic it is in the dynamic symbol table, which is what names a frame. */
__attribute__((noinline)) ats_err *consumer_frame(void)
{
	return ats_err_new_stack(ATS_ERR_LIMITED, "consumer frame");
}

static ATS_CTX_KEY(consumer_key);

static ats_err *consumer_attempt(void *arg, unsigned attempt, ats_ctx *ctx, void **result)
{
	(void)attempt;
	(void)ctx;
	*result = arg;
	return NULL;
}

static void consumer_task(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	*(int *)arg += 1;
}

static int check(int ok, const char *what)
{
	if (!ok)
		printf("consumer: %s FAILED\n", what);
	return ok;
}

int main(void)
{
	int ok = 1;

	/* error */
	ats_err *err = ats_err_new(ATS_ERR_LIMITED, "consumer %d", 42);
	ok &=
	    check(ats_err_is(err, ATS_ERR_LIMITED) && strcmp(ats_code_name(ATS_ERR_LIMITED), "limited") == 0, "error");
	ats_err_unref(err);

	/* clock */
	uint64_t now = ats_fast_now_ns();
	ok &= check(ats_now_ns() > 0 && now > 0 && ats_wall_ns() > 0, "clock");

	/* gcra */
	ats_token_clock tc;
	ats_err *e = ats_token_clock_make(&tc, ats_rate_per_sec(10), 2, now);
	ATS_ATOMIC(uint64_t) tat;
	ats__atomic_store(&tat, 0, ats__mo_relaxed);
	ok &= check(!e && ats_gcra_take_at(&tc, &tat, now, 1) && ats_gcra_take_at(&tc, &tat, now, 1) &&
	                !ats_gcra_take_at(&tc, &tat, now, 1),
	            "gcra");

	/* limiter: exact, sharded, multi */
	ats_limiter *lim = NULL;
	e = ats_limiter_new(&lim, ats_rate_per_sec(1000), 5);
	ok &= check(!e && ats_limiter_allow_at(lim, 5, now) && !ats_limiter_allow_at(lim, 1, now) &&
	                ats_limiter_tokens_at(lim, now) == 0 && ats_limiter_allow(lim, 0),
	            "limiter");
	ats_limiter *const ls[1] = {lim};
	ok &= check(!ats_multi_allow_at(ls, 1, 1, now), "multi");
	ats_sharded_config cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.rate = ats_rate_per_sec(1000000);
	cfg.burst = 1000;
	cfg.shards = 2;
	ats_sharded *sh = NULL;
	e = ats_sharded_new(&sh, &cfg);
	ok &=
	    check(!e && ats_sharded_allow(sh, 1) && ats_sharded_allow_shard_at(sh, 1, 1, ats_fast_now_ns()), "sharded");
	ats_sharded_free(sh);
	ats_limiter_free(lim);

	/* ctx */
	ats_ctx *ctx = NULL;
	int value = 7;
	e = ats_ctx_with_value(ats_ctx_background(), &consumer_key, &value, &ctx);
	ok &= check(!e && !ats_ctx_done(ctx) && ats_ctx_value(ctx, &consumer_key) == &value, "ctx values");
	ats_ctx_cancel(ctx, NULL);
	ats_err *cerr = ats_ctx_err(ctx);
	ok &= check(ats_ctx_done(ctx) && ats_err_code(cerr) == ATS_ERR_CANCELLED, "ctx cancel");
	ats_err_unref(cerr);
	ats_ctx_release(ctx);

	/* keyed */
	ats_keyed_config kc;
	memset(&kc, 0, sizeof kc);
	kc.rate = ats_rate_per_sec(1);
	kc.burst = 1;
	kc.max_keys = 16;
	ats_keyed *m = NULL;
	e = ats_keyed_new(&m, &kc);
	ok &= check(!e && ats_keyed_allow(m, "k", 1) && !ats_keyed_allow(m, "k", 1), "keyed");
	ats_keyed_free(m);

	/* chan */
	ats_chan *ch = NULL;
	ats_chan_config chc = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, 2);
	e = ats_chan_new(&ch, &chc);
	void *got = NULL;
	ok &= check(!e && ats_chan_try_send(ch, &value) == ATS_CHAN_OK && ats_chan_try_recv(ch, &got) == ATS_CHAN_OK &&
	                got == &value,
	            "chan");
	ats_chan_free(ch, NULL, NULL);

	/* bridge */
	ats_bridge *br = NULL;
	ats_chan *seg = NULL;
	got = NULL;
	e = ats_bridge_new(&br, &chc);
	ok &= check(!e && !ats_bridge_open(br, &seg) && ats_chan_try_send(seg, &value) == ATS_CHAN_OK &&
	                ats_bridge_try_recv(br, &got) == ATS_CHAN_OK && got == &value,
	            "bridge");
	ats_bridge_leave(seg);
	ats_bridge_free(br, NULL, NULL);

	/* histogram */
	ats_histogram *hist = NULL;
	e = ats_histogram_new(&hist, 1);
	if (!e)
		ats_histogram_record(hist, 1000);
	ok &= check(!e && ats_histogram_count(hist) == 1 && ats_histogram_percentile(hist, 0.5) == 1007, "histogram");
	ats_histogram_free(hist);

	/* pool */
	ats_pool *pool = NULL;
	ats_pool_config pc;
	memset(&pc, 0, sizeof pc);
	pc.workers = 1;
	e = ats_pool_new(&pool, &pc);
	ats_task task;
	memset(&task, 0, sizeof task);
	task.run = consumer_task;
	task.arg = &value;
	ok &= check(!e && ats_pool_try_submit(pool, &task) == ATS_POOL_OK &&
	                !ats_pool_shutdown(pool, ats_ctx_background()) && value == 8,
	            "pool");
	ats_pool_free(pool);

	/* hedge */
	e = ats_pool_new(&pool, &pc);
	ats_request rq;
	memset(&rq, 0, sizeof rq);
	rq.attempt = consumer_attempt;
	rq.arg = &value;
	void *reply = NULL;
	ok &= check(!e && !ats_replicate(pool, &rq, 1, &reply, ats_ctx_background()) && reply == &value, "hedge");
	ats_pool_free(pool);

	/* heartbeat */
	static ats_heartbeat hb;
	e = ats_heartbeat_init(&hb, NULL);
	ats_heartbeat_work_begin(&hb);
	ats_heartbeat_beat(&hb);
	ok &= check(!e && ats_heartbeat_count(&hb) == 2 && ats_heartbeat_pending(&hb), "heartbeat");

	/* supervisor */
	ats_supervisor *sup = NULL;
	ats_supervisor_config sc;
	memset(&sc, 0, sizeof sc);
	e = ats_supervisor_new(&sup, &sc);
	ok &= check(!e && !ats_supervisor_start(sup, ats_ctx_background()) &&
	                !ats_supervisor_wait(sup, ats_ctx_background()),
	            "supervisor");
	ats_supervisor_free(sup);

#ifdef CONSUMER_EXPECTS_NAMES
	err = consumer_frame();
	char text[4096];
	ats_err_format(err, text, sizeof text);
	if (!strstr(text, "consumer_frame+0x")) {
		printf("consumer: no symbol name for the program's own frame:\n%s", text);
		ok = 0;
	}
	ats_err_unref(err);
#endif

#ifdef __cplusplus
	printf("consumer (C++ %ld): %s\n", (long)__cplusplus, ok ? "ok" : "FAILED");
#else
	printf("consumer (C %ld): %s\n", (long)__STDC_VERSION__, ok ? "ok" : "FAILED");
#endif
	return ok ? 0 : 1;
}
