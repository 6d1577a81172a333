/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed limiters: every documented semantic, with synthetic time (no sleeps). */
#include <criterion/criterion.h>

#include "atscale/keyed.h"
#include "internal/keyed.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <urcu/urcu-memb.h>
#include <stdio.h>
#include <string.h>

#define T0 UINT64_C(1000000000000) /* an arbitrary start, in ns */
#define MS UINT64_C(1000000)

/* 10 per second (one token per 100 ms), burst 5. */
static ats_keyed_config cfg_default(size_t max_keys)
{
	return (ats_keyed_config){.rate = ats_rate_per_sec(10), .burst = 5, .max_keys = max_keys};
}

static ats_keyed *make(ats_keyed_config cfg)
{
	ats_keyed *m = NULL;
	ats_err *err = ats_keyed_new(&m, &cfg);
	cr_assert_null(err, "ats_keyed_new: %s", ats_err_message(err));
	return m;
}

static bool allow_u32(ats_keyed *m, uint32_t key, uint64_t now)
{
	return ats_keyed_allow_at(m, &key, sizeof key, now);
}

static size_t drain(ats_keyed *m, const void *key, size_t len, uint64_t now)
{
	size_t granted = 0;
	while (granted < 1000 && ats_keyed_allow_at(m, key, len, now))
		granted++;
	return granted;
}

static void expect_invalid(ats_err *err)
{
	cr_assert(ats_err_is(err, ATS_ERR_INVALID_ARGUMENT), "want invalid argument, got %s",
	          err ? ats_err_message(err) : "success");
	ats_err_unref(err);
}

Test(keyed, init_rejects_bad_config)
{
	ats_keyed *m = (ats_keyed *)0x1;
	ats_keyed_config c = cfg_default(100);
	expect_invalid(ats_keyed_new(&m, NULL));
	cr_assert_null(m);
	expect_invalid(ats_keyed_new(NULL, &c));
	expect_invalid(ats_keyed_init(NULL, &c));
	c.max_keys = 0;
	expect_invalid(ats_keyed_new(&m, &c));
	/* So many keys that the table's size in bytes would wrap (it was accepted with a table of a
	 * few KB, and the first insert wrote far outside it). */
	c.max_keys = c.capacity_hint = SIZE_MAX / 64;
	expect_invalid(ats_keyed_new(&m, &c));
	c.max_keys = c.capacity_hint = SIZE_MAX / 256 + 1;
	expect_invalid(ats_keyed_new(&m, &c));
	c = cfg_default(100);
	c.burst = 0;
	expect_invalid(ats_keyed_new(&m, &c));
	c.burst = (UINT64_C(1) << 32) + 1;
	expect_invalid(ats_keyed_new(&m, &c));
	c = cfg_default(100);
	c.rate = (ats_rate){UINT64_C(1) << 62, 1};
	expect_invalid(ats_keyed_new(&m, &c));
	c = cfg_default(100);
	c.max_bytes = 512;
	expect_invalid(ats_keyed_new(&m, &c));
	c = cfg_default(100);
	c.max_overrides = ATS_KEYED_OVERRIDES_MAX + 1;
	expect_invalid(ats_keyed_new(&m, &c));
	cr_assert_null(m);
}

Test(keyed, new_key_starts_full_and_refills_exactly)
{
	ats_keyed *m = make(cfg_default(100));
	const char *ip = "10.0.0.1";
	cr_assert_eq(ats_keyed_tokens_at(m, ip, 8, T0), 5);
	cr_assert_eq(ats_keyed_count(m), 0, "tokens_at adds nothing");
	cr_assert_eq(drain(m, ip, 8, T0), 5);
	cr_assert_eq(ats_keyed_count(m), 1);
	cr_assert_eq(ats_keyed_tokens_at(m, ip, 8, T0), 0);
	cr_assert_not(ats_keyed_allow_at(m, ip, 8, T0 + 100 * MS - 1), "a token is 100 ms");
	cr_assert(ats_keyed_allow_at(m, ip, 8, T0 + 100 * MS));
	cr_assert_not(ats_keyed_allow_at(m, ip, 8, T0 + 100 * MS));
	cr_assert_eq(drain(m, ip, 8, T0 + 10000 * MS), 5, "refill stops at burst");
	/* Another key is independent. */
	cr_assert_eq(drain(m, "10.0.0.2", 8, T0), 5);
	cr_assert_eq(ats_keyed_count(m), 2);
	ats_keyed_free(m);
}

Test(keyed, allow_n_and_stale_time)
{
	ats_keyed *m = make(cfg_default(100));
	uint32_t k = 7;
	cr_assert_not(ats_keyed_allow_n_at(m, &k, 4, 6, T0), "n above burst on a new key");
	cr_assert_eq(ats_keyed_count(m), 0, "a denied new key is not added");
	cr_assert(ats_keyed_allow_n_at(m, &k, 4, 3, T0));
	cr_assert_not(ats_keyed_allow_n_at(m, &k, 4, 3, T0));
	cr_assert(ats_keyed_allow_n_at(m, &k, 4, 2, T0));
	/* An older timestamp never mints tokens. */
	cr_assert_not(ats_keyed_allow_at(m, &k, 4, T0 - 1000 * MS));
	cr_assert(ats_keyed_allow_at(m, &k, 4, T0 + 100 * MS));
	cr_assert_not(ats_keyed_allow_at(m, &k, 4, T0 - 1000 * MS));
	ats_keyed_free(m);
}

Test(keyed, bad_input_is_false_and_changes_nothing)
{
	ats_keyed *m = make(cfg_default(100));
	char big[ATS_KEYED_MAX_KEY + 1];
	memset(big, 'b', sizeof big);
	cr_assert_not(ats_keyed_allow_at(NULL, "a", 1, T0));
	cr_assert_not(ats_keyed_allow_n_at(m, "a", 1, 0, T0));
	cr_assert_not(ats_keyed_allow_n_at(m, "a", 1, (UINT64_C(1) << 32) + 1, T0));
	cr_assert_eq(ats_keyed_tokens_at(m, big, sizeof big, T0), 0);
	cr_assert_eq(ats_keyed_tokens_at(m, NULL, 1, T0), 0);
	cr_assert_eq(ats_keyed_tokens_at(NULL, "a", 1, T0), 0);
	expect_invalid(ats_keyed_set_limit(m, big, sizeof big, NULL, T0));
	expect_invalid(ats_keyed_set_limit(m, big, 0, NULL, T0));
	expect_invalid(ats_keyed_set_limit(NULL, "a", 1, NULL, T0));
	ats_keyed_limit zero = {ats_rate_per_sec(1), 0};
	expect_invalid(ats_keyed_set_limit(m, "a", 1, &zero, T0));
	ats_keyed_limit fast = {ats_rate_per_sec(UINT64_C(1) << 50), 1};
	expect_invalid(ats_keyed_set_limit(m, "a", 1, &fast, T0));
	cr_assert_eq(ats_keyed_evict_idle_at(NULL, T0, 0), 0);
	cr_assert_eq(ats_keyed_count(m), 0);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.inserts, 0);
	cr_assert_eq(st.overrides, 0, "a rejected limit takes no override entry");
	cr_assert(ats_keyed_allow_at(m, big, ATS_KEYED_MAX_KEY, T0), "256 bytes is the longest key");
	ats_keyed_free(m);
}

