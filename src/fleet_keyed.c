/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed fleet limiter (include/atscale/fleet_keyed.h): a table of per-key lease records, read
 * under RCU, and one background thread that leases for every key over one pipelined connection
 * (internal/fleet_engine.h).
 *
 * The table: nslots pointers in buckets of 8 (one cache line each); a key lives in one of two
 * buckets picked by its seeded SipHash. A slot holds NULL or a record; records are immutable but
 * for their lease word, their flags and the thread's own fields. Readers find a record under
 * rcu_read_lock and CAS its lease word. Writers (adding and replacing keys) hold `mu`.
 *
 * Replacing a key (eviction) without losing or double-serving a token:
 *  1. under `mu`, the writer sets the record's `dead` flag, takes its tokens with one exchange of
 *     the lease word (to an empty word), stores the new record in the slot and puts the old one on
 *     the retired list with the tokens it took;
 *  2. a reader that found the old record before the swap either took its tokens before the
 *     exchange (granted: they were leased for that key), or sees an empty word after it, goes to
 *     the miss path, sees `dead` and looks the key up again;
 *  3. the background thread, the only one that adds tokens to a word, may still install a grant
 *     into the old record that was in flight; at its next round it takes the retired list, empties
 *     each word once more, gives all those tokens back to Redis in one pipeline, and frees each
 *     record through call_rcu, after every reader that could hold it has left its read section.
 * The thread never installs into a record it has seen dead, and the retired records are processed
 * after every lease reply of the round, so no grant is left in a freed record.
 *
 * The thread holds rcu_read_lock across a round (network included, bounded by timeout_ns), so the
 * records it walks stay alive; call_rcu callbacks (the frees) run on liburcu's own thread. */
#include "atscale/fleet_keyed.h"
#include "atscale/keyed.h"

#include "internal/compiler.h"
#include "internal/fleet_engine.h"
#ifdef ATS_TESTING
#include "internal/fleet_hooks.h"
#endif
#include "internal/futex.h"
#include "internal/rcu.h"
#include "internal/siphash.h"
#include "internal/tsan.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define BUCKET 8

struct fkey {
	_Alignas(64) _Atomic uint64_t lease; /* the lease word (fleet.h's layout) */
	uint64_t hash[2];                    /* SipHash of the key: [0] picks the first bucket and is compared */
	uint32_t len;                        /* the key's bytes (after the prefix) */
	uint32_t rkeylen;                    /* prefix + key: the Redis key */
	_Atomic uint32_t hungry;             /* an acquire was refused since the thread last asked */
	_Atomic uint32_t dead;               /* replaced: readers look again, the thread leaves it */
	_Atomic uint32_t leased;             /* its first lease has come (before it, the key is cold) */
	_Atomic uint64_t last_used_ns;       /* the thread's: when it last saw tokens taken (eviction order) */
	struct ats__fleet_est est;           /* the thread's */
	uint64_t retired_tokens;             /* under mu: taken from the word when it was replaced */
	uint64_t asked;                      /* the thread's: tokens asked for, or to give back */
	struct fkey *next_retired;           /* the retired list (under mu) */
	struct fkey *next;                   /* the thread's lists (asking, giving back) */
	struct rcu_head rcu;
	struct ats_fleet_keyed *owner; /* for the TSan hand-over in its RCU callback */
	size_t bytes;
	char rkey[]; /* prefix + key */
};

struct ats_fleet_keyed {
	_Atomic(struct fkey *) *slots;
	size_t nslots, bucket_mask;
	size_t max_keys;  /* the cap on keys held (the table has twice the slots, at least) */
	size_t max_bytes; /* the cap on bytes held (table and records); 0: none */
	size_t hand;      /* under mu: where the cap's clock hand looks next */
	uint64_t seed[2];
	_Atomic uint32_t down; /* 0 while the last lease call succeeded */
	uint32_t policy;
	char prefix[ATS_FLEET_KEYED_MAX_PREFIX];
	size_t prefixlen;
	uint64_t limit[3];
	struct ats__fleet_policy_cfg pol;
	ats_keyed *fallback; /* failing open: per-key fallback limits */

	pthread_mutex_t mu; /* adding and replacing keys; the retired list */
	struct fkey *retired;
	_Atomic size_t keys, bytes;

	pthread_t thread;
	_Atomic uint32_t wake; /* futex word: bumped by a hungry miss, a new key and stop */
	_Atomic uint32_t hungry;
	_Atomic uint32_t stop;
	pthread_mutex_t stop_mu; /* held across a whole stop: a concurrent stop returns only once it is done */

	struct ats__fleet_conn conn;
	struct ats__fleet_lease_counters lc;
	_Atomic uint64_t lease_misses, cold_misses, closed_denied, fallback_allowed, fallback_denied, inserts,
	    evicted_idle, evicted_forced, insert_failures;
	_Alignas(64) char tsan_sync; /* a TSan hand-over point: a record's hand-over to call_rcu */
};

#define BUMP ATS__FLEET_BUMP

