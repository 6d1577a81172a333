/* SPDX-License-Identifier: BSD-2-Clause */
/* The default clock (clock.h): every source it can run on, each against CLOCK_MONOTONIC.
 *
 * Criterion runs each test in its own process, so a test that sets ATS_CLOCK before its first
 * clock read sees the clock start under that setting. Sources the machine cannot give (tsc where
 * the CPU has no usable counter) are skipped with a message, never passed silently. */
#include <atscale/clock.h>

#include "internal/clock_hooks.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MS UINT64_C(1000000)

/* Starts the clock as a process would with ATS_CLOCK set to `env` (NULL: unset). */
static void start_with(const char *env)
{
	if (env)
		setenv("ATS_CLOCK", env, 1);
	else
		unsetenv("ATS_CLOCK");
	(void)ats_fast_now_ns();
}

/* Forces `source`; false (with a skip message) when this machine cannot give it. */
static bool use(ats_clock_source source)
{
	start_with(NULL);
	if (ats_clock_force(source))
		return true;
	cr_skip_test("this machine cannot give the source (%s)", ats_fast_source());
	return false;
}

/* How far the default clock strays from CLOCK_MONOTONIC, and whether it ever went back. */
struct trace {
	uint64_t duration_ns;
	uint64_t reads, outside, backwards;
	uint64_t worst_behind, worst_ahead, precision;
};

/* Reads CLOCK_MONOTONIC, the default clock, CLOCK_MONOTONIC for duration_ns: the default clock must
 * lie within the precision of [before, after], and never go back on this thread. */
static void *trace_run(void *arg)
{
	struct trace *t = arg;
	uint64_t end = ats_now_ns() + t->duration_ns, last = 0;
	for (;;) {
		uint64_t before = ats_now_ns();
		uint64_t fast = ats_fast_now_ns();
		uint64_t after = ats_now_ns();
		uint64_t precision = ats_fast_precision_ns();
		t->reads++;
		if (fast < last)
			t->backwards++;
		last = fast;
		uint64_t behind = fast < before ? before - fast : 0, ahead = fast > after ? fast - after : 0;
		if (behind > precision || ahead > precision)
			t->outside++;
		if (behind > t->worst_behind)
			t->worst_behind = behind;
		if (ahead > t->worst_ahead)
			t->worst_ahead = ahead;
		if (precision > t->precision)
			t->precision = precision;
		if (after >= end)
			return NULL;
	}
}

/* Two threads trace the clock for 300 ms; returns the summed counts. */
static struct trace trace_two_threads(void)
{
	struct trace t[2] = {{.duration_ns = 300 * MS}, {.duration_ns = 300 * MS}};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, trace_run, &t[1]), 0);
	trace_run(&t[0]);
	pthread_join(th, NULL);
	struct trace sum = t[0];
	sum.reads += t[1].reads;
	sum.outside += t[1].outside;
	sum.backwards += t[1].backwards;
	sum.worst_behind = sum.worst_behind > t[1].worst_behind ? sum.worst_behind : t[1].worst_behind;
	sum.worst_ahead = sum.worst_ahead > t[1].worst_ahead ? sum.worst_ahead : t[1].worst_ahead;
	sum.precision = sum.precision > t[1].precision ? sum.precision : t[1].precision;
	return sum;
}

static void expect_tight(const char *source, struct trace t)
{
	cr_expect_gt(t.reads, 1000);
	cr_expect_eq(t.backwards, 0, "%s: went back %llu times", source, (unsigned long long)t.backwards);
	cr_expect_eq(t.outside, 0,
	             "%s: %llu of %llu reads outside the precision %llu ns (worst %llu behind, %llu ahead)", source,
	             (unsigned long long)t.outside, (unsigned long long)t.reads, (unsigned long long)t.precision,
	             (unsigned long long)t.worst_behind, (unsigned long long)t.worst_ahead);
	cr_expect_leq(t.precision, 1000, "%s: precision %llu ns is above the contract's 1 us", source,
	              (unsigned long long)t.precision);
}