Test(keyed, key_ok_states_the_limits)
{
	char k[ATS_KEYED_MAX_KEY + 1] = {0};
	cr_assert(ats_keyed_key_ok(k, 1));
	cr_assert(ats_keyed_key_ok(k, ATS_KEYED_INLINE_KEY));
	cr_assert(ats_keyed_key_ok(k, ATS_KEYED_INLINE_KEY + 1));
	cr_assert(ats_keyed_key_ok(k, ATS_KEYED_MAX_KEY));
	cr_assert_not(ats_keyed_key_ok(k, ATS_KEYED_MAX_KEY + 1));
	cr_assert_not(ats_keyed_key_ok(k, 0));
	cr_assert_not(ats_keyed_key_ok(NULL, 1));
}

/* The bool calls answer a bad key with false in release builds and fail an assert in debug
 * builds, so a caller's bug is not mistaken for a limited client. */
#ifdef NDEBUG
Test(keyed, bool_calls_refuse_a_bad_key)
{
	ats_keyed *m = make(cfg_default(100));
	char big[ATS_KEYED_MAX_KEY + 1] = {0};
	cr_assert_not(ats_keyed_allow_at(m, NULL, 1, T0));
	cr_assert_not(ats_keyed_allow_at(m, "a", 0, T0));
	cr_assert_not(ats_keyed_allow_at(m, big, sizeof big, T0));
	const void *keys[2] = {"a", big};
	size_t lens[2] = {1, sizeof big};
	bool got[2];
	cr_assert_eq(ats_keyed_allow_burst_at(m, keys, lens, 2, 1, T0, got), 1);
	cr_assert(got[0]);
	cr_assert_not(got[1]);
	cr_assert_eq(ats_keyed_count(m), 1);
	ats_keyed_free(m);
}
#else
Test(keyed, bool_call_asserts_on_an_empty_key, .signal = SIGABRT)
{
	ats_keyed *m = make(cfg_default(100));
	(void)ats_keyed_allow_at(m, "a", 0, T0);
}

Test(keyed, bool_call_asserts_on_a_too_long_key, .signal = SIGABRT)
{
	ats_keyed *m = make(cfg_default(100));
	char big[ATS_KEYED_MAX_KEY + 1] = {0};
	(void)ats_keyed_allow_at(m, big, sizeof big, T0);
}

Test(keyed, burst_asserts_on_a_null_key, .signal = SIGABRT)
{
	ats_keyed *m = make(cfg_default(100));
	const void *keys[2] = {"a", NULL};
	size_t lens[2] = {1, 1};
	bool got[2];
	(void)ats_keyed_allow_burst_at(m, keys, lens, 2, 1, T0, got);
}
#endif

Test(keyed, every_length_and_byte_is_a_distinct_key)
{
	ats_keyed *m = make(cfg_default(1000));
	unsigned char key[16] = {0};
	/* All lengths of an all-zero key, then each single byte flipped at each length. */
	size_t keys = 0;
	for (size_t len = 1; len <= 16; len++) {
		cr_assert_eq(drain(m, key, len, T0), 5, "len %zu", len);
		keys++;
		for (size_t i = 0; i < len; i++) {
			key[i] = 0x5a;
			cr_assert_eq(drain(m, key, len, T0), 5, "len %zu byte %zu", len, i);
			key[i] = 0;
			keys++;
		}
	}
	cr_assert_eq(ats_keyed_count(m), keys);
	ats_keyed_free(m);
}

Test(keyed, idle_keys_are_evicted_losslessly)
{
	ats_keyed *m = make(cfg_default(100));
	cr_assert_eq(drain(m, "idle", 4, T0), 5);
	cr_assert_eq(drain(m, "busy", 4, T0 + 400 * MS), 5);
	/* At T0 + 500 ms "idle" is full again, "busy" (drained at +400 ms) is not. */
	cr_assert_eq(ats_keyed_evict_idle_at(m, T0 + 500 * MS, 0), 1);
	cr_assert_eq(ats_keyed_count(m), 1);
	cr_assert_eq(ats_keyed_tokens_at(m, "busy", 4, T0 + 500 * MS), 1);
	cr_assert_eq(drain(m, "idle", 4, T0 + 500 * MS), 5, "the evicted key behaves as the full one it was");
	/* Lossless across clocks: a caller with a timestamp older than the eviction's gets no more
	 * than the evicted bucket would have given it. "idle" (drained at +500 ms) was full from
	 * +1000 ms, "busy" from +900 ms: at +800 ms "idle" had 3 tokens. */
	cr_assert_eq(ats_keyed_evict_idle_at(m, T0 + 2000 * MS, 0), 2);
	cr_assert_eq(ats_keyed_tokens_at(m, "new", 3, T0 + 800 * MS), 3, "a new key: as allow would add it");
	cr_assert_eq(drain(m, "idle", 4, T0 + 800 * MS), 3);
	cr_assert_eq(drain(m, "idle", 4, T0 + 2000 * MS), 5);
	/* ... and no less: a caller a microsecond behind the eviction finds a new key full (the floor
	 * is when the evicted buckets became full, not when they were evicted). */
	cr_assert_eq(drain(m, "new", 3, T0 + 2000 * MS - 1000), 5);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.evicted_idle, 3);
	cr_assert_eq(st.evicted_forced, 0);
	ats_keyed_free(m);
}

