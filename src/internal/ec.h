/* SPDX-License-Identifier: BSD-2-Clause */
/* The operations atscale gives Concurrency Kit's eventcounts (ck_ec): futex waits on the
 * CLOCK_MONOTONIC scale, so a ck_ec deadline is an atscale deadline.
 *
 * Every parking path built on ck_ec (channels, pool workers) uses these ops and these modes, so
 * one eventcount can be shared between modules without a mismatch in clocks or wake-ups. */
#ifndef ATS_INTERNAL_EC_H
#define ATS_INTERNAL_EC_H

#include "internal/compiler.h"

#include <ck_ec.h>
#include <stdint.h>

extern const struct ck_ec_ops ats__ec_ops;
/* Many threads may increment the eventcount. */
extern const struct ck_ec_mode ats__ec_mode_mp;
/* Exactly one thread ever increments it (ck_ec's cheaper single-producer increment). */
extern const struct ck_ec_mode ats__ec_mode_sp;

/* ns on the CLOCK_MONOTONIC scale <-> the timespec ck_ec takes. ATS__FUTEX_FOREVER has no
 * timespec: pass NULL to ck_ec instead. */
static inline struct timespec ats__ec_timespec(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / ATS_NS_PER_SEC), .tv_nsec = (long)(ns % ATS_NS_PER_SEC)};
	return ts;
}

/* ck_ec32's waiter flag: the sign bit of its counter. */
#define ATS__EC_FLAG (UINT32_C(1) << 31)

/* ck_ec's waiter step, done by hand so that a thread can arm several eventcounts (and sleep on
 * them at once with ats__ec_park): sets the waiter flag with a CAS and returns the word, flag
 * included, to sleep on. An increment after this call changes the word (so a sleep on the
 * returned value returns at once) and, seeing the flag, wakes the futex. Lock-free. */
uint32_t ats__ec_arm(struct ck_ec32 *ec);

struct futex_waitv;
/* Sleeps until one of w[0..nw) no longer holds its value (futex_waitv, Linux >= 5.16), a wake, or
 * deadline_ns (absolute CLOCK_MONOTONIC; ATS__FUTEX_FOREVER for none). Without futex_waitv it
 * sleeps on w[0] only, for at most 1 ms, so the caller's re-check finds any change late, never
 * lost. May return early: the caller re-checks. Blocking; one system call. */
void ats__ec_park(struct futex_waitv *w, unsigned nw, uint64_t deadline_ns);

/* An after-func (ats_ctx_after_func) for a parked thread's kick word (an _Atomic uint32_t *):
 * bumps it (release) and wakes one sleeper, so a ctx cancel ends an ats__ec_park that includes
 * the kick word. */
void ats__ec_kick(void *kick_word);

#endif