/* Where the counter's reads are too slow or too jittery to hold the contract's 1 us (an emulator
 * such as qemu-user, whose counter is the host's clock read through a trap), the clock drops it
 * for CLOCK_MONOTONIC, as it must: the tests that need a healthy counter then have nothing to
 * test, and say so. On real hardware this never triggers (the stated precision is tens of ns). */
static void skip_if_counter_cannot_hold_1us(void)
{
	if (strstr(ats_fast_source(), "its precision here") != NULL)
		cr_skip_test("the counter cannot hold 1 us on this machine: %s", ats_fast_source());
}

Test(clock, tsc_is_within_its_precision_and_never_goes_back)
{
	if (!use(ATS_CLOCK_TSC))
		return;
	struct trace t = trace_two_threads();
	skip_if_counter_cannot_hold_1us();
	cr_assert_str_eq(ats_fast_source(), "tsc", "the counter was dropped on a healthy run: %s", ats_fast_source());
	expect_tight("tsc", t);
}

Test(clock, monotonic_is_within_its_precision_and_never_goes_back)
{
	cr_assert(use(ATS_CLOCK_MONOTONIC));
	cr_expect_str_eq(ats_fast_source(), "monotonic");
	cr_expect_eq(ats_fast_precision_ns(), 1);
	expect_tight("monotonic", trace_two_threads());
}

Test(clock, coarse_is_within_its_reported_precision)
{
	cr_assert(use(ATS_CLOCK_COARSE));
	cr_expect_str_eq(ats_fast_source(), "coarse");
	struct trace t = trace_two_threads();
	cr_expect_gt(t.precision, 1000, "coarse must not claim fine precision: %llu", (unsigned long long)t.precision);
	cr_expect_eq(t.backwards, 0);
	/* The kernel updates the coarse clock from its tick handler, which a busy host can delay past
	 * the two ticks the precision allows: a few reads in a thousand may lag further. */
	cr_expect_leq(t.outside * 1000, t.reads, "coarse: %llu of %llu reads lag more than %llu ns (worst %llu)",
	              (unsigned long long)t.outside, (unsigned long long)t.reads, (unsigned long long)t.precision,
	              (unsigned long long)t.worst_behind);
	cr_expect_eq(t.worst_ahead, 0, "the coarse clock ran ahead of CLOCK_MONOTONIC");
}

/* CPUID.80000007H:EDX bit 8 (invariant TSC), read independently of the library. */
static bool cpu_has_invariant_counter(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d;
	__asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000000u), "c"(0));
	if (a < 0x80000007u)
		return false;
	__asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000007u), "c"(0));
	return (d >> 8) & 1;
#elif defined(__aarch64__)
	return true;
#else
	return false;
#endif
}

Test(clock, the_default_is_never_coarse_and_is_tsc_exactly_when_the_cpu_says_invariant)
{
	start_with(NULL);
	ats_clock_source src = ats_clock_current();
	cr_expect_neq(src, ATS_CLOCK_COARSE, "the default fell back to coarse: %s", ats_fast_source());
	if (!cpu_has_invariant_counter())
		cr_expect_str_eq(ats_fast_source(), "monotonic (the CPU reports no invariant counter)");
	else if (src != ATS_CLOCK_TSC)
		/* Only a calibration that cannot hold 1 us (an emulator, a starved host) says no. */
		cr_expect(strncmp(ats_fast_source(), "monotonic (tsc not available: ", 30) == 0,
		          "invariant counter, yet: %s", ats_fast_source());
	cr_expect_leq(ats_fast_precision_ns(), 1000);
}

/* The path most cloud VMs take where the CPU does not report an invariant counter: forced here so
 * that it runs on every machine, whatever its CPU. */
Test(clock, an_untrusted_counter_gives_monotonic_never_coarse)
{
	atomic_store(&ats__clock_distrust_counter, 1);
	start_with(NULL);
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
	cr_expect_str_eq(ats_fast_source(), "monotonic (the CPU reports no invariant counter)");
	cr_expect_eq(ats_fast_precision_ns(), 1);
	expect_tight("untrusted", trace_two_threads());
	cr_expect(ats_clock_force(ATS_CLOCK_AUTO));
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
}

