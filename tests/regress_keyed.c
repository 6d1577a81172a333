/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the keyed limiter maps: each fences a bug that was found and fixed, in the state that showed it
 * (the spec tests are in test_keyed.c). The comment above each test says what the bug was. */
#include <atscale/keyed.h>

#include "internal/keyed.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define T0 UINT64_C(1000000000000) /* an arbitrary start, in ns */
#define MS UINT64_C(1000000)
#define US UINT64_C(1000)

/* Bug: evicting a key on a clock that never moves (an infinite rate, or rate 0) raised the map's floor for new keys
 * to the evictor's time, as if the key had just become full. From then on a new key made by a caller a microsecond
 * behind started in debt: with burst 1 it was refused outright. */
Test(evict, a_key_on_a_still_clock_leaves_new_keys_full)
{
	ats_keyed_config cfg = {.rate = ats_rate_per_sec(10), .burst = 1, .max_keys = 1};
	ats_keyed_limit limits[] = {{ATS_RATE_INF, 1}, {{0, ATS_NS_PER_SEC}, 1}};
	for (int i = 0; i < 2; i++) {
		ats_keyed *m = NULL;
		cr_assert_null(ats_keyed_new(&m, &cfg));
		cr_assert_null(ats_keyed_set_limit(m, "vip", 3, &limits[i], T0));
		cr_assert(ats_keyed_allow_at(m, "new", 3, T0 + MS)); /* the map is at its cap: "vip" goes */
		ats_keyed_stats st;
		ats_keyed_stats_get(m, &st);
		cr_assert_eq(st.keys, 1);
		cr_expect_eq(ats_keyed_tokens_at(m, "other", 5, T0 + MS - US), 1, "limit %d: a new key is not full", i);
		cr_expect(ats_keyed_allow_at(m, "other", 5, T0 + MS - US), "limit %d: a new key refused", i);
		ats_keyed_free(m);
	}
}

/* ---- A writer held between its swap of a key's TAT for the gone mark and its store of DEAD ---- */

static struct {
	ats_keyed *m;
	_Atomic int held, go, done, slow;
	ats_err *err;
	unsigned long loops;
	uint64_t tokens;
} rv;

static _Thread_local bool is_reader;

/* The pause hook: holds the first writer that reaches ATS__KEYED_PAUSE_KILLED until the test says
 * go, and notes the reader heading for the writer mutex (it then waits there: it does not spin). */
static void hold_killed(int point, uint32_t aux)
{
	(void)aux;
	if (point == ATS__KEYED_PAUSE_SLOW && is_reader)
		atomic_store(&rv.slow, 1);
	if (point != ATS__KEYED_PAUSE_KILLED || atomic_load(&rv.held))
		return;
	atomic_store(&rv.held, 1);
	while (!atomic_load(&rv.go))
		sched_yield();
}

static void *evict_writer(void *arg)
{
	(void)arg;
	(void)ats_keyed_allow_at(rv.m, "new", 3, T0); /* the map is at its cap: "K" is forced out */
	return NULL;
}

static void *set_limit_writer(void *arg)
{
	(void)arg;
	ats_keyed_limit lim = {ats_rate_per_sec(1), 20};
	rv.err = ats_keyed_set_limit(rv.m, "K", 1, &lim, T0);
	return NULL;
}

static void *tokens_reader(void *arg)
{
	(void)arg;
	is_reader = true;
	rv.tokens = ats_keyed_tokens_at(rv.m, "K", 1, T0);
	atomic_store(&rv.done, 1);
	return NULL;
}

/* Runs tokens_at(K) on another thread while `writer` is held at ATS__KEYED_PAUSE_KILLED on K's
 * slot, and returns its answer. Fails when the reader goes round its lookup loop 100 times without
 * returning or heading for the writer mutex. */
static uint64_t tokens_while_killing(void *(*writer)(void *))
{
	atomic_store(&rv.held, 0);
	atomic_store(&rv.go, 0);
	atomic_store(&rv.done, 0);
	atomic_store(&rv.slow, 0);
	atomic_store(&ats__keyed_pause, hold_killed);
	pthread_t w, r;
	cr_assert_eq(pthread_create(&w, NULL, writer, NULL), 0);
	while (!atomic_load(&rv.held))
		sched_yield();
	unsigned long before = atomic_load(&ats__keyed_tokens_loops);
	cr_assert_eq(pthread_create(&r, NULL, tokens_reader, NULL), 0);
	while (!atomic_load(&rv.done) && !atomic_load(&rv.slow) && atomic_load(&ats__keyed_tokens_loops) - before < 100)
		sched_yield();
	rv.loops = atomic_load(&ats__keyed_tokens_loops) - before;
	bool returned = atomic_load(&rv.done) || atomic_load(&rv.slow);
	atomic_store(&rv.go, 1); /* the writer finishes, and the reader with it */
	pthread_join(w, NULL);
	pthread_join(r, NULL);
	atomic_store(&ats__keyed_pause, NULL);
	cr_assert(returned, "tokens_at looped %lu times while the writer was held", rv.loops);
	return rv.tokens;
}

