/* SPDX-License-Identifier: BSD-2-Clause */
/* What the fleet limiters (fleet.h: one key; fleet_keyed.h: a key per user or tenant) share, in
 * two halves:
 *  - the connection: one hiredis connection owned by one background thread, the two scripts
 *    loaded on it, timeouts, reconnects with backoff and jitter, the last error and the Redis
 *    counters;
 *  - a lease: one 64-bit word acquirers take tokens from (fleet.h says its layout), the
 *    background thread's view of how fast it is used (the batch follows that rate), and the
 *    decision when to ask Redis for more.
 * Every function here runs on the owning limiter's background thread unless it says otherwise. */
#ifndef ATS_INTERNAL_FLEET_ENGINE_H
#define ATS_INTERNAL_FLEET_ENGINE_H

#include "atscale/fleet.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>

/* Counters: relaxed, they order nothing (a snapshot of counters is all stats promise). */
#define ATS__FLEET_BUMP(c, field, v) atomic_fetch_add_explicit(&(c)->field, (v), memory_order_relaxed)

/* ---- The connection ---- */

struct ats__fleet_conn {
	char host[256];
	uint16_t port;
	uint64_t timeout_ns, rmin_ns, rmax_ns;
	_Atomic uint32_t *down; /* the owner's flag: set on every error, cleared by the owner */

	pthread_mutex_t mu; /* guards last_error only */
	char last_error[256];
	_Atomic uint64_t redis_ops, redis_errors, reconnects;

	/* the background thread's own */
	redisContext *rc;
	char sha_lease[48], sha_give[48];
	bool ever_connected;
	uint64_t backoff_ns, next_connect_ns, next_call_ns;
	uint64_t rng;
};

/* Sets up a connection's fields (no network). host NULL: 127.0.0.1; port 0: 6379; zero times take
 * the defaults of ats_fleet_config. Any thread, before the background thread starts. */
void ats__fleet_conn_init(struct ats__fleet_conn *c, const char *host, uint16_t port, uint64_t timeout_ns,
                          uint64_t rmin_ns, uint64_t rmax_ns, _Atomic uint32_t *down);