/* liburcu's grace periods are made of membarrier and its own asm atomics, which ThreadSanitizer
 * cannot see. Every read section releases the limiter's sync object as it ends, and the RCU
 * callback that frees a record acquires it first: exactly the order a grace period guarantees.
 * The thread releases it before each call_rcu; callbacks release it when done, and
 * ats_fleet_keyed_free acquires it after rcu_barrier. (internal/tsan.h) */
static inline void read_unlock(ats_fleet_keyed *k)
{
	TSAN_RELEASE(&k->tsan_sync);
	urcu_memb_read_unlock();
}

static ats_err *invalid(const char *what)
{
	return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "keyed fleet limiter: %s", what);
}

static inline bool key_ok(const void *key, size_t len)
{
	return key && len >= 1 && len <= ATS_FLEET_KEYED_MAX_KEY;
}

static inline void key_hash(const ats_fleet_keyed *k, const void *key, size_t len, uint64_t h[2])
{
	ats__siphash128(k->seed, key, len, h);
}

static inline size_t bucket2(const ats_fleet_keyed *k, const uint64_t h[2], size_t b1)
{
	size_t b2 = (size_t)h[1] & k->bucket_mask;
	return b2 != b1 ? b2 : b1 ^ 1; /* at least two buckets: nslots >= 16 */
}

/* The record of key, or NULL. Inside a read section. Wait-free: 16 slots at most. */
static struct fkey *find(ats_fleet_keyed *k, const void *key, size_t len, const uint64_t h[2])
{
	size_t b1 = (size_t)h[0] & k->bucket_mask, b[2] = {b1, bucket2(k, h, b1)};
	for (int j = 0; j < 2; j++) {
		_Atomic(struct fkey *) *s = &k->slots[b[j] * BUCKET];
		for (int i = 0; i < BUCKET; i++) {
			/* acquire: pairs with the release that published the record (its fields are seen) */
			struct fkey *f = atomic_load_explicit(&s[i], memory_order_acquire);
			if (f && f->hash[0] == h[0] && f->len == len && memcmp(f->rkey + k->prefixlen, key, len) == 0)
				return f;
		}
	}
	return NULL;
}

#ifdef ATS_TESTING
_Atomic uint64_t ats__fleet_keyed_rounds;
#endif

static void wake_now(ats_fleet_keyed *k)
{
	atomic_fetch_add_explicit(&k->wake, 1, memory_order_release); /* pairs with the thread's acquire */
	ats__futex_wake(&k->wake, 1);
}

/* A refusal's wake-up: only while the flag is clear (the thread clears it at each round, and
 * sets it again when a refused key can ask for nothing yet: refusals then wait for the next
 * round rather than each waking the thread for a walk). */
static void wake_thread(ats_fleet_keyed *k)
{
	/* A load first, so refusals write nothing while the flag is set; relaxed exchange: the release
	 * bump of `wake` publishes it. */
	if (!atomic_load_explicit(&k->hungry, memory_order_relaxed) &&
	    !atomic_exchange_explicit(&k->hungry, 1, memory_order_relaxed))
		wake_now(k);
}

/* The policy's decision for an acquire the lease cannot serve while Redis is down or the key has
 * no lease yet. */
static bool by_policy(ats_fleet_keyed *k, const void *key, size_t len, uint64_t n, uint64_t now_ns)
{
	if (k->policy == ATS_FLEET_FAIL_OPEN) {
		bool ok = n <= ATS_GCRA_MAX_N && ats_keyed_allow_n_at(k->fallback, key, len, n, now_ns);
		if (ok)
			BUMP(k, fallback_allowed, 1);
		else
			BUMP(k, fallback_denied, 1);
		return ok;
	}
	BUMP(k, closed_denied, 1);
	return false;
}

/* ---- Adding and replacing keys (under mu) ---- */

static void rec_free_cb(struct rcu_head *head)
{
	struct fkey *f = ats__container_of(head, struct fkey, rcu);
	TSAN_ACQUIRE(f); /* the thread's hand-over through call_rcu's queue (its TSAN_RELEASE(f)) */
	ats_fleet_keyed *k = f->owner;
	TSAN_ACQUIRE(&k->tsan_sync);
	/* counted until freed: max_bytes covers records replaced but not yet freed */
	atomic_fetch_sub_explicit(&k->bytes, f->bytes, memory_order_relaxed);
	free(f);
	TSAN_RELEASE(&k->tsan_sync);
}

/* Takes a record out of use: dead, its tokens taken, onto the retired list. Under mu. */
static void retire(ats_fleet_keyed *k, struct fkey *f, uint64_t now_ns)
{
	/* relaxed: the exchange below (acq_rel) publishes it to a reader that sees the emptied word */
	atomic_store_explicit(&f->dead, 1, memory_order_relaxed);
	/* acq_rel: readers that see the empty word also see dead (release); acquire: the thread's
	 * installs before it are counted here */
	uint64_t w = atomic_exchange_explicit(&f->lease, ats__fleet_lease_word(now_ns, 0), memory_order_acq_rel);
	f->retired_tokens = ats__fleet_expired(w, now_ns) ? 0 : w & ATS__FLEET_TOKENS;
	if (ats__fleet_expired(w, now_ns) && (w & ATS__FLEET_TOKENS))
		BUMP(&k->lc, expired_tokens, w & ATS__FLEET_TOKENS);
	f->next_retired = k->retired;
	k->retired = f;
	atomic_fetch_sub_explicit(&k->keys, 1, memory_order_relaxed); /* a statistic */
}

