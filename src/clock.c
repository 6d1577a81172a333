/* SPDX-License-Identifier: BSD-2-Clause */
/* The default clock: the CPU counter scaled to CLOCK_MONOTONIC nanoseconds where it is trusted,
 * else CLOCK_MONOTONIC; the coarse clock only when asked for (policy and contract: clock.h).
 *
 * Why by hand: no Debian library gives a calibrated, re-anchored, self-checking counter clock on
 * the CLOCK_MONOTONIC scale (the vDSO does the same work, but behind a call, and on clocksources
 * such as kvm-clock it costs several times the counter read: compare floor.clock_monotonic with
 * floor.clock_fast).
 *
 * Calibration: two (counter, CLOCK_MONOTONIC) pairs 1 ms apart give a first multiplier. Every
 * re-anchoring takes a fresh pair and recomputes the multiplier over the whole time since the
 * first pair, so its error shrinks as 1/age. The re-anchoring window (counter time between two
 * anchors) is at most a quarter of that age, so the multiplier's error over one window stays below
 * the pair's read jitter, and it adapts to the drift measured at each re-anchoring (an NTP slew
 * makes CLOCK_MONOTONIC run at a rate the counter does not): it halves while the drift over one
 * window would take the precision above 3/4 us and doubles back while it is small, between 100 us
 * and 10 ms. Only the thread that wins the seqlock re-anchors; the others read CLOCK_MONOTONIC for
 * that one call, so no reader ever waits.
 */
#include "atscale/clock.h"
#include "internal/clock_hooks.h"
#include "internal/compiler.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

typedef unsigned __int128 u128;

#define CALIBRATION_NS 1000000u   /* the first calibration window */
#define WINDOW_MIN_NS 100000u     /* re-anchor at least this far apart... */
#define WINDOW_MAX_NS 10000000u   /* ...and at most this far */
#define PRECISION_TARGET_NS 1000u /* the contract's bound for the counter */
#define DROP_FLOOR_NS 50000u      /* disagreement that drops the counter: 50 us ... */
#define DROP_RATE_DIVISOR 1000u   /* ... + 0.1% of the time since the last anchor */
#define MAX_PAIR_JITTER_NS                                                                                             \
	300u /* a calibration pair read slower than this is retaken: the                                               \
	      * precision starts at 1.5 jitters, and must stay under 1 us */

struct ats__fast_clock ats__fast_clock;
ATS__THREAD_LOCAL uint64_t ats__fast_last __attribute__((tls_model("initial-exec")));
#ifdef ATS_TESTING
_Atomic int64_t ats__clock_fault_ticks;
_Atomic int ats__clock_distrust_counter;
#endif

/* Written before the mode that makes them visible is stored (release), or under the seqlock. */
static uint64_t origin_tsc, origin_ns;  /* the first anchor */
static uint64_t anchor_jitter_ns;       /* how long one pair read took at calibration */
static bool calibrated;                 /* origin, jitter and the anchor are set (under force_lock) */
static uint64_t window_ns;              /* the current re-anchoring window (under the seqlock) */
static unsigned drift_strikes;          /* re-anchorings in a row above the target at the min window */
static _Atomic uint64_t drift_ns;       /* recent drift over one window (decaying max) */
static _Atomic uint64_t last_jitter_ns; /* how long the current anchor's pair read took */
static _Atomic bool dropped;            /* the counter was dropped for good */
static char drop_note[160];             /* why, written once before `dropped` is set */
/* Why the first choice was monotonic, written once by init: room for choose()'s longest note,
 * "monotonic (" + asked_by[48] + " not available: " + why[96] + ")". */
static char init_note[176];
/* What ats_fast_source() says for monotonic: a literal, or init_note. */
static _Atomic(const char *) monotonic_text = "monotonic";
#define UNTRUSTED_TEXT "monotonic (the CPU reports no invariant counter)"
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t force_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t coarse_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * ATS_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* A counter exists and can be read from user space. */
static bool counter_available(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d;
	return __get_cpuid(1, &a, &b, &c, &d) && (d & (1u << 4)); /* CPUID.1:EDX.TSC */
#elif defined(__aarch64__)
	return true;
#else
	return false;
#endif
}