Test(keyed, at_the_cap_idle_keys_go_first)
{
	ats_keyed_config c = cfg_default(8);
	ats_keyed *m = make(c);
	for (uint32_t k = 0; k < 8; k++)
		cr_assert_eq(drain(m, &k, 4, k == 3 ? T0 : T0 + 1000 * MS), 5);
	/* Key 3 was drained at T0 and is full at T0 + 1000 ms; every other key is empty then. */
	uint32_t k = 100;
	cr_assert(allow_u32(m, k, T0 + 1000 * MS));
	cr_assert_eq(ats_keyed_count(m), 8);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.evicted_idle, 1);
	cr_assert_eq(st.evicted_forced, 0);
	for (k = 0; k < 8; k++)
		if (k != 3)
			cr_assert_eq(ats_keyed_tokens_at(m, &k, 4, T0 + 1000 * MS), 0, "key %u kept", k);
	ats_keyed_free(m);
}

Test(keyed, forced_eviction_at_the_cap_is_lru_and_gives_at_most_one_burst)
{
	ats_keyed *m = make(cfg_default(8));
	uint64_t now = T0;
	for (uint32_t k = 0; k < 8; k++)
		cr_assert_eq(drain(m, &k, 4, now), 5);
	/* No key is idle and all were just used: the hand clears every reference bit on its first
	 * pass and takes the first key on its second. */
	uint32_t k = 1000;
	cr_assert(allow_u32(m, k, now));
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.evicted_forced, 1);
	cr_assert_eq(ats_keyed_count(m), 8);
	uint32_t gone = 8, spared = 8;
	for (k = 0; k < 8; k++) {
		if (ats_keyed_tokens_at(m, &k, 4, now) == 5)
			gone = k; /* the evicted key reads as new: full */
		else if (spared == 8)
			spared = k;
	}
	cr_assert_neq(gone, 8);
	/* Touch every key still there but `spared`: it becomes the least recently used. */
	for (k = 0; k < 8; k++)
		if (k != gone && k != spared)
			cr_assert_not(allow_u32(m, k, now)); /* denied, but referenced */
	k = 1001;
	cr_assert(allow_u32(m, k, now));
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.evicted_forced, 2);
	cr_assert_eq(ats_keyed_count(m), 8, "never above max_keys");
	for (k = 0; k < 8; k++)
		if (k != gone)
			cr_assert_eq(ats_keyed_tokens_at(m, &k, 4, now), k == spared ? 5 : 0, "key %u", k);
	/* The documented effect: the evicted key starts full again, one extra burst at most. */
	cr_assert_eq(drain(m, &spared, 4, now), 5);
	ats_keyed_free(m);
}

Test(keyed, per_key_override)
{
	ats_keyed_config c = cfg_default(100);
	c.max_overrides = 3;
	ats_keyed *m = make(c);
	ats_keyed_limit vip = {ats_rate_per_sec(100), 50};
	cr_assert_eq(drain(m, "a", 1, T0), 5);
	cr_assert_null(ats_keyed_set_limit(m, "a", 1, &vip, T0));
	cr_assert_eq(ats_keyed_tokens_at(m, "a", 1, T0), 0, "tokens carry over: a had none");
	cr_assert_eq(ats_keyed_tokens_at(m, "a", 1, T0 + 100 * MS), 10, "then refill at 100/s");
	cr_assert_eq(drain(m, "a", 1, T0 + 1000 * MS), 50, "up to the new burst");
	cr_assert_null(ats_keyed_set_limit(m, "b", 1, &vip, T0), "a new key with an override");
	cr_assert_eq(drain(m, "b", 1, T0), 50);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.overrides, 1, "equal limits share one entry");
	ats_keyed_limit slow = {ats_rate_per_sec(1), 2}, other = {ats_rate_per_sec(3), 3}, inf = {ATS_RATE_INF, 1};
	cr_assert_null(ats_keyed_set_limit(m, "c", 1, &slow, T0));
	cr_assert_eq(drain(m, "c", 1, T0), 2);
	cr_assert_null(ats_keyed_set_limit(m, "e", 1, &inf, T0));
	cr_assert_eq(drain(m, "e", 1, T0), 1000, "an infinite limit allows everything");
	ats_err *err = ats_keyed_set_limit(m, "d", 1, &other, T0);
	cr_assert(ats_err_is(err, ATS_ERR_LIMITED));
	ats_err_unref(err);
	/* Each insert also sweeps a few slots for idle keys, and which keys it meets depends on the
	 * map's random hash seed: a key found full again (e, whose limit is infinite; later b) may be
	 * evicted, losslessly, and counts as evicted instead of present. */
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(ats_keyed_count(m) + st.evicted_idle, 4, "the failed override added nothing");
	cr_assert_eq(drain(m, "d", 1, T0), 5);
	/* Back to the default: tokens carry over, capped at the default burst. */
	cr_assert_null(ats_keyed_set_limit(m, "a", 1, NULL, T0 + 2000 * MS));
	cr_assert_eq(drain(m, "a", 1, T0 + 2000 * MS), 5);
	cr_assert_null(ats_keyed_set_limit(m, "a", 1, NULL, T0 + 2000 * MS), "already the default");
	cr_assert_null(ats_keyed_set_limit(m, "c", 1, &slow, T0), "already this limit");
	cr_assert_eq(ats_keyed_tokens_at(m, "c", 1, T0), 0, "and nothing reset");
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(ats_keyed_count(m) + st.evicted_idle, 5, "%zu keys, %llu evicted idle", ats_keyed_count(m),
	             (unsigned long long)st.evicted_idle);
	ats_keyed_free(m);
}

Test(keyed, grows_for_real_and_keeps_every_bucket)
{
	ats_keyed_config c = cfg_default(100000);
	c.capacity_hint = 8;
	ats_keyed *m = make(c);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	size_t slots0 = st.slots;
	cr_assert_leq(slots0, 16);
	for (uint32_t k = 0; k < 20000; k++)
		cr_assert(ats_keyed_allow_n_at(m, &k, 4, 1 + k % 5, T0));
	ats_keyed_stats_get(m, &st);
	cr_assert_gt(st.resizes, 5);
	cr_assert_geq(st.slots, 20000 * 4 / 3);
	cr_assert_eq(st.keys, 20000);
	for (uint32_t k = 0; k < 20000; k++)
		cr_assert_eq(ats_keyed_tokens_at(m, &k, 4, T0), 5 - (1 + k % 5), "key %u", k);
	ats_keyed_free(m);
}

