/* SPDX-License-Identifier: BSD-2-Clause */
/* Heartbeats, one behaviour at a time: counting and pending, interval ticks, pulses dropped when
 * full, waiting for the nth beat from another thread on both wake paths (membarrier and bounded
 * poll, forced in turn), waits ended by their ctx, a waiter that sleeps until it is woken (with
 * or without futex_waitv), and the watch's verdicts (fixed and phi) on
 * explicit times. Threads wait on what they observe, never on a sleep. */
#include <atscale/clock.h>
#include <atscale/heartbeat.h>

#include "asleep.h"
#include "internal/futex_hooks.h"
#include "internal/ec_hooks.h"
#include "internal/heartbeat_hooks.h"
#include "internal/membarrier_hooks.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

static void expect_code(ats_err *err, ats_code code)
{
	cr_expect_not_null(err);
	cr_expect_eq(ats_err_code(err), code, "code %s", ats_code_name(ats_err_code(err)));
	ats_err_unref(err);
}

Test(heartbeat, counts_beats_and_pending)
{
	ats_heartbeat h;
	cr_assert_null(ats_heartbeat_init(&h, NULL));
	cr_expect_eq(ats_heartbeat_count(&h), 0);
	cr_expect_not(ats_heartbeat_pending(&h));
	ats_heartbeat_beat(&h);
	ats_heartbeat_work_begin(&h);
	cr_expect_eq(ats_heartbeat_count(&h), 2);
	cr_expect(ats_heartbeat_pending(&h));
	ats_heartbeat_beat(&h);
	cr_expect(ats_heartbeat_pending(&h), "a beat keeps work pending");
	ats_heartbeat_work_end(&h);
	cr_expect_eq(ats_heartbeat_count(&h), 4);
	cr_expect_not(ats_heartbeat_pending(&h));
	cr_expect_not(ats_heartbeat_tick(&h, 123), "no interval: tick never beats");
	ats_heartbeat_destroy(&h);
	expect_code(ats_heartbeat_init(NULL, NULL), ATS_ERR_INVALID_ARGUMENT);
}

Test(heartbeat, tick_beats_once_per_interval)
{
	ats_heartbeat h;
	ats_heartbeat_config cfg = {.interval_ns = 100};
	cr_assert_null(ats_heartbeat_init(&h, &cfg));
	cr_expect(ats_heartbeat_tick(&h, 1000), "the first tick beats");
	cr_expect_not(ats_heartbeat_tick(&h, 1050));
	cr_expect_not(ats_heartbeat_tick(&h, 1099));
	cr_expect(ats_heartbeat_tick(&h, 1100));
	cr_expect(ats_heartbeat_tick(&h, 5000), "a late tick beats once");
	cr_expect_not(ats_heartbeat_tick(&h, 5001));
	cr_expect_eq(ats_heartbeat_count(&h), 3);
	/* An interval that runs past the clock's range: one beat, then none (it used to wrap). */
	ats_heartbeat once;
	cfg.interval_ns = UINT64_MAX;
	cr_assert_null(ats_heartbeat_init(&once, &cfg));
	for (uint64_t now = 1000; now < 11000; now += 1000)
		ats_heartbeat_tick(&once, now);
	cr_expect_eq(ats_heartbeat_count(&once), 1);
}

Test(heartbeat, pulse_is_dropped_when_full)
{
	ats_chan *pulse;
	ats_chan_config cc = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, 1);
	cr_assert_null(ats_chan_new(&pulse, &cc));
	ats_heartbeat h;
	ats_heartbeat_config cfg = {.pulse = pulse};
	cr_assert_null(ats_heartbeat_init(&h, &cfg));
	ats_heartbeat_beat_with_pulse(&h);
	ats_heartbeat_beat_with_pulse(&h); /* the slot is full: this pulse is dropped, the beat is not */
	cr_expect_eq(ats_heartbeat_count(&h), 2);
	cr_expect_eq(ats_chan_len(pulse), 1);
	void *v = NULL;
	cr_expect_eq(ats_chan_try_recv(pulse, &v), ATS_CHAN_OK);
	cr_expect_eq(v, &h);
	cr_expect_eq(ats_chan_try_recv(pulse, &v), ATS_CHAN_WOULD_BLOCK);
	ats_heartbeat_beat_with_pulse(&h);
	cr_expect_eq(ats_chan_len(pulse), 1);
	ats_chan_free(pulse, NULL, NULL);
}

struct beater {
	ats_heartbeat *h;
	uint64_t beats;
};

/* Beats once a waiter has announced itself, so the wake is what ends the wait. */
static void *beat_after_waiter(void *arg)
{
	struct beater *b = arg;
	while (ats__heartbeat_waiters(b->h) == 0)
		sched_yield();
	for (uint64_t i = 0; i < b->beats; i++)
		ats_heartbeat_beat(b->h);
	return NULL;
}

