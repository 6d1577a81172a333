/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed rate limiters (include/atscale/keyed.h).
 *
 * Why a hand-written table. atscale uses a library where one fits, and two candidates
 * exist: liburcu's cds_lfht and ck_hs. Both were measured at 1M random 4-byte keys, pre-sized, one GCRA
 * take per lookup (rows keyed.alt_cds_lfht_1m and keyed.alt_ck_hs_1m in bench/bench_keyed.c):
 * each chases a bucket or pointer array and then a separately allocated node, two dependent cache
 * misses per lookup, where this table's keyed.allow_1m and keyed.allow_1m_burst32 rows stay near
 * one floor.dram_miss (and the Go peer's map + RWMutex + x/time/rate row far above). This table keeps the key, its TAT
 * and its flags in one 32-byte slot of an open-addressing array, so a hit is one miss and independent lookups overlap
 * theirs; it holds 67 bytes per key at 1M keys (RSS), the libraries' tables 33-49 bytes plus the
 * node each. What the
 * libraries give that this file has to do itself, and how:
 *  - readers never lock: slots are read with acquire loads of a state word; all slot fields are
 *    C11 atomics so ThreadSanitizer sees every publication;
 *  - deletion: a slot is killed (state DEAD) and reused only after an RCU grace period (an epoch
 *    advanced by call_rcu), so a reader that matched the old key can never act on a new one;
 *  - growth: a writer builds a new table, moves each key (copy, then swap the old TAT for a "gone"
 *    mark with a CAS, retrying if an allow raced it), publishes the table and call_rcu-frees the
 *    old one. A reader that meets the mark follows the old table's `next` link, so it never waits;
 *  - writers (insert, evict, resize, override) serialize on one mutex: new keys are the slow path.
 *
 * Slot states, in `meta`: EMPTY (never used; ends a probe), LIVE (the key's form and a 25-bit hash
 * tag, so a probe compares one word before the key; the form is the length of a key of up to 16
 * bytes, stored as it is, or LONG_FORM for a longer key stored as its 128-bit SipHash) and DEAD
 * (with the grace epoch it died in). The "gone" mark is a TAT 2^63 - 2^60 units ahead of the
 * writer's clock: no real TAT is ever more than burst (<= 2^62 units) plus the timestamp spread
 * (< 2^60) ahead of a reader's clock, so a reader tells the two apart with one comparison before
 * any arithmetic that could wrap.
 */
#define _LGPL_SOURCE
#include "atscale/keyed.h"
#include "atscale/clock.h"
#include "internal/compiler.h"
#include "internal/keyed.h"
#include "internal/rcu.h"
#include "internal/siphash.h"
#include "internal/tsan.h"

#include <urcu/urcu-memb.h>

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* liburcu's grace periods are made of membarrier and its own asm atomics, which ThreadSanitizer
 * cannot see. Readers release a per-map sync object when they leave a read-side section and every
 * RCU callback acquires it before freeing, which is exactly the order a grace period guarantees;
 * a writer releases it just before each call_rcu (its own reads of what the callback frees come
 * first, in program order, and the enqueue happens before the callback runs); callbacks release
 * it when done and ats_keyed_destroy acquires it after rcu_barrier. Every call_rcu and
 * rcu_barrier in this file is covered: resize (table), grace_kick (epoch), destroy (barrier).
 * (TSAN_RELEASE/TSAN_ACQUIRE: internal/tsan.h.) */

#ifdef ATS_TESTING
_Atomic int ats__keyed_fail_alloc;
void (*_Atomic ats__keyed_pause)(int point, uint32_t aux);
_Atomic unsigned long ats__keyed_tokens_loops;
#define COUNT_LOOP() atomic_fetch_add_explicit(&ats__keyed_tokens_loops, 1, memory_order_relaxed)
#define PAUSE(point, aux)                                                                                              \
	do {                                                                                                           \
		void (*pause)(int, uint32_t) = atomic_load_explicit(&ats__keyed_pause, memory_order_relaxed);          \
		if (pause)                                                                                             \
			pause(point, aux);                                                                             \
	} while (0)
#else
#define PAUSE(point, aux) ((void)0)
#define COUNT_LOOP() ((void)0)
#endif

/* ---- Slots and tables ---- */

struct slot {
	_Atomic uint32_t meta;   /* state | len << 2 | tag << 7 (LIVE) or epoch << 7 (DEAD) */
	_Atomic uint32_t aux;    /* REF | override id << 1 (0: the map's default limit) */
	_Atomic uint64_t key[2]; /* the key's bytes, packed by key_words() */
	_Atomic uint64_t tat;    /* the GCRA bucket, or the "gone" mark */
};
_Static_assert(sizeof(struct slot) == 32, "two slots per cache line, none straddling one");

enum { S_EMPTY = 0, S_LIVE = 1, S_DEAD = 2 };
#define META_STATE(x) ((x)&3u)
#define META_LIVE(len, tag) (S_LIVE | (uint32_t)(len) << 2 | (uint32_t)(tag) << 7)
#define META_DEAD(epoch) (S_DEAD | ((uint32_t)(epoch)&0x1ffffffu) << 7)
#define META_LEN(x) (((x) >> 2) & 31u)
#define AUX_REF 1u

#define GONE_OFFSET ((UINT64_C(1) << 63) - (UINT64_C(1) << 60))
#define GONE_THRESHOLD ((UINT64_C(1) << 62) + (UINT64_C(1) << 60))

#define MIN_SLOTS 8
/* The load factor: a table holds keys in at most LOAD_NUM/LOAD_DEN of its slots (3/4), and grows
 * (or caps key_limit) there, so a probe chain stays short. */
#define LOAD_NUM 3
#define LOAD_DEN 4
#define SWEEP_PER_INSERT 4 /* idle keys looked for by each insert (lossless upkeep) */
#define IDLE_WINDOW 64     /* slots a forced eviction looks through for an idle key first */

struct ats__keyed_table {
	size_t mask;                             /* slots - 1 */
	struct slot *slots;                      /* 64-byte aligned, inside mem */
	_Atomic(struct ats__keyed_table *) next; /* where a resize moved the keys */
	ats_keyed *map;
	size_t bytes; /* what this table counts against max_bytes */
	struct rcu_head rcu;
};

_Static_assert(sizeof(((ats_keyed *)0)->grace_head_) >= sizeof(struct rcu_head), "grace_head holds an rcu_head");

static inline size_t table_bytes_for(size_t slots)
{
	return sizeof(struct ats__keyed_table) + 64 + slots * sizeof(struct slot);
}

/* calloc: large tables come from fresh mmap pages, so zeroing costs nothing until a page is used. */
static struct ats__keyed_table *table_alloc(ats_keyed *m, size_t slots)
{
	size_t bytes = table_bytes_for(slots);
	/* relaxed: a byte count, publishing nothing; a stale (larger) value, a callback's free not yet seen,
	 * only refuses, and may_wait then waits for the frees */
	size_t held = atomic_load_explicit(&m->table_bytes_, memory_order_relaxed);
	if (m->max_bytes_ && m->base_bytes_ + held + bytes > m->max_bytes_)
		return NULL;
#ifdef ATS_TESTING
	/* relaxed: a test switch; nothing rides on it */
	if (atomic_load_explicit(&ats__keyed_fail_alloc, memory_order_relaxed))
		return NULL;
#endif
	char *mem = calloc(1, bytes);
	if (!mem)
		return NULL;
	struct ats__keyed_table *t = (struct ats__keyed_table *)mem;
	uintptr_t s = ((uintptr_t)(mem + sizeof *t) + 63) & ~(uintptr_t)63;
	t->slots = (struct slot *)s;
	t->mask = slots - 1;
	t->map = m;
	t->bytes = bytes;
	/* relaxed: a byte count (see above); the table itself is published by m->table or next */
	atomic_fetch_add_explicit(&m->table_bytes_, bytes, memory_order_relaxed);
	return t;
}

static void table_free_now(struct ats__keyed_table *t)
{
	/* relaxed: a byte count (see table_alloc) */
	atomic_fetch_sub_explicit(&t->map->table_bytes_, t->bytes, memory_order_relaxed);
	free(t);
}

static void table_free_cb(struct rcu_head *head)
{
	struct ats__keyed_table *t = ats__container_of(head, struct ats__keyed_table, rcu);
	ats_keyed *m = t->map;
	TSAN_ACQUIRE(&m->tsan_sync_);
	table_free_now(t);
	TSAN_RELEASE(&m->tsan_sync_); /* ats_keyed_destroy's rcu_barrier waits for this write to m */
}

/* ---- Keys and hashing ---- */

static inline uint32_t load32(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

/* The form of a key over ATS_KEYED_INLINE_KEY bytes, in meta's length field: no inline key has
 * it, so a short key and a long key's hash never compare equal. */
#define LONG_FORM (ATS_KEYED_INLINE_KEY + 1)
_Static_assert(LONG_FORM <= 31, "the form fits meta's 5-bit length field");

/* Packs 1..16 key bytes into two words, one-to-one for a given length (overlapping loads cover
 * every byte; the length is compared separately, in meta). */
static inline void key_words(const void *key, size_t len, uint64_t w[2])
{
	const unsigned char *p = key;
	if (len >= 8) {
		w[0] = load64(p);
		w[1] = load64(p + len - 8);
	} else if (len >= 4) {
		w[0] = load32(p) | (uint64_t)load32(p + len - 4) << 32;
		w[1] = 0;
	} else {
		w[0] = p[0] | (uint64_t)p[len / 2] << 8 | (uint64_t)p[len - 1] << 16;
		w[1] = 0;
	}
}

static inline uint64_t mum(uint64_t a, uint64_t b)
{
	unsigned __int128 r = (unsigned __int128)a * b;
	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* wyhash's 16-byte finalizer, seeded per map. */
static inline uint64_t key_hash(const ats_keyed *m, const uint64_t w[2], size_t len)
{
	uint64_t a = w[0] ^ m->seed_[0] ^ UINT64_C(0xa0761d6478bd642f);
	uint64_t b = w[1] ^ m->seed_[1] ^ UINT64_C(0xe7037ed1a0b428db);
	return mum(mum(a, b) ^ len, m->seed_[0] ^ UINT64_C(0x8ebc6af09c88c6e3));
}

static inline uint32_t hash_tag(uint64_t h)
{
	return (uint32_t)(h >> 39); /* 25 bits, disjoint from the index bits of any table < 2^39 slots */
}

static inline bool key_ok(const void *key, size_t len)
{
	return ats_keyed_key_ok(key, len);
}

struct kref {
	uint64_t w[2];
	uint64_t h;
	uint32_t meta;
	uint32_t len;
};

/* k->len is the key's form: its length, or LONG_FORM. */
static inline void kref_make(const ats_keyed *m, const void *key, size_t len, struct kref *k)
{
	if (__builtin_expect(len > ATS_KEYED_INLINE_KEY, 0)) {
		ats__siphash128(m->seed_, key, len, k->w);
		len = LONG_FORM;
	} else {
		key_words(key, len, k->w);
	}
	k->h = key_hash(m, k->w, len);
	k->len = (uint32_t)len;
	k->meta = META_LIVE(len, hash_tag(k->h));
}

/* The key's LIVE slot in t, or NULL. Readers: wait-free, acquire on meta pairs with the writer's
 * release, so the key words read after it are the ones published. */
static inline struct slot *find(const struct ats__keyed_table *t, const struct kref *k)
{
	size_t i = k->h & t->mask;
	for (size_t probes = 0; probes <= t->mask; probes++) {
		struct slot *s = &t->slots[i];
		/* acquire: pairs with the release store of meta in publish and resize: key, aux and TAT are seen */
		uint32_t x = atomic_load_explicit(&s->meta, memory_order_acquire);
		if (x == k->meta) {
			/* relaxed, both: after the acquire on meta; a slot's key changes only after a grace period,
			 * which this reader's read-side section (or a writer's mutex) holds off */
			if (atomic_load_explicit(&s->key[0], memory_order_relaxed) == k->w[0] &&
			    atomic_load_explicit(&s->key[1], memory_order_relaxed) == k->w[1])
				return s;
		} else if (x == S_EMPTY) {
			return NULL;
		}
		i = (i + 1) & t->mask;
	}
	return NULL;
}

static inline const ats_token_clock *aux_clock(const ats_keyed *m, uint32_t aux)
{
	uint32_t id = aux >> 1;
	return id ? &m->overrides_[id - 1] : &m->clock_;
}

static inline const ats_keyed_limit *aux_limit(const ats_keyed *m, uint32_t aux)
{
	uint32_t id = aux >> 1;
	return id ? &m->override_limits_[id - 1] : &m->limit_;
}

static inline bool is_gone(uint64_t tat, uint64_t now_units)
{
	return (int64_t)(tat - now_units) > (int64_t)GONE_THRESHOLD;
}

enum { T_DENIED, T_GRANTED, T_GONE, T_TOO_BIG, T_NO_ROOM };

/* One GCRA take on a slot. Lock-free: relaxed loads and one relaxed CAS per attempt (the TAT's
 * modification order alone prevents over-grant, as in ats_gcra_take_at); the deny path writes
 * nothing but a clear reference bit. T_GONE: the key was evicted or moved. */
static inline int slot_take(const ats_keyed *m, struct slot *s, uint64_t n, uint64_t now_ns)
{
	/* relaxed: aux was published with meta (find's acquire); the REF bit is a CLOCK hint, no data rides on it */
	uint32_t aux = atomic_load_explicit(&s->aux, memory_order_relaxed);
	if (!(aux & AUX_REF))
		atomic_fetch_or_explicit(&s->aux, AUX_REF, memory_order_relaxed);
	const ats_token_clock *c = aux_clock(m, aux);
	uint64_t now = ats_token_clock_units(c, now_ns);
	/* relaxed, this load and the CAS: the TAT's modification order alone decides; a gone mark seen here
	 * is re-read with acquire by the caller (resolve) before it follows next */
	uint64_t cur = atomic_load_explicit(&s->tat, memory_order_relaxed);
	for (;;) {
		if (is_gone(cur, now))
			return T_GONE;
		if (c->inf)
			return T_GRANTED;
		uint64_t next;
		if (!ats_gcra_next(c, cur, now, n, &next))
			return T_DENIED;
		if (atomic_compare_exchange_weak_explicit(&s->tat, &cur, next, memory_order_relaxed,
		                                          memory_order_relaxed))
			return T_GRANTED;
	}
}

/* ---- Throttle answers (the exact limiter's, limiter.c, on the key's clock) ---- */

static int64_t to_i64(uint64_t ns)
{
	return ns > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)ns;
}

/* The delay from now_ns until `units` more units have passed on c, rounded up to whole ns exactly
 * as ats_limiter_throttle_at rounds it (one 128-bit division). UINT64_MAX: never (rate 0). */
static uint64_t delay_for(const ats_keyed_limit *lim, const ats_token_clock *c, uint64_t now_ns, uint64_t units)
{
	if (units == 0)
		return 0;
	if (lim->rate.events == 0)
		return UINT64_MAX;
	unsigned __int128 num = (unsigned __int128)units * lim->rate.period_ns;
	unsigned __int128 den = (unsigned __int128)lim->rate.events << c->shift;
	unsigned __int128 q = (num + den - 1) / den;
	if (q >= UINT64_MAX)
		return UINT64_MAX;
	uint64_t from = now_ns < c->epoch_ns ? c->epoch_ns : now_ns;
	uint64_t act = from + (uint64_t)q < from ? UINT64_MAX : from + (uint64_t)q;
	return act == UINT64_MAX ? UINT64_MAX : act - now_ns;
}

/* Fills *res for a request of n at clock reading `now` on a bucket at `tat` (before the request),
 * granted or not (`fits`). Pure. */
static void fill_result(const ats_keyed_limit *lim, const ats_token_clock *c, uint64_t tat, uint64_t now, uint64_t n,
                        bool fits, uint64_t now_ns, ats_limiter_result *res)
{
	*res = (ats_limiter_result){.allowed = fits, .limit = lim->burst, .retry_after_ns = -1};
	if (c->inf) {
		res->remaining = lim->burst;
		return;
	}
	uint64_t start = ats__gcra_start(tat, now), debt = start - now;
	uint64_t debt_after = fits ? debt + (n << c->shift) : debt;
	res->remaining = debt_after >= c->burst_units ? 0 : (c->burst_units - debt_after) >> c->shift;
	res->reset_after_ns = to_i64(delay_for(lim, c, now_ns, debt_after));
	if (!fits)
		res->retry_after_ns = n > lim->burst
		                          ? INT64_MAX
		                          : to_i64(delay_for(lim, c, now_ns, debt + (n << c->shift) - c->burst_units));
}

/* slot_take with the throttle's answer in *res. Lock-free as slot_take; the divisions run once,
 * after the outcome is settled. */
static int slot_throttle(const ats_keyed *m, struct slot *s, uint64_t n, uint64_t now_ns, ats_limiter_result *res)
{
	/* relaxed: as in slot_take */
	uint32_t aux = atomic_load_explicit(&s->aux, memory_order_relaxed);
	if (!(aux & AUX_REF))
		atomic_fetch_or_explicit(&s->aux, AUX_REF, memory_order_relaxed);
	const ats_token_clock *c = aux_clock(m, aux);
	const ats_keyed_limit *lim = aux_limit(m, aux);
	uint64_t now = ats_token_clock_units(c, now_ns);
	/* relaxed, this load and the CAS: as in slot_take */
	uint64_t cur = atomic_load_explicit(&s->tat, memory_order_relaxed);
	for (;;) {
		if (is_gone(cur, now))
			return T_GONE;
		uint64_t next;
		bool fits = c->inf || ats_gcra_next(c, cur, now, n, &next);
		if (fits && !c->inf &&
		    !atomic_compare_exchange_weak_explicit(&s->tat, &cur, next, memory_order_relaxed,
		                                           memory_order_relaxed))
			continue;
		fill_result(lim, c, cur, now, n, fits, now_ns, res);
		return fits ? T_GRANTED : n > lim->burst ? T_TOO_BIG : T_DENIED;
	}
}

/* ---- Threads ---- */

/* reg_thread: internal/rcu.h. */
#define reg_thread ats__rcu_register

/* ---- Writers (all under m->lock) ---- */

static inline bool dead_reusable(const ats_keyed *m, uint32_t x)
{
	if (META_STATE(x) != S_DEAD)
		return false;
	/* acquire: pairs with grace_cb's release, so the grace period that advanced it (every reader that
	 * could still see the slot LIVE has left) happens before the caller rewrites the slot */
	uint32_t safe = atomic_load_explicit(&m->safe_epoch_, memory_order_acquire);
	uint32_t age = (safe - (x >> 7)) & 0x1ffffffu;
	return age >= 1 && age < (1u << 24);
}

static void grace_cb(struct rcu_head *head)
{
	ats_keyed *m = ats__container_of((void *)head, ats_keyed, grace_head_);
	TSAN_ACQUIRE(&m->tsan_sync_);
	/* relaxed, both: grace_kick stored target before call_rcu, whose enqueue happens before this
	 * callback; only this callback stores safe_epoch, one at a time (grace_inflight) */
	uint32_t target = atomic_load_explicit(&m->grace_target_, memory_order_relaxed);
	uint32_t cur = atomic_load_explicit(&m->safe_epoch_, memory_order_relaxed);
	/* release: pairs with dead_reusable's acquire */
	if ((int32_t)((target - cur) << 7) > 0) /* only forward (25-bit epochs, modular) */
		atomic_store_explicit(&m->safe_epoch_, target, memory_order_release);
	/* release: pairs with grace_kick's acquire: this callback's read of grace_target comes first */
	atomic_store_explicit(&m->grace_inflight_, 0, memory_order_release);
	TSAN_RELEASE(&m->tsan_sync_);
}

/* Starts a grace period for the slots killed since the last one (one in flight at a time). Cost:
 * one call_rcu enqueue. */
static void grace_kick(ats_keyed *m)
{
	/* acquire: pairs with grace_cb's release of 0, so the last callback is done with grace_target */
	if (!m->killed_since_grace_ || atomic_load_explicit(&m->grace_inflight_, memory_order_acquire))
		return;
	/* relaxed, both: read only by writers (under the mutex); call_rcu's enqueue below happens before
	 * grace_cb, so the callback's 0 comes after this 1 and it sees this target */
	atomic_store_explicit(&m->grace_inflight_, 1, memory_order_relaxed);
	m->epoch_++;
	atomic_store_explicit(&m->grace_target_, m->epoch_, memory_order_relaxed);
	m->killed_since_grace_ = 0;
	TSAN_RELEASE(&m->tsan_sync_); /* the writes above happen before grace_cb (see resize) */
	urcu_memb_call_rcu((struct rcu_head *)m->grace_head_, grace_cb);
}

static inline uint64_t gone_mark(const ats_token_clock *c, uint64_t now_ns)
{
	return ats_token_clock_units(c, now_ns) + GONE_OFFSET;
}

/* When a full bucket (TAT tat <= the clock's reading at now_ns) became full, in ns: never earlier
 * than it did (the span back is shortened by 2^-40 of itself, far more than the double's error),
 * so a floor made of it is never too low. A clock that never moves (an infinite rate, or rate 0,
 * the only clock whose rate the double reads as 0): 0, since such a bucket reads the same at every
 * time, and the floor, which is the whole map's, must not rise for it. */
static uint64_t full_since_ns(const ats_token_clock *c, uint64_t tat, uint64_t now_ns)
{
	double units_per_ns = (double)c->mul_int + (double)c->frac_hi * 0x1p-64;
	if (c->inf || !(units_per_ns > 0))
		return 0;
	uint64_t behind = ats_token_clock_units(c, now_ns) - tat; /* modular: tat is not ahead */
	double back = (double)behind / units_per_ns * (1 - 0x1p-40);
	return back >= (double)now_ns ? 0 : now_ns - (uint64_t)back;
}

/* Evicts one LIVE slot: idle only (force false: the TAT must still be the full one it read, so a
 * racing allow makes the eviction fail rather than be lost) or whatever its state (force true).
 * The release on the mark pairs with a reader's acquire re-load. Returns whether it evicted, and
 * through *was_full whether the bucket was full (lossless). */
static bool slot_evict(ats_keyed *m, struct slot *s, uint64_t now_ns, bool force, bool *was_full)
{
	/* relaxed, aux and TAT: under the writer mutex (readers only OR the REF hint into aux); the TAT is
	 * validated by the exchange or CAS below */
	uint32_t aux = atomic_load_explicit(&s->aux, memory_order_relaxed);
	if (!force && aux >> 1)
		return false; /* a key with its own limit is configuration: only the cap may drop it */
	const ats_token_clock *c = aux_clock(m, aux);
	uint64_t now = ats_token_clock_units(c, now_ns);
	uint64_t cur = atomic_load_explicit(&s->tat, memory_order_relaxed);
	bool full = (int64_t)(cur - now) <= 0;
	/* release, the exchange and the CAS: pairs with the reader's acquire re-load in resolve, as resize's mark
	 * does (an eviction itself publishes nothing a reader needs: cold path, kept); CAS failure relaxed:
	 * nothing is evicted */
	if (force) {
		cur = atomic_exchange_explicit(&s->tat, now + GONE_OFFSET, memory_order_release);
		full = (int64_t)(cur - now) <= 0;
	} else if (!full || !atomic_compare_exchange_strong_explicit(&s->tat, &cur, now + GONE_OFFSET,
	                                                             memory_order_release, memory_order_relaxed)) {
		return false;
	}
	PAUSE(ATS__KEYED_PAUSE_KILLED, aux);
	/* release: not needed (a reader that sees DEAD reads nothing more of the slot); kept: cold path */
	atomic_store_explicit(&s->meta, META_DEAD(m->epoch_), memory_order_release);
	/* relaxed: only writers (under the mutex) change the count; readers get a statistic */
	atomic_fetch_sub_explicit(&m->keys_, 1, memory_order_relaxed);
	m->killed_since_grace_++;
	if (full) { /* lossless: a new key must not be fuller than this one was (fresh_tat) */
		uint64_t since = full_since_ns(c, cur, now_ns);
		/* relaxed, load and store: written under the mutex; tokens_at reads a value */
		if (since > atomic_load_explicit(&m->full_floor_ns_, memory_order_relaxed))
			atomic_store_explicit(&m->full_floor_ns_, since, memory_order_relaxed);
	}
	/* relaxed: statistics */
	if (full)
		atomic_fetch_add_explicit(&m->evicted_idle_, 1, memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&m->evicted_forced_, 1, memory_order_relaxed);
	if (was_full)
		*was_full = full;
	return true;
}

/* Evicts idle keys among `count` slots from the sweep cursor. */
static size_t sweep_idle(ats_keyed *m, uint64_t now_ns, size_t count)
{
	/* relaxed: under the writer mutex; only writers store it */
	struct ats__keyed_table *t = atomic_load_explicit(&m->table_, memory_order_relaxed);
	size_t evicted = 0;
	for (size_t k = 0; k < count; k++) {
		struct slot *s = &t->slots[m->sweep_ & t->mask];
		m->sweep_ = (m->sweep_ + 1) & t->mask;
		/* relaxed: under the writer mutex; only writers store it */
		if (META_STATE(atomic_load_explicit(&s->meta, memory_order_relaxed)) == S_LIVE &&
		    slot_evict(m, s, now_ns, false, NULL))
			evicted++;
	}
	return evicted;
}

/* Makes room for one key at the cap: the first idle key within IDLE_WINDOW slots of the CLOCK
 * hand, else the first key the hand finds unreferenced (clearing reference bits as it passes),
 * else, when readers keep every key referenced, the first key it met. */
static bool evict_one(ats_keyed *m, uint64_t now_ns)
{
	/* relaxed: under the writer mutex; only writers store it */
	struct ats__keyed_table *t = atomic_load_explicit(&m->table_, memory_order_relaxed);
	size_t slots = t->mask + 1;
	struct slot *victim = NULL, *first = NULL;
	size_t since_victim = 0;
	for (size_t k = 0; k < 2 * slots + 1; k++) {
		struct slot *s = &t->slots[m->hand_];
		m->hand_ = (m->hand_ + 1) & t->mask;
		if (victim && ++since_victim > IDLE_WINDOW)
			break;
		/* relaxed: under the writer mutex; only writers store it */
		if (META_STATE(atomic_load_explicit(&s->meta, memory_order_relaxed)) != S_LIVE)
			continue;
		if (slot_evict(m, s, now_ns, false, NULL))
			return true;
		if (!first)
			first = s;
		if (victim)
			continue;
		/* relaxed, both: the REF bit is a CLOCK hint, set by readers with a relaxed OR; no data rides on it */
		if (atomic_load_explicit(&s->aux, memory_order_relaxed) & AUX_REF) {
			atomic_fetch_and_explicit(&s->aux, ~AUX_REF, memory_order_relaxed);
			PAUSE(ATS__KEYED_PAUSE_HAND, 0);
		} else {
			victim = s;
		}
	}
	/* Readers set the bits again as fast as the hand clears them (every key hot): the cap still holds, so
	 * the first key the hand met goes. */
	if (!victim)
		victim = first;
	return victim && slot_evict(m, victim, now_ns, true, NULL);
}

/* Builds a table of `slots` slots, moves every key into it and publishes it; the old table is
 * freed after a grace period. Readers keep going throughout (see the file comment). False (and
 * nothing changed) when the memory cap or malloc says no. */
static bool resize(ats_keyed *m, size_t slots, uint64_t now_ns)
{
	/* relaxed: under the writer mutex; only writers store it */
	struct ats__keyed_table *old = atomic_load_explicit(&m->table_, memory_order_relaxed);
	struct ats__keyed_table *nt = table_alloc(m, slots);
	if (!nt)
		return false;
	/* release: pairs with the acquire loads of next (resolve, tokens_at): a reader that follows the
	 * link sees nt's fields and zeroed slots */
	atomic_store_explicit(&old->next, nt, memory_order_release);
	size_t used = 0;
	for (size_t i = 0; i <= old->mask; i++) {
		struct slot *s = &old->slots[i];
		/* relaxed, meta, key and aux: under the writer mutex (readers only OR the REF hint into aux:
		 * one lost while moving is harmless) */
		uint32_t x = atomic_load_explicit(&s->meta, memory_order_relaxed);
		if (META_STATE(x) != S_LIVE)
			continue;
		uint64_t w[2] = {atomic_load_explicit(&s->key[0], memory_order_relaxed),
		                 atomic_load_explicit(&s->key[1], memory_order_relaxed)};
		uint32_t aux = atomic_load_explicit(&s->aux, memory_order_relaxed);
		size_t j = key_hash(m, w, META_LEN(x)) & nt->mask;
		/* relaxed: only this thread writes nt's slots */
		while (atomic_load_explicit(&nt->slots[j].meta, memory_order_relaxed) != S_EMPTY)
			j = (j + 1) & nt->mask;
		struct slot *d = &nt->slots[j];
		/* relaxed, all three and the TAT below: published by the release store of d->meta */
		atomic_store_explicit(&d->key[0], w[0], memory_order_relaxed);
		atomic_store_explicit(&d->key[1], w[1], memory_order_relaxed);
		atomic_store_explicit(&d->aux, aux, memory_order_relaxed);
		/* relaxed: the CAS below validates it */
		uint64_t cur = atomic_load_explicit(&s->tat, memory_order_relaxed);
		atomic_store_explicit(&d->tat, cur, memory_order_relaxed);
		/* release: pairs with find's acquire on meta in nt: key, aux and TAT above are seen */
		atomic_store_explicit(&d->meta, x, memory_order_release);
		PAUSE(ATS__KEYED_PAUSE_COPIED, aux);
		/* Only readers that see the mark look in nt, so d's TAT may still be corrected. */
		uint64_t mark = gone_mark(aux_clock(m, aux), now_ns);
		/* release: pairs with the reader's acquire re-load of the mark (resolve), so d, published above,
		 * is seen through old->next; failure relaxed: only the value is used, copied into d (relaxed: the
		 * mark's release orders that store too, and readers reach d only after the mark or the new table) */
		while (!atomic_compare_exchange_weak_explicit(&s->tat, &cur, mark, memory_order_release,
		                                              memory_order_relaxed))
			atomic_store_explicit(&d->tat, cur, memory_order_relaxed);
		used++;
	}
	m->used_ = used;
	m->hand_ = m->sweep_ = 0;
	/* release: pairs with the readers' acquire load of m->table: nt and every slot moved into it are seen */
	atomic_store_explicit(&m->table_, nt, memory_order_release);
	/* relaxed: a statistic */
	atomic_fetch_add_explicit(&m->resizes_, 1, memory_order_relaxed);
	/* This thread read `old` above, and call_rcu's enqueue happens before the callback that
	 * frees it (liburcu's queue hand-off, which ThreadSanitizer cannot see): say so. */
	TSAN_RELEASE(&m->tsan_sync_);
	urcu_memb_call_rcu(&old->rcu, table_free_cb);
	return true;
}

/* Turns dead slots past their grace period back into empty ones where that changes no probe: a
 * dead slot followed by an empty one ends every probe that reaches it anyway. One backward pass
 * from an empty slot, O(slots), no allocation. Readers racing it see either state and stop at the
 * same place. Returns how many slots it freed. */
static size_t purge_dead(ats_keyed *m, struct ats__keyed_table *t)
{
	size_t start = 0;
	/* relaxed: under the writer mutex; only writers store it */
	while (atomic_load_explicit(&t->slots[start].meta, memory_order_relaxed) != S_EMPTY)
		start++; /* one exists: the table is never full */
	size_t freed = 0;
	bool after_empty = true;
	for (size_t k = 1; k <= t->mask; k++) {
		struct slot *s = &t->slots[(start - k) & t->mask];
		/* relaxed: under the writer mutex; only writers store it */
		uint32_t x = atomic_load_explicit(&s->meta, memory_order_relaxed);
		if (x == S_EMPTY) {
			after_empty = true;
		} else if (after_empty && dead_reusable(m, x)) {
			/* release: not needed (a reader reads nothing of an EMPTY slot, and its next owner publishes
			 * with its own release); kept: cold path */
			atomic_store_explicit(&s->meta, S_EMPTY, memory_order_release);
			freed++;
		} else {
			after_empty = false;
		}
	}
	m->used_ -= freed;
	return freed;
}

/* Whether a refused resize should wait for replaced tables to be freed and try again: only when
 * some are waiting, and never inside the caller's own read-side section (the wait is a grace
 * period). */
static bool may_wait(ats_keyed *m, const struct ats__keyed_table *t)
{
	/* relaxed: a byte count; a stale value only makes the caller wait for the frees once or fail */
	return atomic_load_explicit(&m->table_bytes_, memory_order_relaxed) > t->bytes && !urcu_memb_read_ongoing();
}

/* reserve's last step: slot s (EMPTY, or DEAD past its grace period) is the new key's, and when
 * the map is at its cap, the forced eviction that makes room for it happens now (it turns a LIVE
 * slot DEAD: s is untouched). */
static struct slot *claim(ats_keyed *m, struct slot *s, bool evict, uint64_t now_ns)
{
	if (evict)
		(void)evict_one(m, now_ns);
	return s;
}

/* A slot for one new key (not yet published), after evicting or resizing as the caps require.
 * NULL when none can be had: with *wait set, when memory held by replaced tables awaiting their
 * grace period is what stands in the way (the caller drops the mutex, waits for them with
 * rcu_barrier and starts over); else out of memory with the table at its hard load. Nothing is
 * changed but evictions: idle ones (lossless), and at the cap one forced eviction, only when a
 * slot is returned. */
static struct slot *reserve(ats_keyed *m, const struct kref *k, uint64_t now_ns, bool replacing, bool *wait)
{
	uint64_t h = k->h;
	*wait = false;
	sweep_idle(m, now_ns, SWEEP_PER_INSERT);
	/* A replacement (a new limit for a key still present after the sweep) frees the old slot. */
	/* relaxed: under the writer mutex; only writers store it (the count and the table) */
	size_t keys = atomic_load_explicit(&m->keys_, memory_order_relaxed);
	if (replacing && find(atomic_load_explicit(&m->table_, memory_order_relaxed), k))
		keys--;
	/* At the cap, a key is evicted to make room, but only once a slot is found (claim): a refused
	 * insert changes nothing, and one that waits for a grace period and tries again evicts once. */
	bool evict = keys + 1 > m->key_limit_;
	if (evict)
		keys--;
	/* relaxed: under the writer mutex; only writers store it */
	struct ats__keyed_table *t = atomic_load_explicit(&m->table_, memory_order_relaxed);
	size_t slots = t->mask + 1;
	if ((keys + 1) * LOAD_DEN > slots * LOAD_NUM && slots < m->max_slots_)
		resize(m, slots * 2, now_ns); /* on failure, fill further and evict at the hard load */
	bool purged = false;
	for (int attempt = 0;; attempt++) {
		/* relaxed: under the writer mutex; only writers store it (the table and meta below) */
		t = atomic_load_explicit(&m->table_, memory_order_relaxed);
		slots = t->mask + 1;
		size_t i = h & t->mask;
		for (size_t probes = 0; probes <= t->mask; probes++) {
			struct slot *s = &t->slots[i];
			uint32_t x = atomic_load_explicit(&s->meta, memory_order_relaxed);
			if (dead_reusable(m, x))
				return claim(m, s, evict, now_ns);
			if (x == S_EMPTY) {
				if ((m->used_ + 1) * 8 <= slots * 7)
					return claim(m, s, evict, now_ns);
				break;
			}
			i = (i + 1) & t->mask;
		}
		/* Too many used slots. Dead slots past their grace period that end a probe chain become
		 * empty again (no allocation, one pass); failing that, rebuild at a size that leaves the
		 * live keys at most half the table. */
		if (!purged && (purged = true) && purge_dead(m, t) && (m->used_ + 1) * 16 <= slots * 13) {
			attempt--;
			continue;
		}
		size_t target = slots;
		while ((keys + 1) * 2 > target && target < m->max_slots_)
			target *= 2;
		if (attempt == 0 && resize(m, target, now_ns))
			continue;
		/* relaxed: under the writer mutex; only writers store it (the table and meta below) */
		t = atomic_load_explicit(&m->table_, memory_order_relaxed);
		slots = t->mask + 1;
		if (may_wait(m, t)) {
			*wait = true;
			return NULL;
		}
		if ((m->used_ + 1) * 16 > slots * 15) {
			/* relaxed: a statistic */
			atomic_fetch_add_explicit(&m->insert_failures_, 1, memory_order_relaxed);
			return NULL;
		}
		i = h & t->mask;
		while (atomic_load_explicit(&t->slots[i].meta, memory_order_relaxed) != S_EMPTY)
			i = (i + 1) & t->mask;
		return claim(m, &t->slots[i], evict, now_ns);
	}
}

/* Publishes a reserved slot: fields first, then meta with release. */
static void publish(ats_keyed *m, struct slot *d, const struct kref *k, uint32_t aux, uint64_t tat)
{
	/* relaxed: under the writer mutex; only writers store it */
	if (atomic_load_explicit(&d->meta, memory_order_relaxed) == S_EMPTY)
		m->used_++;
	/* relaxed, all four: published by the release store of meta below */
	atomic_store_explicit(&d->key[0], k->w[0], memory_order_relaxed);
	atomic_store_explicit(&d->key[1], k->w[1], memory_order_relaxed);
	atomic_store_explicit(&d->aux, aux, memory_order_relaxed);
	atomic_store_explicit(&d->tat, tat, memory_order_relaxed);
	/* release: pairs with find's acquire on meta: key, aux, TAT and an override's clock (stored before)
	 * are seen; the slot was EMPTY or DEAD past a grace period, so no reader still reads its old key */
	atomic_store_explicit(&d->meta, k->meta, memory_order_release);
	/* relaxed, both: a count changed only under the mutex, and a statistic */
	atomic_fetch_add_explicit(&m->keys_, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m->inserts_, 1, memory_order_relaxed);
}

/* The TAT of a new key: full at now_ns, or at the latest time an idly evicted bucket had become
 * full, if that is later. A caller with an older timestamp than an eviction's then finds the key
 * no fuller than the evicted bucket was at that time, so idle eviction stays lossless across
 * threads whose clocks differ; and as a bucket evicted as idle has usually been full for long,
 * a new key is full for every caller (the floor used to be the eviction's own time, which left a
 * caller a microsecond behind it a token short: with a burst of 1, denied). */
static inline uint64_t fresh_tat(const ats_keyed *m, const ats_token_clock *c, uint64_t now_ns)
{
	/* relaxed: see slot_evict */
	uint64_t floor = atomic_load_explicit(&((ats_keyed *)m)->full_floor_ns_, memory_order_relaxed);
	return ats_token_clock_units(c, now_ns > floor ? now_ns : floor);
}

/* A miss: under the writer mutex, look again (another thread may have added the key) and add the
 * key full, minus this request, if the request fits a full bucket. */
/* Drops the writer mutex for an rcu_barrier (replaced tables freed, grace epochs advanced). */
static void wait_for_frees(ats_keyed *m)
{
	grace_kick(m);
	pthread_mutex_unlock(&m->lock_);
	urcu_memb_barrier();
	TSAN_ACQUIRE(&m->tsan_sync_); /* the callbacks' writes happen before this */
	pthread_mutex_lock(&m->lock_);
}

/* Runs outside any read-side section of ours: a writer that waits for a grace period holding the
 * mutex must never wait on a reader that waits for the mutex. The mutex alone keeps the current
 * table alive (only replaced tables are freed). */
static int slow_take(ats_keyed *m, const struct kref *k, uint64_t n, uint64_t now_ns, ats_limiter_result *res)
{
	PAUSE(ATS__KEYED_PAUSE_SLOW, 0);
	pthread_mutex_lock(&m->lock_);
	int r;
	for (int attempt = 0;; attempt++) {
		/* relaxed: under the writer mutex; only writers store it */
		struct slot *s = find(atomic_load_explicit(&m->table_, memory_order_relaxed), k);
		if (s) { /* never T_GONE under the mutex */
			r = res ? slot_throttle(m, s, n, now_ns, res) : slot_take(m, s, n, now_ns);
			break;
		}
		/* A new key is full (no fuller than an idly evicted one was, see fresh_tat) and is added only if
		 * granted. */
		const ats_token_clock *c = &m->clock_;
		uint64_t now = ats_token_clock_units(c, now_ns), tat = fresh_tat(m, c, now_ns), next = 0;
		bool fits = c->inf || ats_gcra_next(c, tat, now, n, &next);
		if (!fits) {
			if (res)
				fill_result(&m->limit_, c, tat, now, n, false, now_ns, res);
			r = n > m->limit_.burst ? T_TOO_BIG : T_DENIED;
			break;
		}
		bool wait;
		struct slot *d = reserve(m, k, now_ns, false, &wait);
		if (!d && wait && attempt == 0) {
			wait_for_frees(m);
			continue;
		}
		if (d) {
			publish(m, d, k, AUX_REF, next);
			if (res)
				fill_result(&m->limit_, c, tat, now, n, true, now_ns, res);
		} else if (wait) {
			/* relaxed: a statistic */
			atomic_fetch_add_explicit(&m->insert_failures_, 1, memory_order_relaxed);
		}
		r = d ? T_GRANTED : T_NO_ROOM;
		break;
	}
	grace_kick(m);
	pthread_mutex_unlock(&m->lock_);
	return r;
}

/* Whether slot s, found LIVE and then seen with the gone mark, was moved by a resize (its copy is
 * in the next table) rather than evicted or replaced (DEAD: the key's live slot, if it has one,
 * is in this table or will be found by the slow path). Call it after the acquire load of next: a
 * kill happens before any resize that links next (both under the writer mutex), so a reader that
 * saw the link sees the DEAD meta (relaxed suffices); a resize never changes an old slot's meta.
 * Following next from a replaced slot would be wrong: a resize may still be filling the next
 * table from the key's live slot, and a take from the copy there could be overwritten by the
 * resize's correction (a grant lost: an over-grant). */
static inline bool moved(struct slot *s)
{
	return META_STATE(atomic_load_explicit(&s->meta, memory_order_relaxed)) == S_LIVE;
}

/* The key's take, starting from table t inside a read-side section: T_GRANTED, T_DENIED, or
 * T_GONE when the key is not there (new, or evicted) and slow_take must run. */
static inline int resolve(ats_keyed *m, struct ats__keyed_table *t, const struct kref *k, uint64_t n, uint64_t now_ns)
{
	while (t) {
		struct slot *s = find(t, k);
		if (!s)
			break;
		PAUSE(ATS__KEYED_PAUSE_FOUND, atomic_load_explicit(&s->aux, memory_order_relaxed));
		int r = slot_take(m, s, n, now_ns);
		if (r != T_GONE)
			return r;
		/* Moved or evicted: the acquire pairs with the mark's release, so a moved key's new slot
		 * (published before the mark) is visible in t->next. */
		(void)atomic_load_explicit(&s->tat, memory_order_acquire);
		/* acquire: pairs with resize's release store of next: nt's fields and slots are seen (a key evicted
		 * before the resize began has a mark older than the link, so the re-load above does not cover it) */
		t = atomic_load_explicit(&t->next, memory_order_acquire);
		if (!moved(s))
			return T_GONE;
	}
	return T_GONE;
}

/* resolve with the throttle's answer in *res. */
static int resolve_throttle(ats_keyed *m, struct ats__keyed_table *t, const struct kref *k, uint64_t n, uint64_t now_ns,
                            ats_limiter_result *res)
{
	while (t) {
		struct slot *s = find(t, k);
		if (!s)
			break;
		int r = slot_throttle(m, s, n, now_ns, res);
		if (r != T_GONE)
			return r;
		(void)atomic_load_explicit(&s->tat, memory_order_acquire); /* as in resolve */
		/* acquire: as in resolve */
		t = atomic_load_explicit(&t->next, memory_order_acquire);
		if (!moved(s))
			return T_GONE;
	}
	return T_GONE;
}

static inline bool n_ok(uint64_t n)
{
	return n >= 1 && n <= ATS_GCRA_MAX_N;
}

bool ats_keyed_allow_n_at(ats_keyed *m, const void *key, size_t len, uint64_t n, uint64_t now_ns)
{
	assert(key_ok(key, len) && "ats_keyed_allow_n_at: invalid key (see ats_keyed_key_ok)");
	if (!m || !key_ok(key, len) || !n_ok(n))
		return false;
	struct kref k;
	kref_make(m, key, len, &k);
	reg_thread();
	urcu_memb_read_lock();
	/* acquire: pairs with resize's (and init's) release store of m->table: its fields and slots are seen */
	int r = resolve(m, atomic_load_explicit(&m->table_, memory_order_acquire), &k, n, now_ns);
	TSAN_RELEASE(&m->tsan_sync_);
	urcu_memb_read_unlock();
	return (r == T_GONE ? slow_take(m, &k, n, now_ns, NULL) : r) == T_GRANTED;
}

#define BURST_CHUNK 32

size_t ats_keyed_allow_burst_at(ats_keyed *m, const void *const keys[], const size_t lens[], size_t count, uint64_t n,
                                uint64_t now_ns, bool results[])
{
	if (!results)
		return 0;
	if (!m || !keys || !lens || !n_ok(n)) {
		for (size_t i = 0; i < count; i++)
			results[i] = false;
		return 0;
	}
	size_t granted = 0;
	struct kref k[BURST_CHUNK];
	reg_thread();
	urcu_memb_read_lock();
	for (size_t base = 0; base < count; base += BURST_CHUNK) {
		size_t c = count - base < BURST_CHUNK ? count - base : BURST_CHUNK;
		/* acquire: as in ats_keyed_allow_n_at */
		struct ats__keyed_table *t = atomic_load_explicit(&m->table_, memory_order_acquire);
		/* Hash everything and start every slot's cache miss before waiting on any of them. */
		for (size_t i = 0; i < c; i++) {
			if (!key_ok(keys[base + i], lens[base + i])) {
				assert(!"ats_keyed_allow_burst_at: invalid key (see ats_keyed_key_ok)");
				k[i].len = 0;
				continue;
			}
			kref_make(m, keys[base + i], lens[base + i], &k[i]);
			__builtin_prefetch(&t->slots[k[i].h & t->mask], 1, 3);
		}
		for (size_t i = 0; i < c; i++) {
			int r = k[i].len ? resolve(m, t, &k[i], n, now_ns) : T_DENIED;
			if (r == T_GONE) {
				/* A new key: leave the read-side section for the writer path, then take the
				 * table again (the one held before may be replaced meanwhile). */
				TSAN_RELEASE(&m->tsan_sync_);
				urcu_memb_read_unlock();
				r = slow_take(m, &k[i], n, now_ns, NULL);
				urcu_memb_read_lock();
				/* acquire: as in ats_keyed_allow_n_at */
				t = atomic_load_explicit(&m->table_, memory_order_acquire);
			}
			results[base + i] = r == T_GRANTED;
			granted += r == T_GRANTED;
		}
	}
	TSAN_RELEASE(&m->tsan_sync_);
	urcu_memb_read_unlock();
	return granted;
}

static const ats_keyed_status status_of[] = {
    [T_DENIED] = ATS_KEYED_DENIED,
    [T_GRANTED] = ATS_KEYED_ALLOWED,
    [T_TOO_BIG] = ATS_KEYED_EXCEEDS_BURST,
    [T_NO_ROOM] = ATS_KEYED_NO_ROOM,
};

static inline ats_keyed_status refuse(ats_keyed_status st, ats_limiter_result *res)
{
	*res = (ats_limiter_result){.retry_after_ns = INT64_MAX};
	return st;
}

ats_keyed_status ats_keyed_throttle_at(ats_keyed *m, const void *key, size_t len, uint64_t n, uint64_t now_ns,
                                       ats_limiter_result *res)
{
	if (!m || !key_ok(key, len))
		return refuse(ATS_KEYED_INVALID_KEY, res);
	if (!n_ok(n))
		return refuse(ATS_KEYED_INVALID_N, res);
	struct kref k;
	kref_make(m, key, len, &k);
	reg_thread();
	urcu_memb_read_lock();
	/* acquire: as in ats_keyed_allow_n_at */
	int r = resolve_throttle(m, atomic_load_explicit(&m->table_, memory_order_acquire), &k, n, now_ns, res);
	TSAN_RELEASE(&m->tsan_sync_);
	urcu_memb_read_unlock();
	if (r == T_GONE)
		r = slow_take(m, &k, n, now_ns, res);
	if (r == T_NO_ROOM)
		return refuse(ATS_KEYED_NO_ROOM, res);
	return status_of[r];
}

size_t ats_keyed_throttle_burst_at(ats_keyed *m, const void *const keys[], const size_t lens[], size_t count,
                                   uint64_t n, uint64_t now_ns, ats_keyed_status status[], ats_limiter_result results[])
{
	if (!status || !results)
		return 0;
	if (!m || !keys || !lens || !n_ok(n)) {
		for (size_t i = 0; i < count; i++)
			status[i] =
			    refuse(!m || !keys || !lens ? ATS_KEYED_INVALID_KEY : ATS_KEYED_INVALID_N, &results[i]);
		return 0;
	}
	size_t allowed = 0;
	struct kref k[BURST_CHUNK];
	reg_thread();
	urcu_memb_read_lock();
	for (size_t base = 0; base < count; base += BURST_CHUNK) {
		size_t c = count - base < BURST_CHUNK ? count - base : BURST_CHUNK;
		/* acquire: as in ats_keyed_allow_n_at */
		struct ats__keyed_table *t = atomic_load_explicit(&m->table_, memory_order_acquire);
		for (size_t i = 0; i < c; i++) {
			if (!key_ok(keys[base + i], lens[base + i])) {
				k[i].len = 0;
				continue;
			}
			kref_make(m, keys[base + i], lens[base + i], &k[i]);
			__builtin_prefetch(&t->slots[k[i].h & t->mask], 1, 3);
		}
		for (size_t i = 0; i < c; i++) {
			ats_limiter_result *res = &results[base + i];
			if (!k[i].len) {
				status[base + i] = refuse(ATS_KEYED_INVALID_KEY, res);
				continue;
			}
			int r = resolve_throttle(m, t, &k[i], n, now_ns, res);
			if (r == T_GONE) {
				/* A new key: the writer path runs outside the read-side section (see above). */
				TSAN_RELEASE(&m->tsan_sync_);
				urcu_memb_read_unlock();
				r = slow_take(m, &k[i], n, now_ns, res);
				urcu_memb_read_lock();
				/* acquire: as in ats_keyed_allow_n_at */
				t = atomic_load_explicit(&m->table_, memory_order_acquire);
			}
			status[base + i] = r == T_NO_ROOM ? refuse(ATS_KEYED_NO_ROOM, res) : status_of[r];
			allowed += r == T_GRANTED;
		}
	}
	TSAN_RELEASE(&m->tsan_sync_);
	urcu_memb_read_unlock();
	return allowed;
}

static uint64_t clock_tokens(const ats_token_clock *c, uint64_t tat, uint64_t now_ns)
{
	return c->inf ? c->burst_units : ats_gcra_tokens(c, tat, now_ns);
}

uint64_t ats_keyed_tokens_at(ats_keyed *m, const void *key, size_t len, uint64_t now_ns)
{
	if (!m || !key_ok(key, len))
		return 0;
	struct kref k;
	kref_make(m, key, len, &k);
	reg_thread();
	urcu_memb_read_lock();
	/* A new key: as slow_take would add it. */
	uint64_t tokens = clock_tokens(&m->clock_, fresh_tat(m, &m->clock_, now_ns), now_ns);
	/* acquire: as in ats_keyed_allow_n_at */
	struct ats__keyed_table *t = atomic_load_explicit(&m->table_, memory_order_acquire);
	bool killing = false;
	while (t) {
		COUNT_LOOP();
		struct slot *s = find(t, &k);
		if (!s)
			break;
		/* relaxed: aux was published with meta (find's acquire) */
		const ats_token_clock *c = aux_clock(m, atomic_load_explicit(&s->aux, memory_order_relaxed));
		/* acquire: when it is the gone mark, this is resolve's re-load (pairs with the mark's release)
		 * before next is followed; otherwise only the value is used */
		uint64_t tat = atomic_load_explicit(&s->tat, memory_order_acquire);
		if (!is_gone(tat, ats_token_clock_units(c, now_ns))) {
			tokens = clock_tokens(c, tat, now_ns);
			break;
		}
		/* acquire: as in resolve */
		struct ats__keyed_table *next = atomic_load_explicit(&t->next, memory_order_acquire);
		if (moved(s) && !next) {
			/* Marked but still LIVE, and not moved: a writer (set_limit, an eviction) is killing the slot
			 * under the mutex, and the key's TAT is in that writer's hands until it publishes. */
			killing = true;
			break;
		}
		if (moved(s))
			t = next; /* else: evicted or replaced in t: look in t again */
	}
	TSAN_RELEASE(&m->tsan_sync_);
	urcu_memb_read_unlock();
	if (killing) { /* the answer after that writer, as slow_take gets it (outside our read-side section) */
		PAUSE(ATS__KEYED_PAUSE_SLOW, 0);
		pthread_mutex_lock(&m->lock_);
		/* relaxed: under the writer mutex; only writers store it (and the TAT is never gone here) */
		struct slot *s = find(atomic_load_explicit(&m->table_, memory_order_relaxed), &k);
		tokens = s ? clock_tokens(aux_clock(m, atomic_load_explicit(&s->aux, memory_order_relaxed)),
		                          atomic_load_explicit(&s->tat, memory_order_relaxed), now_ns)
		           : clock_tokens(&m->clock_, fresh_tat(m, &m->clock_, now_ns), now_ns);
		pthread_mutex_unlock(&m->lock_);
	}
	return tokens;
}

/* ---- Configuration, overrides, maintenance ---- */

static size_t pow2_at_least(size_t v)
{
	size_t p = MIN_SLOTS;
	while (p < v)
		p *= 2;
	return p;
}

ats_err *ats_keyed_init(ats_keyed *m, const ats_keyed_config *cfg)
{
	if (!m || !cfg)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_init: NULL %s", m ? "config" : "map");
	if (cfg->max_keys == 0)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_init: max_keys must be at least 1");
	if (cfg->max_keys > (SIZE_MAX / 64))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_init: max_keys %zu is too large",
		                   cfg->max_keys);
	if (cfg->burst == 0)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_init: burst must be at least 1");
	if (cfg->max_overrides > ATS_KEYED_OVERRIDES_MAX)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_init: max_overrides %u exceeds %u",
		                   cfg->max_overrides, ATS_KEYED_OVERRIDES_MAX);
	ats_token_clock clock;
	ats_err *err = ats_token_clock_make(&clock, cfg->rate, cfg->burst, 0);
	if (err)
		return ats_err_wrap(err, "ats_keyed_init: default limit");
	uint32_t max_ov = cfg->max_overrides ? cfg->max_overrides : ATS_KEYED_OVERRIDES_DEFAULT;
	size_t base = sizeof *m + (size_t)max_ov * (sizeof(ats_token_clock) + sizeof(ats_keyed_limit));
	/* The largest table: room for max_keys at 3/4 load, and, under max_bytes, room for two tables
	 * at once (a resize builds the new one beside the old). */
	size_t max_slots = pow2_at_least(cfg->max_keys + (cfg->max_keys + 2) / 3);
	/* Two tables of that size, in bytes, must not wrap (2^59 slots of 32 bytes is 2^64). */
	if (max_slots > SIZE_MAX / 4 / sizeof(struct slot))
		return ats_err_new(
		    ATS_ERR_INVALID_ARGUMENT,
		    "ats_keyed_init: max_keys %zu is too large (its table would not fit the address space)",
		    cfg->max_keys);
	if (cfg->max_bytes) {
		if (cfg->max_bytes < base + 2 * table_bytes_for(MIN_SLOTS))
			return ats_err_new(ATS_ERR_INVALID_ARGUMENT,
			                   "ats_keyed_init: max_bytes %zu is below the smallest map (%zu bytes)",
			                   cfg->max_bytes, base + 2 * table_bytes_for(MIN_SLOTS));
		while (max_slots > MIN_SLOTS && base + 2 * table_bytes_for(max_slots) > cfg->max_bytes)
			max_slots /= 2;
	}
	size_t hint = cfg->capacity_hint ? cfg->capacity_hint : (cfg->max_keys < 1024 ? cfg->max_keys : 1024);
	if (hint > cfg->max_keys)
		hint = cfg->max_keys;
	size_t slots = pow2_at_least(hint + (hint + 2) / 3);
	if (slots > max_slots)
		slots = max_slots;

	memset(m, 0, sizeof *m);
	m->clock_ = clock;
	m->limit_ = (ats_keyed_limit){cfg->rate, cfg->burst};
	m->max_overrides_ = max_ov;
	m->max_slots_ = max_slots;
	m->key_limit_ =
	    max_slots / LOAD_DEN * LOAD_NUM < cfg->max_keys ? max_slots / LOAD_DEN * LOAD_NUM : cfg->max_keys;
	m->max_bytes_ = cfg->max_bytes;
	m->base_bytes_ = base;
	if (getrandom(m->seed_, sizeof m->seed_, GRND_NONBLOCK) != (ssize_t)sizeof m->seed_) {
		/* No entropy yet (early boot): a per-process value still differs between runs. */
		m->seed_[0] = ats_now_ns() ^ (uint64_t)(uintptr_t)m;
		m->seed_[1] = mum(m->seed_[0], UINT64_C(0x9e3779b97f4a7c15));
	}
	m->overrides_ = calloc(max_ov, sizeof *m->overrides_);
	m->override_limits_ = calloc(max_ov, sizeof *m->override_limits_);
	struct ats__keyed_table *t = m->overrides_ && m->override_limits_ ? table_alloc(m, slots) : NULL;
	if (!t) {
		free(m->overrides_);
		free(m->override_limits_);
		return ats_err_new(ATS_ERR_OUT_OF_MEMORY, "ats_keyed_init: %zu slots", slots);
	}
	/* release: not needed (the caller's hand-off of m orders init), harmless: once per map */
	atomic_store_explicit(&m->table_, t, memory_order_release);
	pthread_mutex_init(&m->lock_, NULL);
	return NULL;
}

