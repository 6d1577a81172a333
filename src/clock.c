/* The cheap clock: TSC ticks scaled to CLOCK_MONOTONIC nanoseconds.
 *
 * Why by hand: no Debian library gives a calibrated, re-anchored TSC clock on the CLOCK_MONOTONIC
 * scale (the kernel's vDSO does the same work but costs a call and ~20 ns).
 *
 * Calibration: one 1 ms window at start-up gives a first multiplier; every re-anchoring (once the
 * reader sees more than ~50 ms of ticks since the last anchor) takes a fresh (TSC, CLOCK_MONOTONIC)
 * pair and recomputes the multiplier over the whole time since start-up, so its error shrinks as
 * 1/uptime. Only the thread that wins the seqlock re-anchors; the others read CLOCK_MONOTONIC for
 * that one call, so no reader ever waits.
 */
#include "atscale/clock.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

struct ats__fast_clock ats__fast_clock;

enum { MODE_UNSET = 0, MODE_TSC = 1, MODE_COARSE = 2 };

static uint64_t origin_tsc, origin_ns; /* the first anchor; written once before mode is set */
static uint64_t anchor_jitter_ns;      /* how long one (TSC, clock) pair read took at calibration */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static uint64_t coarse_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads a (tsc, ns) pair as close together as possible; returns how far apart the reads were. */
static uint64_t read_pair(uint64_t *tsc, uint64_t *ns)
{
	uint64_t best = UINT64_MAX;
	for (int i = 0; i < 5; i++) {
		uint64_t a = ats_now_ns();
		uint64_t t = ats__rdtsc();
		uint64_t b = ats_now_ns();
		if (b - a < best) {
			best = b - a;
			*tsc = t;
			*ns = a + (b - a) / 2;
		}
	}
	return best;
}

static int kernel_trusts_tsc(void)
{
#if defined(__x86_64__)
	char buf[32] = {0};
	FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
	if (!f)
		return 0;
	int ok = fgets(buf, sizeof buf, f) && strcmp(buf, "tsc\n") == 0;
	fclose(f);
	return ok;
#else
	return 0;
#endif
}

static void calibrate(void)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	if (!kernel_trusts_tsc()) {
		atomic_store_explicit(&c->mode, MODE_COARSE, memory_order_release);
		return;
	}
	uint64_t t0 = 0, n0 = 0, t1 = 0, n1 = 0;
	uint64_t j0 = read_pair(&t0, &n0);
	while (ats_now_ns() - n0 < 1000000)
		;
	uint64_t j1 = read_pair(&t1, &n1);
	if (t1 <= t0) {
		atomic_store_explicit(&c->mode, MODE_COARSE, memory_order_release);
		return;
	}
	origin_tsc = t0;
	origin_ns = n0;
	anchor_jitter_ns = (j0 > j1 ? j0 : j1) + 1;
	uint64_t mult = (uint64_t)(((unsigned __int128)(n1 - n0) << 32) / (t1 - t0));
	/* ~50 ms of ticks between re-anchorings. */
	uint64_t ticks = (uint64_t)(((unsigned __int128)50000000u << 32) / (mult ? mult : 1));
	atomic_store_explicit(&c->tsc_base, t1, memory_order_relaxed);
	atomic_store_explicit(&c->ns_base, n1, memory_order_relaxed);
	atomic_store_explicit(&c->mult, mult, memory_order_relaxed);
	atomic_store_explicit(&c->reanchor_ticks, ticks, memory_order_relaxed);
	atomic_store_explicit(&c->mode, MODE_TSC, memory_order_release);
}

static void reanchor(void)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	uint32_t seq = atomic_load_explicit(&c->seq, memory_order_relaxed);
	if ((seq & 1) || !atomic_compare_exchange_strong_explicit(&c->seq, &seq, seq + 1, memory_order_acquire,
	                                                          memory_order_relaxed))
		return; /* another thread is re-anchoring */
	uint64_t tsc = 0, ns = 0;
	read_pair(&tsc, &ns);
	if (tsc > origin_tsc && ns > origin_ns) {
		uint64_t mult = (uint64_t)(((unsigned __int128)(ns - origin_ns) << 32) / (tsc - origin_tsc));
		atomic_store_explicit(&c->tsc_base, tsc, memory_order_relaxed);
		atomic_store_explicit(&c->ns_base, ns, memory_order_relaxed);
		atomic_store_explicit(&c->mult, mult, memory_order_relaxed);
	}
	atomic_store_explicit(&c->seq, seq + 2, memory_order_release);
}

uint64_t ats__fast_now_slow(uint64_t tsc)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	uint32_t mode = atomic_load_explicit(&c->mode, memory_order_acquire);
	if (mode == MODE_UNSET) {
		pthread_once(&init_once, calibrate);
		return ats_fast_now_ns();
	}
	if (mode == MODE_COARSE)
		return coarse_ns();
	if (tsc)
		reanchor();
	return ats_now_ns();
}

uint64_t ats_fast_precision_ns(void)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	(void)ats_fast_now_ns(); /* make sure the clock is calibrated */
	if (atomic_load_explicit(&c->mode, memory_order_acquire) != MODE_TSC) {
		struct timespec res;
		clock_getres(CLOCK_MONOTONIC_COARSE, &res);
		return (uint64_t)res.tv_sec * 1000000000u + (uint64_t)res.tv_nsec;
	}
	/* Multiplier error = 2 jitters over the calibrated span, applied to one 50 ms window. */
	uint64_t span = atomic_load_explicit(&c->ns_base, memory_order_relaxed) - origin_ns;
	if (span == 0)
		span = 1;
	return anchor_jitter_ns + (uint64_t)((unsigned __int128)2 * anchor_jitter_ns * 50000000u / span);
}

const char *ats_fast_source(void)
{
	(void)ats_fast_now_ns();
	return atomic_load_explicit(&ats__fast_clock.mode, memory_order_acquire) == MODE_TSC ? "tsc" : "coarse";
}