/* Not a bug, fenced all the same: a reader that meets a slot whose TAT is the gone mark while its
 * meta still says LIVE does not spin while the evicting writer is held there (it answers at once,
 * or waits at the writer mutex). The answer is a new key's: the eviction forgives the debt. */
Test(tokens_at, returns_while_an_eviction_is_held_between_mark_and_dead)
{
	ats_keyed_config cfg = {.rate = ats_rate_per_sec(1), .burst = 10, .max_keys = 1};
	cr_assert_null(ats_keyed_new(&rv.m, &cfg));
	cr_assert(ats_keyed_allow_n_at(rv.m, "K", 1, 10, T0)); /* K: in debt, 0 tokens */
	uint64_t t = tokens_while_killing(evict_writer);
	cr_expect_leq(rv.loops, 2, "tokens_at took %lu iterations", rv.loops);
	cr_expect_eq(t, 10);
	ats_keyed_free(rv.m);
}

/* Bug: while set_limit replaced a key's slot, ats_keyed_tokens_at read the key as a new (full) one:
 * between the writer's swap of the TAT for the gone mark and its store of DEAD, only the writer
 * holds the key's TAT. K had 0 tokens before and after, and read 10. Such a reader now waits for
 * the writer mutex, as an allow does. */
Test(tokens_at, a_key_whose_limit_is_being_replaced_keeps_its_tokens)
{
	ats_keyed_config cfg = {.rate = ats_rate_per_sec(1), .burst = 10, .max_keys = 100};
	cr_assert_null(ats_keyed_new(&rv.m, &cfg));
	cr_assert(ats_keyed_allow_n_at(rv.m, "K", 1, 10, T0)); /* K: 0 tokens */
	cr_assert_eq(ats_keyed_tokens_at(rv.m, "K", 1, T0), 0);
	uint64_t t = tokens_while_killing(set_limit_writer);
	cr_assert_null(rv.err);
	cr_assert_eq(ats_keyed_tokens_at(rv.m, "K", 1, T0), 0, "after set_limit");
	cr_expect_eq(t, 0, "tokens_at during set_limit: %lu tokens (K has 0 before and after)", (unsigned long)t);
	ats_keyed_free(rv.m);
}

/* ---- Every key hot ---- */

enum { HOT = 100 };
static _Thread_local bool hot_touching;
static uint32_t hot_new_end; /* the new keys 100000 .. hot_new_end - 1 are hot too */

/* The pause hook: each time the CLOCK hand clears a key's reference bit, every key still in the
 * map is touched again (an allow, refused, which sets the bit as a reader's does). Only keys still
 * there (0 tokens): an absent key reads as full, and its allow would take the writer mutex that
 * this thread holds. */
static void touch_all(int point, uint32_t aux)
{
	(void)aux;
	if (point != ATS__KEYED_PAUSE_HAND || hot_touching)
		return;
	hot_touching = true;
	for (uint32_t k = 0; k < HOT; k++)
		if (ats_keyed_tokens_at(rv.m, &k, sizeof k, T0) == 0)
			(void)ats_keyed_allow_at(rv.m, &k, sizeof k, T0);
	for (uint32_t k = 100000; k < hot_new_end; k++)
		if (ats_keyed_tokens_at(rv.m, &k, sizeof k, T0) == 0)
			(void)ats_keyed_allow_at(rv.m, &k, sizeof k, T0);
	hot_touching = false;
}

/* Bug: with every key referenced again as fast as the CLOCK hand cleared it, the hand found no
 * victim and the insert went ahead anyway, one key over max_keys; the map grew to 200 keys under a
 * cap of 100 (and, with a small cap, refused new keys for want of room). The hand now evicts the
 * first key it met when it finds none unreferenced. */
Test(evict, max_keys_holds_when_every_key_is_hot)
{
	ats_keyed_config cfg = {.rate = ats_rate_per_sec(1), .burst = 1, .max_keys = HOT};
	cr_assert_null(ats_keyed_new(&rv.m, &cfg));
	for (uint32_t k = 0; k < HOT; k++)
		cr_assert(ats_keyed_allow_at(rv.m, &k, sizeof k, T0)); /* each in debt: none idle */
	atomic_store(&ats__keyed_pause, touch_all);
	size_t most = 0;
	for (uint32_t k = 100000; k < 100000 + HOT; k++) {
		hot_new_end = k;
		cr_assert(ats_keyed_allow_at(rv.m, &k, sizeof k, T0));
		size_t n = ats_keyed_count(rv.m);
		most = n > most ? n : most;
	}
	atomic_store(&ats__keyed_pause, NULL);
	ats_keyed_stats st;
	ats_keyed_stats_get(rv.m, &st);
	cr_expect_leq(most, HOT, "max_keys %d: the map held %zu keys (now %zu; forced evictions %lu, inserts %lu)", HOT,
	              most, st.keys, (unsigned long)st.evicted_forced, (unsigned long)st.inserts);
	ats_keyed_free(rv.m);
}
