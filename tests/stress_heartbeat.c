/* SPDX-License-Identifier: BSD-2-Clause */
/* Heartbeats under contention (run under TSan and ASan): one thread beats millions of times while
 * waiters on other threads wait for targets just ahead of the count, on both wake paths. Every
 * wait must return once its target is reached; a lost wake-up shows as a wait that reaches its
 * 30-second ctx timeout, which fails the test. The beater stops only when every waiter is done, so
 * a waiter is never left with a target no beat will reach. Meanwhile another waiter waits for a
 * beat that never comes, again and again, each wait ended by a short deadline: each of those
 * cancels wakes every waiter of the heartbeat, and must end its own wait and no other.
 * Nothing sleeps to synchronize. */
#include <criterion/criterion.h>

#include "atscale/clock.h"
#include "atscale/heartbeat.h"
#include "internal/heartbeat_hooks.h"
#include "internal/membarrier_hooks.h"

#include <pthread.h>
#include <sched.h>

#include "slow.h"
#ifdef SLOW
#define WAITS 150
#else
#define WAITS 1000
#endif
#define WAITERS 3

struct run {
	ats_heartbeat h;
	_Atomic int waiters_left;
	_Atomic uint64_t waits_done;
	_Atomic uint64_t waits_ended_by_ctx;
};

static void *beater(void *arg)
{
	struct run *r = arg;
	uint64_t i = 0;
	while (atomic_load_explicit(&r->waiters_left, memory_order_acquire) > 0) {
		if (++i % 3 == 0)
			ats_heartbeat_work_begin(&r->h);
		else
			ats_heartbeat_beat(&r->h);
		if (i % 1024 == 0)
			sched_yield(); /* let waiters fall behind and sleep, too */
	}
	return NULL;
}

static void *waiter(void *arg)
{
	struct run *r = arg;
	uint32_t rng = (uint32_t)(uintptr_t)&rng ^ 0x9e3779b9u;
	for (int i = 0; i < WAITS; i++) {
		rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
		uint64_t target = ats_heartbeat_count(&r->h) + 1 + rng % 2000;
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 30 * ATS_NS_PER_SEC, &ctx));
		ats_err *err = ats_heartbeat_wait(&r->h, target, ctx);
		cr_assert_null(err, "a wait for beat %llu never returned: lost wake-up", (unsigned long long)target);
		cr_assert_geq(ats_heartbeat_count(&r->h), target);
		ats_ctx_release(ctx);
		atomic_fetch_add(&r->waits_done, 1);
	}
	atomic_fetch_sub_explicit(&r->waiters_left, 1, memory_order_release);
	return NULL;
}

/* Waits that only a deadline ends (20-120 us), racing the beats and the other waiters. */
static void *cancelled_waiter(void *arg)
{
	struct run *r = arg;
	for (int i = 0; i < WAITS; i++) {
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 20000 + (uint64_t)(i % 6) * 20000, &ctx));
		ats_err *err = ats_heartbeat_wait(&r->h, UINT64_C(1) << 60, ctx);
		cr_assert_not_null(err, "a wait for a beat that never comes returned success");
		cr_assert_eq(ats_err_code(err), ATS_ERR_DEADLINE_EXCEEDED, "%s", ats_code_name(ats_err_code(err)));
		ats_err_unref(err);
		ats_ctx_release(ctx);
		atomic_fetch_add(&r->waits_ended_by_ctx, 1);
	}
	return NULL;
}

static void run(int force_poll)
{
	atomic_store(&ats__membarrier_force_off, force_poll);
	static struct run r;
	cr_assert_null(ats_heartbeat_init(&r.h, NULL));
	atomic_store(&r.waiters_left, WAITERS);
	atomic_store(&r.waits_done, 0);
	atomic_store(&r.waits_ended_by_ctx, 0);
	pthread_t b, c, w[WAITERS];
	for (int i = 0; i < WAITERS; i++)
		cr_assert_eq(pthread_create(&w[i], NULL, waiter, &r), 0);
	cr_assert_eq(pthread_create(&c, NULL, cancelled_waiter, &r), 0);
	cr_assert_eq(pthread_create(&b, NULL, beater, &r), 0);
	for (int i = 0; i < WAITERS; i++)
		pthread_join(w[i], NULL);
	pthread_join(c, NULL);
	pthread_join(b, NULL);
	cr_assert_eq(atomic_load(&r.waits_done), (uint64_t)WAITERS * WAITS);
	cr_assert_eq(atomic_load(&r.waits_ended_by_ctx), (uint64_t)WAITS);
	cr_assert_eq(ats__heartbeat_waiters(&r.h), 0);
	atomic_store(&ats__membarrier_force_off, 0);
}

Test(heartbeat_stress, no_lost_wakeup_membarrier, .timeout = 300)
{
	run(0);
}

Test(heartbeat_stress, no_lost_wakeup_bounded_poll, .timeout = 300)
{
	run(1);
}