Test(clock, env_picks_each_source)
{
	start_with("monotonic");
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
	cr_expect_str_eq(ats_fast_source(), "monotonic");
}

Test(clock, env_coarse)
{
	start_with("coarse");
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_COARSE);
	cr_expect_str_eq(ats_fast_source(), "coarse");
}

Test(clock, env_tsc_or_says_why_not)
{
	start_with("tsc");
	if (ats_clock_current() == ATS_CLOCK_TSC) {
		cr_expect_str_eq(ats_fast_source(), "tsc");
	} else {
		cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
		cr_expect(strncmp(ats_fast_source(), "monotonic (ATS_CLOCK=tsc not available: ", 40) == 0, "%s",
		          ats_fast_source());
	}
}

Test(clock, env_bogus_keeps_the_policy)
{
	start_with("fastest");
	cr_expect_neq(ats_clock_current(), ATS_CLOCK_COARSE);
	cr_expect_neq(ats_clock_current(), ATS_CLOCK_AUTO);
}

Test(clock, force_rejects_what_is_not_a_source_and_changes_nothing)
{
	cr_assert(use(ATS_CLOCK_MONOTONIC));
	cr_expect_not(ats_clock_force((ats_clock_source)42));
	cr_expect_not(ats_clock_force((ats_clock_source)-1));
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
	cr_expect(ats_clock_force(ATS_CLOCK_COARSE));
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_COARSE);
	cr_expect(ats_clock_force(ATS_CLOCK_AUTO));
	cr_expect_neq(ats_clock_current(), ATS_CLOCK_COARSE);
}

/* Injects a counter jump at the next re-anchoring and reads until the clock has noticed (each
 * re-anchoring comes within 10 ms of counter time; 2 s is a bound, not a wait). Returns the source
 * the clock ended on. */
static const char *jump_and_watch(int64_t ticks, struct trace *t)
{
	atomic_store(&ats__clock_fault_ticks, ticks);
	uint64_t end = ats_now_ns() + 2000 * MS, last = 0;
	while (ats_clock_current() == ATS_CLOCK_TSC && ats_now_ns() < end) {
		uint64_t before = ats_now_ns();
		uint64_t fast = ats_fast_now_ns();
		if (fast < last)
			t->backwards++;
		if (fast + ats_fast_precision_ns() < before)
			t->outside++;
		last = fast;
	}
	/* Once dropped, reads are CLOCK_MONOTONIC's, still clamped to this thread's last reading. */
	for (int i = 0; i < 1000; i++) {
		uint64_t fast = ats_fast_now_ns();
		if (fast < last)
			t->backwards++;
		last = fast;
	}
	return ats_fast_source();
}

Test(clock, a_counter_that_jumps_forward_is_dropped_for_good)
{
	if (!use(ATS_CLOCK_TSC))
		return;
	struct trace t = {0};
	const char *src = jump_and_watch(INT64_C(1) << 36, &t); /* seconds of counter time */
	skip_if_counter_cannot_hold_1us();
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
	cr_expect(strstr(src, "tsc dropped: it disagreed with CLOCK_MONOTONIC") != NULL, "%s", src);
	cr_expect_eq(t.backwards, 0);
	cr_expect_eq(t.outside, 0);
	/* For good: neither a force nor the policy brings it back. */
	atomic_store(&ats__clock_fault_ticks, 0);
	cr_expect_not(ats_clock_force(ATS_CLOCK_TSC));
	cr_expect(ats_clock_force(ATS_CLOCK_AUTO));
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
	cr_expect(strstr(ats_fast_source(), "tsc dropped") != NULL, "%s", ats_fast_source());
	cr_expect_eq(ats_fast_precision_ns(), 1);
}