/* The counter runs at a constant rate in every power state (the policy in clock.h). */
static bool counter_trusted(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d;
#ifdef ATS_TESTING
	if (atomic_load_explicit(&ats__clock_distrust_counter, memory_order_relaxed)) /* a test knob */
		return false;
#endif
	if (!counter_available() || !__get_cpuid(0x80000007, &a, &b, &c, &d))
		return false;
	return (d & (1u << 8)) != 0; /* CPUID.80000007H:EDX.InvariantTSC */
#elif defined(__aarch64__)
#ifdef ATS_TESTING
	return !atomic_load_explicit(&ats__clock_distrust_counter, memory_order_relaxed); /* a test knob */
#else
	return true;
#endif
#else
	return false;
#endif
}

/* Reads a (counter, ns) pair as close together as possible; returns how far apart the reads were.
 * The fault hook shifts the counter as a migration or a snapshot restore would. */
static uint64_t read_pair(uint64_t *tsc, uint64_t *ns)
{
	uint64_t best = UINT64_MAX;
#ifdef ATS_TESTING
	int64_t fault = atomic_load_explicit(&ats__clock_fault_ticks, memory_order_relaxed); /* a test knob */
#else
	const int64_t fault = 0;
#endif
	for (int i = 0; i < 5; i++) {
		uint64_t a = ats_now_ns();
		uint64_t t = ats__rdtsc();
		uint64_t b = ats_now_ns();
		if (b - a < best) {
			best = b - a;
			*tsc = t + (uint64_t)fault;
			*ns = a + (b - a) / 2;
		}
	}
	return best;
}

static uint64_t ns_to_ticks(uint64_t ns, uint64_t mult)
{
	return (uint64_t)(((u128)ns << 32) / (mult ? mult : 1));
}

/* The window for the anchor just taken: the adaptive window, and at most a quarter of the age. */
static uint64_t window_ticks(uint64_t ns_now, uint64_t mult)
{
	uint64_t quarter_age = (ns_now - origin_ns) / 4;
	uint64_t w = window_ns < quarter_age ? window_ns : quarter_age;
	return ns_to_ticks(w < WINDOW_MIN_NS ? WINDOW_MIN_NS : w, mult);
}

/* Calibrates the counter (about 1 ms). Returns false, with the reason in `why`, when it cannot be
 * used. Called once, under force_lock or the init once, while the mode is not tsc. */
static bool calibrate(char *why, size_t len)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	if (calibrated)
		return true;
	if (!counter_available()) {
		snprintf(why, len, "no CPU counter");
		return false;
	}
	for (int attempt = 0; attempt < 5; attempt++) {
		uint64_t t0 = 0, n0 = 0, t1 = 0, n1 = 0;
		uint64_t j0 = read_pair(&t0, &n0);
		while (ats_now_ns() - n0 < CALIBRATION_NS)
			;
		uint64_t j1 = read_pair(&t1, &n1);
		if (t1 <= t0) {
			snprintf(why, len, "the counter did not advance");
			return false;
		}
		uint64_t jitter = (j0 > j1 ? j0 : j1) + 1;
		if (jitter > MAX_PAIR_JITTER_NS)
			continue; /* preempted while reading: take it again */
		uint64_t mult = (uint64_t)(((u128)(n1 - n0) << 32) / (t1 - t0));
		if (mult == 0 || mult > ((uint64_t)1000 << 32)) {
			snprintf(why, len, "the counter runs at %llu ticks per ms, outside 1 MHz-4 GHz*1000",
			         (unsigned long long)(t1 - t0));
			return false;
		}
		origin_tsc = t0;
		origin_ns = n0;
		anchor_jitter_ns = jitter;
		window_ns = WINDOW_MAX_NS;
		atomic_store_explicit(&c->tsc_base, t1, memory_order_relaxed);
		atomic_store_explicit(&c->ns_base, n1, memory_order_relaxed);
		atomic_store_explicit(&c->mult, mult, memory_order_relaxed);
		atomic_store_explicit(&c->reanchor_ticks, window_ticks(n1, mult), memory_order_relaxed);
		calibrated = true;
		return true; /* published by the release store of the mode */
	}
	/* An emulator, or a host that preempts every read: the counter cannot hold the contract. */
	snprintf(why, len, "every calibration read took over %u ns", MAX_PAIR_JITTER_NS);
	return false;
}