/* Whether f is a better victim than the best so far: idle (lease empty or expired: nothing is
 * lost) before holding tokens, then the least recently used. */
static bool better_victim(struct fkey *f, uint64_t now_ns, bool *best_idle, uint64_t *best_used)
{
	uint64_t w = atomic_load_explicit(&f->lease, memory_order_relaxed); /* a snapshot to choose */
	bool idle = (w & ATS__FLEET_TOKENS) == 0 || ats__fleet_expired(w, now_ns);
	uint64_t used = atomic_load_explicit(&f->last_used_ns, memory_order_relaxed); /* a hint */
	if ((idle && !*best_idle) || (idle == *best_idle && used < *best_used)) {
		*best_idle = idle;
		*best_used = used;
		return true;
	}
	return false;
}

static void evict(ats_fleet_keyed *k, _Atomic(struct fkey *) *slot, bool idle, uint64_t now_ns)
{
	retire(k, atomic_load_explicit(slot, memory_order_relaxed), now_ns); /* relaxed: under mu */
	atomic_store_explicit(slot, NULL, memory_order_release);             /* readers miss it now */
	if (idle)
		BUMP(k, evicted_idle, 1);
	else
		BUMP(k, evicted_forced, 1);
}

/* The slot for a new key in buckets b[0], b[1]. Below the cap: an empty one, else one freed by
 * evicting the best victim of the two buckets (better_victim). At a cap (keys, or bytes): first a
 * key is evicted, the best victim of the two buckets or, when both are empty, the next key a clock
 * hand finds. */
static _Atomic(struct fkey *) *place(ats_fleet_keyed *k, const size_t b[2], bool over_bytes, uint64_t now_ns)
{
	_Atomic(struct fkey *) *victim = NULL, *empty = NULL;
	bool idle = false;
	uint64_t used = UINT64_MAX;
	for (int j = 0; j < 2; j++) {
		_Atomic(struct fkey *) *s = &k->slots[b[j] * BUCKET];
		for (int i = 0; i < BUCKET; i++) {
			/* relaxed: slots change only under mu, which we hold */
			struct fkey *f = atomic_load_explicit(&s[i], memory_order_relaxed);
			if (!f) {
				if (!empty)
					empty = &s[i];
			} else if (better_victim(f, now_ns, &idle, &used)) {
				victim = &s[i];
			}
		}
	}
	/* relaxed: changed only under mu */
	bool at_cap = atomic_load_explicit(&k->keys, memory_order_relaxed) >= k->max_keys || over_bytes;
	if (empty && !at_cap)
		return empty;
	if (!victim) { /* at the cap with both buckets empty: the hand's next key */
		if (!atomic_load_explicit(&k->keys, memory_order_relaxed)) /* under mu */
			return empty;                                      /* none held: over bytes by retiring ones */
		for (;;) {
			_Atomic(struct fkey *) *s = &k->slots[k->hand++ & (k->nslots - 1)];
			struct fkey *f = atomic_load_explicit(s, memory_order_relaxed); /* under mu */
			if (f) {
				better_victim(f, now_ns, &idle, &used);
				evict(k, s, idle, now_ns);
				return empty;
			}
		}
	}
	evict(k, victim, idle, now_ns);
	return empty ? empty : victim;
}

static size_t record_bytes(const ats_fleet_keyed *k, size_t len)
{
	return (sizeof(struct fkey) + k->prefixlen + len + 63) & ~(size_t)63;
}

/* Adds key (not found by the caller) unless a racing caller did; NULL when out of memory or when
 * the byte cap leaves no room (a record replaced to make room counts until it is freed). */
