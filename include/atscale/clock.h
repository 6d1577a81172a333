/* atscale clocks. All times are uint64_t nanoseconds on the CLOCK_MONOTONIC scale unless a name
 * says otherwise.
 *
 * The `_at(now_ns)` convention: every hot path in atscale has a variant that takes the time from
 * the caller, so a poll loop reads the clock once per batch and passes the same now_ns to every
 * call. Callers may pass ats_now_ns(), ats_fast_now_ns() or their own clock on the same scale.
 */
#ifndef ATSCALE_CLOCK_H
#define ATSCALE_CLOCK_H

#include <stdint.h>
#include <stdatomic.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CLOCK_MONOTONIC in ns. Wait-free; one vDSO call (~15-25 ns), no syscall. */
static inline uint64_t ats_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CLOCK_REALTIME in ns since the Unix epoch (for records, never for timeouts). */
static inline uint64_t ats_wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The cheap clock's state (private; read by the inline fast path). A seqlock guards the anchor:
 * the TSC value and CLOCK_MONOTONIC time of the last anchoring and the ns-per-tick multiplier
 * (32.32 fixed point), refined at each re-anchoring from the whole time since start-up. */
struct ats__fast_clock {
	_Atomic uint32_t seq;  /* odd while a re-anchoring writes */
	_Atomic uint32_t mode; /* 0 not started, 1 TSC, 2 coarse */
	_Atomic uint64_t tsc_base;
	_Atomic uint64_t ns_base;
	_Atomic uint64_t mult;           /* ns per tick << 32 */
	_Atomic uint64_t reanchor_ticks; /* re-anchor after this many ticks (~50 ms) */
};
extern struct ats__fast_clock ats__fast_clock;
uint64_t ats__fast_now_slow(uint64_t tsc);

static inline uint64_t ats__rdtsc(void)
{
#if defined(__x86_64__) || defined(__i386__)
	uint32_t lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
#else
	return 0;
#endif
}

/* The cheap clock: CLOCK_MONOTONIC scale, read from the TSC (calibrated against CLOCK_MONOTONIC
 * and re-anchored every ~50 ms) when the kernel itself trusts the TSC, else CLOCK_MONOTONIC_COARSE.
 * Wait-free; ~6-10 ns with the TSC. Precision: ats_fast_precision_ns(). Across threads and at a
 * re-anchoring it may differ from ats_now_ns() by up to that precision (so it can step back by
 * that much); everything in atscale tolerates a clock that steps back. The first call calibrates
 * (about 1 ms, once per process). */
static inline uint64_t ats_fast_now_ns(void)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	for (;;) {
		uint32_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
		if (atomic_load_explicit(&c->mode, memory_order_relaxed) != 1 || (seq & 1))
			return ats__fast_now_slow(0);
		uint64_t tsc = ats__rdtsc();
		uint64_t base = atomic_load_explicit(&c->tsc_base, memory_order_relaxed);
		uint64_t ns = atomic_load_explicit(&c->ns_base, memory_order_relaxed);
		uint64_t mult = atomic_load_explicit(&c->mult, memory_order_relaxed);
		uint64_t limit = atomic_load_explicit(&c->reanchor_ticks, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&c->seq, memory_order_relaxed) != seq)
			continue;
		uint64_t delta = tsc - base;
		if (tsc < base || delta > limit)
			return ats__fast_now_slow(tsc);
		return ns + (uint64_t)(((unsigned __int128)delta * mult) >> 32);
	}
}

/* The cheap clock's current precision bound in ns (calibration error over one anchoring window,
 * or the coarse clock's resolution). Improves as the process runs. */
uint64_t ats_fast_precision_ns(void);
/* "tsc" or "coarse". */
const char *ats_fast_source(void);

#ifdef __cplusplus
}
#endif
#endif