/* Drops the counter for good, drop_note already saying why. Called by the re-anchoring thread,
 * inside the seqlock. */
static void drop_counter(void)
{
	/* Release: drop_note is complete before anyone can see `dropped` or the new mode. */
	atomic_store_explicit(&dropped, true, memory_order_release);
	atomic_store_explicit(&ats__fast_clock.mode, ATS_CLOCK_MONOTONIC, memory_order_release);
}

static void reanchor(void)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	uint32_t seq = atomic_load_explicit(&c->seq, memory_order_relaxed); /* the CAS below checks it */
	/* Acquire: the previous re-anchoring's writes (window, strikes) happen before ours. The release
	 * fence after it orders the odd seq before the anchor's stores (seqlock write side): a reader
	 * that sees any new anchor field then sees the odd seq on its re-check. */
	if ((seq & 1) || !atomic_compare_exchange_strong_explicit(&c->seq, &seq, seq + 1, memory_order_acquire,
	                                                          memory_order_relaxed))
		return; /* another thread is re-anchoring */
	atomic_thread_fence(memory_order_release);
	/* Relaxed: a stale tsc here only re-anchors a counter no reader is using, which is harmless. */
	if (atomic_load_explicit(&c->mode, memory_order_relaxed) != ATS_CLOCK_TSC)
		goto out; /* a switch or a drop happened meanwhile */
	uint64_t tsc = 0, ns = 0;
	uint64_t jitter = read_pair(&tsc, &ns);
	/* Relaxed: the seqlock holder is their only writer (calibrate runs before tsc is in use). */
	uint64_t base = atomic_load_explicit(&c->tsc_base, memory_order_relaxed);
	uint64_t ns_base = atomic_load_explicit(&c->ns_base, memory_order_relaxed);
	uint64_t mult = atomic_load_explicit(&c->mult, memory_order_relaxed);
	if (tsc < base) {
		snprintf(drop_note, sizeof drop_note, "monotonic (tsc dropped: it ran backwards by %llu ticks)",
		         (unsigned long long)(base - tsc));
		drop_counter();
		goto out;
	}
	if (jitter > 2 * anchor_jitter_ns + 100 || ns <= ns_base)
		goto out; /* preempted while reading: keep the anchor, a later call re-anchors */
	uint64_t since = ns - ns_base;
	uint64_t predicted = ns_base + (uint64_t)(((u128)(tsc - base) * mult) >> 32);
	uint64_t off = predicted > ns ? predicted - ns : ns - predicted;
	if (off > DROP_FLOOR_NS + since / DROP_RATE_DIVISOR) {
		snprintf(drop_note, sizeof drop_note,
		         "monotonic (tsc dropped: it disagreed with CLOCK_MONOTONIC by %llu ns after %llu ns)",
		         (unsigned long long)off, (unsigned long long)since);
		drop_counter();
		goto out;
	}
	/* The drift over one window (scaled down when the clock sat unread for longer). */
	uint64_t drift = since > window_ns ? (uint64_t)((u128)off * window_ns / since) : off;
	/* Relaxed: drift_ns only feeds the advisory precision; the seqlock holder is its only writer. */
	uint64_t old = atomic_load_explicit(&drift_ns, memory_order_relaxed);
	uint64_t decayed = old - old / 8;
	atomic_store_explicit(&drift_ns, drift > decayed ? drift : decayed, memory_order_relaxed);
	if (drift + anchor_jitter_ns > PRECISION_TARGET_NS * 3 / 4) {
		if (window_ns > WINDOW_MIN_NS) {
			window_ns /= 2;
		} else if (++drift_strikes >= 3) {
			snprintf(drop_note, sizeof drop_note,
			         "monotonic (tsc dropped: it drifts %llu ns per %llu ns window, above 1 us)",
			         (unsigned long long)drift, (unsigned long long)window_ns);
			drop_counter();
			goto out;
		}
	} else {
		drift_strikes = 0;
		if (drift * 4 < PRECISION_TARGET_NS && window_ns < WINDOW_MAX_NS)
			window_ns *= 2;
	}
	/* The precision this anchor gives (as ats_fast_precision_ns computes it) must stay within the
	 * contract's 1 us: a counter that cannot hold it here is dropped, not reported as worse. */
	uint64_t stated_drift = atomic_load_explicit(&drift_ns, memory_order_relaxed); /* as above */
	uint64_t calib = anchor_jitter_ns / 2;
	uint64_t stated = (jitter + 1 > anchor_jitter_ns ? jitter + 1 : anchor_jitter_ns) +
	                  (stated_drift > calib ? stated_drift : calib);
	if (stated > PRECISION_TARGET_NS) {
		snprintf(drop_note, sizeof drop_note,
		         "monotonic (tsc dropped: its precision here, %llu ns, is above 1 us)",
		         (unsigned long long)stated);
		drop_counter();
		goto out;
	}
	/* Relaxed: the precision is advisory; readers may see it a re-anchoring late. */
	atomic_store_explicit(&last_jitter_ns, jitter + 1, memory_order_relaxed);
	uint64_t new_mult = (uint64_t)(((u128)(ns - origin_ns) << 32) / (tsc - origin_tsc));
	atomic_store_explicit(&c->tsc_base, tsc, memory_order_relaxed);
	atomic_store_explicit(&c->ns_base, ns, memory_order_relaxed);
	atomic_store_explicit(&c->mult, new_mult, memory_order_relaxed);
	atomic_store_explicit(&c->reanchor_ticks, window_ticks(ns, new_mult), memory_order_relaxed);