static struct fkey *add(ats_fleet_keyed *k, const void *key, size_t len, const uint64_t h[2], uint64_t now_ns)
{
	size_t bytes = record_bytes(k, len);
	pthread_mutex_lock(&k->mu);
	struct fkey *f = find(k, key, len, h);
	if (f) {
		pthread_mutex_unlock(&k->mu);
		return f;
	}
	/* relaxed: changed under mu, or lowered by the thread (a stale value only refuses early) */
	bool over = k->max_bytes && atomic_load_explicit(&k->bytes, memory_order_relaxed) + bytes > k->max_bytes;
	f = over ? NULL : aligned_alloc(64, bytes);
	if (!f) {
		if (over) { /* room for a later key, once the replaced record is freed */
			size_t b1 = (size_t)h[0] & k->bucket_mask, b[2] = {b1, bucket2(k, h, b1)};
			(void)place(k, b, true, now_ns);
		}
		pthread_mutex_unlock(&k->mu);
		BUMP(k, insert_failures, 1);
		return NULL;
	}
	memset(f, 0, sizeof *f);
	atomic_init(&f->lease, ats__fleet_lease_word(now_ns, 0));
	memcpy(f->hash, h, sizeof f->hash);
	f->len = (uint32_t)len;
	f->rkeylen = (uint32_t)(k->prefixlen + len);
	memcpy(f->rkey, k->prefix, k->prefixlen);
	memcpy(f->rkey + k->prefixlen, key, len);
	atomic_init(&f->hungry, 1);
	atomic_init(&f->last_used_ns, now_ns);
	f->bytes = bytes;
	f->owner = k;
	ats__fleet_est_init(&f->est, now_ns, k->pol.batch_min);
	f->est.probe = true; /* demand: lease for it at once */
	size_t b1 = (size_t)h[0] & k->bucket_mask, b[2] = {b1, bucket2(k, h, b1)};
	_Atomic(struct fkey *) *slot = place(k, b, false, now_ns);
	/* release: a reader that finds the record sees it whole */
	atomic_store_explicit(slot, f, memory_order_release);
	atomic_fetch_add_explicit(&k->keys, 1, memory_order_relaxed);      /* a statistic */
	atomic_fetch_add_explicit(&k->bytes, bytes, memory_order_relaxed); /* a statistic */
	pthread_mutex_unlock(&k->mu);
	BUMP(k, inserts, 1);
	return f;
}

/* ---- Acquiring ---- */

bool ats_fleet_keyed_allow_at(ats_fleet_keyed *k, const void *key, size_t len, uint64_t n, uint64_t now_ns)
{
	if (ats__unlikely(!k || !key_ok(key, len) || n > ATS_FLEET_MAX_BATCH))
		return false;
	if (n == 0)
		return true;
	uint64_t h[2];
	key_hash(k, key, len, h);
	ats__rcu_register();
	urcu_memb_read_lock();
	bool ok;
	for (;;) {
		struct fkey *f = find(k, key, len, h);
		if (ats__unlikely(!f)) {
			read_unlock(k);
			/* relaxed: once stopped, nothing leases for a new key, and the records it would
			 * replace would pile up until free: a cold key, by the policy, as out of memory is */
			if (atomic_load_explicit(&k->stop, memory_order_relaxed) || !add(k, key, len, h, now_ns))
				return by_policy(k, key, len, n, now_ns);
			wake_now(k); /* a new key: its first lease call at once, whatever the flag says */
			urcu_memb_read_lock();
			continue; /* its lease is empty: the miss path below decides */
		}
		/* acquire: a word retire() emptied comes with its dead flag */
		uint64_t w = atomic_load_explicit(&f->lease, memory_order_acquire);
		for (;;) {
			if (ats__unlikely((w & ATS__FLEET_TOKENS) < n || ats__fleet_expired(w, now_ns)))
				break;
			/* acquire, both: a failure reloads the word, which may be retire()'s (as the load above);
			 * on x86 no cost, on arm64 an acquiring exclusive load */
			if (atomic_compare_exchange_weak_explicit(&f->lease, &w, w - n, memory_order_acquire,
			                                          memory_order_acquire)) {
				read_unlock(k);
				return true;
			}
		}
		/* The lease cannot serve n. */
		if (atomic_load_explicit(&f->dead, memory_order_relaxed)) /* see the acquire above */
			continue;                                         /* replaced: look again */
		/* relaxed, both: flags that only pick the policy (a stale read picks it a moment late) */
		bool down = atomic_load_explicit(&k->down, memory_order_relaxed);
		bool cold = !atomic_load_explicit(&f->leased, memory_order_relaxed);
		if (cold)
			BUMP(k, cold_misses, 1);
		if (down || cold) {
			ok = by_policy(k, key, len, n, now_ns);
		} else {
			BUMP(k, lease_misses, 1);
			ok = false;
		}
		if (!atomic_load_explicit(&f->hungry, memory_order_relaxed))
			atomic_store_explicit(&f->hungry, 1, memory_order_relaxed); /* a hint for the thread */
		read_unlock(k);
		wake_thread(k);
		return ok;
	}
}

bool ats_fleet_keyed_allow(ats_fleet_keyed *k, const void *key, size_t len, uint64_t n)
{
	return ats_fleet_keyed_allow_at(k, key, len, n, ats_fast_now_ns());
}

int64_t ats_fleet_keyed_tokens_at(ats_fleet_keyed *k, const void *key, size_t len, uint64_t now_ns)
{
	if (!k || !key_ok(key, len))
		return 0;
	uint64_t h[2];
	key_hash(k, key, len, h);
	ats__rcu_register();
	urcu_memb_read_lock();
	struct fkey *f = find(k, key, len, h);
	int64_t t = 0;
	bool cold = true;
	if (f) {
		uint64_t w = atomic_load_explicit(&f->lease, memory_order_relaxed); /* a snapshot */
		t = ats__fleet_expired(w, now_ns) ? 0 : (int64_t)(w & ATS__FLEET_TOKENS);
		cold = !atomic_load_explicit(&f->leased, memory_order_relaxed); /* a flag */
	}
	read_unlock(k);
	/* relaxed: as in the acquire's miss path */
	if (k->policy == ATS_FLEET_FAIL_OPEN && (cold || atomic_load_explicit(&k->down, memory_order_relaxed)))
		t += (int64_t)ats_keyed_tokens_at(k->fallback, key, len, now_ns);
	return t;
}