void ats_keyed_destroy(ats_keyed *m)
{
	if (!m)
		return;
	urcu_memb_synchronize_rcu(); /* calls in flight on other threads */
	urcu_memb_barrier();         /* deferred table frees and grace epochs */
	TSAN_ACQUIRE(&m->tsan_sync_);
	/* relaxed: no other call runs now (the caller's contract) and the barriers above ordered the callbacks */
	table_free_now(atomic_load_explicit(&m->table_, memory_order_relaxed));
	free(m->overrides_);
	free(m->override_limits_);
	pthread_mutex_destroy(&m->lock_);
}

ats_err *ats_keyed_new(ats_keyed **out, const ats_keyed_config *cfg)
{
	if (!out)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_new: NULL out");
	*out = NULL;
	ats_keyed *m =
	    aligned_alloc(ATS__CACHE_LINE, (sizeof *m + ATS__CACHE_LINE - 1) & ~(size_t)(ATS__CACHE_LINE - 1));
	if (!m)
		return ats_err_oom; /* making a new error would need memory too */
	ats_err *err = ats_keyed_init(m, cfg);
	if (err) {
		free(m);
		return err;
	}
	*out = m;
	return NULL;
}

void ats_keyed_free(ats_keyed *m)
{
	ats_keyed_destroy(m);
	free(m);
}