out:
	/* Release: every store above happens before the even seq a reader checks. */
	atomic_store_explicit(&c->seq, seq + 2, memory_order_release);
}

static ats_clock_source parse_env(const char *v)
{
	if (!v || !*v || strcmp(v, "auto") == 0)
		return ATS_CLOCK_AUTO;
	if (strcmp(v, "tsc") == 0)
		return ATS_CLOCK_TSC;
	if (strcmp(v, "monotonic") == 0)
		return ATS_CLOCK_MONOTONIC;
	if (strcmp(v, "coarse") == 0)
		return ATS_CLOCK_COARSE;
	/* A library cannot fail a clock read: say so once and keep the policy. */
	fprintf(stderr, "atscale: ATS_CLOCK=%s is not one of tsc, monotonic, coarse, auto; using auto\n", v);
	return ATS_CLOCK_AUTO;
}

/* Picks and prepares a source; returns the mode to store and sets what a monotonic choice says.
 * Under force_lock. `note` (init_note at start-up, else NULL) gets why an asked-for counter could
 * not be had. */
static ats_clock_source choose(ats_clock_source want, const char *asked_by, char *note, size_t len)
{
	char why[96];
	const char *text = "monotonic";
	ats_clock_source mode = want;
	if (want == ATS_CLOCK_AUTO && !counter_trusted()) {
		text = UNTRUSTED_TEXT;
		mode = ATS_CLOCK_MONOTONIC;
	} else if (want == ATS_CLOCK_AUTO || want == ATS_CLOCK_TSC) {
		mode = ATS_CLOCK_TSC;
		if (atomic_load_explicit(&dropped, memory_order_acquire)) {
			mode = ATS_CLOCK_MONOTONIC; /* ats_fast_source() says why */
		} else if (!calibrate(why, sizeof why)) {
			mode = ATS_CLOCK_MONOTONIC;
			if (note) {
				snprintf(note, len, "monotonic (%s not available: %s)", asked_by, why);
				text = note;
			} else {
				text = "monotonic (tsc calibration failed)";
			}
		}
	}
	if (mode == ATS_CLOCK_MONOTONIC)
		atomic_store_explicit(&monotonic_text, text, memory_order_release);
	return mode;
}