/* A reader holds key K's slot when set_limit replaces it (K moves to a new slot of the same
 * table, one token left), and comes back while a resize has copied K into the next table but not
 * yet marked K's live slot. It must not take from that copy: a reader still on the live slot
 * takes the last token there, and the resize's correction of the copy would erase the first
 * take (two grants from one token). It goes to the slow path instead. */
static struct {
	ats_keyed *m;
	pthread_t r1;
	_Atomic int r1_held, r1_go, r1_slow, r1_done, resize_armed;
	bool r1_granted, r3_granted;
} replaced;
static _Thread_local bool hold_at_found;

static void *replaced_r3(void *arg)
{
	(void)arg;
	replaced.r3_granted = ats_keyed_allow_at(replaced.m, "K", 1, T0);
	return NULL;
}

static void replaced_pause(int point, uint32_t aux)
{
	if (point == ATS__KEYED_PAUSE_FOUND && hold_at_found) {
		hold_at_found = false;
		atomic_store(&replaced.r1_held, 1);
		while (!atomic_load(&replaced.r1_go))
			sched_yield();
	} else if (point == ATS__KEYED_PAUSE_SLOW && pthread_equal(pthread_self(), replaced.r1)) {
		atomic_store(&replaced.r1_slow, 1); /* then waits for the mutex, which the resize holds */
	} else if (point == ATS__KEYED_PAUSE_COPIED && aux >> 1 == 1 && atomic_exchange(&replaced.resize_armed, 0)) {
		/* K's copy is in the new table, its live slot not marked yet: R1 goes on (it takes from the
		 * copy, or heads for the slow path), then R3 takes from the live slot. */
		atomic_store(&replaced.r1_go, 1);
		while (!atomic_load(&replaced.r1_done) && !atomic_load(&replaced.r1_slow))
			sched_yield();
		pthread_t r3;
		cr_assert_eq(pthread_create(&r3, NULL, replaced_r3, NULL), 0);
		pthread_join(r3, NULL);
	}
}

static void *replaced_r1(void *arg)
{
	(void)arg;
	hold_at_found = true;
	replaced.r1_granted = ats_keyed_allow_at(replaced.m, "K", 1, T0);
	atomic_store(&replaced.r1_done, 1);
	return NULL;
}

Test(keyed, a_reader_on_a_replaced_slot_never_takes_from_a_resize_in_progress)
{
	ats_keyed_config c = {.rate = ats_rate_per_sec(1), .burst = 10, .max_keys = 1000, .capacity_hint = 8};
	replaced.m = make(c);
	cr_assert(ats_keyed_allow_n_at(replaced.m, "K", 1, 9, T0)); /* K: one token left */
	atomic_store(&ats__keyed_pause, replaced_pause);
	cr_assert_eq(pthread_create(&replaced.r1, NULL, replaced_r1, NULL), 0);
	while (!atomic_load(&replaced.r1_held))
		sched_yield();
	ats_keyed_limit lim = {ats_rate_every(2000000000), 10};
	cr_assert_null(ats_keyed_set_limit(replaced.m, "K", 1, &lim, T0)); /* K's new slot: still one token */
	cr_assert_eq(ats_keyed_tokens_at(replaced.m, "K", 1, T0), 1);
	atomic_store(&replaced.resize_armed, 1);
	ats_keyed_stats st = {0};
	for (uint32_t k = 100; k < 200 && !st.resizes; k++) {
		cr_assert(allow_u32(replaced.m, k, T0));
		ats_keyed_stats_get(replaced.m, &st);
	}
	cr_assert_eq(atomic_load(&replaced.resize_armed), 0, "no resize copied K");
	pthread_join(replaced.r1, NULL);
	atomic_store(&ats__keyed_pause, NULL);
	bool again = ats_keyed_allow_at(replaced.m, "K", 1, T0);
	int grants = replaced.r1_granted + replaced.r3_granted + again;
	cr_expect_eq(grants, 1, "one token, %d grants (R1 %d, R3 %d, after %d)", grants, replaced.r1_granted,
	             replaced.r3_granted, again);
	ats_keyed_free(replaced.m);
}

Test(keyed, presized_from_the_hint)
{
	ats_keyed_config c = cfg_default(1 << 20);
	c.capacity_hint = 100000;
	ats_keyed *m = make(c);
	for (uint32_t k = 0; k < 100000; k++)
		cr_assert(allow_u32(m, k, T0));
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.resizes, 0);
	cr_assert_eq(st.keys, 100000);
	ats_keyed_free(m);
}

Test(keyed, memory_cap_holds)
{
	ats_keyed_config c = cfg_default(1000000);
	c.capacity_hint = 16;
	c.max_bytes = 256 * 1024;
	ats_keyed *m = make(c);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_lt(st.key_limit, 1000000);
	size_t peak = 0;
	for (uint32_t k = 0; k < 50000; k++) {
		cr_assert(allow_u32(m, k, T0 + k), "key %u", k);
		size_t b = ats_keyed_bytes(m);
		peak = b > peak ? b : peak;
		cr_assert_leq(b, c.max_bytes);
		cr_assert_leq(ats_keyed_count(m), st.key_limit);
	}
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.keys, st.key_limit);
	cr_assert_gt(st.evicted_forced, 0);
	cr_assert_gt(peak, c.max_bytes / 2, "the cap is used, not just respected");
	ats_keyed_free(m);
}

Test(keyed, out_of_memory_changes_nothing)
{
	ats_keyed_config c = cfg_default(1000);
	atomic_store(&ats__keyed_fail_alloc, 1);
	ats_keyed *m = NULL;
	ats_err *err = ats_keyed_new(&m, &c);
	cr_assert(ats_err_is(err, ATS_ERR_OUT_OF_MEMORY));
	ats_err_unref(err);
	cr_assert_null(m);
	atomic_store(&ats__keyed_fail_alloc, 0);

	c.capacity_hint = 8; /* 16 slots: grows at 12 keys */
	m = make(c);
	for (uint32_t k = 0; k < 12; k++)
		cr_assert(ats_keyed_allow_n_at(m, &k, 4, 2, T0));
	atomic_store(&ats__keyed_fail_alloc, 1);
	/* No growth: the table fills to its hard load (15 of 16 slots), then new keys are denied. */
	size_t granted = 0;
	for (uint32_t k = 100; k < 120; k++)
		granted += allow_u32(m, k, T0);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(granted, 3);
	cr_assert_eq(st.keys, 15);
	cr_assert_eq(st.insert_failures, 17);
	cr_assert_eq(st.resizes, 0);
	cr_assert_eq(st.slots, 16);
	for (uint32_t k = 0; k < 12; k++)
		cr_assert_eq(ats_keyed_tokens_at(m, &k, 4, T0), 3, "old keys intact");
	ats_keyed_limit lim = {ats_rate_per_sec(1), 1};
	uint32_t k = 200;
	err = ats_keyed_set_limit(m, &k, 4, &lim, T0);
	cr_assert(ats_err_is(err, ATS_ERR_OUT_OF_MEMORY));
	ats_err_unref(err);
	atomic_store(&ats__keyed_fail_alloc, 0);
	cr_assert(allow_u32(m, k, T0), "works again once memory is back");
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.resizes, 1);
	ats_keyed_free(m);
}

