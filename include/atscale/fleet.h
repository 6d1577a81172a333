/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale fleet limiter: one rate limit shared by every process of a fleet, kept in Redis.
 *
 * The sharded limiter (limiter.h) serves cores by leasing batches from one exact bucket; the
 * fleet limiter is the same idea one level up: each process (each ats_fleet) leases batches of
 * tokens from one exact GCRA bucket kept in Redis, and serves acquires from its local lease.
 *
 * ---- Redis side ----
 * A Lua script, loaded once per connection (SCRIPT LOAD, then EVALSHA; reloaded on NOSCRIPT),
 * keeps one exact GCRA per key in integer microseconds on Redis's own clock (TIME), so the
 * machines' clocks never matter. The key is a hash {tat, rem}: the theoretical arrival time in
 * whole microseconds and a remainder in 1/events of a microsecond, so any rational rate is exact
 * (no drift). A lease asks for up to `batch` tokens and gets as many as the bucket holds (possibly
 * fewer, possibly 0), with the time until the next token. The key expires (PEXPIRE) when the
 * bucket would be full again, so an idle limit costs Redis nothing. A second script gives unused
 * tokens back on a clean shutdown: TAT moves back by those tokens, never before Redis's now.
 * Every call touches one key, so Redis Cluster works as is (the key's slot picks the node).
 *
 * ---- Local side ----
 * The lease is one 64-bit word: (expiry in 1.024 us ticks mod 2^40) << 24 | tokens left. A hit
 * (ats_fleet_allow_at) is one relaxed load and one CAS on that word: no lock, no system call.
 * One background thread per ats_fleet does all the network work. The batch follows the locally
 * observed rate: about one refresh interval's worth of tokens (refresh_ns), between batch_min and
 * batch_max; it doubles (up to batch_max) while acquires are being refused. The thread asks for one
 * batch whenever the lease holds less than one batch (the low-water mark: the lease then still
 * covers a refresh interval of the stream, while the thread looks every quarter interval), soon
 * after a refused acquire, or when the lease is about to expire; so a steady stream never waits on
 * Redis, and a lease holds at most two batches (never more than batch_max). A lease
 * expires lease_ns after it was last refilled (tokens then are dropped, not returned, as Doorman's
 * leases do); unused tokens are given back to Redis by ats_fleet_destroy/ats_fleet_free.
 *
 * ---- The bound ----
 * In any window [t, t+w] the fleet grants at most
 *     burst + rate*w + instances*batch_max
 * tokens: Redis's bucket hands out at most burst + rate*w in the window (GCRA), and every grant
 * in the window comes from a lease taken in the window or from tokens an instance already held at
 * t, which is at most batch_max per instance (a refill never asks for more than batch_max minus
 * what is left). Assumptions: Redis's clock (gettimeofday) is not stepped forward during the
 * window (a forward step mints at most burst; a backward step only withholds tokens), and its
 * rate matches the callers' CLOCK_MONOTONIC within NTP's slew (<= 0.05%). A crashed process costs
 * at most its unexpired lease (<= batch_max tokens): those were charged in Redis and are never
 * used nor given back.
 *
 * ---- Redis down or slow ----
 * Every network call has a timeout (timeout_ns, hiredis's connect and command timeouts); an
 * acquire never waits on the network. When Redis cannot be reached, or answers with an error or
 * too late, the limiter is "down" until a lease succeeds again; meanwhile tokens already leased
 * are still served until their lease expires, and beyond them the policy decides:
 *  - ATS_FLEET_FAIL_CLOSED: nothing more is granted;
 *  - ATS_FLEET_FAIL_OPEN: a local fallback limiter (an ats_limiter at fallback_rate /
 *    fallback_burst, by default rate / expected_instances and burst / expected_instances) decides.
 * Each decision taken that way is counted (ats_fleet_stats); ats_fleet_status returns the state as
 * an ats_err (ATS_ERR_UNAVAILABLE with the Redis error text attached under "redis_error"). The
 * background thread reconnects with exponential backoff (reconnect_min_ns doubling up to
 * reconnect_max_ns) and full jitter (a uniform draw in [d/2, d]), so a fleet does not reconnect
 * in lockstep.
 *
 * A script error or a reply that is not what the script returns is an error (the limiter goes
 * down, the text is kept) and never grants a token. A lease call that times out may still have
 * been charged in Redis: those tokens are lost to the fleet (at most one batch per timeout), which
 * only ever lowers what it grants.
 *
 * Threads: every function may be called from any thread at once (ats_fleet_stop too: acquires
 * racing it are served or refused, never double-served), except that ats_fleet_destroy and
 * ats_fleet_free must be the last call on the limiter. All network I/O happens on the background
 * thread, which blocks every signal (a closed connection's SIGPIPE never reaches the caller). `_at` variants take the
 * time from the caller (CLOCK_MONOTONIC scale ns); the others read ats_fast_now_ns().
 */
#ifndef ATSCALE_FLEET_H
#define ATSCALE_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atscale/common.h"
#include "atscale/clock.h"
#include "atscale/error.h"
#include "atscale/gcra.h"
#include "atscale/limiter.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATS_FLEET_MAX_KEY 256                         /* bytes in a key (Redis allows more; a limit name needs less) */
#define ATS_FLEET_MAX_BATCH ((UINT64_C(1) << 24) - 1) /* tokens one lease may hold (24 bits of the lease word) */
#define ATS_FLEET_MAX_LEASE_NS (UINT64_C(1) << 38)    /* ~275 s: well inside the 40-bit expiry's half range */
#define ATS_FLEET_MIN_LEASE_NS UINT64_C(1000000)      /* 1 ms: a shorter lease expires before it can serve */
#define ATS_FLEET_MAX_TIMEOUT_NS (UINT64_C(2147483647) * 1000000) /* 2^31 - 1 ms: hiredis's limit */
#define ATS_FLEET_MAX_RECONNECT_NS (UINT64_C(1) << 42)            /* ~73 min */

typedef enum ats_fleet_policy {
	ATS_FLEET_FAIL_CLOSED = 0, /* Redis down: only tokens already leased */
	ATS_FLEET_FAIL_OPEN = 1,   /* Redis down: leased tokens, then the local fallback limiter */
} ats_fleet_policy;

typedef struct ats_fleet_config {
	const char *host;          /* Redis host or address; NULL: 127.0.0.1 */
	uint16_t port;             /* 0: 6379 */
	const char *key;           /* the Redis key of the limit: 1..ATS_FLEET_MAX_KEY bytes, copied */
	ats_rate rate;             /* fleet-wide; finite and non-zero. burst * period (us) must stay <= 2^52 */
	uint64_t burst;            /* 1..2^32 */
	uint64_t batch_min;        /* smallest lease asked for; 0: 1 */
	uint64_t batch_max;        /* largest lease held; 0: min(burst, 2^24 - 1). <= burst, <= 2^24 - 1 */
	uint64_t refresh_ns;       /* a batch is about this long of the observed rate; 0: 10 ms; <= 2^38 */
	uint64_t lease_ns;         /* a lease not refilled for this long expires; 0: 1 s. 1 ms..2^38 ns */
	uint64_t timeout_ns;       /* connect and command timeout (rounded up to whole us); 0: 100 ms; <=
	                              ATS_FLEET_MAX_TIMEOUT_NS */
	uint64_t reconnect_min_ns; /* first reconnect delay; 0: 10 ms; <= ATS_FLEET_MAX_RECONNECT_NS */
	uint64_t reconnect_max_ns; /* largest reconnect delay; 0: 1 s; <= ATS_FLEET_MAX_RECONNECT_NS */
	ats_fleet_policy policy;
	uint32_t expected_instances; /* for the default fallback; 0: 1 */
	ats_rate fallback_rate;      /* {0, 0}: rate / expected_instances */
	uint64_t fallback_burst;     /* 0: max(1, burst / expected_instances) */
} ats_fleet_config;

/* Counters (each read with one relaxed load: a snapshot of counters, not of one instant). */
typedef struct ats_fleet_stats {
	uint64_t redis_ops;        /* script calls sent (leases, give-backs, script loads) */
	uint64_t leases;           /* lease calls answered with >= 1 token */
	uint64_t leased_tokens;    /* tokens received from Redis */
	uint64_t expired_tokens;   /* tokens dropped unused: lease expired, or Redis could not take them back at stop */
	uint64_t given_back;       /* tokens returned to Redis on shutdown */
	uint64_t redis_errors;     /* failed connects, commands, script errors, bad replies */
	uint64_t reconnects;       /* connections made after the first */
	uint64_t lease_misses;     /* acquires refused with Redis up (lease empty, expired or short) */
	uint64_t closed_denied;    /* acquires refused because Redis was down (fail closed) */
	uint64_t fallback_allowed; /* acquires granted by the fallback limiter (fail open) */
	uint64_t fallback_denied;  /* acquires refused by the fallback limiter (fail open) */
	uint64_t batch;            /* the current target batch */
	bool up;                   /* the last lease call succeeded */
} ats_fleet_stats;

/* The lease word: (expiry tick mod 2^40) << 24 | tokens. A tick is 1024 ns (now_ns >> 10). */
#define ATS__FLEET_TOKENS UINT64_C(0xFFFFFF)

struct ats__fleet_cold;

/* A fleet limiter. Transparent for inlining; every field is private. */
typedef struct ats_fleet {
	ATS__ALIGNAS(64) ATS_ATOMIC(uint64_t) lease_; /* the hot word, alone on its cache line */
	ATS__ALIGNAS(64) ATS_ATOMIC(uint32_t) down_;  /* 0 while the last lease call succeeded */
	uint32_t policy_;
	struct ats__fleet_cold *cold_;
	ats_limiter fallback_; /* fail open: what decides beyond the lease while down */
} ats_fleet;

/* ---- Life cycle (not hot paths; blocking) ---- */

/* Validates cfg, copies what it needs and starts the background thread, which connects and takes
 * the first lease; init returns without waiting for Redis (the limiter starts "down", so the policy
 * applies until the first lease). Errors (ATS_ERR_INVALID_ARGUMENT, nothing started, nothing
 * written that matters): NULL f, cfg or key, an empty key or one longer than ATS_FLEET_MAX_KEY,
 * rate zero or infinite, burst 0 or > 2^32, burst * period_us > 2^52, batch_min > batch_max,
 * batch_max > burst or > 2^24 - 1, lease_ns < 1 ms or > 2^38, an invalid fallback rate; out of memory;
 * ATS_ERR_SYSTEM when the thread cannot start. f must be 64-byte aligned (ats_fleet_new does it). */
ATS_API ATS_NODISCARD ats_err *ats_fleet_init(ats_fleet *f, const ats_fleet_config *cfg);
/* Stops the background thread (waits for its network call in flight, at most timeout_ns), gives
 * the lease's unexpired tokens back to Redis when connected (one more call, at most timeout_ns) and
 * disconnects. Afterwards the limiter is down for good: acquires follow the policy (fail closed:
 * refused; fail open: the fallback limiter), and stats stay readable (given_back says what went
 * back). Idempotent: a concurrent second call returns once the first is done. Blocking; not
 * concurrent with destroy. */
ATS_API void ats_fleet_stop(ats_fleet *f);
/* ats_fleet_stop, then frees what init allocated. Blocking. */
ATS_API void ats_fleet_destroy(ats_fleet *f);
/* ats_fleet_init on a cache-line-aligned heap block (*out NULL on error; the same errors, plus
 * NULL out); ats_fleet_free is ats_fleet_destroy, then frees the block. Blocking, as those. */
ATS_API ATS_NODISCARD ats_err *ats_fleet_new(ats_fleet **out, const ats_fleet_config *cfg);
ATS_API void ats_fleet_free(ats_fleet *f);

/* ---- State (not hot paths) ---- */

/* NULL while the last lease call succeeded; else a new ATS_ERR_UNAVAILABLE error saying why, with
 * the attachments "redis" (host:port), "key", "policy" and "redis_error" (hiredis's or Redis's text).
 * Blocking (a short mutex shared with the background thread, never held across the network). */
ATS_API ATS_NODISCARD ats_err *ats_fleet_status(ats_fleet *f);
/* Fills *out. Relaxed loads only; wait-free. */
ATS_API void ats_fleet_stats_get(ats_fleet *f, ats_fleet_stats *out);

/* ---- Hot paths: static inline, lock-free, no allocation; a hit makes no system call ---- */

/* Whether a lease word is past its expiry at now_ns: the signed 40-bit difference of ticks. */
static inline bool ats__fleet_expired(uint64_t w, uint64_t now_ns)
{
	int64_t left = (int64_t)(((w >> 24) - (now_ns >> 10)) << 24) >> 24;
	return left <= 0;
}

/* Out of line: a refused hit (lease short, empty or expired; n == 0; n > 2^24 - 1): the policy
 * when down, a wake-up of the background thread when up. Lock-free; one futex wake per refill
 * round at most (not per refusal). */
ATS_API bool ats__fleet_miss(ats_fleet *f, uint64_t n, uint64_t now_ns);
ATS_API bool ats__fleet_check_miss(ats_fleet *f, uint64_t n, uint64_t now_ns);
ATS_API int64_t ats__fleet_fallback_tokens(ats_fleet *f, uint64_t now_ns);

/* Takes n tokens at now_ns from the local lease. Lock-free: one relaxed load and one CAS per
 * attempt, retried only when another thread or the refill changed the word; no system call, no
 * network. Relaxed: the word alone carries the count (its modification order is all the
 * exactness needs) and no other memory is published through it. Out of line when the lease cannot
 * cover n: see ats__fleet_miss (fail open may grant from the fallback limiter while down; a refusal
 * while up wakes the background thread, one futex wake per refill round at most). n == 0 is always
 * granted (nothing taken); n > batch_max never fits a lease. */
static inline bool ats_fleet_allow_at(ats_fleet *f, uint64_t n, uint64_t now_ns)
{
	uint64_t w = ats__atomic_load(&f->lease_, ats__mo_relaxed); /* the CAS validates it */
	for (;;) {
		if (__builtin_expect((w & ATS__FLEET_TOKENS) < n || n == 0 || ats__fleet_expired(w, now_ns), 0))
			return ats__fleet_miss(f, n, now_ns);
		/* relaxed both ways: only the count matters, and a failed CAS reloads w */
		if (ats__atomic_cas_weak(&f->lease_, &w, w - n, ats__mo_relaxed, ats__mo_relaxed))
			return true;
	}
}

/* ats_fleet_allow_at at ats_fast_now_ns() (the library's one time base): the same guarantees, plus
 * one clock read (~5-10 ns, no system call; clock.h). */
static inline bool ats_fleet_allow(ats_fleet *f, uint64_t n)
{
	return ats_fleet_allow_at(f, n, ats_fast_now_ns());
}

/* Whether n tokens are there at now_ns (lease, or the fallback while down and failing open),
 * without taking them. Wait-free: loads only. */
static inline bool ats_fleet_check_at(ats_fleet *f, uint64_t n, uint64_t now_ns)
{
	uint64_t w = ats__atomic_load(&f->lease_, ats__mo_relaxed); /* a snapshot is all a check gives */
	if ((w & ATS__FLEET_TOKENS) >= n && !ats__fleet_expired(w, now_ns))
		return true;
	return ats__fleet_check_miss(f, n, now_ns);
}

/* ats_fleet_check_at at ats_fast_now_ns(). */
static inline bool ats_fleet_check(ats_fleet *f, uint64_t n)
{
	return ats_fleet_check_at(f, n, ats_fast_now_ns());
}

/* Whole tokens available locally at now_ns: the unexpired lease, plus the fallback limiter's
 * tokens while down and failing open. Wait-free: loads only. */
static inline int64_t ats_fleet_tokens_at(ats_fleet *f, uint64_t now_ns)
{
	uint64_t w = ats__atomic_load(&f->lease_, ats__mo_relaxed); /* a snapshot */
	int64_t t = ats__fleet_expired(w, now_ns) ? 0 : (int64_t)(w & ATS__FLEET_TOKENS);
	return t + ats__fleet_fallback_tokens(f, now_ns);
}

/* ats_fleet_tokens_at at ats_fast_now_ns(). */
static inline int64_t ats_fleet_tokens(ats_fleet *f)
{
	return ats_fleet_tokens_at(f, ats_fast_now_ns());
}

/* ---- Internals shared with the tests and the fuzz target ---- */

/* What a lease call's reply said. */
typedef struct ats__fleet_reply {
	uint64_t granted; /* tokens leased, 0..asked */
	uint64_t wait_us; /* until the next token (0: there are more now); <= 2^53 */
	bool noscript;    /* the script is not loaded on this server: load it and retry */
} ats__fleet_reply;

/* Parses a reply of the lease script given as hiredis's redisReply (passed as const void *, so
 * this header does not need hiredis's). Pure: reads *reply only. NULL and *out filled when it is
 * an array of exactly two integers {granted, wait_us} with 0 <= granted <= asked and
 * 0 <= wait_us <= 2^53 (the script's doubles); otherwise ATS_ERR_UNAVAILABLE (an error reply: its text under
 * "redis_error"; anything else: "malformed reply") and out->granted is 0, so a garbage reply never
 * grants a token. out->noscript is set for a NOSCRIPT error. */
ATS_NODISCARD ats_err *ats__fleet_parse_reply(const void *reply, uint64_t asked, ats__fleet_reply *out);

/* The Lua sources (for tests, the bench's peer row and tools). */
extern const char ats__fleet_lease_lua[];
extern const char ats__fleet_giveback_lua[];

#ifdef __cplusplus
}
#endif
#endif
