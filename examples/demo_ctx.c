/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale-demo, contexts: a timeout firing on a blocked wait, a cancel cause propagating down a
 * tree, and an after-func. */
#include <atscale/atscale.h>

#include <pthread.h>
#include <stdio.h>

void demo_ctx(void);

static void print_err(const char *what, ats_ctx *ctx)
{
	ats_err *e = ats_ctx_err(ctx);
	const ats_err *cause = ats_ctx_cause(ctx);
	printf("  %s: %s (%s)", what, ats_err_message(e), ats_code_name(ats_err_code(e)));
	if (cause != e)
		printf(", cause: %s (%s)", ats_err_message(cause), ats_code_name(ats_err_code(cause)));
	printf("\n");
	ats_err_unref(e);
}

static void on_cancel(void *arg)
{
	printf("  after-func ran: releasing the connection of %s\n", (const char *)arg);
}

static void *slow_backend(void *arg)
{
	ats_ctx *ctx = arg;
	/* A blocking call with a ctx: returns as soon as the request's context is done. */
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
	return NULL;
}

void demo_ctx(void)
{
	printf("== timeouts and cancellation ==\n");

	/* 1. A timeout firing on a blocked wait. Every time below is on one clock, CLOCK_MONOTONIC
	 * (ats_now_ns), taken before the context is made, so the figures add up. */
	ats_ctx *req = NULL;
	uint64_t t0 = ats_now_ns();
	ats_err *err = ats_ctx_with_timeout(ats_ctx_background(), 5000000, &req); /* 5 ms */
	if (err) {
		ats_err_print(err, stdout);
		ats_err_unref(err);
		return;
	}
	uint64_t deadline = ats_ctx_deadline(req);
	pthread_t t;
	pthread_create(&t, NULL, slow_backend, req);
	pthread_join(t, NULL);
	uint64_t t1 = ats_now_ns();
	printf("request with a 5 ms timeout (clock: %s, precision %llu ns): the deadline was %.3f ms after the\n"
	       "  start; the blocked call returned after %.3f ms, %.0f us past the deadline\n",
	       ats_fast_source(), (unsigned long long)ats_fast_precision_ns(), (double)((int64_t)(deadline - t0)) / 1e6,
	       (double)(t1 - t0) / 1e6, (double)(int64_t)(t1 - deadline) / 1e3);
	print_err("request", req);
	ats_ctx_release(req);

	/* 2. A cancel cause propagating down a tree, and an after-func. */
	ats_ctx *server = NULL, *request = NULL, *db = NULL, *cache = NULL;
	static ATS_CTX_KEY(request_id);
	err = ats_ctx_with_cancel(ats_ctx_background(), &server);
	if (!err)
		err = ats_ctx_with_value(server, &request_id, (void *)"req-42", &request);
	if (!err)
		err = ats_ctx_with_timeout(request, 2000000000, &db); /* the db call's own 2 s budget */
	if (!err)
		err = ats_ctx_with_cancel(request, &cache);
	if (err) {
		ats_err_print(err, stdout);
		ats_err_unref(err);
		ats_ctx_release(db); /* NULL-safe: whatever was made before the failure */
		ats_ctx_release(request);
		ats_ctx_release(server);
		return;
	}
	ats_ctx_after after;
	ats_ctx_after_func(db, &after, on_cancel, ats_ctx_value(db, &request_id));
	printf("tree: server -> request(%s) -> {db (2 s timeout), cache}; shutting the server down\n",
	       (const char *)ats_ctx_value(cache, &request_id));
	ats_ctx_cancel(server, ats_err_new(ATS_ERR_UNAVAILABLE, "server shutting down (SIGTERM)"));
	printf("  done: server %d, request %d, db %d, cache %d\n", ats_ctx_done(server), ats_ctx_done(request),
	       ats_ctx_done(db), ats_ctx_done(cache));
	print_err("db", db);
	printf("  after-func stop after it ran says: %s\n", ats_ctx_after_stop(&after) ? "stopped" : "already ran");
	ats_ctx_release(cache);
	ats_ctx_release(db);
	ats_ctx_release(request);
	ats_ctx_release(server);
}