Test(clock, a_counter_that_runs_backwards_is_dropped_for_good)
{
	if (!use(ATS_CLOCK_TSC))
		return;
	struct trace t = {0};
	const char *src = jump_and_watch(-(INT64_C(1) << 30), &t); /* a fraction of a second */
	skip_if_counter_cannot_hold_1us();
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_MONOTONIC);
	cr_expect(strstr(src, "tsc dropped: it ran backwards") != NULL, "%s", src);
	cr_expect_eq(t.backwards, 0);
	atomic_store(&ats__clock_fault_ticks, 0);
	cr_expect_not(ats_clock_force(ATS_CLOCK_TSC));
}

Test(clock, a_small_disagreement_within_the_bound_keeps_the_counter)
{
	if (!use(ATS_CLOCK_TSC))
		return;
	/* A few hundred ticks (about 0.1 us) off at one re-anchoring: inside the 50 us bound. */
	atomic_store(&ats__clock_fault_ticks, 300);
	uint64_t end = ats_now_ns() + 50 * MS;
	while (ats_now_ns() < end)
		(void)ats_fast_now_ns();
	atomic_store(&ats__clock_fault_ticks, 0);
	skip_if_counter_cannot_hold_1us();
	cr_expect_eq(ats_clock_current(), ATS_CLOCK_TSC, "%s", ats_fast_source());
}

/* Reads the clock on this thread until a re-anchoring has stored a new anchor (within 10 ms of
 * counter time; 2 s is a bound, not a wait). */
static void read_until_reanchored(void)
{
	uint64_t base = atomic_load(&ats__fast_clock.tsc_base), end = ats_now_ns() + 2000 * MS;
	while (atomic_load(&ats__fast_clock.tsc_base) == base && ats_clock_current() == ATS_CLOCK_TSC &&
	       ats_now_ns() < end)
		(void)ats_fast_now_ns();
}

/* What readers see after the counter jumped forward by ns (a VM migration or a snapshot restore)
 * inside a re-anchoring window: the anchor's counter value moves back by that much, written
 * under the clock's seqlock as a re-anchoring writes it. */
static void counter_jumps_forward(uint64_t ns)
{
	struct ats__fast_clock *c = &ats__fast_clock;
	uint64_t ticks = (uint64_t)(((unsigned __int128)ns << 32) / atomic_load(&c->mult));
	uint32_t seq = atomic_load(&c->seq);
	while ((seq & 1) || !atomic_compare_exchange_weak(&c->seq, &seq, seq + 1))
		seq = atomic_load(&c->seq);
	atomic_store(&c->tsc_base, atomic_load(&c->tsc_base) - ticks);
	atomic_store(&c->seq, seq + 2);
}

/* Readers run ahead of CLOCK_MONOTONIC by a jump until the next re-anchoring drops the counter;
 * the first reading after the drop, through the CLOCK_MONOTONIC path, was not clamped to the
 * thread's last one and stepped back by nearly the jump (`now - start` wrapped). */
Test(clock, a_dropped_counter_never_steps_a_thread_back)
{
	if (!use(ATS_CLOCK_TSC))
		return;
	read_until_reanchored();      /* a fresh anchor, a full window ahead */
	counter_jumps_forward(90000); /* above the 50 us that drops it, inside the shortest window */
	uint64_t last = ats_fast_now_ns(), worst = 0, end = ats_now_ns() + 2000 * MS;
	while (ats_clock_current() == ATS_CLOCK_TSC && ats_now_ns() < end) {
		uint64_t now = ats_fast_now_ns();
		if (now < last && last - now > worst)
			worst = last - now;
		last = now;
	}
	skip_if_counter_cannot_hold_1us();
	cr_assert_neq(ats_clock_current(), ATS_CLOCK_TSC, "the counter was not dropped");
	for (int i = 0; i < 1000; i++) {
		uint64_t now = ats_fast_now_ns();
		if (now < last && last - now > worst)
			worst = last - now;
		last = now;
	}
	cr_expect_eq(worst, 0, "a reading stepped back by %llu ns (%s)", (unsigned long long)worst, ats_fast_source());
}