/* At the cap with no idle key, a new key is let in by evicting one by force, but only once it
 * has a slot: an insert refused for want of room (no memory to grow, and, inside the caller's
 * read-side section, no waiting for a grace period) evicts nothing. It used to evict first. */
Test(keyed, at_the_cap_a_refused_insert_evicts_nothing)
{
	ats_keyed *m = make(cfg_default(6));
	for (uint32_t k = 0; k < 6; k++)
		cr_assert(ats_keyed_allow_n_at(m, &k, 4, 5, T0)); /* six keys, all drained: none idle */
	atomic_store(&ats__keyed_fail_alloc, 1);
	urcu_memb_read_lock();
	ats_limiter_result res;
	uint32_t k = 100;
	cr_assert_eq(ats_keyed_throttle_at(m, &k, 4, 1, T0, &res), ATS_KEYED_ALLOWED, "one key evicted for it");
	ats_keyed_stats before, after;
	ats_keyed_stats_get(m, &before);
	uint64_t tokens[6];
	for (uint32_t j = 0; j < 6; j++)
		tokens[j] = ats_keyed_tokens_at(m, &j, 4, T0);
	k = 101;
	cr_assert_eq(ats_keyed_throttle_at(m, &k, 4, 1, T0, &res), ATS_KEYED_NO_ROOM, "the table is too full now");
	ats_keyed_stats_get(m, &after);
	urcu_memb_read_unlock();
	atomic_store(&ats__keyed_fail_alloc, 0);
	cr_expect_eq(after.evicted_forced, before.evicted_forced);
	cr_expect_eq(after.keys, before.keys);
	for (uint32_t j = 0; j < 6; j++)
		cr_expect_eq(ats_keyed_tokens_at(m, &j, 4, T0), tokens[j], "key %u", j);
	ats_keyed_free(m);
}

Test(keyed, burst_matches_one_by_one)
{
	ats_keyed *a = make(cfg_default(1000)), *b = make(cfg_default(1000));
	uint32_t ids[100];
	const void *keys[100];
	size_t lens[100];
	bool got[100];
	for (int i = 0; i < 100; i++) {
		ids[i] = (uint32_t)(i * 7 % 13); /* repeats: a key twice in a burst is charged twice */
		keys[i] = &ids[i];
		lens[i] = 4;
	}
	for (uint64_t round = 0; round < 3; round++) {
		uint64_t now = T0 + round * 150 * MS;
		size_t granted = ats_keyed_allow_burst_at(a, keys, lens, 100, 1, now, got);
		size_t want = 0;
		for (int i = 0; i < 100; i++) {
			bool ok = ats_keyed_allow_n_at(b, keys[i], lens[i], 1, now);
			cr_assert_eq(got[i], ok, "round %llu entry %d", (unsigned long long)round, i);
			want += ok;
		}
		cr_assert_eq(granted, want);
	}
	cr_assert_eq(ats_keyed_count(a), 13);
	cr_assert_eq(ats_keyed_allow_burst_at(a, keys, lens, 100, 0, T0, got), 0);
	cr_assert_not(got[0]);
	cr_assert_eq(ats_keyed_allow_burst_at(NULL, keys, lens, 100, 1, T0, got), 0);
	ats_keyed_free(a);
	ats_keyed_free(b);
}

Test(keyed, counts_and_bytes)
{
	ats_keyed_config c = cfg_default(1000);
	c.capacity_hint = 1000;
	ats_keyed *m = make(c);
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_eq(st.slots, 2048);
	cr_assert_geq(ats_keyed_bytes(m), 2048 * 32);
	cr_assert_lt(ats_keyed_bytes(m), 2048 * 32 + 16384);
	cr_assert_eq(st.key_limit, 1000);
	for (uint32_t k = 0; k < 1000; k++)
		cr_assert(allow_u32(m, k, T0));
	cr_assert_eq(ats_keyed_count(m), 1000);
	cr_assert_eq(ats_keyed_evict_idle_at(m, T0 + 100 * MS, 0), 1000);
	cr_assert_eq(ats_keyed_count(m), 0);
	cr_assert_eq(ats_keyed_count(NULL), 0);
	cr_assert_eq(ats_keyed_bytes(NULL), 0);
	ats_keyed_free(m);
}

Test(keyed, infinite_rate_allows_everything)
{
	ats_keyed_config c = cfg_default(10);
	c.rate = ATS_RATE_INF;
	ats_keyed *m = make(c);
	for (int i = 0; i < 1000; i++)
		cr_assert(ats_keyed_allow_n_at(m, "k", 1, 1000, T0));
	ats_keyed_free(m);
}

/* Dead slots are reused (or purged) once their grace period has passed, so churn at the cap needs
 * few rebuilds. rcu_barrier between rounds makes "has passed" deterministic. */
Test(keyed, churn_reuses_slots)
{
	ats_keyed_config c = cfg_default(1000);
	c.capacity_hint = 1000;
	ats_keyed *m = make(c);
	uint32_t k = 0;
	for (int round = 0; round < 50; round++) {
		for (int i = 0; i < 300; i++, k++)
			cr_assert(allow_u32(m, k, T0 + (uint64_t)k * MS));
		urcu_memb_barrier();
	}
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_leq(st.keys, 1000);
	cr_assert_eq(st.slots, 2048);
	cr_assert_eq(st.evicted_forced, 0, "1 ms apart, keys are idle after 100 ms");
	/* Rebuilds stay rare: amortized, under one slot copied per insert. */
	cr_assert_lt(st.resizes * st.slots, k, "%llu rebuilds", (unsigned long long)st.resizes);
	ats_keyed_free(m);
}

