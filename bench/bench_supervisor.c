/* SPDX-License-Identifier: BSD-2-Clause */
/* Supervision: how late a stall is acted on (from the ward's last beat before it froze to the
 * supervisor's stall event, minus the ward's timeout; p99 over many freezes), and what watching
 * costs: the CPU time per wall second of one supervisor's threads while it watches 1000 idle wards
 * (the wards sleep, so that is the monitor's; threads other rows left parked are not counted).
 * Both measure themselves. */
#include "bench.h"
#include "atscale/clock.h"
#include "atscale/supervisor.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MS UINT64_C(1000000)
#define TIMEOUT (2 * MS)

struct freezer {
	_Atomic int freeze;
	_Atomic uint64_t frozen_at;
	_Atomic uint64_t stall_at;
	_Atomic int restarts;
};

static ats_err *freezer_body(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	struct freezer *f = arg;
	while (!ats_ctx_done(ctx)) {
		ats_heartbeat_work_begin(hb);
		if (atomic_exchange(&f->freeze, 0)) {
			atomic_store(&f->frozen_at, ats_now_ns()); /* the last beat was just before */
			ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
			return NULL;
		}
		ats_heartbeat_work_end(hb); /* idle between units: a slow wake-up here is no stall */
		ats_ctx_wait(ctx, ats_now_ns() + 50000);
	}
	return NULL;
}

static void freezer_event(const ats_supervisor_event *ev, void *arg)
{
	struct freezer *f = arg;
	if (ev->kind == ATS_SUP_EVENT_STALL)
		atomic_store(&f->stall_at, ats_now_ns());
	else if (ev->kind == ATS_SUP_EVENT_RESTART)
		atomic_fetch_add(&f->restarts, 1);
}

static bool detect_measure(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	static struct freezer f;
	ats_supervisor *s;
	/* The check period set here (the default's value, a quarter of the timeout), so the row's
	 * check_ns reports what ran rather than repeating the library's default rule. */
	ats_supervisor_config cfg = {
	    .name = "bench", .check_ns = TIMEOUT / 4, .on_event = freezer_event, .event_arg = &f};
	ats_ward_spec spec = {.name = "freezer", .run = freezer_body, .arg = &f, .restart = ATS_WARD_PERMANENT};
	spec.watch.timeout_ns = TIMEOUT;
	ats_err *err = ats_supervisor_new(&s, &cfg);
	if (!err)
		err = ats_supervisor_add(s, &spec, NULL);
	if (!err)
		err = ats_supervisor_start(s, ats_ctx_background());
	if (err) {
		ats_err_unref(err);
		return false;
	}
	size_t n = quick ? 40 : 300;
	uint64_t *late = calloc(n, sizeof *late);
	for (size_t i = 0; late && i < n; i++) {
		atomic_store(&f.frozen_at, 0);
		atomic_store(&f.freeze, 1);
		uint64_t at;
		while (!(at = atomic_load(&f.frozen_at)) || atomic_load(&f.stall_at) < at)
			sched_yield();
		uint64_t d = atomic_load(&f.stall_at) - atomic_load(&f.frozen_at);
		late[i] = d > TIMEOUT ? d - TIMEOUT : 0;
	}
	ats_supervisor_free(s);
	if (!late)
		return false;
	ats_bench_percentile(late, n, 99, out);
	snprintf(out->extra, sizeof out->extra, "\"samples\": %zu, \"timeout_ns\": %llu, \"check_ns\": %llu", n,
	         (unsigned long long)TIMEOUT, (unsigned long long)cfg.check_ns);
	free(late);
	return true;
}

static ats_err *idle_body(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	(void)arg;
	ats_heartbeat_work_end(hb);
	ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE);
	return NULL;
}

static bool monitor_measure(void *state, bool quick, ats_bench_result *out)
{
	(void)state;
	enum { WARDS = 1000 };
	ats_supervisor *s;
	ats_supervisor_config cfg = {.name = "bench", .check_ns = 10 * MS};
	ats_err *err = ats_supervisor_new(&s, &cfg);
	for (int i = 0; i < WARDS && !err; i++) {
		ats_ward_spec spec = {.run = idle_body, .restart = ATS_WARD_PERMANENT};
		spec.watch.timeout_ns = 40 * MS;
		err = ats_supervisor_add(s, &spec, NULL);
	}
	ats_bench_threads before;
	if (!err && !ats_bench_threads_get(&before))
		err = ats_err_new(ATS_ERR_SYSTEM, "cannot list the process's threads");
	if (!err && (err = ats_supervisor_start(s, ats_ctx_background())))
		ats_bench_threads_free(&before);
	if (err) {
		ats_err_unref(err);
		ats_supervisor_free(s);
		return false;
	}
	/* Let the wards settle into their waits, then measure the supervisor's threads (its monitor and
	 * its wards) over a window of wall time. */
	struct timespec settle = {0, 100 * 1000000L};
	nanosleep(&settle, NULL);
	size_t threads;
	double per_sec = ats_bench_cpu_per_sec(&before, quick ? 300 * MS : 1000 * MS, &threads);
	ats_bench_threads_free(&before);
	ats_supervisor_free(s);
	if (per_sec < 0 || threads < WARDS + 1) /* every ward and the monitor, or the figure is not this row's */
		return false;
	out->ns_per_op = out->min = out->max = per_sec;
	snprintf(out->extra, sizeof out->extra, "\"wards\": %d, \"check_ns\": %llu, \"core_percent\": %.3f", WARDS,
	         (unsigned long long)(10 * MS), per_sec / 1e7);
	return true;
}

static const ats_bench hb_detect = {"hb.detect_late_p99", ATS_BENCH_1T, NULL, NULL, NULL, detect_measure, NULL};
static const ats_bench hb_monitor = {"hb.monitor_1000", ATS_BENCH_1T, NULL, NULL, NULL, monitor_measure, NULL};
ATS_BENCH(hb_detect)
ATS_BENCH(hb_monitor)