/* ---- The background thread ---- */

/* Sends one pipeline: a lease call for every record on `ask`; installs what comes back. Inside the
 * thread's read section. */
static void lease_pipeline(ats_fleet_keyed *k, struct fkey *ask, uint64_t now)
{
	struct fkey *f;
	for (f = ask; f; f = f->next)
		if (!ats__fleet_conn_append(&k->conn, true, f->rkey, f->rkeylen, k->limit, f->asked))
			break;
	if (f) { /* out of memory queueing: drop the connection and its queue; the keys stay hungry */
		ats__fleet_conn_error(&k->conn, "EVALSHA pipeline on %s:%u: out of memory", k->conn.host, k->conn.port);
		ats__fleet_conn_drop(&k->conn, now);
		return;
	}
	bool all_ok = true, noscript = false;
	for (f = ask; f; f = f->next) {
		redisReply *r = ats__fleet_conn_reply(&k->conn, now);
		if (!r)
			return; /* the connection is gone (error kept); the rest stay hungry */
		ats__fleet_reply rep;
		ats_err *err = ats__fleet_parse_reply(r, f->asked, &rep);
		freeReplyObject(r);
		uint64_t after = ats_fast_now_ns();
		if (err) {
			const char *e = ats_err_kv_get(err, "redis_error");
			if (rep.noscript) { /* the connection's scripts are gone: reloaded below */
				noscript = true;
				all_ok = false;
				ats__fleet_conn_error(&k->conn, "%s%s%s", ats_err_message(err), e ? ": " : "",
				                      e ? e : "");
			} else {
				/* This key's own failure (its Redis key holds another type, say) on a connection
				 * that answers the others: the key alone goes by the policy (cold) and asks again
				 * after the longest reconnect delay; the limiter stays up. */
				ats__fleet_conn_record_error(&k->conn, "%s%s%s", ats_err_message(err), e ? ": " : "",
				                             e ? e : "");
				atomic_store_explicit(&f->leased, 0, memory_order_relaxed); /* a flag */
				f->est.next_lease_ns = after + k->conn.rmax_ns;
			}
			ats_err_unref(err);
			/* relaxed: a hint; a later round asks again */
			atomic_store_explicit(&f->hungry, 1, memory_order_relaxed);
			continue;
		}
		/* A record replaced meanwhile still takes the grant: its retirement, later in this round,
		 * empties the word again and gives it back. */
		ats__fleet_install(&f->lease, &f->est, &k->pol, &k->lc, &rep, f->asked, after);
		/* Answered, even with no token (the fleet's bucket is empty): the key is no longer cold,
		 * so its refusals are refusals, not the policy's (failing open, the fallback would grant
		 * while the fleet limit is spent). A flag. */
		atomic_store_explicit(&f->leased, 1, memory_order_relaxed);
	}
	if (noscript && !ats__fleet_conn_load_scripts(&k->conn)) {
		ats__fleet_conn_drop(&k->conn, now);
		return;
	}
	if (all_ok) {
		ats__fleet_conn_call_ok(&k->conn);
		/* relaxed: the flag alone picks the policy */
		atomic_store_explicit(&k->down, 0, memory_order_relaxed);
	} else {
		ats__fleet_conn_call_failed(&k->conn, ats_fast_now_ns());
	}
}

/* Gives the tokens of every record on `list` back to Redis in one pipeline (when connected) and
 * counts them. Each record's count is in its `asked`. */
static void give_back(ats_fleet_keyed *k, struct fkey *list, uint64_t now)
{
	size_t sent = 0;
	struct fkey *f;
	if (k->conn.rc) {
		for (f = list; f; f = f->next) {
			if (!f->asked)
				continue;
			if (!ats__fleet_conn_append(&k->conn, false, f->rkey, f->rkeylen, k->limit, f->asked))
				break;
			sent++;
		}
		if (f) {
			ats__fleet_conn_error(&k->conn, "give-back pipeline on %s:%u: out of memory", k->conn.host,
			                      k->conn.port);
			ats__fleet_conn_drop(&k->conn, now);
			sent = 0;
		}
	}
	for (f = list; f; f = f->next) {
		if (!f->asked)
			continue;
		bool back = false;
		if (sent && k->conn.rc) {
			sent--;
			redisReply *r = ats__fleet_conn_reply(&k->conn, now);
			back = r && r->type == REDIS_REPLY_INTEGER;
			if (r)
				freeReplyObject(r);
		}
		/* Every leased token ends granted, given back or dropped (counted as expired). */
		if (back)
			BUMP(&k->lc, given_back, f->asked);
		else
			BUMP(&k->lc, expired_tokens, f->asked);
	}
}

