/* SPDX-License-Identifier: BSD-2-Clause */
/* Futex wait and wake: the parking primitives every blocking path of atscale uses (contexts, the
 * timer service, channels, pools). Why by hand: glibc exposes no futex wrapper, and ck_ec's ops
 * (src/internal/ec.h) need one. */
#ifndef ATS_INTERNAL_FUTEX_H
#define ATS_INTERNAL_FUTEX_H

#include "internal/compiler.h"
#ifdef ATS_TESTING
#include "internal/futex_hooks.h"
#endif

#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* "No deadline" for ats__futex_wait (the same value as ATS_CTX_NO_DEADLINE). */
#define ATS__FUTEX_FOREVER UINT64_MAX

/* Sleeps while *addr == val, until woken or deadline_ns (absolute CLOCK_MONOTONIC ns;
 * ATS__FUTEX_FOREVER for none). May return early for any reason (a signal, a spurious wake): the
 * caller re-checks its condition. Blocking; one system call. */
static inline void ats__futex_wait(const _Atomic uint32_t *addr, uint32_t val, uint64_t deadline_ns)
{
	struct timespec ts, *tsp = NULL;
	if (deadline_ns != ATS__FUTEX_FOREVER) {
		ts.tv_sec = (time_t)(deadline_ns / ATS_NS_PER_SEC);
		ts.tv_nsec = (long)(deadline_ns % ATS_NS_PER_SEC);
		tsp = &ts;
	}
#ifdef ATS_TESTING
	ats__futex_sleeps++;
#endif
	/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC timeout (FUTEX_CLOCK_REALTIME unset). */
	syscall(SYS_futex, (const uint32_t *)addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, val, tsp, NULL,
	        FUTEX_BITSET_MATCH_ANY);
}

/* Wakes up to n threads sleeping on addr. One system call. */
static inline void ats__futex_wake(const _Atomic uint32_t *addr, int n)
{
	syscall(SYS_futex, (const uint32_t *)addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
}

#endif
