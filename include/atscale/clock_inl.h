/* SPDX-License-Identifier: BSD-2-Clause */
/* Not API: the inline internals of atscale/clock.h (the default clock's state and fast path).
 * Included by clock.h; never include it directly. Every name here may change in any release. */
#ifndef ATSCALE_CLOCK_INL_H
#define ATSCALE_CLOCK_INL_H

#ifndef ATSCALE_CLOCK_H
#error "include <atscale/clock.h>, not atscale/clock_inl.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Strict ISO C (-std=c11 without _POSIX_C_SOURCE) hides the POSIX clocks in <time.h>: use Linux's
 * clock ids and glibc's prototype then (clockid_t is an int there). */
#if defined(CLOCK_MONOTONIC) && defined(CLOCK_REALTIME)
#define ATS__CLOCK_MONOTONIC CLOCK_MONOTONIC
#define ATS__CLOCK_REALTIME CLOCK_REALTIME
#else
#define ATS__CLOCK_MONOTONIC 1
#define ATS__CLOCK_REALTIME 0
extern int clock_gettime(int clock_id, struct timespec *tp);
#endif

/* CLOCK_MONOTONIC in ns: the reference every other clock here is measured against. Wait-free;
 * one vDSO call, no system call (on most clocksources: see floor.clock_monotonic). */
static inline uint64_t ats_now_ns(void)
{
	struct timespec ts;
	clock_gettime(ATS__CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * ATS_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* CLOCK_REALTIME in ns since the Unix epoch (for records, never for timeouts). */
static inline uint64_t ats_wall_ns(void)
{
	struct timespec ts;
	clock_gettime(ATS__CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * ATS_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* The default clock's state (private; read by the inline fast path). A seqlock guards the anchor:
 * the counter value and CLOCK_MONOTONIC time of the last anchoring and the ns-per-tick multiplier
 * (32.32 fixed point). */
struct ats__fast_clock {
	ATS_ATOMIC(uint32_t) seq;  /* odd while a re-anchoring writes */
	ATS_ATOMIC(uint32_t) mode; /* 0 before the first use, else an ats_clock_source (never AUTO) */
	ATS_ATOMIC(uint64_t) tsc_base;
	ATS_ATOMIC(uint64_t) ns_base;
	ATS_ATOMIC(uint64_t) mult;           /* ns per tick << 32 */
	ATS_ATOMIC(uint64_t) reanchor_ticks; /* re-anchor after this many ticks */
};
ATS_API extern struct ats__fast_clock ats__fast_clock;
ATS_API uint64_t ats__fast_now_slow(uint64_t tsc);

/* The calling thread's last reading of the counter clock (private): readings are clamped to it, so
 * per thread they never go backwards, even across a re-anchoring that moves the anchor back or a
 * reading that took the CLOCK_MONOTONIC path. Initial-exec: one thread-pointer-relative access. */
ATS_API extern ATS__THREAD_LOCAL uint64_t ats__fast_last __attribute__((tls_model("initial-exec")));

/* The raw CPU counter: rdtsc on x86, CNTVCT_EL0 on arm64 (after an isb, so the read is not
 * hoisted above earlier instructions); 0 where there is none (the clock then never uses it). */
static inline uint64_t ats__rdtsc(void)
{
#if defined(__x86_64__) || defined(__i386__)
	uint32_t lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
#elif defined(__aarch64__)
	uint64_t v;
	__asm__ __volatile__("isb\n\tmrs %0, cntvct_el0" : "=r"(v) : : "memory");
	return v;
#else
	return 0;
#endif
}

/* The default clock (clock.h). */
static inline uint64_t ats_fast_now_ns(void)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	for (;;) {
		/* Acquire: a mode switched to tsc was stored (release) after its first anchor. */
		uint32_t mode = ats__atomic_load(&c->mode, ats__mo_acquire);
		/* Acquire: the seqlock read side (the anchor loads below come after it). */
		uint32_t seq = ats__atomic_load(&c->seq, ats__mo_acquire);
		if (mode != ATS_CLOCK_TSC) {
			if (mode == ATS_CLOCK_MONOTONIC) {
				/* Clamped too: this thread's last reading of the counter, just before it
				 * was dropped, may be ahead of CLOCK_MONOTONIC by up to one re-anchoring
				 * window (a jump is seen at the next re-anchoring). */
				uint64_t now = ats_now_ns();
				if (now < ats__fast_last)
					return ats__fast_last;
				ats__fast_last = now;
				return now;
			}
			return ats__fast_now_slow(0);
		}
		if (seq & 1)
			return ats__fast_now_slow(0); /* a re-anchoring is writing: never wait for it */
		uint64_t tsc = ats__rdtsc();
		/* Relaxed: the seqlock orders them (the fence and re-check below). */
		uint64_t base = ats__atomic_load(&c->tsc_base, ats__mo_relaxed);
		uint64_t ns = ats__atomic_load(&c->ns_base, ats__mo_relaxed);
		uint64_t mult = ats__atomic_load(&c->mult, ats__mo_relaxed);
		uint64_t limit = ats__atomic_load(&c->reanchor_ticks, ats__mo_relaxed);
		/* Seqlock read side: the loads above happen before the re-check of seq. */
		ats__atomic_fence(ats__mo_acquire);
		if (ats__atomic_load(&c->seq, ats__mo_relaxed) != seq)
			continue;
		uint64_t delta = tsc - base;
		if (tsc < base || delta > limit)
			return ats__fast_now_slow(tsc);
		uint64_t now = ns + (uint64_t)(((ats__u128)delta * mult) >> 32);
		if (now < ats__fast_last)
			return ats__fast_last;
		ats__fast_last = now;
		return now;
	}
}

#ifdef __cplusplus
}
#endif
#endif