static void init(void)
{
	const char *env = getenv("ATS_CLOCK");
	ats_clock_source want = parse_env(env);
	char asked_by[48];
	snprintf(asked_by, sizeof asked_by, want == ATS_CLOCK_AUTO ? "tsc" : "ATS_CLOCK=%s", env ? env : "");
	pthread_mutex_lock(&force_lock);
	ats_clock_source mode = choose(want, asked_by, init_note, sizeof init_note);
	/* Release: the calibration and the notes are visible to whoever sees the mode. */
	atomic_store_explicit(&ats__fast_clock.mode, mode, memory_order_release);
	pthread_mutex_unlock(&force_lock);
}

static void ensure_init(void)
{
	if (atomic_load_explicit(&ats__fast_clock.mode, memory_order_acquire) == 0)
		pthread_once(&init_once, init);
}

uint64_t ats__fast_now_slow(uint64_t tsc)
{
	ensure_init();
	switch (atomic_load_explicit(&ats__fast_clock.mode, memory_order_acquire)) {
	case ATS_CLOCK_COARSE: return coarse_ns();
	case ATS_CLOCK_TSC: {
		if (tsc)
			reanchor();          /* the window ran out (or the counter is below the anchor) */
		uint64_t now = ats_now_ns(); /* clamped as the fast path's readings are */
		if (now < ats__fast_last)
			return ats__fast_last;
		ats__fast_last = now;
		return now;
	}
	default: return ats_now_ns();
	}
}

bool ats_clock_force(ats_clock_source source)
{
	if ((unsigned)source > ATS_CLOCK_COARSE)
		return false;
	ensure_init();
	pthread_mutex_lock(&force_lock);
	char why[96];
	bool ok = source != ATS_CLOCK_TSC ||
	          (!atomic_load_explicit(&dropped, memory_order_acquire) && calibrate(why, sizeof why));
	if (ok)
		atomic_store_explicit(&ats__fast_clock.mode, choose(source, "tsc", NULL, 0), memory_order_release);
	pthread_mutex_unlock(&force_lock);
	return ok;
}

ats_clock_source ats_clock_current(void)
{
	ensure_init();
	return (ats_clock_source)atomic_load_explicit(&ats__fast_clock.mode, memory_order_acquire);
}

uint64_t ats_fast_precision_ns(void)
{
	struct timespec res;
	switch (ats_clock_current()) {
	case ATS_CLOCK_TSC: {
		/* Jitter of the anchor itself (the calibration's or the current anchor's read, whichever
		 * took longer), plus the larger of the measured drift over one window and
		 * the multiplier's calibration error over one window (2 jitters over the age, at most a
		 * quarter of which is one window). */
		uint64_t calib = anchor_jitter_ns / 2;
		uint64_t drift = atomic_load_explicit(&drift_ns, memory_order_relaxed);
		uint64_t jitter = atomic_load_explicit(&last_jitter_ns, memory_order_relaxed);
		if (jitter < anchor_jitter_ns)
			jitter = anchor_jitter_ns;
		return jitter + (drift > calib ? drift : calib);
	}
	case ATS_CLOCK_COARSE:
		/* The coarse clock moves once per tick and is updated a tick late: measured, it lags
		 * CLOCK_MONOTONIC by up to two of its resolution steps, and a tick handler held up on a
		 * busy host adds more (8.65 ms seen at a 4 ms tick): three steps are stated. */
		clock_getres(CLOCK_MONOTONIC_COARSE, &res);
		return 3 * ((uint64_t)res.tv_sec * ATS_NS_PER_SEC + (uint64_t)res.tv_nsec);
	default:
		clock_getres(CLOCK_MONOTONIC, &res);
		return (uint64_t)res.tv_sec * ATS_NS_PER_SEC + (uint64_t)res.tv_nsec;
	}
}

const char *ats_fast_source(void)
{
	switch (ats_clock_current()) {
	case ATS_CLOCK_TSC: return "tsc";
	case ATS_CLOCK_COARSE: return "coarse";
	default:
		if (atomic_load_explicit(&dropped, memory_order_acquire))
			return drop_note;
		return atomic_load_explicit(&monotonic_text, memory_order_acquire);
	}
}
