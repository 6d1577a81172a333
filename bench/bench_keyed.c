/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed limiters at a million keys: the map (one random key per op, and bursts of 32 keys per
 * call; the throttle call, which also computes the client's answer; 32-byte keys, which the map
 * identifies by a SipHash of their bytes), plus the two library tables one would build it on
 * (cds_lfht and ck_hs, each a node per key holding the key and its TAT), all doing the same GCRA
 * take per lookup. The floor to compare with is floor.dram_miss (bench_floor.c); the Go peer is
 * peer.go.xrate_keyed_1m (peers/go/keyed.go). */
#define _LGPL_SOURCE
#include "bench.h"
#include "atscale/clock.h"
#include "atscale/keyed.h"

#include <ck_hs.h>
#include <urcu/urcu-memb.h> /* first: maps the cds_lfht API to the memb flavour */
#include <urcu/rculfhash.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NKEYS 1000000u
#define BURST 32

/* Key i of the million, as a 4-byte IPv4-like key: a bijection of i, so keys are spread. */
static inline uint32_t key_of(uint32_t i)
{
	return i * 2654435761u;
}

static inline uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static inline uint32_t random_index(uint64_t *x)
{
	return (uint32_t)(((xorshift(x) >> 32) * NKEYS) >> 32);
}

static size_t rss_bytes(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

/* ---- atscale's map ---- */

struct kstate {
	ats_keyed *m;
	double rss_per_key, map_per_key;
};

#define LONG_KEY 32

/* Key i as a 32-byte key: a shared 28-byte prefix (a URL, a tenant) and key_of(i) last. */
static inline void long_key_of(uint32_t i, unsigned char out[LONG_KEY])
{
	uint32_t k = key_of(i);
	memset(out, 'p', LONG_KEY - sizeof k);
	memcpy(out + LONG_KEY - sizeof k, &k, sizeof k);
}

static void *keyed_setup_keys(bool long_keys)
{
	struct kstate *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	/* 1M/s per key, burst 100: the keys stay allowed, so every op is a successful CAS. */
	ats_keyed_config cfg = {
	    .rate = ats_rate_per_sec(1000000), .burst = 100, .max_keys = NKEYS, .capacity_hint = NKEYS};
	size_t rss0 = rss_bytes();
	ats_err *err = ats_keyed_new(&s->m, &cfg);
	if (err) {
		fprintf(stderr, "keyed setup: %s\n", ats_err_message(err));
		ats_err_unref(err);
		free(s);
		return NULL;
	}
	uint64_t now = ats_now_ns();
	for (uint32_t i = 0; i < NKEYS; i++) {
		uint32_t k = key_of(i);
		unsigned char lk[LONG_KEY];
		if (long_keys) {
			long_key_of(i, lk);
			(void)ats_keyed_allow_at(s->m, lk, sizeof lk, now);
		} else {
			(void)ats_keyed_allow_at(s->m, &k, sizeof k, now);
		}
	}
	s->rss_per_key = (double)(rss_bytes() - rss0) / NKEYS;
	s->map_per_key = (double)ats_keyed_bytes(s->m) / (double)ats_keyed_count(s->m);
	return s;
}

static void *keyed_setup(unsigned threads)
{
	(void)threads;
	return keyed_setup_keys(false);
}

static void *keyed_setup_long(unsigned threads)
{
	(void)threads;
	return keyed_setup_keys(true);
}

static void keyed_teardown(void *state)
{
	struct kstate *s = state;
	ats_keyed_free(s->m);
	free(s);
}

static void keyed_extra(void *state, char *buf, size_t len)
{
	struct kstate *s = state;
	snprintf(buf, len, "\"bytes_per_key\": %.1f, \"map_bytes_per_key\": %.1f, \"keys\": %zu", s->rss_per_key,
	         s->map_per_key, ats_keyed_count(s->m));
}

static void keyed_allow_run(void *state, unsigned tid, uint64_t iters)
{
	ats_keyed *m = ((struct kstate *)state)->m;
	uint64_t x = 0x9e3779b97f4a7c15ull * (tid + 1), now = 0;
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			now = ats_fast_now_ns(); /* a poll loop reads its clock once per batch */
		uint32_t k = key_of(random_index(&x));
		ats_bench_sink(ats_keyed_allow_at(m, &k, sizeof k, now));
	}
}

static void keyed_throttle_run(void *state, unsigned tid, uint64_t iters)
{
	ats_keyed *m = ((struct kstate *)state)->m;
	uint64_t x = 0x9e3779b97f4a7c15ull * (tid + 1), now = 0;
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			now = ats_fast_now_ns();
		uint32_t k = key_of(random_index(&x));
		ats_limiter_result r;
		ats_bench_sink(ats_keyed_throttle_at(m, &k, sizeof k, 1, now, &r) + r.remaining);
	}
}