/* Disconnects and frees what init set up. After the background thread has stopped. */
void ats__fleet_conn_destroy(struct ats__fleet_conn *c);
/* Keeps the error text, counts it and sets the owner's down flag. Any thread. */
void ats__fleet_conn_error(struct ats__fleet_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Keeps the error text and counts it, leaving the down flag: one key's failure on a connection
 * that answers (the keyed limiter). Any thread. */
void ats__fleet_conn_record_error(struct ats__fleet_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Connected, or connects when the backoff allows: 1 when connected before, 2 when it has just
 * connected (the owner then leases once, demand or not: only a lease call's answer says Redis is
 * up), 0 when not connected (c->next_connect_ns says when to try again). */
int ats__fleet_conn_ready(struct ats__fleet_conn *c, uint64_t now);
/* Drops the connection and schedules the next connect (backoff doubling, full jitter). */
void ats__fleet_conn_drop(struct ats__fleet_conn *c, uint64_t now);
/* Loads both scripts on the connection; false (error kept) on failure. */
bool ats__fleet_conn_load_scripts(struct ats__fleet_conn *c);
/* Runs the lease (lease true) or give-back script on one key with n; NOSCRIPT reloads the scripts
 * and retries once. The reply (caller frees) or NULL with the connection dropped. */
redisReply *ats__fleet_conn_script(struct ats__fleet_conn *c, bool lease, const char *key, size_t keylen,
                                   const uint64_t limit[3], uint64_t n, uint64_t now);
/* Queues a lease or give-back call without waiting for its reply (hiredis pipelining); the
 * replies come back in order through ats__fleet_conn_reply. False when the command could not be
 * queued (out of memory). */
bool ats__fleet_conn_append(struct ats__fleet_conn *c, bool lease, const char *key, size_t keylen,
                            const uint64_t limit[3], uint64_t n);
/* The next queued call's reply (caller frees), or NULL with the connection dropped. */
redisReply *ats__fleet_conn_reply(struct ats__fleet_conn *c, uint64_t now);
/* After a failed call: no call before the backoff has passed (doubling). After a good one: reset. */
void ats__fleet_conn_call_failed(struct ats__fleet_conn *c, uint64_t now);
void ats__fleet_conn_call_ok(struct ats__fleet_conn *c);
/* The last error's text (a copy). Any thread; a short mutex. */
void ats__fleet_conn_last_error(struct ats__fleet_conn *c, char *out, size_t len);

/* ---- A limit's settings ---- */

/* The lease policy of one limiter (all its keys alike). */
struct ats__fleet_policy_cfg {
	uint64_t batch_min, batch_max, refresh_ns, lease_ns;
};

/* A config checked and turned into what the scripts and the lease engine take. */
struct ats__fleet_settings {
	size_t keylen;     /* of cfg->key */
	uint64_t limit[3]; /* ev, per_us, burst: the rate as the scripts take it */
	struct ats__fleet_policy_cfg pol;
	ats_rate fallback_rate;
	uint64_t fallback_burst;
};

/* Checks cfg (every rule ats_fleet_init states; a key of 1..max_key bytes) and fills *out.
 * ATS_ERR_INVALID_ARGUMENT saying what is wrong, nothing changed. Pure. */
ats_err *ats__fleet_settings_of(const ats_fleet_config *cfg, size_t max_key, struct ats__fleet_settings *out);
/* pthread_create with every signal blocked in the new thread; pthread_create's result. */
int ats__fleet_start_thread(pthread_t *th, void *(*fn)(void *), void *arg);

/* ---- A lease ---- */

/* What a lease's owner counts (part of ats_fleet_stats / ats_fleet_keyed_stats). */
struct ats__fleet_lease_counters {
	_Atomic uint64_t leases, leased_tokens, expired_tokens, given_back;
};

/* The background thread's view of one lease word. */
struct ats__fleet_est {
	uint64_t last_tok;                  /* the word's token count after the thread's last look */
	uint64_t win_start_ns, win_used;    /* the consumption window (refresh_ns long) */
	uint64_t last_round_ns, round_used; /* the short (one poll) window */
	uint64_t rate_est;                  /* tokens per second, smoothed */
	uint64_t batch;                     /* the current target batch */
	uint64_t next_lease_ns;             /* no lease call before (Redis said it had none) */
	bool probe;                         /* lease once, demand or not */
	bool ever_leased;
};

/* The lease word: (expiry tick mod 2^40) << 24 | tokens; a tick is 1024 ns. */
static inline uint64_t ats__fleet_lease_word(uint64_t expiry_ns, uint64_t tok)
{
	return ((expiry_ns >> 10) << 24) | tok;
}

/* How often the thread looks at a lease: a quarter of the refresh interval, at least 100 us. */
static inline uint64_t ats__fleet_poll_ns(const struct ats__fleet_policy_cfg *p)
{
	return p->refresh_ns / 4 > 100000 ? p->refresh_ns / 4 : 100000;
}

void ats__fleet_est_init(struct ats__fleet_est *e, uint64_t now, uint64_t batch_min);
/* The tokens the word holds at now (0 when expired, and expired tokens are dropped and counted)
 * and, in *used, what acquirers took since the last look. Lock-free (a CAS only to drop). */
uint64_t ats__fleet_observe(_Atomic uint64_t *word, struct ats__fleet_est *e, struct ats__fleet_lease_counters *k,
                            uint64_t now, uint64_t *used);
/* Folds `used` into the rate estimate and returns the tokens to ask for now (0: no call), given
 * tok (from observe) and whether an acquire was refused since the last call (hungry). */
uint64_t ats__fleet_want(_Atomic uint64_t *word, struct ats__fleet_est *e, const struct ats__fleet_policy_cfg *p,
                         uint64_t tok, uint64_t used, bool hungry, uint64_t now);
/* Adds g granted tokens to the word with expiry now + lease_ns, counts them, and (when Redis had
 * fewer than asked) schedules the next call for when more have accrued. */
void ats__fleet_install(_Atomic uint64_t *word, struct ats__fleet_est *e, const struct ats__fleet_policy_cfg *p,
                        struct ats__fleet_lease_counters *k, const ats__fleet_reply *rep, uint64_t asked, uint64_t now);

#endif
