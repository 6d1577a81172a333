/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale clocks. All times are uint64_t nanoseconds on the CLOCK_MONOTONIC scale unless a name
 * says otherwise.
 *
 * The `_at(now_ns)` convention: every hot path in atscale has a variant that takes the time from
 * the caller, so a poll loop reads the clock once per batch and passes the same now_ns to every
 * call. Callers may pass ats_now_ns(), ats_fast_now_ns() or their own clock on the same scale.
 *
 * One time base. Every atscale call that reads a clock itself (the plain limiter calls, context
 * timeouts and waits, error timestamps) reads ats_fast_now_ns(), the library's default clock. Its
 * contract: a reading is never behind an earlier ats_now_ns() reading, on any thread, by more than
 * ats_fast_precision_ns(), and that precision is at most 1 us on every source but the coarse one,
 * which is used only when the user asks for it by name. So mixing `_at(ats_now_ns())` calls with
 * plain calls loses at most a precision's worth of time. Sleeps (futex deadlines: ctx waits, the
 * timer thread) are on CLOCK_MONOTONIC itself, so a deadline is met within that same precision.
 *
 * Sources of the default clock (ats_fast_source() says which is in use):
 *  - "tsc": the CPU's counter (x86 TSC, arm64 CNTVCT_EL0) scaled to CLOCK_MONOTONIC. Chosen when
 *    the counter is trusted: on x86 when CPUID reports an invariant TSC (constant rate in every
 *    power state: /proc/cpuinfo's constant_tsc + nonstop_tsc), on arm64 always (the generic timer
 *    is architecturally constant-rate and shared by all cores). The kernel's own choice is not
 *    asked: many VMs boot with `tsc=unstable` or prefer kvm-clock, xen or Hyper-V clocksources
 *    (all of which read the same TSC underneath) because a migration or snapshot restore may make
 *    the TSC jump or change rate, and the kernel's clocksource must never step back. This clock
 *    checks the counter itself instead: it re-anchors against CLOCK_MONOTONIC at least every
 *    10 ms of counter time (sooner while young: a quarter of its age, so the calibration error
 *    stays below the anchoring jitter), and at each re-anchoring compares its extrapolation with
 *    CLOCK_MONOTONIC. If the counter ran backwards, or disagrees by more than 50 us + 0.1% of the
 *    time since the last anchor (beyond any NTP slew, which is at most 0.05%), the counter is
 *    dropped for good and the clock is CLOCK_MONOTONIC from then on ("monotonic (tsc dropped:
 *    ...)"). A jump smaller than that bound, or inside one re-anchoring window, is not seen until
 *    the next re-anchoring. Per thread, readings never go backwards (each thread keeps its last
 *    reading); across threads they are ordered within the precision, as long as the cores' counters
 *    are synchronized, which the invariant-counter CPUs above guarantee and the kernel checks at
 *    boot.
 *  - "monotonic": CLOCK_MONOTONIC through the vDSO (precise to the ns), where the counter is not
 *    trusted or was dropped.
 *  - "coarse": CLOCK_MONOTONIC_COARSE (steps of one kernel tick, typically 1-4 ms, and it lags by
 *    up to two, more on a busy host: its precision is reported as three ticks). Only when asked for,
 *    by ats_clock_force(ATS_CLOCK_COARSE) or ATS_CLOCK=coarse: a limiter read by a clock that
 *    moves once per tick grants at most `burst` per tick, whatever its rate.
 *
 * Forcing a source: the environment variable ATS_CLOCK=tsc|monotonic|coarse|auto, read at the
 * first clock use, or ats_clock_force() at any time.
 */
#ifndef ATSCALE_CLOCK_H
#define ATSCALE_CLOCK_H

#include "atscale/common.h"

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CLOCK_MONOTONIC in ns: the reference every other clock here is measured against. Wait-free;
 * one vDSO call, no system call (on most clocksources: see floor.clock_monotonic). */
static inline uint64_t ats_now_ns(void);

/* CLOCK_REALTIME in ns since the Unix epoch (for records, never for timeouts). Wait-free. */
static inline uint64_t ats_wall_ns(void);

/* The sources of the default clock. */
typedef enum ats_clock_source {
	ATS_CLOCK_AUTO = 0,  /* the policy above: tsc when trusted, else monotonic */
	ATS_CLOCK_TSC,       /* the CPU counter, calibrated and checked */
	ATS_CLOCK_MONOTONIC, /* CLOCK_MONOTONIC */
	ATS_CLOCK_COARSE,    /* CLOCK_MONOTONIC_COARSE, opt-in only */
} ats_clock_source;

/* The default clock (see the top of this file). Wait-free. With the tsc source: a counter read, a
 * multiply and a seqlock check, no call; with monotonic: ats_now_ns(); cost per source in the
 * floor.clock_fast benchmark row. Every library call that reads a clock itself reads this one.
 * The first call picks the source and, for tsc, calibrates (about 1 ms, once per process). */
static inline uint64_t ats_fast_now_ns(void);

/* The default clock's precision in ns: the bound in the contract at the top of this file. For tsc,
 * the anchoring jitter plus the largest drift measured between recent re-anchorings (so it follows
 * the machine: it shrinks as calibration improves and grows if NTP slews hard); 1 for monotonic;
 * three kernel ticks for coarse. Lock-free; a few loads (a clock_getres for the others). */
ATS_API uint64_t ats_fast_precision_ns(void);

/* The source in use: "tsc", "monotonic" or "coarse"; after the counter was dropped,
 * "monotonic (tsc dropped: <why>)"; after ATS_CLOCK named one that cannot be had,
 * "monotonic (ATS_CLOCK=<value> not available: <why>)". The string is static. Lock-free. */
ATS_API const char *ats_fast_source(void);

/* The source in use, as an enum (never ATS_CLOCK_AUTO). */
ATS_API ats_clock_source ats_clock_current(void);

/* Makes the default clock use `source` from now on (ATS_CLOCK_AUTO: the policy above). Returns
 * false and changes nothing when it cannot be had: tsc where the CPU has no usable counter or after
 * it was dropped. Threads reading the clock during the switch see either source; readings may step
 * back by up to the larger precision of the two. Blocking (the first switch to tsc calibrates for
 * about 1 ms); for tests and start-up code, not hot paths. */
ATS_API bool ats_clock_force(ats_clock_source source);

#ifdef __cplusplus
}
#endif

#include "atscale/clock_inl.h" /* the inline bodies (not API) */
#endif