static void keyed_long_run(void *state, unsigned tid, uint64_t iters)
{
	ats_keyed *m = ((struct kstate *)state)->m;
	uint64_t x = 0x9e3779b97f4a7c15ull * (tid + 1), now = 0;
	unsigned char k[LONG_KEY];
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			now = ats_fast_now_ns();
		long_key_of(random_index(&x), k);
		ats_bench_sink(ats_keyed_allow_at(m, k, sizeof k, now));
	}
}

/* iters counts keys, so ns_per_op is per key. */
static void keyed_burst_run(void *state, unsigned tid, uint64_t iters)
{
	ats_keyed *m = ((struct kstate *)state)->m;
	uint64_t x = 0x9e3779b97f4a7c15ull * (tid + 1);
	uint32_t kv[BURST];
	const void *keys[BURST];
	size_t lens[BURST];
	bool results[BURST];
	for (int j = 0; j < BURST; j++) {
		keys[j] = &kv[j];
		lens[j] = sizeof kv[j];
	}
	for (uint64_t i = 0; i < iters; i += BURST) {
		size_t c = iters - i < BURST ? (size_t)(iters - i) : BURST;
		for (size_t j = 0; j < c; j++)
			kv[j] = key_of(random_index(&x));
		ats_bench_sink(ats_keyed_allow_burst_at(m, keys, lens, c, 1, ats_fast_now_ns(), results));
	}
}

static const ats_bench keyed_allow_1m = {
    "keyed.allow_1m", ATS_BENCH_1T | ATS_BENCH_MT, keyed_setup, keyed_allow_run, keyed_teardown, NULL, keyed_extra};
static const ats_bench keyed_allow_1m_burst32 = {"keyed.allow_1m_burst32",
                                                 ATS_BENCH_1T | ATS_BENCH_MT,
                                                 keyed_setup,
                                                 keyed_burst_run,
                                                 keyed_teardown,
                                                 NULL,
                                                 keyed_extra};
static const ats_bench keyed_throttle_1m = {"keyed.throttle_1m", ATS_BENCH_1T, keyed_setup, keyed_throttle_run,
                                            keyed_teardown,      NULL,         keyed_extra};
static const ats_bench keyed_long32_1m = {"keyed.long32_allow_1m", ATS_BENCH_1T, keyed_setup_long, keyed_long_run,
                                          keyed_teardown,          NULL,         keyed_extra};
ATS_BENCH(keyed_allow_1m)
ATS_BENCH(keyed_allow_1m_burst32)
ATS_BENCH(keyed_throttle_1m)
ATS_BENCH(keyed_long32_1m)

/* ---- The same work on the library tables (bench-only; why the map is not built on them) ---- */

static ats_token_clock alt_clock;

static inline uint64_t fmix64(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	return h ^ (h >> 33);
}

/* Registers the bench thread with liburcu for one run unless someone already did. */
static bool alt_register(void)
{
	if (URCU_TLS(urcu_memb_reader).registered)
		return false;
	urcu_memb_register_thread();
	return true;
}

struct lnode {
	struct cds_lfht_node node;
	uint32_t key;
	_Atomic uint64_t tat;
};

struct lstate {
	struct cds_lfht *ht;
	struct lnode *nodes;
	double rss_per_key;
};

static int lfht_match(struct cds_lfht_node *n, const void *key)
{
	return caa_container_of(n, struct lnode, node)->key == *(const uint32_t *)key;
}

static void *lfht_setup(unsigned threads)
{
	(void)threads;
	struct lstate *s = calloc(1, sizeof *s);
	size_t rss0 = rss_bytes();
	if (!s || ats_token_clock_make(&alt_clock, ats_rate_per_sec(1000000), 100, 0))
		return NULL;
	/* Pre-sized (REFERENCE.md: ~190 ns pre-sized vs ~700 ns grown from 1024 buckets). */
	s->ht = cds_lfht_new_flavor(1u << 20, 1u << 20, 1u << 20, 0, &urcu_memb_flavor, NULL);
	s->nodes = calloc(NKEYS, sizeof *s->nodes);
	if (!s->ht || !s->nodes)
		return NULL;
	bool reg = alt_register();
	urcu_memb_read_lock();
	for (uint32_t i = 0; i < NKEYS; i++) {
		struct lnode *n = &s->nodes[i];
		n->key = key_of(i);
		cds_lfht_node_init(&n->node);
		cds_lfht_add(s->ht, fmix64(n->key), &n->node);
	}
	urcu_memb_read_unlock();
	if (reg)
		urcu_memb_unregister_thread();
	s->rss_per_key = (double)(rss_bytes() - rss0) / NKEYS;
	return s;
}

