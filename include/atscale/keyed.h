/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed rate limiters: one GCRA bucket per key (an IP address, a user id) in an RCU-protected
 * hash map with a hard cap on keys and on memory.
 *
 * What a call costs. A hit (the key is in the map) takes no lock and makes no syscall: hash the
 * key, read one 32-byte slot (key, TAT and flags share a cache line), one CAS on the TAT. At a
 * million random keys that is about one cache miss (see `atscale-bench --filter keyed` beside
 * floor.dram_miss). A miss (a new key) takes the map's writer mutex to insert it.
 *
 * Keys are any byte strings of 1..ATS_KEYED_MAX_KEY (256) bytes; ats_keyed_key_ok() says whether
 * one is. Keys of up to ATS_KEYED_INLINE_KEY (16) bytes are stored as they are, so they never
 * collide. A longer key is identified by a 128-bit SipHash-2-4 of its bytes (and length), keyed
 * with the map's secret seed: the slot stays 32 bytes, and two distinct long keys share a bucket
 * only if their hashes collide, which with n distinct long keys alive in one map happens with
 * probability about n^2 / 2^129 (10^9 keys: under 10^-20), whatever keys an attacker picks
 * without knowing the seed. Short and long keys never meet: the slot records which form it holds,
 * so a 16-byte key can never equal a long key's hash. A long key costs one SipHash over its bytes
 * before the lookup (measured on a busy 2-core VM: about 45 ns more than a 16-byte key at 17 to 32
 * bytes, 220 ns more at 256; keyed.long32_allow_1m in atscale-bench); short keys pay one length
 * compare for long ones. The table's
 * hash is seeded per map from getrandom too, so an attacker choosing keys (source addresses)
 * cannot aim them at one probe chain.
 *
 * Bad input. ats_keyed_throttle_at() reports an invalid key (NULL, empty, longer than
 * ATS_KEYED_MAX_KEY), an n of 0 or above 2^32, an n above the key's burst and a key that could not
 * be added apart from a denial (ats_keyed_status); it never allocates. The bool calls keep one
 * answer for speed: false for denied and for bad input alike, and in builds without NDEBUG they
 * assert that the key is valid, so a bad key shows up in testing instead of as a limited client.
 * Check untrusted lengths with ats_keyed_key_ok() first, or use ats_keyed_throttle_at().
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
#include "atscale/limiter.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATS_KEYED_MAX_KEY 256           /* longest key, in bytes */
#define ATS_KEYED_INLINE_KEY 16         /* longest key stored as it is; longer ones by their hash */
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
	ATS_ATOMIC(struct ats__keyed_table *) table_; /* the published table */
	uint64_t seed_[2];                            /* hash seed */
	ats_token_clock clock_;                       /* the default limit */
	ats_keyed_limit limit_;                       /* what clock was made from */
	ats_token_clock *overrides_;                  /* override limits, append-only */
	ats_keyed_limit *override_limits_;            /* what each override was made from */
	ATS_ATOMIC(uint32_t) noverrides_;
	uint32_t max_overrides_;
	size_t max_slots_, key_limit_, max_bytes_; /* caps */
	size_t base_bytes_;                        /* memory besides tables */
	ATS_ATOMIC(size_t) table_bytes_;           /* tables, including ones awaiting free */
	ATS_ATOMIC(size_t) keys_;
	size_t used_, hand_, sweep_;         /* writer-only */
	uint32_t epoch_;                     /* writer-only grace epoch */
	ATS_ATOMIC(uint64_t) full_floor_ns_; /* latest time an idly evicted bucket had become full at */
	ATS_ATOMIC(uint32_t) safe_epoch_;    /* slots killed before it are reusable */
	ATS_ATOMIC(uint32_t) grace_target_;  /* safe_epoch once the grace period ends */
	ATS_ATOMIC(int) grace_inflight_;
	size_t killed_since_grace_; /* writer-only */
	ATS_ATOMIC(uint64_t) inserts_, evicted_idle_, evicted_forced_, resizes_, insert_failures_;
	pthread_mutex_t lock_; /* writers (insert, evict, resize) */
	void *grace_head_[2];  /* struct rcu_head for grace epochs */
	char tsan_sync_;       /* ThreadSanitizer's view of grace periods */
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

/* Whether `key` can name a bucket: not NULL and 1..ATS_KEYED_MAX_KEY bytes long. Wait-free, two
 * compares. Every call below refuses exactly the keys this refuses. */
static inline bool ats_keyed_key_ok(const void *key, size_t len)
{
	return key && len >= 1 && len <= ATS_KEYED_MAX_KEY;
}

