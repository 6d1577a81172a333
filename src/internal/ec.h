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
 * never lost (a caller that waits on several eventcounts watches them instead, below, where it
 * knows the call is missing). */
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

/* Whether parking here sleeps on one word at a time: no futex_waitv (Linux < 5.16, or a seccomp
 * filter that refuses it). Probed with one system call the first time, then remembered. */
bool ats__ec_parks_alone(void);

/* Watching several eventcounts where a thread can sleep on only one word. While watched, every
 * bump of an eventcount that finds its waiter flag set (so it makes a wake-up system call
 * anyway) also bumps the watcher's word (release) and wakes it: the watcher arms the flags as
 * usual and sleeps on its word alone, with no bound, and no wake-up is lost (ec.c says why). A
 * select over several channels watches their eventcounts this way; without watching it would
 * have to look at the others every so often. One entry per eventcount, in the watcher's memory. */
typedef struct ats__ec_watch {
	const struct ck_ec32 *ec;
	_Atomic uint32_t *word;
	struct ats__ec_watch *next;
} ats__ec_watch;

/* Starts watching w[0..n) (ec and word set by the caller), then a full fence: call it before
 * arming the flags. Blocking (a process-wide mutex, only ever taken where ats__ec_parks_alone);
 * O(n). */
void ats__ec_watch_start(ats__ec_watch *w, unsigned n);

/* A watcher's sleep: while *word == val, until deadline_ns (ATS__FUTEX_FOREVER for none), on
 * that word alone. May return early: the caller re-checks. Blocking; one system call. */
void ats__ec_park_watched(_Atomic uint32_t *word, uint32_t val, uint64_t deadline_ns);

/* Stops watching w[0..n): once it returns, no bump touches w. Blocking (the mutex); O(n) plus the
 * other watches that share a bucket. */
void ats__ec_watch_stop(ats__ec_watch *w, unsigned n);

#endif
