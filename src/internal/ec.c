/* SPDX-License-Identifier: BSD-2-Clause */
#include "internal/ec.h"
#include "internal/futex.h"

#include "atscale/clock.h"

#include <ck_pr.h>
#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ec_gettime(const struct ck_ec_ops *ops, struct timespec *out)
{
	(void)ops;
	return clock_gettime(CLOCK_MONOTONIC, out);
}

static uint64_t ec_deadline_ns(const struct timespec *deadline)
{
	if (!deadline)
		return ATS__FUTEX_FOREVER;
	return (uint64_t)deadline->tv_sec * ATS_NS_PER_SEC + (uint64_t)deadline->tv_nsec;
}

static void ec_wait32(const struct ck_ec_wait_state *state, const uint32_t *addr, uint32_t expected,
                      const struct timespec *deadline)
{
	(void)state;
	ats__futex_wait((const _Atomic uint32_t *)addr, expected, ec_deadline_ns(deadline));
}

/* ck_ec64 keeps its waiter flag and low counter bits in the low half (little-endian here, as
 * every target atscale builds for), so a futex on that half sees every change that matters. */
static void ec_wait64(const struct ck_ec_wait_state *state, const uint64_t *addr, uint64_t expected,
                      const struct timespec *deadline)
{
	(void)state;
	ats__futex_wait((const _Atomic uint32_t *)addr, (uint32_t)expected, ec_deadline_ns(deadline));
}

static void ec_wake32(const struct ck_ec_ops *ops, const uint32_t *addr)
{
	(void)ops;
	ats__futex_wake((const _Atomic uint32_t *)addr, INT32_MAX);
}

static void ec_wake64(const struct ck_ec_ops *ops, const uint64_t *addr)
{
	(void)ops;
	ats__futex_wake((const _Atomic uint32_t *)addr, INT32_MAX);
}

/* Spin and back-off parameters stay at ck_ec's defaults; every wait passes the caller's own
 * deadline, which ck_ec honours on top of its back-off. */
const struct ck_ec_ops ats__ec_ops = {
    .gettime = ec_gettime,
    .wait32 = ec_wait32,
    .wait64 = ec_wait64,
    .wake32 = ec_wake32,
    .wake64 = ec_wake64,
};

const struct ck_ec_mode ats__ec_mode_mp = {.ops = &ats__ec_ops, .single_producer = false};
const struct ck_ec_mode ats__ec_mode_sp = {.ops = &ats__ec_ops, .single_producer = true};

uint32_t ats__ec_arm(struct ck_ec32 *ec)
{
	uint32_t cur = ck_pr_load_32(&ec->counter);
	for (;;) {
		if (cur & ATS__EC_FLAG)
			return cur;
		if (ck_pr_cas_32_value(&ec->counter, cur, cur | ATS__EC_FLAG, &cur))
			return cur | ATS__EC_FLAG;
	}
}

void ats__ec_park(struct futex_waitv *w, unsigned nw, uint64_t deadline_ns)
{
	struct timespec ts, *tsp = NULL;
	if (deadline_ns != ATS__FUTEX_FOREVER) {
		ts = ats__ec_timespec(deadline_ns);
		tsp = &ts;
	}
	long r = syscall(SYS_futex_waitv, w, nw, 0, tsp, CLOCK_MONOTONIC);
	if (r < 0 && errno == ENOSYS) {
		/* No futex_waitv: sleep on the first word, bounded, and re-check (late, never lost). */
		uint64_t until = ats_now_ns() + 1000000u;
		ats__futex_wait((const _Atomic uint32_t *)(uintptr_t)w[0].uaddr, (uint32_t)w[0].val,
		                until < deadline_ns ? until : deadline_ns);
	}
}

void ats__ec_kick(void *kick_word)
{
	_Atomic uint32_t *kick = kick_word;
	/* release: the parked thread re-checks its ctx after it sees the new value. */
	atomic_fetch_add_explicit(kick, 1, memory_order_release);
	ats__futex_wake(kick, 1);
}