/* Takes n tokens from the key's bucket if they fit; adds the key (full) if it is new. False when
 * denied, and for a NULL map, an invalid key, or n == 0 or n > 2^32, which change nothing; in
 * builds without NDEBUG an invalid key fails an assert instead (see "Bad input" above). Lock-free when the key is
 * present (hash, one slot read, one CAS; the deny path makes no CAS, only a relaxed fetch_or that sets the key's
 * reference bit for the CLOCK eviction, and only when it was clear). Blocking when the key is new: the writer mutex,
 * and, when max_bytes leaves no room while replaced tables await their grace period, a wait for them
 * (urcu_memb_barrier(), with the mutex dropped; skipped inside the caller's own rcu_read_lock section, which then gets
 * a denial instead). A new key whose n exceeds its burst is denied without being added. Relaxed ordering: a grant
 * orders nothing else. */
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
 * taken in order (a key twice in the burst is charged twice; an invalid key asserts as there).
 * Returns how many were granted. Lock-free for present keys; blocking for new ones. */
ATS_API size_t ats_keyed_allow_burst_at(ats_keyed *m, const void *const keys[], const size_t lens[], size_t count,
                                        uint64_t n, uint64_t now_ns, bool results[]);

/* What a throttle call did. Only ATS_KEYED_ALLOWED took tokens; every other status changes
 * nothing in the map. */
typedef enum ats_keyed_status {
	ATS_KEYED_ALLOWED = 0,   /* n tokens taken */
	ATS_KEYED_DENIED,        /* not enough tokens now; retry_after_ns says when there will be */
	ATS_KEYED_EXCEEDS_BURST, /* n is above the key's burst: it never fits (retry_after_ns INT64_MAX) */
	ATS_KEYED_INVALID_KEY,   /* NULL map, or a key ats_keyed_key_ok refuses */
	ATS_KEYED_INVALID_N,     /* n == 0 or n > 2^32 */
	ATS_KEYED_NO_ROOM,       /* a new key could not be added: out of memory, or max_bytes */
} ats_keyed_status;

/* The error code for a status, for callers that report through ats_err: 0 (success) for allowed,
 * ATS_ERR_LIMITED for denied, ATS_ERR_INVALID_ARGUMENT for the three bad inputs,
 * ATS_ERR_OUT_OF_MEMORY for no room. Pure. */
static inline int ats_keyed_status_code(ats_keyed_status st)
{
	switch (st) {
	case ATS_KEYED_ALLOWED: return 0;
	case ATS_KEYED_DENIED: return ATS_ERR_LIMITED;
	case ATS_KEYED_NO_ROOM: return ATS_ERR_OUT_OF_MEMORY;
	default: return ATS_ERR_INVALID_ARGUMENT;
	}
}

/* ats_limiter_throttle_at for one key: tries to take n tokens and says how it went, in the same
 * result (limiter.h) with the same GCRA math, so a key's answers equal those of an ats_limiter
 * with the key's rate and burst made at time 0 and driven by the same times (one whose clock has
 * the same resolution: bursts up to 2^31 at any rate). On ALLOWED, DENIED and EXCEEDS_BURST *res
 * is filled: limit (the key's burst), remaining (whole tokens left after this call),
 * retry_after_ns (-1 when allowed; else the time until n tokens will be there, rounded up to the
 * clock's unit (at most 2 ns) so a retry then succeeds unless others took tokens meanwhile;
 * INT64_MAX for n above the burst or a rate of 0) and reset_after_ns (until the bucket is full
 * again; INT64_MAX at rate 0). A denied request takes nothing. An infinite rate allows everything
 * with remaining = limit. A new key is answered as full and added only when allowed. On the other
 * statuses *res says allowed false, retry_after_ns INT64_MAX and zero elsewhere. res may not be
 * NULL. Progress and cost as ats_keyed_allow_n_at (lock-free for a present key, blocking for a new
 * one; no allocation) plus up to two 128-bit divisions for the times. */
ATS_API ats_keyed_status ats_keyed_throttle_at(ats_keyed *m, const void *key, size_t len, uint64_t n, uint64_t now_ns,
                                               ats_limiter_result *res);
/* The same at ats_fast_now_ns(). */
static inline ats_keyed_status ats_keyed_throttle(ats_keyed *m, const void *key, size_t len, uint64_t n,
                                                  ats_limiter_result *res)
{
	return ats_keyed_throttle_at(m, key, len, n, ats_fast_now_ns(), res);
}

/* ats_keyed_throttle_at for a burst of keys under one timestamp, with the prefetching of
 * ats_keyed_allow_burst_at: status[i] and results[i] are what ats_keyed_throttle_at would give
 * for keys[i], taken in order. Returns how many were allowed. Lock-free for present keys; blocking
 * for new ones. */
ATS_API size_t ats_keyed_throttle_burst_at(ats_keyed *m, const void *const keys[], const size_t lens[], size_t count,
                                           uint64_t n, uint64_t now_ns, ats_keyed_status status[],
                                           ats_limiter_result results[]);

/* Whole tokens the key has at now_ns without taking any (a new key: its burst). 0 for bad input.
 * Wait-free, except while a writer is replacing or evicting this very key (set_limit, eviction):
 * then it waits for that writer's mutex, as an allow would, instead of answering as for a new key.
 * Adds nothing. */
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
ATS_API ATS_NODISCARD ats_err *ats_keyed_set_limit(ats_keyed *m, const void *key, size_t len,
                                                   const ats_keyed_limit *lim, uint64_t now_ns);

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