static void wait_for_nth(int force_poll)
{
	atomic_store(&ats__membarrier_force_off, force_poll);
	cr_expect_str_eq(ats_heartbeat_wake_path(), force_poll ? "bounded poll" : "membarrier");
	for (int round = 0; round < 200; round++) {
		ats_heartbeat h;
		cr_assert_null(ats_heartbeat_init(&h, NULL));
		struct beater b = {&h, 1 + (uint64_t)round % 7};
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, beat_after_waiter, &b), 0);
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 30 * ATS_NS_PER_SEC, &ctx));
		cr_assert_null(ats_heartbeat_wait(&h, b.beats, ctx), "round %d: a lost wake-up (30 s timeout)", round);
		cr_expect_geq(ats_heartbeat_count(&h), b.beats);
		pthread_join(th, NULL);
		ats_ctx_release(ctx);
	}
	atomic_store(&ats__membarrier_force_off, 0);
}

Test(heartbeat, wait_for_the_nth_beat_membarrier)
{
	if (strcmp(ats_heartbeat_wake_path(), "membarrier") != 0)
		cr_skip_test("this kernel has no MEMBARRIER_CMD_PRIVATE_EXPEDITED: %s", ats_heartbeat_wake_path());
	wait_for_nth(0);
}

Test(heartbeat, wait_for_the_nth_beat_bounded_poll)
{
	wait_for_nth(1);
}

Test(heartbeat, wait_ends_with_its_ctx)
{
	ats_heartbeat h;
	cr_assert_null(ats_heartbeat_init(&h, NULL));
	ats_heartbeat_beat(&h);
	cr_expect_null(ats_heartbeat_wait(&h, 1, ats_ctx_background()), "already reached: returns at once");
	ats_ctx *ctx;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &ctx));
	ats_ctx_cancel(ctx, NULL);
	expect_code(ats_heartbeat_wait(&h, 2, ctx), ATS_ERR_CANCELLED);
	ats_ctx_release(ctx);
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2000000, &ctx));
	expect_code(ats_heartbeat_wait(&h, 2, ctx), ATS_ERR_DEADLINE_EXCEEDED);
	ats_ctx_release(ctx);
	cr_expect_eq(ats__heartbeat_waiters(&h), 0, "waiters leave");
	expect_code(ats_heartbeat_wait(NULL, 1, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_heartbeat_wait(&h, 1, NULL), ATS_ERR_INVALID_ARGUMENT);
}

struct canceller {
	ats_heartbeat *h;
	ats_ctx *ctx;
	pid_t waiter;
};

/* Cancels once the waiter sleeps in the kernel inside its wait, so the cancel must wake it. */
static void *cancel_sleeping_waiter(void *arg)
{
	struct canceller *c = arg;
	while (ats__heartbeat_waiters(c->h) == 0)
		sched_yield();
	asleep_wait(c->waiter);
	ats_ctx_cancel(c->ctx, NULL);
	return NULL;
}

Test(heartbeat, a_cancel_wakes_a_sleeping_waiter)
{
	int was = atomic_load(&ats__ec_force_no_waitv);
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		ats_heartbeat h;
		cr_assert_null(ats_heartbeat_init(&h, NULL));
		struct canceller c = {&h, NULL, asleep_self_tid()};
		cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &c.ctx));
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, cancel_sleeping_waiter, &c), 0);
		expect_code(ats_heartbeat_wait(&h, 1, c.ctx), ATS_ERR_CANCELLED);
		pthread_join(th, NULL);
		ats_ctx_release(c.ctx);
	}
	atomic_store(&ats__ec_force_no_waitv, was);
}

/* With membarrier a waiter does not poll: a 30 ms wait sleeps about once, on kernels with
 * futex_waitv and without it (forced), where a waiter that looked every millisecond would sleep
 * about 30 times. */
Test(heartbeat, a_waiter_sleeps_until_woken)
{
	if (strcmp(ats_heartbeat_wake_path(), "membarrier") != 0)
		cr_skip_test("waiters poll here by design: %s", ats_heartbeat_wake_path());
	int was = atomic_load(&ats__ec_force_no_waitv);
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		ats_heartbeat h;
		cr_assert_null(ats_heartbeat_init(&h, NULL));
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 30000000, &ctx));
		unsigned long before = ats__futex_sleeps;
		expect_code(ats_heartbeat_wait(&h, 1, ctx), ATS_ERR_DEADLINE_EXCEEDED);
		unsigned long sleeps = ats__futex_sleeps - before;
		cr_expect_leq(sleeps, 5, "old kernel %d: %lu sleeps in a 30 ms wait", old_kernel, sleeps);
		ats_ctx_release(ctx);
	}
	atomic_store(&ats__ec_force_no_waitv, was);
}