/* Empties a retired or stopping record's word: its unexpired tokens plus those taken before. */
static uint64_t drain(ats_fleet_keyed *k, struct fkey *f, uint64_t now)
{
	/* relaxed: acquirers take before or after the exchange, never the same token */
	uint64_t w = atomic_exchange_explicit(&f->lease, ats__fleet_lease_word(now, 0), memory_order_relaxed);
	uint64_t tok = w & ATS__FLEET_TOKENS;
	if (tok && ats__fleet_expired(w, now)) {
		BUMP(&k->lc, expired_tokens, tok);
		tok = 0;
	}
	uint64_t total = tok + f->retired_tokens;
	f->retired_tokens = 0;
	return total;
}

static void retire_round(ats_fleet_keyed *k, uint64_t now)
{
	pthread_mutex_lock(&k->mu);
	struct fkey *list = k->retired;
	k->retired = NULL;
	pthread_mutex_unlock(&k->mu);
	if (!list)
		return;
	for (struct fkey *f = list; f; f = f->next_retired) {
		f->asked = drain(k, f, now);
		f->next = f->next_retired; /* the thread owns it now: no writer touches it again */
	}
	give_back(k, list, now);
	while (list) {
		struct fkey *f = list;
		list = f->next;
		TSAN_RELEASE(&k->tsan_sync);
		TSAN_RELEASE(f);
		urcu_memb_call_rcu(&f->rcu, rec_free_cb);
	}
}

/* One round: the walk, one lease pipeline, the retired records. Returns when to wake up next. */
static uint64_t round_once(ats_fleet_keyed *k, uint64_t now)
{
	uint64_t poll = ats__fleet_poll_ns(&k->pol);
	int ready = ats__fleet_conn_ready(&k->conn, now);
	/* relaxed: a refusal during the walk sets it again and wakes the next round */
	atomic_store_explicit(&k->hungry, 0, memory_order_relaxed);
	struct fkey *ask = NULL;
	bool blocked = false;            /* a refused key that can ask for nothing this round */
	uint64_t unblocked = UINT64_MAX; /* the soonest such a key may ask again */
	urcu_memb_read_lock();
	for (size_t i = 0; i < k->nslots; i++) {
		/* acquire: the record's fields (pairs with add's release) */
		struct fkey *f = atomic_load_explicit(&k->slots[i], memory_order_acquire);
		if (!f || atomic_load_explicit(&f->dead, memory_order_relaxed)) /* dead: retire_round has it */
			continue;
		uint64_t used;
		uint64_t tok = ats__fleet_observe(&f->lease, &f->est, &k->lc, now, &used);
		if (used)
			atomic_store_explicit(&f->last_used_ns, now, memory_order_relaxed); /* a hint */
		if (ready == 2)
			f->est.probe = true; /* only a lease call's answer says Redis is up */
		/* relaxed: a hint */
		bool hungry = atomic_load_explicit(&f->hungry, memory_order_relaxed);
		uint64_t want = ats__fleet_want(&f->lease, &f->est, &k->pol, tok, used, hungry, now);
		if (want && ready && now >= k->conn.next_call_ns) {
			atomic_store_explicit(&f->hungry, 0, memory_order_relaxed); /* a hint */
			f->asked = want;
			f->next = ask;
			ask = f;
		} else if (hungry) {
			blocked = true;
			if (f->est.next_lease_ns > now && f->est.next_lease_ns < unblocked)
				unblocked = f->est.next_lease_ns;
		}
	}
	/* Refusals of keys that can ask for nothing yet (an empty fleet bucket, a backoff) would each
	 * wake the thread for another walk: leave the flag set, so they wait for the next round (at
	 * the poll, or when such a key may ask again, whichever is sooner). */
	if (blocked)
		atomic_store_explicit(&k->hungry, 1, memory_order_relaxed);
#ifdef ATS_TESTING
	atomic_fetch_add_explicit(&ats__fleet_keyed_rounds, 1, memory_order_relaxed);
#endif
	if (ask)
		lease_pipeline(k, ask, now);
	read_unlock(k);
	retire_round(k, ats_fast_now_ns());
	uint64_t next = now + poll;
	if (!k->conn.rc)
		next = k->conn.next_connect_ns < next ? k->conn.next_connect_ns : next;
	else if (k->conn.next_call_ns > now && k->conn.next_call_ns < next)
		next = k->conn.next_call_ns;
	/* A blocked key's refusals do not wake the thread (above): wake when it may ask again. */
	return unblocked < next ? unblocked : next;
}

