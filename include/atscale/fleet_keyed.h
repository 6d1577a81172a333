/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale keyed fleet limiter: a fleet-wide limit per key (per user, per tenant, per API token),
 * kept in Redis, served from local leases.
 *
 * Each key is its own fleet limit (fleet.h, whose scripts, bound and failure policies apply key by
 * key): its Redis key is the configured prefix followed by the key's bytes, holding the exact GCRA
 * of that key; an instance leases batches of a key's tokens and serves that key's acquires from
 * them. Only keys this instance has seen hold leases here, and at most `max_keys` of them.
 *
 * ---- What a call costs ----
 * A hit (the key is here and its lease covers n) takes no lock and makes no system call: an RCU
 * read section (liburcu's memb flavour: no fence), a seeded hash of the key, a look at up to 16
 * slot pointers in two buckets of one cache line each, a compare of the key, and one CAS on the
 * key's lease word. A key seen for the first time takes the table's mutex once to be added.
 *
 * ---- A key's first acquires ----
 * A key new to this instance has no lease until the background thread's next lease call for it
 * (it is woken at once; about one Redis round trip). Acquires meanwhile are decided as if Redis
 * were down for that key: refused when failing closed, by the fallback limit when failing open.
 * Each such decision is counted (`cold_misses`, then the closed/fallback counters). Any answer
 * ends that, even one with no token (the fleet's bucket is spent: refusals are then the fleet's).
 * A key whose own lease call fails while the connection answers the others (its Redis key holds
 * another type, say) is cold again, alone, and asks again after reconnect_max_ns: the error is
 * counted and kept for the status, and the limiter stays up for every other key.
 *
 * ---- The bound, per key ----
 * In any window [t, t+w] the fleet grants a key at most
 *     burst + rate*w + instances*batch_max
 * tokens (fleet.h says why), plus, only when failing open, what the fallback limits grant while
 * the key has no lease (at most fallback_burst + fallback_rate*w per instance). A key evicted from
 * an instance gives its unused tokens back to Redis; a crashed instance costs at most its
 * unexpired leases.
 *
 * ---- Memory ----
 * At most max_keys keys are held. The table has twice that many slots or more (a power of two, at
 * least 16; 8 bytes each), so that two-choice buckets of 8 hold max_keys keys without evicting
 * early, plus one record per key held: its fields, the prefix and the key, rounded up to whole
 * cache lines (256 bytes for a 9-byte key under a 3-byte prefix, measured through
 * ats_fleet_keyed_stats.bytes, which says the total). A new key that finds the table at its cap, or both of its buckets
 * full, first replaces a key: one whose lease is empty or expired if there is one among its buckets' 16 (nothing is
 * lost), otherwise the least recently used of them, whose unexpired tokens go back to Redis (counted in
 * evicted_forced). A record is freed after an RCU grace period, once the background thread has given its tokens back
 * (its next round). With max_bytes, memory held (the table, the records of keys held and of keys replaced but not yet
 * freed) never exceeds it: a new key that would go over replaces a key and is refused, room for it coming when the
 * replaced record is freed. A key that cannot be added (out of memory, or the byte cap) is refused like a cold key and
 * counted in insert_failures.
 *
 * ---- The background thread ----
 * One thread per limiter, with one connection to Redis. Each round (every refresh_ns / 4, at once
 * when a key is added, and at once when an acquire was refused) it walks the table, sizes each
 * key's next batch from that key's observed rate, and sends every lease call of the round as one
 * pipeline (one round trip for all keys that need tokens). While a refused key can ask for nothing
 * yet (the fleet's bucket is empty, a backoff), refusals wait for the next round rather than each
 * waking the thread for another walk. The walk is one load per slot plus, per key held, a few
 * loads of its record and at most one CAS (dropping an expired lease): O(slots) per round, on the
 * background thread only.
 *
 * Threads: every function may be called from any thread at once, except that ats_fleet_keyed_free
 * must be the last call on the limiter. A thread is registered with liburcu on its first call, as
 * keyed.h's maps do. `_at` variants take the time from the caller (CLOCK_MONOTONIC scale ns); the
 * others read ats_fast_now_ns().
 */
#ifndef ATSCALE_FLEET_KEYED_H
#define ATSCALE_FLEET_KEYED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atscale/common.h"
#include "atscale/error.h"
#include "atscale/fleet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATS_FLEET_KEYED_MAX_KEY 256    /* bytes in a key (the prefix comes on top) */
#define ATS_FLEET_KEYED_MAX_PREFIX 128 /* bytes in the Redis key prefix */

typedef struct ats_fleet_keyed_config {
	/* Every field as in ats_fleet_config, applied to each key alike. `key` is the prefix of every
	 * key's Redis key (1..ATS_FLEET_KEYED_MAX_PREFIX bytes, e.g. "rl:api:"); fallback_rate and
	 * fallback_burst are per key. */
	ats_fleet_config fleet;
	size_t max_keys;  /* the most keys holding leases here (>= 1) */
	size_t max_bytes; /* the most memory held (table and records, as stats.bytes); 0: no byte cap */
} ats_fleet_keyed_config;

typedef struct ats_fleet_keyed_stats {
	uint64_t redis_ops;        /* script calls sent (leases, give-backs, script loads) */
	uint64_t leases;           /* lease calls answered with >= 1 token */
	uint64_t leased_tokens;    /* tokens received from Redis */
	uint64_t expired_tokens;   /* tokens dropped unused (lease expired, or Redis could not take them back) */
	uint64_t given_back;       /* tokens returned to Redis (evictions and shutdown) */
	uint64_t redis_errors;     /* failed connects, commands, script errors, bad replies */
	uint64_t reconnects;       /* connections made after the first */
	uint64_t lease_misses;     /* acquires refused with Redis up (the key's lease empty, expired or short) */
	uint64_t cold_misses;      /* acquires of a key without a lease yet (then decided by the policy) */
	uint64_t closed_denied;    /* acquires refused because Redis was down or the key cold (fail closed) */
	uint64_t fallback_allowed; /* acquires granted by the fallback (fail open) */
	uint64_t fallback_denied;  /* acquires refused by the fallback (fail open) */
	uint64_t inserts;          /* keys added */
	uint64_t evicted_idle;     /* keys replaced whose lease was empty or expired */
	uint64_t evicted_forced;   /* keys replaced while holding tokens (given back) */
	uint64_t insert_failures;  /* keys that could not be added (out of memory, or max_bytes) */
	size_t keys;               /* keys held now */
	size_t key_limit;          /* the most keys held (max_keys) */
	size_t bytes;              /* memory held: the table and the records of held and retiring keys */
	bool up;                   /* the last lease call succeeded */
} ats_fleet_keyed_stats;

typedef struct ats_fleet_keyed ats_fleet_keyed;

/* Validates cfg (every rule of ats_fleet_init, with the prefix in place of the key, max_keys >= 1,
 * and max_bytes 0 or room for the table and one key), allocates the table and starts the background thread; returns
 * without waiting for Redis. Errors: ATS_ERR_INVALID_ARGUMENT saying what is wrong (nothing allocated, *out NULL), out
 * of memory, ATS_ERR_SYSTEM when the thread cannot start. Blocking. */
ATS_API ATS_NODISCARD ats_err *ats_fleet_keyed_new(ats_fleet_keyed **out, const ats_fleet_keyed_config *cfg);
/* Stops the background thread, gives every key's unexpired tokens back to Redis when connected
 * (one pipeline) and disconnects; afterwards acquires follow the policy (a key not held is not
 * added) and stats stay readable.
 * Idempotent: a concurrent second call returns once the first is done. Blocking; not concurrent with free. */
ATS_API void ats_fleet_keyed_stop(ats_fleet_keyed *k);
/* ats_fleet_keyed_stop, then frees everything. Blocking. NULL is a no-op. */
ATS_API void ats_fleet_keyed_free(ats_fleet_keyed *k);

/* Takes n tokens of `key` (len bytes) at now_ns. Lock-free on a hit (no system call, no network);
 * a key not held yet takes the table's mutex once to be added and wakes the background thread.
 * false when refused, and for bad input (NULL k or key, len 0 or above ATS_FLEET_KEYED_MAX_KEY,
 * n above 2^24 - 1, the most a lease holds), which changes nothing; n == 0 is granted for a valid
 * key without taking anything. */
ATS_API bool ats_fleet_keyed_allow_at(ats_fleet_keyed *k, const void *key, size_t len, uint64_t n, uint64_t now_ns);
/* ats_fleet_keyed_allow_at at ats_fast_now_ns(). */
ATS_API bool ats_fleet_keyed_allow(ats_fleet_keyed *k, const void *key, size_t len, uint64_t n);
/* Whole tokens `key` has here at now_ns (its unexpired lease, plus its fallback tokens while the
 * policy decides for it and fails open), without taking any or adding the key. Lock-free. */
ATS_API int64_t ats_fleet_keyed_tokens_at(ats_fleet_keyed *k, const void *key, size_t len, uint64_t now_ns);

/* NULL while the last lease call succeeded; else ATS_ERR_UNAVAILABLE with the attachments "redis",
 * "prefix", "policy" and "redis_error", as ats_fleet_status. Blocking (a short mutex). */
ATS_API ATS_NODISCARD ats_err *ats_fleet_keyed_status(ats_fleet_keyed *k);
/* Fills *out. Relaxed loads only; wait-free. */
ATS_API void ats_fleet_keyed_stats_get(ats_fleet_keyed *k, ats_fleet_keyed_stats *out);

#ifdef __cplusplus
}
#endif
#endif