static void *thread_uses_map(void *arg)
{
	ats_keyed *m = arg;
	uint32_t k = 42;
	return (void *)(uintptr_t)allow_u32(m, k, T0);
}

/* A thread atscale registered with liburcu is unregistered when it exits: a grace period after
 * it (ats_keyed_free waits for one) would otherwise wait on a dead thread or read freed memory. */
Test(keyed, threads_register_and_unregister_themselves)
{
	ats_keyed *m = make(cfg_default(10));
	for (int i = 0; i < 4; i++) {
		pthread_t t;
		void *ret;
		cr_assert_eq(pthread_create(&t, NULL, thread_uses_map, m), 0);
		pthread_join(t, &ret);
		cr_assert_eq((uintptr_t)ret, i < 5);
	}
	cr_assert_eq(ats_keyed_tokens_at(m, &(uint32_t){42}, 4, T0), 1);
	ats_keyed_free(m);
}

Test(keyed, lives_in_caller_memory)
{
	ats_keyed m;
	ats_keyed_config c = cfg_default(10);
	cr_assert_null(ats_keyed_init(&m, &c));
	cr_assert(ats_keyed_allow_at(&m, "x", 1, T0));
	ats_keyed_destroy(&m);
	ats_keyed_destroy(NULL);
	ats_keyed_free(NULL);
}

/* ---- Throttle: the exact limiter's answers, per key ---- */

static void expect_same(const ats_limiter_result *got, const ats_limiter_result *want, const char *what, int step)
{
	cr_assert_eq(got->allowed, want->allowed, "%s step %d: allowed", what, step);
	cr_assert_eq(got->limit, want->limit, "%s step %d: limit", what, step);
	cr_assert_eq(got->remaining, want->remaining, "%s step %d: remaining %llu vs %llu", what, step,
	             (unsigned long long)got->remaining, (unsigned long long)want->remaining);
	cr_assert_eq(got->retry_after_ns, want->retry_after_ns, "%s step %d: retry_after %lld vs %lld", what, step,
	             (long long)got->retry_after_ns, (long long)want->retry_after_ns);
	cr_assert_eq(got->reset_after_ns, want->reset_after_ns, "%s step %d: reset_after %lld vs %lld", what, step,
	             (long long)got->reset_after_ns, (long long)want->reset_after_ns);
}

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
	return *x;
}

/* One key of the map and one ats_limiter (made at time 0, the map's clock epoch) with the same rate
 * and burst, driven by the same random (time, n) sequence: every answer must be equal, and a
 * denied request must change nothing. A short and a long key each get their own limiter. */
static void throttle_vs_limiter(ats_rate rate, uint64_t burst, uint64_t max_step_ns, const char *what)
{
	ats_keyed_config cfg = {.rate = rate, .burst = burst, .max_keys = 16};
	ats_keyed *m = make(cfg);
	char long_key[200];
	memset(long_key, 'L', sizeof long_key);
	const void *keys[2] = {"short", long_key};
	size_t lens[2] = {5, sizeof long_key};
	ats_limiter lim[2];
	for (int k = 0; k < 2; k++)
		cr_assert_null(ats_limiter_init_at(&lim[k], rate, burst, 0));
	uint64_t x = 0x243f6a8885a308d3ull ^ burst, now = T0;
	uint64_t granted[2] = {0, 0}, first = now;
	for (int step = 0; step < 4000; step++) {
		now += xorshift(&x) % max_step_ns;
		int k = (int)(xorshift(&x) & 1);
		uint64_t n = 1 + xorshift(&x) % (burst + 1); /* sometimes burst + 1: never fits */
		ats_limiter_result got, want;
		ats_keyed_status st = ats_keyed_throttle_at(m, keys[k], lens[k], n, now, &got);
		bool ok = ats_limiter_throttle_at(&lim[k], n, now, &want);
		expect_same(&got, &want, what, step);
		cr_assert_eq(st == ATS_KEYED_ALLOWED, ok, "%s step %d: status %d", what, step, (int)st);
		if (!ok) {
			cr_assert_eq(st, n > burst ? ATS_KEYED_EXCEEDS_BURST : ATS_KEYED_DENIED, "%s step %d", what,
			             step);
			if (n > burst)
				cr_assert_eq(got.retry_after_ns, INT64_MAX);
			else
				cr_assert_geq(got.retry_after_ns, 0);
		} else {
			granted[k] += n;
		}
	}
	/* Counted: neither key got more than burst + rate * elapsed. */
	for (int k = 0; k < 2; k++) {
		unsigned __int128 cap = (unsigned __int128)(now - first) * rate.events / rate.period_ns + burst;
		cr_assert_leq(granted[k], (uint64_t)cap, "%s key %d", what, k);
	}
	ats_keyed_free(m);
}

Test(keyed, throttle_matches_the_exact_limiter)
{
	throttle_vs_limiter(ats_rate_per_sec(10), 5, 300 * MS, "10/s burst 5");
	throttle_vs_limiter((ats_rate){3, 1000}, 4, 2000, "3 per us burst 4");
	throttle_vs_limiter((ats_rate){7, 3 * ATS_NS_PER_SEC}, 9, 2 * ATS_NS_PER_SEC, "7 per 3 s burst 9");
	throttle_vs_limiter(ats_rate_per_sec(UINT64_C(1000000000)), 1000, 3000, "1e9/s burst 1000");
}