static void *keyed_thread(void *arg)
{
	ats_fleet_keyed *k = arg;
	ats__rcu_register();
	/* relaxed: stop is re-read every round; join orders the rest */
	while (!atomic_load_explicit(&k->stop, memory_order_relaxed)) {
		/* acquire: pairs with the release bump of a miss, so its hungry flags are seen */
		uint32_t seen = atomic_load_explicit(&k->wake, memory_order_acquire);
		uint64_t next = round_once(k, ats_fast_now_ns());
		if (atomic_load_explicit(&k->stop, memory_order_relaxed)) /* relaxed: as above */
			break;
		ats__futex_wait(&k->wake, seen, next);
	}
	/* Stopping: every held key's unexpired tokens go back in one pipeline, then the retired ones. */
	uint64_t now = ats_fast_now_ns();
	struct fkey *list = NULL;
	urcu_memb_read_lock();
	/* Under mu: an acquirer may still replace a record (retire, under mu), which writes the
	 * retired_tokens that drain reads and clears. A record retired after this loop is drained by
	 * retire_round below. */
	pthread_mutex_lock(&k->mu);
	for (size_t i = 0; i < k->nslots; i++) {
		struct fkey *f = atomic_load_explicit(&k->slots[i], memory_order_acquire); /* as in the walk */
		if (!f || atomic_load_explicit(&f->dead, memory_order_relaxed))
			continue;
		f->asked = drain(k, f, now);
		f->next = list;
		list = f;
	}
	pthread_mutex_unlock(&k->mu);
	give_back(k, list, now);
	read_unlock(k);
	retire_round(k, now);
	if (k->conn.rc)
		redisFree(k->conn.rc);
	k->conn.rc = NULL;
	return NULL;
}

/* ---- Life cycle ---- */

ats_err *ats_fleet_keyed_new(ats_fleet_keyed **out, const ats_fleet_keyed_config *cfg)
{
	if (!out)
		return invalid("out is NULL");
	*out = NULL;
	if (!cfg)
		return invalid("config is NULL");
	struct ats__fleet_settings st;
	ats_err *err = ats__fleet_settings_of(&cfg->fleet, ATS_FLEET_KEYED_MAX_PREFIX, &st);
	if (err)
		return ats_err_wrap(err, "keyed fleet limiter: the prefix and limit");
	if (cfg->max_keys == 0)
		return invalid("max_keys is 0");
	if (cfg->max_keys > (SIZE_MAX >> 5))
		return invalid("max_keys is too large");
	/* Twice the slots, so that two-choice buckets of 8 hold max_keys keys without evicting early. */
	size_t nslots = 16;
	while (nslots < 2 * cfg->max_keys)
		nslots <<= 1;
	size_t fixed = nslots * sizeof(struct fkey *) + ((sizeof(struct ats_fleet_keyed) + 63) & ~(size_t)63);
	size_t one = (sizeof(struct fkey) + st.keylen + ATS_FLEET_KEYED_MAX_KEY + 63) & ~(size_t)63;
	if (cfg->max_bytes && cfg->max_bytes < fixed + one)
		return ats_err_with_kv(invalid("max_bytes leaves no room for one key beside the table"), "least", "%zu",
		                       fixed + one);
	ats_fleet_keyed *k = aligned_alloc(64, (sizeof *k + 63) & ~(size_t)63);
	if (!k)
		return ats_err_oom;
	memset(k, 0, sizeof *k);
	k->slots = aligned_alloc(64, nslots * sizeof *k->slots);
	if (!k->slots) {
		free(k);
		return ats_err_oom;
	}
	for (size_t i = 0; i < nslots; i++)
		atomic_init(&k->slots[i], NULL);
	k->nslots = nslots;
	k->max_keys = cfg->max_keys;
	k->max_bytes = cfg->max_bytes;
	k->bucket_mask = nslots / BUCKET - 1;
	if (getrandom(k->seed, sizeof k->seed, GRND_NONBLOCK) != (ssize_t)sizeof k->seed) {
		/* no entropy yet (early boot): a per-process seed still differs between processes */
		k->seed[0] = ats_now_ns() ^ (uint64_t)(uintptr_t)k;
		k->seed[1] = k->seed[0] * UINT64_C(0x9e3779b97f4a7c15);
	}
	k->policy = cfg->fleet.policy;
	memcpy(k->prefix, cfg->fleet.key, st.keylen);
	k->prefixlen = st.keylen;
	memcpy(k->limit, st.limit, sizeof k->limit);
	k->pol = st.pol;
	if (k->policy == ATS_FLEET_FAIL_OPEN) {
		ats_keyed_config kc = {.rate = st.fallback_rate, .burst = st.fallback_burst, .max_keys = cfg->max_keys};
		err = ats_keyed_new(&k->fallback, &kc);
		if (err) {
			free(k->slots);
			free(k);
			return ats_err_wrap(err, "keyed fleet limiter: the fallback limits");
		}
	}
	pthread_mutex_init(&k->mu, NULL);
	pthread_mutex_init(&k->stop_mu, NULL);
	atomic_init(&k->bytes, fixed);
	atomic_init(&k->down, 1);
	ats__fleet_conn_init(&k->conn, cfg->fleet.host, cfg->fleet.port, cfg->fleet.timeout_ns,
	                     cfg->fleet.reconnect_min_ns, cfg->fleet.reconnect_max_ns, &k->down);
	int rc = ats__fleet_start_thread(&k->thread, keyed_thread, k);
	if (rc) {
		ats__fleet_conn_destroy(&k->conn);
		pthread_mutex_destroy(&k->mu);
		pthread_mutex_destroy(&k->stop_mu);
		ats_keyed_free(k->fallback);
		free(k->slots);
		free(k);
		return ats_err_errno(rc, "keyed fleet limiter: starting its thread");
	}
	*out = k;
	return NULL;
}

