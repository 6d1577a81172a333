/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed map stress: allows, inserts, idle and forced evictions, resizes and overrides from every
 * core at once, with synthetic time, checked by exact counts: no key is ever granted more than
 * burst + rate * elapsed (plus one burst per forced eviction, the documented effect), and the map
 * never holds more keys or bytes than its caps. Hot keys come in two forms, short ones through the
 * bool call and long ones (identified by their hash) through the throttle call, counted apart.
 * Run under ASan and TSan. */
#include <criterion/criterion.h>

#include "atscale/keyed.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 4
#define ITERS 40000
#define HOT 32
#define BURST 5
#define T0 UINT64_C(1000000000000)
#define STEP 10      /* ns of synthetic time per iteration */
#define PERIOD 1000u /* ns per token */

struct ctx {
	ats_keyed *m;
	_Atomic uint64_t grants[HOT];
	_Atomic uint64_t long_grants[HOT]; /* the throttle call on long keys */
	_Atomic int bad_answers;           /* throttle answers that contradict themselves */
	_Atomic unsigned go;
	bool check_caps;
	size_t max_bytes, key_limit;
	_Atomic int cap_violations;
	bool overrides;
};

struct worker {
	pthread_t thread;
	struct ctx *c;
	unsigned tid;
};

static void *hammer(void *arg)
{
	struct worker *w = arg;
	struct ctx *c = w->c;
	uint64_t x = 0x9e3779b97f4a7c15ull * (w->tid + 1);
	atomic_fetch_add(&c->go, 1);
	while (atomic_load(&c->go) < THREADS)
		; /* start together, so the map sees real overlap */
	for (uint32_t i = 0; i < ITERS; i++) {
		uint64_t now = T0 + (uint64_t)i * STEP;
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		uint32_t hot = (uint32_t)(x % HOT);
		if (ats_keyed_allow_at(c->m, &hot, sizeof hot, now))
			atomic_fetch_add_explicit(&c->grants[hot], 1, memory_order_relaxed);
		if (i % 2 == 0) {
			/* The same hot key, long: 40 bytes, differing from the others in its last 4. */
			char key[40];
			memset(key, 'h', sizeof key);
			memcpy(key + sizeof key - sizeof hot, &hot, sizeof hot);
			ats_limiter_result r;
			ats_keyed_status st = ats_keyed_throttle_at(c->m, key, sizeof key, 1, now, &r);
			if (st == ATS_KEYED_ALLOWED)
				atomic_fetch_add_explicit(&c->long_grants[hot], 1, memory_order_relaxed);
			/* Threads' clocks differ by up to ITERS * STEP, so a denial's wait can be that much
			 * longer than one token's. */
			bool timed_denial = st == ATS_KEYED_DENIED && !r.allowed && r.remaining == 0 &&
			                    r.limit == BURST && r.retry_after_ns > 0 &&
			                    r.retry_after_ns <= (int64_t)(PERIOD + ITERS * STEP);
			/* Under max_bytes a new key may find no room; never without a cap. */
			if (st != ATS_KEYED_ALLOWED && !timed_denial && !(c->check_caps && st == ATS_KEYED_NO_ROOM))
				atomic_fetch_add_explicit(&c->bad_answers, 1, memory_order_relaxed);
		}
		if (i % 4 == 0) {
			/* A key seen once: an insert now, idle 1 us later. */
			uint64_t cold = ((uint64_t)w->tid << 32) | (i + 1);
			(void)ats_keyed_allow_at(c->m, &cold, sizeof cold, now);
		}
		if (i % 512 == 0) {
			const void *keys[4] = {&hot, &hot, &i, &x};
			size_t lens[4] = {sizeof hot, sizeof hot, sizeof i, sizeof x};
			bool res[4];
			(void)ats_keyed_allow_burst_at(c->m, keys, lens, 4, 1, now, res);
			atomic_fetch_add_explicit(&c->grants[hot], res[0] + res[1], memory_order_relaxed);
		}
		if (w->tid == 0 && i % 1000 == 0)
			(void)ats_keyed_evict_idle_at(c->m, now, 256);
		if (c->overrides && w->tid == 1 && i % 97 == 0) {
			/* Overrides on cold keys only (hot keys keep one limit, so their bound is exact). */
			uint64_t cold = ((uint64_t)7 << 32) | (i % 64);
			ats_keyed_limit lim = {ats_rate_every(PERIOD * (1 + i % 3)), 1 + i % 4};
			ats_err_unref(ats_keyed_set_limit(c->m, &cold, sizeof cold, i % 5 ? &lim : NULL, now));
		}
		if (c->check_caps && (ats_keyed_bytes(c->m) > c->max_bytes || ats_keyed_count(c->m) > c->key_limit))
			atomic_fetch_add(&c->cap_violations, 1);
	}
	return NULL;
}