Test(keyed, throttle_retry_after_is_when_the_tokens_are_there)
{
	ats_keyed *m = make(cfg_default(100));
	ats_limiter_result r;
	cr_assert_eq(ats_keyed_throttle_at(m, "ip", 2, 5, T0, &r), ATS_KEYED_ALLOWED);
	cr_assert(r.allowed);
	cr_assert_eq(r.limit, 5);
	cr_assert_eq(r.remaining, 0);
	cr_assert_eq(r.retry_after_ns, -1);
	cr_assert_eq(r.reset_after_ns, (int64_t)(500 * MS));
	cr_assert_eq(ats_keyed_throttle_at(m, "ip", 2, 2, T0 + 50 * MS, &r), ATS_KEYED_DENIED);
	cr_assert_not(r.allowed);
	cr_assert_eq(r.remaining, 0);
	cr_assert_eq(r.retry_after_ns, (int64_t)(150 * MS));
	cr_assert_eq(r.reset_after_ns, (int64_t)(450 * MS));
	/* The denial took nothing: 1 ns before, still denied, and retry_after is rounded up to the
	 * clock's unit (here 2^26 units per token, 1.5 ns), never down. */
	cr_assert_eq(ats_keyed_throttle_at(m, "ip", 2, 2, T0 + 200 * MS - 1, &r), ATS_KEYED_DENIED);
	cr_assert(r.retry_after_ns >= 1 && r.retry_after_ns <= 2, "%lld", (long long)r.retry_after_ns);
	cr_assert_eq(ats_keyed_throttle_at(m, "ip", 2, 2, T0 + 200 * MS - 1 + (uint64_t)r.retry_after_ns, &r),
	             ATS_KEYED_ALLOWED);
	cr_assert_eq(r.remaining, 0);
	/* n above the burst: never, and says so; a new key is not added for it. */
	cr_assert_eq(ats_keyed_throttle_at(m, "ip", 2, 6, T0 + 200 * MS, &r), ATS_KEYED_EXCEEDS_BURST);
	cr_assert_eq(r.retry_after_ns, INT64_MAX);
	cr_assert_eq(r.limit, 5);
	cr_assert_eq(ats_keyed_throttle_at(m, "new", 3, 6, T0, &r), ATS_KEYED_EXCEEDS_BURST);
	cr_assert_eq(r.retry_after_ns, INT64_MAX);
	cr_assert_eq(r.remaining, 5);
	cr_assert_eq(r.reset_after_ns, 0);
	cr_assert_eq(ats_keyed_count(m), 1);
	/* The bool call and the throttle share the bucket. */
	cr_assert(ats_keyed_allow_n_at(m, "ip", 2, 1, T0 + 300 * MS));
	cr_assert_eq(ats_keyed_throttle_at(m, "ip", 2, 1, T0 + 300 * MS, &r), ATS_KEYED_DENIED);
	ats_keyed_free(m);
}

Test(keyed, throttle_follows_overrides_and_infinite_rates)
{
	ats_keyed *m = make(cfg_default(100));
	ats_keyed_limit slow = {ats_rate_per_sec(1), 2}, inf = {ATS_RATE_INF, 3}, zero = {{0, 1}, 1};
	cr_assert_null(ats_keyed_set_limit(m, "slow", 4, &slow, T0));
	cr_assert_null(ats_keyed_set_limit(m, "inf", 3, &inf, T0));
	cr_assert_null(ats_keyed_set_limit(m, "zero", 4, &zero, T0));
	ats_limiter_result r;
	cr_assert_eq(ats_keyed_throttle_at(m, "slow", 4, 2, T0, &r), ATS_KEYED_ALLOWED);
	cr_assert_eq(r.limit, 2);
	cr_assert_eq(r.reset_after_ns, (int64_t)(2000 * MS));
	cr_assert_eq(ats_keyed_throttle_at(m, "slow", 4, 3, T0, &r), ATS_KEYED_EXCEEDS_BURST);
	cr_assert_eq(ats_keyed_throttle_at(m, "slow", 4, 1, T0, &r), ATS_KEYED_DENIED);
	cr_assert_eq(r.retry_after_ns, (int64_t)(1000 * MS));
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(ats_keyed_throttle_at(m, "inf", 3, 1000, T0, &r), ATS_KEYED_ALLOWED);
		cr_assert_eq(r.remaining, 3);
		cr_assert_eq(r.limit, 3);
	}
	cr_assert_eq(ats_keyed_throttle_at(m, "zero", 4, 1, T0, &r), ATS_KEYED_ALLOWED);
	cr_assert_eq(r.reset_after_ns, INT64_MAX, "rate 0: never full again");
	cr_assert_eq(ats_keyed_throttle_at(m, "zero", 4, 1, T0 + 1000000 * MS, &r), ATS_KEYED_DENIED);
	cr_assert_eq(r.retry_after_ns, INT64_MAX, "rate 0: never");
	ats_keyed_free(m);
}

static void expect_refused(ats_keyed_status got, ats_keyed_status want, const ats_limiter_result *r)
{
	cr_assert_eq(got, want, "status %d, want %d", (int)got, (int)want);
	cr_assert_not(r->allowed);
	cr_assert_eq(r->retry_after_ns, INT64_MAX);
	cr_assert_eq(r->remaining, 0);
	cr_assert_eq(r->limit, 0);
}

Test(keyed, throttle_tells_bad_input_from_denial)
{
	ats_keyed *m = make(cfg_default(100));
	char big[ATS_KEYED_MAX_KEY + 1] = {0};
	ats_limiter_result r;
	expect_refused(ats_keyed_throttle_at(NULL, "a", 1, 1, T0, &r), ATS_KEYED_INVALID_KEY, &r);
	expect_refused(ats_keyed_throttle_at(m, NULL, 1, 1, T0, &r), ATS_KEYED_INVALID_KEY, &r);
	expect_refused(ats_keyed_throttle_at(m, "a", 0, 1, T0, &r), ATS_KEYED_INVALID_KEY, &r);
	expect_refused(ats_keyed_throttle_at(m, big, sizeof big, 1, T0, &r), ATS_KEYED_INVALID_KEY, &r);
	expect_refused(ats_keyed_throttle_at(m, "a", 1, 0, T0, &r), ATS_KEYED_INVALID_N, &r);
	expect_refused(ats_keyed_throttle_at(m, "a", 1, (UINT64_C(1) << 32) + 1, T0, &r), ATS_KEYED_INVALID_N, &r);
	cr_assert_eq(ats_keyed_count(m), 0, "bad input adds nothing");
	cr_assert_eq(ats_keyed_status_code(ATS_KEYED_ALLOWED), 0);
	cr_assert_eq(ats_keyed_status_code(ATS_KEYED_DENIED), ATS_ERR_LIMITED);
	cr_assert_eq(ats_keyed_status_code(ATS_KEYED_EXCEEDS_BURST), ATS_ERR_INVALID_ARGUMENT);
	cr_assert_eq(ats_keyed_status_code(ATS_KEYED_INVALID_KEY), ATS_ERR_INVALID_ARGUMENT);
	cr_assert_eq(ats_keyed_status_code(ATS_KEYED_INVALID_N), ATS_ERR_INVALID_ARGUMENT);
	cr_assert_eq(ats_keyed_status_code(ATS_KEYED_NO_ROOM), ATS_ERR_OUT_OF_MEMORY);

	/* Out of memory for a new key is its own answer too, and takes nothing. */
	ats_keyed_config c = cfg_default(1000);
	c.capacity_hint = 8; /* 16 slots: the hard load is 15 keys without growth */
	ats_keyed *small = make(c);
	atomic_store(&ats__keyed_fail_alloc, 1);
	ats_keyed_status st = ATS_KEYED_ALLOWED;
	for (uint32_t k = 0; k < 20 && st == ATS_KEYED_ALLOWED; k++)
		st = ats_keyed_throttle_at(small, &k, 4, 1, T0, &r);
	expect_refused(st, ATS_KEYED_NO_ROOM, &r);
	atomic_store(&ats__keyed_fail_alloc, 0);
	ats_keyed_free(small);
	ats_keyed_free(m);
}