void ats_fleet_keyed_stop(ats_fleet_keyed *k)
{
	if (!k)
		return;
	pthread_mutex_lock(&k->stop_mu); /* a second caller waits for the first to finish */
	/* relaxed: the exchange only makes stop idempotent; pthread_join orders the rest */
	if (atomic_exchange_explicit(&k->stop, 1, memory_order_relaxed)) {
		pthread_mutex_unlock(&k->stop_mu);
		return;
	}
	/* release: the thread's acquire load of `wake` then sees stop set */
	atomic_fetch_add_explicit(&k->wake, 1, memory_order_release);
	ats__futex_wake(&k->wake, 1);
	pthread_join(k->thread, NULL);
	pthread_mutex_lock(&k->conn.mu);
	snprintf(k->conn.last_error, sizeof k->conn.last_error, "stopped");
	pthread_mutex_unlock(&k->conn.mu);
	atomic_store_explicit(&k->down, 1, memory_order_relaxed); /* the policy from now on */
	pthread_mutex_unlock(&k->stop_mu);
}

void ats_fleet_keyed_free(ats_fleet_keyed *k)
{
	if (!k)
		return;
	ats_fleet_keyed_stop(k);
	for (size_t i = 0; i < k->nslots; i++) {
		/* relaxed: the last call on the limiter; no reader is left */
		struct fkey *f = atomic_load_explicit(&k->slots[i], memory_order_relaxed);
		free(f);
	}
	/* Records replaced after the thread stopped (their words were drained at stop). */
	for (struct fkey *f = k->retired, *next; f; f = next) {
		next = f->next_retired;
		free(f);
	}
	urcu_memb_barrier(); /* the retired records' frees, queued by the thread */
	TSAN_ACQUIRE(&k->tsan_sync);
	ats__fleet_conn_destroy(&k->conn);
	pthread_mutex_destroy(&k->mu);
	pthread_mutex_destroy(&k->stop_mu);
	ats_keyed_free(k->fallback);
	free(k->slots);
	free(k);
}

/* ---- State ---- */

ats_err *ats_fleet_keyed_status(ats_fleet_keyed *k)
{
	if (!k)
		return invalid("limiter is NULL");
	/* relaxed: a report, not a decision */
	if (!atomic_load_explicit(&k->down, memory_order_relaxed))
		return NULL;
	char text[sizeof k->conn.last_error];
	ats__fleet_conn_last_error(&k->conn, text, sizeof text);
	const char *policy = k->policy == ATS_FLEET_FAIL_OPEN ? "fail_open" : "fail_closed";
	ats_err *err = ats_err_new(ATS_ERR_UNAVAILABLE, "keyed fleet limit '%.*s': Redis at %s:%u is unavailable (%s)",
	                           (int)k->prefixlen, k->prefix, k->conn.host, k->conn.port,
	                           k->policy == ATS_FLEET_FAIL_OPEN ? "failing open" : "failing closed");
	err = ats_err_with_kv(err, "redis", "%s:%u", k->conn.host, k->conn.port);
	err = ats_err_with_kv(err, "prefix", "%.*s", (int)k->prefixlen, k->prefix);
	err = ats_err_with_kv(err, "policy", "%s", policy);
	return ats_err_with_kv(err, "redis_error", "%s", text);
}

void ats_fleet_keyed_stats_get(ats_fleet_keyed *k, ats_fleet_keyed_stats *out)
{
	memset(out, 0, sizeof *out);
	if (!k)
		return;
#define LOAD_FROM(s, field) out->field = atomic_load_explicit(&(s)->field, memory_order_relaxed) /* counters */
	LOAD_FROM(&k->conn, redis_ops);
	LOAD_FROM(&k->lc, leases);
	LOAD_FROM(&k->lc, leased_tokens);
	LOAD_FROM(&k->lc, expired_tokens);
	LOAD_FROM(&k->lc, given_back);
	LOAD_FROM(&k->conn, redis_errors);
	LOAD_FROM(&k->conn, reconnects);
	LOAD_FROM(k, lease_misses);
	LOAD_FROM(k, cold_misses);
	LOAD_FROM(k, closed_denied);
	LOAD_FROM(k, fallback_allowed);
	LOAD_FROM(k, fallback_denied);
	LOAD_FROM(k, inserts);
	LOAD_FROM(k, evicted_idle);
	LOAD_FROM(k, evicted_forced);
	LOAD_FROM(k, insert_failures);
	LOAD_FROM(k, keys);
	LOAD_FROM(k, bytes);
#undef LOAD_FROM
	out->key_limit = k->max_keys;
	out->up = !atomic_load_explicit(&k->down, memory_order_relaxed); /* a snapshot */
}