Test(heartbeat, fixed_threshold_tells_stalled_from_idle)
{
	ats_heartbeat h;
	cr_assert_null(ats_heartbeat_init(&h, NULL));
	ats_heartbeat_watch w;
	ats_heartbeat_watch_config cfg = {.timeout_ns = 100};
	cr_assert_null(ats_heartbeat_watch_init(&w, &h, &cfg, 0));
	cr_expect_eq(ats_heartbeat_check(&w, 10), ATS_HB_IDLE, "nothing pending");
	cr_expect_eq(ats_heartbeat_check(&w, 1000000), ATS_HB_IDLE, "idle is healthy however long");
	cr_expect_eq(ats_heartbeat_stall_at(&w), UINT64_MAX, "idle: never stalls");
	ats_heartbeat_work_begin(&h);
	cr_expect_eq(ats_heartbeat_check(&w, 1000010), ATS_HB_HEALTHY);
	cr_expect_eq(ats_heartbeat_last_beat_ns(&w), 1000010);
	cr_expect_eq(ats_heartbeat_stall_at(&w), 1000110, "the last change seen plus the timeout");
	cr_expect_eq(ats_heartbeat_check(&w, 1000109), ATS_HB_HEALTHY);
	cr_expect_eq(ats_heartbeat_check(&w, 1000110), ATS_HB_STALLED, "pending and silent for the timeout");
	ats_heartbeat_beat(&h);
	cr_expect_eq(ats_heartbeat_check(&w, 1000111), ATS_HB_HEALTHY, "a beat is progress");
	ats_heartbeat_work_end(&h);
	cr_expect_eq(ats_heartbeat_check(&w, 1000112), ATS_HB_IDLE);
	cr_expect_eq(ats_heartbeat_check(&w, 9000000), ATS_HB_IDLE);
}

Test(heartbeat, phi_learns_the_beat_rhythm)
{
	ats_heartbeat h;
	cr_assert_null(ats_heartbeat_init(&h, NULL));
	ats_heartbeat_watch w;
	ats_heartbeat_watch_config cfg = {.timeout_ns = 20, .phi_threshold = 8};
	cr_assert_null(ats_heartbeat_watch_init(&w, &h, &cfg, 0));
	ats_heartbeat_work_begin(&h);
	uint64_t t = 0;
	cr_expect_eq(ats_heartbeat_check(&w, t), ATS_HB_HEALTHY);
	cr_expect_eq(ats_heartbeat_phi(&w, t + 1000), 0, "no samples yet: phi says nothing");
	/* Beats every 100 +- 10 ns: the timeout floor of 20 alone would call each gap a stall. */
	for (int i = 0; i < 40; i++) {
		t += 90 + (uint64_t)(i % 3) * 10;
		ats_heartbeat_beat(&h);
		cr_expect_eq(ats_heartbeat_check(&w, t), ATS_HB_HEALTHY);
	}
	cr_expect_eq(ats_heartbeat_check(&w, t + 120), ATS_HB_HEALTHY, "a little late is not dead");
	cr_expect_lt(ats_heartbeat_phi(&w, t + 120), 8);
	cr_expect_eq(ats_heartbeat_check(&w, t + 1000), ATS_HB_STALLED, "ten intervals of silence is");
	cr_expect_gt(ats_heartbeat_phi(&w, t + 1000), 8);
	cr_expect_leq(ats_heartbeat_phi(&w, t + UINT64_C(1000000000000)), 300);
}

Test(heartbeat, watch_bad_input)
{
	ats_heartbeat h;
	cr_assert_null(ats_heartbeat_init(&h, NULL));
	ats_heartbeat_watch w;
	ats_heartbeat_watch_config cfg = {.timeout_ns = 0};
	expect_code(ats_heartbeat_watch_init(&w, &h, &cfg, 0), ATS_ERR_INVALID_ARGUMENT);
	cfg = (ats_heartbeat_watch_config){.timeout_ns = 1, .phi_threshold = -1};
	expect_code(ats_heartbeat_watch_init(&w, &h, &cfg, 0), ATS_ERR_INVALID_ARGUMENT);
	cfg.phi_threshold = 1.0 / 0.0;
	expect_code(ats_heartbeat_watch_init(&w, &h, &cfg, 0), ATS_ERR_INVALID_ARGUMENT);
	cfg.phi_threshold = 0.0 / 0.0;
	expect_code(ats_heartbeat_watch_init(&w, &h, &cfg, 0), ATS_ERR_INVALID_ARGUMENT);
	cfg.phi_threshold = ATS_HEARTBEAT_PHI_MAX; /* phi never passes it: no stall would ever be seen */
	expect_code(ats_heartbeat_watch_init(&w, &h, &cfg, 0), ATS_ERR_INVALID_ARGUMENT);
	cfg.phi_threshold = 0;
	expect_code(ats_heartbeat_watch_init(NULL, &h, &cfg, 0), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_heartbeat_watch_init(&w, NULL, &cfg, 0), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_heartbeat_watch_init(&w, &h, NULL, 0), ATS_ERR_INVALID_ARGUMENT);
}