/* The override id (1-based) of an equal limit already made, or 0. Writer-only; O(overrides). */
static uint32_t override_find(const ats_keyed *m, const ats_keyed_limit *lim)
{
	/* relaxed: under the writer mutex; only writers store it */
	uint32_t n = atomic_load_explicit(&m->noverrides_, memory_order_relaxed);
	for (uint32_t i = 0; i < n; i++) {
		const ats_keyed_limit *l = &m->override_limits_[i];
		if (l->burst == lim->burst && l->rate.events == lim->rate.events &&
		    l->rate.period_ns == lim->rate.period_ns)
			return i + 1;
	}
	return 0;
}

/* Blocking (writer mutex), outside any read-side section of ours like slow_take. Order: validate,
 * make room (reserve), and only then change anything the caller can see. */
ats_err *ats_keyed_set_limit(ats_keyed *m, const void *key, size_t len, const ats_keyed_limit *lim, uint64_t now_ns)
{
	if (!m || !key_ok(key, len))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_set_limit: %s",
		                   !m ? "NULL map" : "key must be 1 to 256 bytes");
	ats_token_clock clock;
	if (lim) {
		if (lim->burst == 0)
			return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_keyed_set_limit: burst must be at least 1");
		ats_err *err = ats_token_clock_make(&clock, lim->rate, lim->burst, 0);
		if (err)
			return ats_err_wrap(err, "ats_keyed_set_limit");
	}
	struct kref k;
	kref_make(m, key, len, &k);
	reg_thread();
	pthread_mutex_lock(&m->lock_);
	ats_err *err = NULL;
	uint32_t id = lim ? override_find(m, lim) : 0;
	/* relaxed: under the writer mutex; only writers store it */
	uint32_t nov = atomic_load_explicit(&m->noverrides_, memory_order_relaxed);
	if (lim && !id && nov == m->max_overrides_) {
		err = ats_err_new(ATS_ERR_LIMITED, "ats_keyed_set_limit: all %u override limits are in use",
		                  m->max_overrides_);
		goto out;
	}
	/* relaxed: under the writer mutex (the table, and aux below: readers only OR a hint bit) */
	struct slot *old = find(atomic_load_explicit(&m->table_, memory_order_relaxed), &k);
	if (old && (!lim || id) && atomic_load_explicit(&old->aux, memory_order_relaxed) >> 1 == id)
		goto out; /* the key already has this limit */
	struct slot *d;
	bool wait;
	for (int attempt = 0;; attempt++) {
		d = reserve(m, &k, now_ns, old != NULL, &wait);
		/* relaxed: under the writer mutex; only writers store it */
		old = find(atomic_load_explicit(&m->table_, memory_order_relaxed), &k); /* reserve may move it */
		if (d || !wait || attempt)
			break;
		wait_for_frees(m);
	}
	if (!d) {
		/* relaxed: a statistic */
		if (wait) /* else reserve counted it */
			atomic_fetch_add_explicit(&m->insert_failures_, 1, memory_order_relaxed);
		err = ats_err_new(ATS_ERR_OUT_OF_MEMORY, "ats_keyed_set_limit: no slot for the key");
		goto out;
	}
	if (lim && !id) {
		/* Published to readers by the slot's release below. */
		m->overrides_[nov] = clock;
		m->override_limits_[nov] = *lim;
		/* relaxed: read under the mutex or as a statistic; the override reaches readers by publish's release */
		atomic_store_explicit(&m->noverrides_, nov + 1, memory_order_relaxed);
		id = nov + 1;
	}
	const ats_token_clock *nc = aux_clock(m, id << 1);
	uint64_t burst = nc->inf ? 0 : nc->burst_units >> nc->shift, tokens = burst;
	if (old) {
		/* relaxed: under the writer mutex; only writers store it (aux: readers only OR a hint bit) */
		const ats_token_clock *oc = aux_clock(m, atomic_load_explicit(&old->aux, memory_order_relaxed));
		/* acq_rel: the release pairs with a reader's acquire re-load as in slot_evict; the acquire half is not
		 * needed (the old TAT is used as a value only); kept: cold path */
		uint64_t tat = atomic_exchange_explicit(&old->tat, gone_mark(oc, now_ns), memory_order_acq_rel);
		if (!oc->inf && !ats_gcra_is_full(oc, tat, now_ns))
			tokens = ats_gcra_tokens(oc, tat, now_ns); /* a full bucket stays full, as a new key */
		if (tokens > burst)
			tokens = burst;
		PAUSE(ATS__KEYED_PAUSE_KILLED, atomic_load_explicit(&old->aux, memory_order_relaxed));
		/* release: as in slot_evict (not needed; kept: cold path) */
		atomic_store_explicit(&old->meta, META_DEAD(m->epoch_), memory_order_release);
		/* relaxed: as in slot_evict */
		atomic_fetch_sub_explicit(&m->keys_, 1, memory_order_relaxed);
		m->killed_since_grace_++;
	}
	uint64_t tat = nc->inf ? 0 : fresh_tat(m, nc, now_ns) + ((burst - tokens) << nc->shift);
	publish(m, d, &k, id << 1 | AUX_REF, tat);