static void run(struct ctx *c)
{
	struct worker w[THREADS];
	for (unsigned t = 0; t < THREADS; t++) {
		w[t] = (struct worker){.c = c, .tid = t};
		cr_assert_eq(pthread_create(&w[t].thread, NULL, hammer, &w[t]), 0);
	}
	for (unsigned t = 0; t < THREADS; t++)
		pthread_join(w[t].thread, NULL);
}

/* Exact: grants to a key never exceed burst + elapsed / period, elapsed from the first timestamp
 * any thread used to the last, plus one burst per forced eviction (of any key). */
static void check_grants(struct ctx *c, uint64_t forced)
{
	uint64_t bound = BURST + (uint64_t)(ITERS - 1) * STEP / PERIOD + BURST * forced;
	uint64_t total = 0;
	for (int k = 0; k < HOT; k++) {
		uint64_t g = atomic_load(&c->grants[k]);
		cr_assert_leq(g, bound, "key %d: %llu grants, bound %llu", k, (unsigned long long)g,
		              (unsigned long long)bound);
		total += g;
		uint64_t lg = atomic_load(&c->long_grants[k]);
		cr_assert_leq(lg, bound, "long key %d: %llu grants, bound %llu", k, (unsigned long long)lg,
		              (unsigned long long)bound);
		cr_assert_gt(lg, 0, "long key %d was never granted", k);
	}
	cr_assert_eq(atomic_load(&c->bad_answers), 0, "a throttle answer was neither allowed nor a timed denial");
	/* Sanity: the limiter is not just denying everything (each key is asked ~30x its rate). */
	cr_assert_geq(total, (uint64_t)HOT * (bound - BURST * forced) / 2, "total %llu", (unsigned long long)total);
}

Test(stress_keyed, growth_and_idle_eviction_never_over_grant, .timeout = 120)
{
	struct ctx *c = calloc(1, sizeof *c);
	ats_keyed_config cfg = {
	    .rate = ats_rate_every(PERIOD), .burst = BURST, .max_keys = 1 << 20, .capacity_hint = 16};
	c->overrides = true;
	cr_assert_null(ats_keyed_new(&c->m, &cfg));
	run(c);
	ats_keyed_stats st;
	ats_keyed_stats_get(c->m, &st);
	cr_assert_eq(st.evicted_forced, 0, "no cap pressure: every eviction was of an idle key");
	cr_assert_gt(st.resizes, 3, "the map grew while in use");
	cr_assert_gt(st.evicted_idle, 1000);
	check_grants(c, 0);
	ats_keyed_free(c->m);
	free(c);
}

Test(stress_keyed, caps_hold_under_forced_eviction, .timeout = 120)
{
	struct ctx *c = calloc(1, sizeof *c);
	ats_keyed_config cfg = {.rate = ats_rate_every(PERIOD),
	                        .burst = BURST,
	                        .max_keys = 1 << 20,
	                        .capacity_hint = 16,
	                        .max_bytes = 96 * 1024};
	cr_assert_null(ats_keyed_new(&c->m, &cfg));
	ats_keyed_stats st;
	ats_keyed_stats_get(c->m, &st);
	c->check_caps = true;
	c->max_bytes = cfg.max_bytes;
	c->key_limit = st.key_limit;
	run(c);
	ats_keyed_stats_get(c->m, &st);
	cr_assert_eq(atomic_load(&c->cap_violations), 0);
	cr_assert_leq(st.keys, st.key_limit);
	cr_assert_leq(ats_keyed_bytes(c->m), cfg.max_bytes);
	cr_assert_gt(st.evicted_forced + st.evicted_idle, 1000);
	check_grants(c, st.evicted_forced);
	ats_keyed_free(c->m);
	free(c);
}