Test(keyed, throttle_burst_matches_one_by_one)
{
	ats_keyed *a = make(cfg_default(1000)), *b = make(cfg_default(1000));
	char long_keys[3][40];
	for (int i = 0; i < 3; i++)
		memset(long_keys[i], 'a' + i, sizeof long_keys[i]);
	uint32_t ids[70];
	const void *keys[70];
	size_t lens[70];
	for (int i = 0; i < 70; i++) {
		ids[i] = (uint32_t)(i * 7 % 13);
		keys[i] = i % 5 == 4 ? (const void *)long_keys[i % 3] : (const void *)&ids[i];
		lens[i] = i % 5 == 4 ? sizeof long_keys[0] : 4;
	}
	lens[33] = 0; /* invalid entries answer alone and change nothing */
	lens[34] = ATS_KEYED_MAX_KEY + 1;
	ats_keyed_status st[70];
	ats_limiter_result res[70];
	for (uint64_t round = 0; round < 4; round++) {
		uint64_t now = T0 + round * 150 * MS, n = 1 + round % 2;
		size_t allowed = ats_keyed_throttle_burst_at(a, keys, lens, 70, n, now, st, res);
		size_t want = 0;
		for (int i = 0; i < 70; i++) {
			ats_limiter_result r;
			ats_keyed_status s1 = ats_keyed_throttle_at(b, keys[i], lens[i], n, now, &r);
			cr_assert_eq(st[i], s1, "round %llu entry %d", (unsigned long long)round, i);
			expect_same(&res[i], &r, "burst", i);
			want += s1 == ATS_KEYED_ALLOWED;
		}
		cr_assert_eq(allowed, want);
	}
	cr_assert_eq(ats_keyed_count(a), 16);
	cr_assert_eq(ats_keyed_throttle_burst_at(a, keys, lens, 70, 0, T0, st, res), 0);
	cr_assert_eq(st[0], ATS_KEYED_INVALID_N);
	cr_assert_eq(ats_keyed_throttle_burst_at(NULL, keys, lens, 70, 1, T0, st, res), 0);
	cr_assert_eq(st[69], ATS_KEYED_INVALID_KEY);
	ats_keyed_free(a);
	ats_keyed_free(b);
}

/* ---- Long keys: by their 128-bit keyed hash, in an identity space of their own ---- */

Test(keyed, long_keys_work_and_are_independent)
{
	ats_keyed *m = make(cfg_default(1000));
	static const size_t lens[] = {16, 17, 32, 255, 256};
	unsigned char key[ATS_KEYED_MAX_KEY];
	memset(key, 0x42, sizeof key);
	/* The same bytes at each length: five distinct keys (the 16-byte one inline). */
	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
		cr_assert_eq(drain(m, key, lens[i], T0), 5, "len %zu", lens[i]);
	cr_assert_eq(ats_keyed_count(m), 5);
	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
		cr_assert_eq(ats_keyed_tokens_at(m, key, lens[i], T0), 0, "len %zu drained", lens[i]);
	/* Keys sharing a 255-byte prefix differ in their last byte; and in their first. */
	for (int b = 0; b < 8; b++) {
		key[255] = (unsigned char)b;
		cr_assert_eq(drain(m, key, 256, T0 + 1), b == 0x42 ? 0 : 5, "last byte %d", b);
	}
	key[255] = 0x42;
	key[0] = 0;
	cr_assert_eq(drain(m, key, 256, T0 + 1), 5, "first byte differs");
	cr_assert_eq(ats_keyed_count(m), 14);
	/* Refill is per key. */
	cr_assert_eq(drain(m, key, 256, T0 + 1 + 100 * MS), 1);
	cr_assert_eq(ats_keyed_tokens_at(m, key, 255, T0 + 1 + 100 * MS), 5, "a fresh 255-byte key");
	ats_keyed_free(m);
}

Test(keyed, long_keys_survive_growth_eviction_and_overrides)
{
	ats_keyed_config c = cfg_default(100000);
	c.capacity_hint = 8;
	ats_keyed *m = make(c);
	char key[64];
	for (uint32_t i = 0; i < 3000; i++) {
		memset(key, 'k', sizeof key);
		memcpy(key + sizeof key - sizeof i, &i, sizeof i);
		cr_assert(ats_keyed_allow_n_at(m, key, sizeof key, 1 + i % 5, T0), "key %u", i);
	}
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	cr_assert_gt(st.resizes, 5, "moved through several tables");
	cr_assert_eq(st.keys, 3000);
	for (uint32_t i = 0; i < 3000; i++) {
		memset(key, 'k', sizeof key);
		memcpy(key + sizeof key - sizeof i, &i, sizeof i);
		cr_assert_eq(ats_keyed_tokens_at(m, key, sizeof key, T0), 5 - (1 + i % 5), "key %u kept its debt", i);
	}
	/* An override on a long key moves it to a new slot with its tokens. */
	uint32_t i = 7;
	memset(key, 'k', sizeof key);
	memcpy(key + sizeof key - sizeof i, &i, sizeof i);
	ats_keyed_limit lim = {ats_rate_per_sec(1), 50};
	cr_assert_null(ats_keyed_set_limit(m, key, sizeof key, &lim, T0));
	cr_assert_eq(ats_keyed_tokens_at(m, key, sizeof key, T0), 2);
	cr_assert_eq(ats_keyed_tokens_at(m, key, sizeof key, T0 + 100000 * MS), 50);
	/* Idle long keys go as losslessly as short ones. */
	cr_assert_eq(ats_keyed_evict_idle_at(m, T0 + 1000 * MS, 0), 2999, "all but the override");
	cr_assert_eq(ats_keyed_tokens_at(m, key, sizeof key, T0 + 100000 * MS), 50);
	ats_keyed_free(m);
}
