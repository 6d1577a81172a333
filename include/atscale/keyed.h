/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed rate limiters: one GCRA bucket per key (an IP address, a user id) in an RCU-protected
 * hash map with a hard cap on keys and on memory.
 *
 * What a call costs. A hit (the key is in the map) takes no lock and makes no syscall: hash the
 * key, read one 32-byte slot (key, TAT and flags share a cache line), one CAS on the TAT. At a
 * million random keys that is about one cache miss (see `atscale-bench --filter keyed` beside
 * floor.dram_miss). A miss (a new key) takes the map's writer mutex to insert it.
 *
 * Keys are 1..ATS_KEYED_KEY_MAX bytes stored inline; longer or empty keys are refused (the hot
 * path returns false, the others ATS_ERR_INVALID_ARGUMENT). Hash a longer key to 16 bytes with a
 * keyed hash (SipHash, BLAKE2) first if you need one; collisions then share a bucket. The table's
 * hash is seeded per map from getrandom, so an attacker choosing keys (source addresses) cannot
 * aim them at one probe chain.
 *
 * Memory. The map keeps at most `max_keys` keys and never holds more than `max_bytes` (tables,
 * including a replaced table that waits for its RCU grace period, plus the map's own arrays). It
 * is pre-sized from `capacity_hint` and grows by doubling while the caps allow: a new table is
 * built beside the old one, every key moves, the new table is published and the old one is freed
 * through call_rcu. Readers never wait for a resize: one that meets a moved key follows the old
 * table's link to the new one.
 *
 * Eviction, and what it does to limits:
 *  - Idle keys (bucket full again: TAT <= now) are evicted losslessly: a full bucket and a new key
 *    behave the same. Inserts sweep a few slots for idle keys as they go (like nginx limit_req's
 *    expiry on allocation), a map at its cap evicts an idle key first, and
 *    ats_keyed_evict_idle_at() sweeps on demand.
 *  - A key given its own limit (ats_keyed_set_limit) is never evicted as idle: its limit is
 *    configuration, not state. Only forced eviction may drop it, and it then returns with the
 *    map's default limit.
 *  - When the map is at its cap and the sweep finds no idle key, the least recently used key is
 *    evicted by force (CLOCK: a key touched since the hand last passed gets a second chance). Its
 *    effect: that key forgets its debt and starts full again, so it may be granted up to one extra
 *    burst. Nothing else changes; ats_keyed_stats counts forced evictions so an operator can see
 *    the cap is too small.
 *  - An eviction racing an allow on the same key never over-grants: the evicting writer swaps the
 *    TAT for a "gone" mark with one atomic operation, so every allow either took its tokens before
 *    (and the eviction of an idle key then fails: it is no longer idle) or sees the mark and starts
 *    again on the key's new slot. Slots are reused only after an RCU grace period.
 *
 * Threads. The map reads under liburcu's memb flavour (no fences on the read side; row
 * keyed.allow_1m). A thread is registered with liburcu on its first call (a thread-local test) and
 * unregistered when it exits (a pthread key destructor); a thread the application registered
 * itself is used as it is, and stays the application's to unregister. The calls below may be made
 * inside the application's own rcu_read_lock sections (nesting is fine) but ats_keyed_destroy may
 * not. Time: all `now_ns` given to one map must lie within 2^60 token units (36 years at one unit
 * per ns) of each other; older timestamps never mint tokens (the GCRA core's guarantee).
 */
#ifndef ATSCALE_KEYED_H
#define ATSCALE_KEYED_H

#include "atscale/common.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atscale/clock.h"
#include "atscale/error.h"
#include "atscale/gcra.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATS_KEYED_KEY_MAX 16            /* longest key, in bytes */
#define ATS_KEYED_OVERRIDES_DEFAULT 64  /* distinct override limits when the config says 0 */
#define ATS_KEYED_OVERRIDES_MAX 1048576 /* most distinct override limits a map can hold */

typedef struct ats_keyed_config {
	ats_rate rate;          /* every key's rate unless overridden */
	uint64_t burst;         /* every key's burst (1..2^32) unless overridden */
	size_t max_keys;        /* hard cap on keys, >= 1 */
	size_t capacity_hint;   /* keys to pre-size for (0: min(max_keys, 1024)); clamped to the caps */
	size_t max_bytes;       /* hard cap on the map's memory; 0: only max_keys bounds it */
	uint32_t max_overrides; /* distinct per-key limits (0: ATS_KEYED_OVERRIDES_DEFAULT) */
} ats_keyed_config;

/* A per-key limit that replaces the map's default for one key. */
typedef struct ats_keyed_limit {
	ats_rate rate;
	uint64_t burst;
} ats_keyed_limit;

typedef struct ats_keyed_stats {
	size_t keys;              /* keys in the map now */
	size_t bytes;             /* memory the map holds now (what max_bytes bounds) */
	size_t slots;             /* slots in the current table */
	size_t key_limit;         /* the most keys the map will hold (max_keys, or less under max_bytes) */
	uint64_t inserts;         /* keys added */
	uint64_t evicted_idle;    /* keys dropped because their bucket was full again (lossless) */
	uint64_t evicted_forced;  /* keys dropped at the cap while still in debt (see eviction above) */
	uint64_t resizes;         /* tables built (growth and tombstone clean-ups) */
	uint64_t insert_failures; /* new keys denied because no slot could be had (out of memory) */
	uint32_t overrides;       /* distinct override limits in use */
} ats_keyed_stats;

struct ats__keyed_table;

/* The map. Transparent only so that it can live in caller memory (ats_keyed_init); every field is
 * private. */
typedef struct ats_keyed {
	ATS_ATOMIC(struct ats__keyed_table *) table; /* private: the published table */
	uint64_t seed[2];                            /* private: hash seed */
	ats_token_clock clock;                       /* private: the default limit */
	ats_token_clock *overrides;                  /* private: override limits, append-only */
	ats_keyed_limit *override_limits;            /* private: what each override was made from */
	ATS_ATOMIC(uint32_t) noverrides;             /* private */
	uint32_t max_overrides;                      /* private */
	size_t max_slots, key_limit, max_bytes;      /* private: caps */
	size_t base_bytes;                           /* private: memory besides tables */
	ATS_ATOMIC(size_t) table_bytes;              /* private: tables, including ones awaiting free */
	ATS_ATOMIC(size_t) keys;                     /* private */
	size_t used, hand, sweep;                    /* private: writer-only */
	uint32_t epoch;                              /* private: writer-only grace epoch */
	uint64_t evict_ns;                           /* private: latest time a key was evicted at */
	ATS_ATOMIC(uint32_t) safe_epoch;             /* private: slots killed before it are reusable */
	ATS_ATOMIC(uint32_t) grace_target;           /* private: safe_epoch once the grace period ends */
	ATS_ATOMIC(int) grace_inflight;              /* private */
	size_t killed_since_grace;                   /* private: writer-only */
	ATS_ATOMIC(uint64_t) inserts, evicted_idle, evicted_forced, resizes, insert_failures; /* private */
	pthread_mutex_t lock; /* private: writers (insert, evict, resize) */
	void *grace_head[2];  /* private: struct rcu_head for grace epochs */
	char tsan_sync;       /* private: ThreadSanitizer's view of grace periods */
} ats_keyed;

/* Makes a map in caller memory. Errors (nothing allocated): NULL arguments, max_keys 0, a burst
 * outside 1..2^32 or a rate above 10^12/s (ATS_ERR_INVALID_ARGUMENT), a max_bytes too small for
 * the smallest table, out of memory. Blocking (allocates the pre-sized table). */
ATS_API ATS_NODISCARD ats_err *ats_keyed_init(ats_keyed *m, const ats_keyed_config *cfg);
/* Frees what the map holds. Blocking: waits for calls in flight on other threads (a grace period)
 * and for deferred frees (rcu_barrier). No new call may start on the map; must not be called
 * inside an RCU read-side section. NULL-safe. */
ATS_API void ats_keyed_destroy(ats_keyed *m);
/* The same on the heap. */
ATS_API ATS_NODISCARD ats_err *ats_keyed_new(ats_keyed **out, const ats_keyed_config *cfg);
ATS_API void ats_keyed_free(ats_keyed *m);

/* Takes n tokens from the key's bucket if they fit; adds the key (full) if it is new. False when
 * denied, and for a NULL map, an empty, NULL or too long key, or n == 0 or n > 2^32, which change
 * nothing. Lock-free when the key is present (hash, one slot read, one CAS; the deny path makes no
 * CAS, only a relaxed fetch_or that sets the key's reference bit for the CLOCK eviction, and only
 * when it was clear). Blocking when the key is new: the writer mutex, and, when max_bytes leaves no
 * room while replaced tables await their grace period, a wait for them (urcu_memb_barrier(), with
 * the mutex dropped; skipped inside the caller's own rcu_read_lock section, which then gets a
 * denial instead). A new key whose n exceeds its burst is
 * denied without being added. Relaxed ordering: a grant orders nothing else. */
ATS_API bool ats_keyed_allow_n_at(ats_keyed *m, const void *key, size_t len, uint64_t n, uint64_t now_ns);
static inline bool ats_keyed_allow_at(ats_keyed *m, const void *key, size_t len, uint64_t now_ns)
{
	return ats_keyed_allow_n_at(m, key, len, 1, now_ns);
}
/* The same at ats_fast_now_ns(), the library's one time base (clock.h). */
static inline bool ats_keyed_allow_n(ats_keyed *m, const void *key, size_t len, uint64_t n)
{
	return ats_keyed_allow_n_at(m, key, len, n, ats_fast_now_ns());
}
static inline bool ats_keyed_allow(ats_keyed *m, const void *key, size_t len)
{
	return ats_keyed_allow_n_at(m, key, len, 1, ats_fast_now_ns());
}

/* A burst of `count` requests for n tokens each (a batch of packets) under one timestamp: hashes
 * every key and prefetches its slot before resolving any, so the cache misses overlap (as DPDK's
 * rte_hash_lookup_bulk does). results[i] is what ats_keyed_allow_n_at would return for keys[i],
 * taken in order (a key twice in the burst is charged twice). Returns how many were granted.
 * Lock-free for present keys; blocking for new ones. */
ATS_API size_t ats_keyed_allow_burst_at(ats_keyed *m, const void *const keys[], const size_t lens[], size_t count,
                                        uint64_t n, uint64_t now_ns, bool results[]);

/* Whole tokens the key has at now_ns without taking any (a new key: its burst). 0 for bad input.
 * Wait-free; adds nothing. */
ATS_API uint64_t ats_keyed_tokens_at(ats_keyed *m, const void *key, size_t len, uint64_t now_ns);
static inline uint64_t ats_keyed_tokens(ats_keyed *m, const void *key, size_t len)
{
	return ats_keyed_tokens_at(m, key, len, ats_fast_now_ns());
}

/* Gives one key its own rate and burst (lim NULL: back to the map's default), adding the key if
 * it is new. The tokens it has now carry over, capped at the new burst; a full (idle) or new key
 * starts full under the new limit, so idle eviction stays invisible. Distinct limits share
 * storage; more than max_overrides distinct ones give ATS_ERR_LIMITED. Errors change nothing.
 * Blocking (writer mutex); concurrent allows on the key are never over-granted: they finish on
 * the old slot or move to the new one. */
ATS_API ATS_NODISCARD ats_err *ats_keyed_set_limit(ats_keyed *m, const void *key, size_t len, const ats_keyed_limit *lim,
                                     uint64_t now_ns);

/* Sweeps up to max_slots slots (0: the whole table) and evicts the idle keys among them
 * (losslessly). Returns how many. Blocking (writer mutex). */
ATS_API size_t ats_keyed_evict_idle_at(ats_keyed *m, uint64_t now_ns, size_t max_slots);

/* Keys in the map, and the memory it holds (tables, including a replaced one awaiting its grace
 * period, and the map's arrays). Wait-free, relaxed reads. */
ATS_API size_t ats_keyed_count(const ats_keyed *m);
ATS_API size_t ats_keyed_bytes(const ats_keyed *m);
ATS_API void ats_keyed_stats_get(const ats_keyed *m, ats_keyed_stats *out);

#ifdef __cplusplus
}
#endif
#endif
