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
#include <stdbool.h>
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
 * deadline_ns (absolute CLOCK_MONOTONIC; ATS__FUTEX_FOREVER for none). May return early: the
 * caller re-checks. Blocking; one system call.
 * Without futex_waitv (Linux < 5.16, or a seccomp filter that refuses it; the first refusal is
 * remembered) it sleeps on w[0] alone:
 * until the deadline when nothing else can need waking up (nw == 1, or nw == 2 and
 * kick_bumps_first: w[1] is a kick word whose ats__ec_kicker also bumps w[0]'s eventcount), and
 * otherwise for at most 1 ms, so the caller's re-check finds a change of the other words late,
 * never lost. */
void ats__ec_park(struct futex_waitv *w, unsigned nw, uint64_t deadline_ns, bool kick_bumps_first);

/* An after-func (ats_ctx_after_func) for a parked thread's kick word (an _Atomic uint32_t *):
 * bumps it (release) and wakes one sleeper, so a ctx cancel ends an ats__ec_park that includes
 * the kick word. */
void ats__ec_kick(void *kick_word);

/* A kick word and the eventcount its thread parks on first. Its after-func, ats__ec_kick_bump,
 * bumps both, so that the thread wakes on a cancel even where it can sleep on only one word (no
 * futex_waitv): its eventcount changes, and a spurious bump of an eventcount only makes its other
 * waiters look again. */
typedef struct ats__ec_kicker {
	_Atomic uint32_t word;
	struct ck_ec32 *ec; /* NULL: a plain kick */
} ats__ec_kicker;

/* The after-func of an ats__ec_kicker (its argument): ats__ec_kick on the word, then, when set,
 * one increment of the eventcount (which wakes its sleepers when its waiter flag is set). */
void ats__ec_kick_bump(void *kicker);

#endif