out:
	grace_kick(m);
	pthread_mutex_unlock(&m->lock_);
	return err;
}

size_t ats_keyed_evict_idle_at(ats_keyed *m, uint64_t now_ns, size_t max_slots)
{
	if (!m)
		return 0;
	reg_thread();
	pthread_mutex_lock(&m->lock_);
	/* relaxed: under the writer mutex; only writers store it */
	size_t slots = atomic_load_explicit(&m->table_, memory_order_relaxed)->mask + 1;
	size_t evicted = sweep_idle(m, now_ns, max_slots && max_slots < slots ? max_slots : slots);
	grace_kick(m);
	pthread_mutex_unlock(&m->lock_);
	return evicted;
}

size_t ats_keyed_count(const ats_keyed *m)
{
	/* relaxed: a statistic */
	return m ? atomic_load_explicit(&m->keys_, memory_order_relaxed) : 0;
}

size_t ats_keyed_bytes(const ats_keyed *m)
{
	/* relaxed: a statistic */
	return m ? m->base_bytes_ + atomic_load_explicit(&m->table_bytes_, memory_order_relaxed) : 0;
}

void ats_keyed_stats_get(const ats_keyed *m, ats_keyed_stats *out)
{
	if (!out)
		return;
	memset(out, 0, sizeof *out);
	if (!m)
		return;
	ats_keyed *mm = (ats_keyed *)m;
	out->keys = ats_keyed_count(m);
	out->bytes = ats_keyed_bytes(m);
	reg_thread();
	urcu_memb_read_lock();
	/* acquire: as in ats_keyed_allow_n_at (mask is read through it) */
	out->slots = atomic_load_explicit(&mm->table_, memory_order_acquire)->mask + 1;
	TSAN_RELEASE(&mm->tsan_sync_);
	urcu_memb_read_unlock();
	out->key_limit = m->key_limit_;
	/* relaxed, all six: statistics */
	out->inserts = atomic_load_explicit(&mm->inserts_, memory_order_relaxed);
	out->evicted_idle = atomic_load_explicit(&mm->evicted_idle_, memory_order_relaxed);
	out->evicted_forced = atomic_load_explicit(&mm->evicted_forced_, memory_order_relaxed);
	out->resizes = atomic_load_explicit(&mm->resizes_, memory_order_relaxed);
	out->insert_failures = atomic_load_explicit(&mm->insert_failures_, memory_order_relaxed);
	out->overrides = atomic_load_explicit(&mm->noverrides_, memory_order_relaxed);
}