static void lfht_teardown(void *state)
{
	struct lstate *s = state;
	cds_lfht_destroy(s->ht, NULL);
	free(s->nodes);
	free(s);
}

static void lfht_run(void *state, unsigned tid, uint64_t iters)
{
	struct lstate *s = state;
	uint64_t x = 0x9e3779b97f4a7c15ull * (tid + 1), now = 0;
	bool reg = alt_register();
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			now = ats_fast_now_ns();
		uint32_t k = key_of(random_index(&x));
		struct cds_lfht_iter it;
		urcu_memb_read_lock();
		cds_lfht_lookup(s->ht, fmix64(k), lfht_match, &k, &it);
		struct cds_lfht_node *n = cds_lfht_iter_get_node(&it);
		bool ok = n && ats_gcra_take_at(&alt_clock, &caa_container_of(n, struct lnode, node)->tat, now, 1);
		urcu_memb_read_unlock();
		ats_bench_sink(ok);
	}
	if (reg)
		urcu_memb_unregister_thread();
}

static void alt_extra(void *state, char *buf, size_t len)
{
	snprintf(buf, len, "\"bytes_per_key\": %.1f", *(double *)state);
}

static void lfht_extra(void *state, char *buf, size_t len)
{
	alt_extra(&((struct lstate *)state)->rss_per_key, buf, len);
}

struct hnode {
	uint32_t key;
	_Atomic uint64_t tat;
};

struct hstate {
	ck_hs_t hs;
	struct hnode *nodes;
	double rss_per_key;
};

static unsigned long hs_hash(const void *obj, unsigned long seed)
{
	return (unsigned long)fmix64(((const struct hnode *)obj)->key ^ seed);
}

static bool hs_compare(const void *a, const void *b)
{
	return ((const struct hnode *)a)->key == ((const struct hnode *)b)->key;
}

static void *hs_malloc(size_t r)
{
	return malloc(r);
}

static void hs_free(void *p, size_t b, bool r)
{
	(void)b, (void)r;
	free(p);
}

static struct ck_malloc hs_alloc = {.malloc = hs_malloc, .free = hs_free};

static void *hs_setup(unsigned threads)
{
	(void)threads;
	struct hstate *s = calloc(1, sizeof *s);
	size_t rss0 = rss_bytes();
	if (!s || ats_token_clock_make(&alt_clock, ats_rate_per_sec(1000000), 100, 0))
		return NULL;
	s->nodes = calloc(NKEYS, sizeof *s->nodes);
	if (!s->nodes ||
	    !ck_hs_init(&s->hs, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC, hs_hash, hs_compare, &hs_alloc, NKEYS * 2, 42))
		return NULL;
	for (uint32_t i = 0; i < NKEYS; i++) {
		struct hnode *n = &s->nodes[i];
		n->key = key_of(i);
		ck_hs_put(&s->hs, CK_HS_HASH(&s->hs, hs_hash, n), n);
	}
	s->rss_per_key = (double)(rss_bytes() - rss0) / NKEYS;
	return s;
}

static void hs_teardown(void *state)
{
	struct hstate *s = state;
	ck_hs_destroy(&s->hs);
	free(s->nodes);
	free(s);
}

/* Readers under rcu_read_lock as a ck_hs map with RCU reclamation of nodes would need. */
static void hs_run(void *state, unsigned tid, uint64_t iters)
{
	struct hstate *s = state;
	uint64_t x = 0x9e3779b97f4a7c15ull * (tid + 1), now = 0;
	bool reg = alt_register();
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			now = ats_fast_now_ns();
		struct hnode probe = {.key = key_of(random_index(&x))};
		urcu_memb_read_lock();
		struct hnode *n = ck_hs_get(&s->hs, CK_HS_HASH(&s->hs, hs_hash, &probe), &probe);
		bool ok = n && ats_gcra_take_at(&alt_clock, &n->tat, now, 1);
		urcu_memb_read_unlock();
		ats_bench_sink(ok);
	}
	if (reg)
		urcu_memb_unregister_thread();
}

static void hs_extra(void *state, char *buf, size_t len)
{
	alt_extra(&((struct hstate *)state)->rss_per_key, buf, len);
}

static const ats_bench keyed_alt_lfht = {"keyed.alt_cds_lfht_1m", ATS_BENCH_1T, lfht_setup, lfht_run,
                                         lfht_teardown,           NULL,         lfht_extra};
static const ats_bench keyed_alt_hs = {"keyed.alt_ck_hs_1m", ATS_BENCH_1T, hs_setup, hs_run,
                                       hs_teardown,          NULL,         hs_extra};
ATS_BENCH(keyed_alt_lfht)
ATS_BENCH(keyed_alt_hs)
