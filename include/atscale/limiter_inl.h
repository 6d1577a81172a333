/* SPDX-License-Identifier: BSD-2-Clause */
/* Not API: the layout of atscale/limiter.h's transparent types and its inline bodies. Included by
 * limiter.h; never include it directly. Every name here may change in any release. */
#ifndef ATSCALE_LIMITER_INL_H
#define ATSCALE_LIMITER_INL_H

#ifndef ATSCALE_LIMITER_H
#error "include <atscale/limiter.h>, not atscale/limiter_inl.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* A configuration slot (private). The first cache line holds what an acquire reads; the first six
 * fields are all the usual acquire and refusal load (frac_lo only when its carry can matter). */
struct ats__limiter_slot {
	ATS__ALIGNAS(ATS__CACHE_LINE) ATS_ATOMIC(uint64_t) epoch_ns;
	ATS_ATOMIC(uint64_t) base_units;
	ATS_ATOMIC(uint64_t) mul_int;
	ATS_ATOMIC(uint64_t) frac_hi;
	ATS_ATOMIC(uint64_t) burst2;    /* burst << (shift + 1): burst in doubled units (infinite rate: burst) */
	ATS_ATOMIC(uint64_t) shift_inf; /* shift | inf << 32 */
	ATS_ATOMIC(uint64_t) frac_lo;
	ATS_ATOMIC(uint64_t) burst; /* tokens */
	/* cold: reservations, setters, conversions */
	ATS_ATOMIC(uint64_t) events;
	ATS_ATOMIC(uint64_t) period_ns;
	ATS_ATOMIC(uint64_t) conv_old;       /* the word this generation converted (previous units) */
	ATS_ATOMIC(uint64_t) conv_new;       /* the word it became */
	ATS_ATOMIC(uint64_t) prev_shift_inf; /* the previous generation's shift_inf */
};

/* The exact limiter (limiter.h). */
typedef struct ats_limiter {
	ATS__ALIGNAS(ATS__CACHE_LINE) ATS_ATOMIC(uint64_t) word_; /* (TAT << 1) | generation parity */
	ATS_ATOMIC(uint64_t) gen_;     /* configuration generation; slot_[gen_ & 1] is current */
	ATS_ATOMIC(uint32_t) setting_; /* serializes setters (a spin lock) */
	struct ats__limiter_slot slot_[2];
} ats_limiter;

/* A configuration slot and the word it applies to, read consistently: the warm and cold paths
 * (src/limiter.c) and ats_limiter_tokens_at compute on it; allow and check use ats__limiter_fast. */
struct ats__limiter_view {
	ats_token_clock c; /* burst_units holds burst2 (doubled units) */
	uint64_t burst;    /* derived from burst2 (no load) */
	uint64_t gen;      /* generation whose units the word is in */
	uint64_t word;
};

/* Loads a slot into v: seven loads from one cache line. Relaxed, all seven: the caller either
 * holds the setters' lock or is a seqlock reader that loaded gen_ with acquire before (pairing with
 * the setter's release store of gen_, so the slot's fields are seen) and issues an acquire fence and
 * re-checks gen_ and the word's parity after (which rejects fields a later setter rewrote). */
static inline void ats__limiter_load_slot(struct ats__limiter_slot *s, struct ats__limiter_view *v)
{
	v->c.epoch_ns = ats__atomic_load(&s->epoch_ns, ats__mo_relaxed);
	v->c.base_units = ats__atomic_load(&s->base_units, ats__mo_relaxed);
	v->c.mul_int = ats__atomic_load(&s->mul_int, ats__mo_relaxed);
	v->c.frac_hi = ats__atomic_load(&s->frac_hi, ats__mo_relaxed);
	v->c.frac_lo = ats__atomic_load(&s->frac_lo, ats__mo_relaxed);
	v->c.burst_units = ats__atomic_load(&s->burst2, ats__mo_relaxed);
	uint64_t si = ats__atomic_load(&s->shift_inf, ats__mo_relaxed);
	v->c.shift = (uint32_t)si;
	v->c.inf = (uint32_t)(si >> 32);
	/* burst2 = burst << (shift + 1) exactly (burst << shift <= 2^60): no need to load burst. */
	v->burst = v->c.inf ? v->c.burst_units : v->c.burst_units >> (v->c.shift + 1);
}

/* A consistent (config, word) pair: the config is the one the word is expressed in. A seqlock
 * read: false while a setter publishes or converts (rare), and the caller takes its out-of-line
 * path, which uses the previous slot meanwhile and so never waits. 10 L1 loads, no write. */
static inline bool ats__limiter_view_fast(ats_limiter *l, struct ats__limiter_view *v)
{
	/* acquire: pairs with ats_limiter_set_at's release store of gen_, so slot g's fields are seen. */
	uint64_t g = ats__atomic_load(&l->gen_, ats__mo_acquire);
	ats__limiter_load_slot(&l->slot_[g & 1], v);
	/* acquire fence: the slot loads above complete before the re-checks below; if one of them saw
	 * a later setter's rewrite, that setter's release fence (set_at) synchronizes with this fence,
	 * and the re-load of gen_ sees the g + 1 its predecessor stored, so the read is rejected. */
	ats__atomic_fence(ats__mo_acquire);
	/* acquire: pairs with the release CAS that wrote the word (a conversion, or a grant in its
	 * release sequence), so a word converted by setter g + 2 makes the re-load below see gen_ >=
	 * g + 2; it also keeps that re-load after this load. relaxed re-load: ordered by this acquire. */
	uint64_t w = ats__atomic_load(&l->word_, ats__mo_acquire);
	if (ats__atomic_load(&l->gen_, ats__mo_relaxed) != g || ((w ^ g) & 1))
		return false;
	v->gen = g;
	v->word = w;
	return true;
}

/* The clock's reading at now_ns in doubled units (the word's scale). */
static inline uint64_t ats__limiter_now2(const struct ats__limiter_view *v, uint64_t now_ns)
{
	return ats_token_clock_units(&v->c, now_ns) << 1;
}

/* The GCRA step (ats__gcra_step) on the word's scale: the word after taking n (<= 2^32) at now2 (the clock in
 * doubled units), parity kept; false when they do not fit, n > burst included, since
 * next - now2 = debt + n2 + parity with debt >= 0 (no wrap: debt < 2^63 and n2 <= 2^63, both
 * even). The parity rides on the increment, which is ready early, rather than being or-ed into the
 * result last, one step further along the CAS's dependency chain. Pure. */
static inline bool ats__limiter_step(uint64_t word, uint64_t now2, uint64_t n, uint32_t shift, uint64_t burst2,
                                     uint64_t *next)
{
	uint64_t parity = word & 1;
	return ats__gcra_step(word - parity, now2, (n << (shift + 1)) | parity, burst2 + parity, next);
}

static inline int64_t ats__limiter_tokens(const struct ats__limiter_view *v, uint64_t now_ns)
{
	if (v->c.inf)
		return INT64_MAX;
	uint64_t now2 = ats__limiter_now2(v, now_ns);
	uint64_t debt2 = ats__gcra_start(v->word & ~(uint64_t)1, now2) - now2;
	ats__i128 avail2 = (ats__i128)v->c.burst_units - (ats__i128)debt2;
	return (int64_t)(avail2 >> (v->c.shift + 1)); /* arithmetic shift: floor */
}

/* Out-of-line versions for when a setter is at work or the fast path cannot decide. */
ATS_API bool ats__limiter_allow_slow(ats_limiter *l, uint64_t n, uint64_t now_ns);
ATS_API bool ats__limiter_check_slow(ats_limiter *l, uint64_t n, uint64_t now_ns);
ATS_API int64_t ats__limiter_tokens_slow(ats_limiter *l, uint64_t now_ns);

/* One attempt on the word's current generation, straight from the limiter: the seqlock read of
 * ats__limiter_view_fast and ats__limiter_step, without a view struct and without frac_lo, so that
 * a caller's loop keeps it all in registers. 1 n fit (and, with take, were taken; an infinite rate
 * writes nothing), 0 refused (nothing written), -1 the CAS lost (retry), -2 take the out-of-line
 * path (a setter at work, now_ns before the clock's epoch, n > 2^32, or a reading that needs
 * frac_lo). */
static inline int ats__limiter_fast(ats_limiter *l, uint64_t n, uint64_t now_ns, bool take)
{
	/* Opaque to the optimizer, so that a caller's loop does not keep &l->gen_, &l->slot_[0] and
	 * &l->slot_[1] in three registers of their own (they are all l plus a displacement). */
	__asm__ volatile("" : "+r"(l));
	/* The seqlock read of ats__limiter_view_fast, same orders and same reasons (see there): acquire
	 * on gen_ (pairs with the setter's release store: the slot is seen), relaxed slot loads, acquire
	 * fence, acquire word load (pairs with the converting release CAS), relaxed gen_ re-load. */
	uint64_t g = ats__atomic_load(&l->gen_, ats__mo_acquire);
	/* A (well predicted) branch rather than an index or a cmov: the CPU starts the slot loads
	 * without waiting for gen, which is on the critical path right after the previous CAS. The
	 * empty asm keeps the compiler from turning the branch into a cmov. */
	struct ats__limiter_slot *s = &l->slot_[0];
	if (__builtin_expect(g & 1, 0)) {
		s = &l->slot_[1];
		__asm__("" : "+r"(s));
	}
	/* Relaxed, all six: validated by the fence and the re-checks below. */
	uint64_t epoch = ats__atomic_load(&s->epoch_ns, ats__mo_relaxed);
	uint64_t base = ats__atomic_load(&s->base_units, ats__mo_relaxed);
	uint64_t mul = ats__atomic_load(&s->mul_int, ats__mo_relaxed);
	uint64_t frac_hi = ats__atomic_load(&s->frac_hi, ats__mo_relaxed);
	uint64_t burst2 = ats__atomic_load(&s->burst2, ats__mo_relaxed);
	uint64_t shift_inf = ats__atomic_load(&s->shift_inf, ats__mo_relaxed);
	/* The fence, the acquire word load and the relaxed gen_ re-load: as in ats__limiter_view_fast. */
	ats__atomic_fence(ats__mo_acquire);
	uint64_t w = ats__atomic_load(&l->word_, ats__mo_acquire);
	if (__builtin_expect(ats__atomic_load(&l->gen_, ats__mo_relaxed) != g || ((w ^ g) & 1) || now_ns < epoch ||
	                         n > ATS_GCRA_MAX_N,
	                     0))
		return -2;
	if (__builtin_expect(shift_inf >> 32, 0))
		return 1;
	uint64_t dt = now_ns - epoch;
	ats__u128 hi = (ats__u128)dt * frac_hi;
	if (__builtin_expect((uint64_t)hi > ~dt, 0))
		return -2;
	uint64_t now2 = (base + dt * mul + (uint64_t)(hi >> 64)) << 1;
	uint64_t next;
	if (!ats__limiter_step(w, now2, n, (uint32_t)shift_inf, burst2, &next))
		return 0;
	if (!take || n == 0)
		return 1;
	uint64_t expected = w;
	/* release: limiter.h's "release on success" (pairs with the acquire word loads of later views);
	 * the word's protocol itself needs none (a grant is an RMW, so it extends the release sequence of
	 * the conversion it builds on). relaxed on failure: the caller retries with a fresh view. */
	return ats__atomic_cas_strong(&l->word_, &expected, next, ats__mo_release, ats__mo_relaxed) ? 1 : -1;
}

static inline bool ats_limiter_allow_at(ats_limiter *l, uint64_t n, uint64_t now_ns)
{
	for (;;) {
		int r = ats__limiter_fast(l, n, now_ns, true);
		if (r >= 0)
			return r;
		if (r == -2)
			return ats__limiter_allow_slow(l, n, now_ns);
	}
}

static inline bool ats_limiter_allow(ats_limiter *l, uint64_t n)
{
	return ats_limiter_allow_at(l, n, ats_fast_now_ns());
}

static inline bool ats_limiter_check_at(ats_limiter *l, uint64_t n, uint64_t now_ns)
{
	int r = ats__limiter_fast(l, n, now_ns, false);
	if (__builtin_expect(r < 0, 0))
		return ats__limiter_check_slow(l, n, now_ns);
	return r;
}

static inline bool ats_limiter_check(ats_limiter *l, uint64_t n)
{
	return ats_limiter_check_at(l, n, ats_fast_now_ns());
}

static inline int64_t ats_limiter_tokens_at(ats_limiter *l, uint64_t now_ns)
{
	struct ats__limiter_view v;
	if (!ats__limiter_view_fast(l, &v))
		return ats__limiter_tokens_slow(l, now_ns);
	return ats__limiter_tokens(&v, now_ns);
}

static inline int64_t ats_limiter_tokens(ats_limiter *l)
{
	return ats_limiter_tokens_at(l, ats_fast_now_ns());
}

/* One shard or slot: (last use time mod 2^40) << 24 | tokens left (ATS__SHARD_LEASING: being
 * leased; shards only). */
struct ats__shard {
	ATS__ALIGNAS(ATS__CACHE_LINE) ATS_ATOMIC(uint64_t) word;
};
#define ATS__SHARD_TOKENS UINT64_C(0xFFFFFF)
#define ATS__SHARD_LEASING ATS__SHARD_TOKENS

typedef struct ats_sharded {
	ats_limiter exact_;         /* the bucket the caches lease from (rate and burst can be changed on it) */
	struct ats__shard *shards_; /* nshards_ shared per-core shards, then nshards_ per-thread slots */
	struct ats__shard *slots_;
	uint32_t nshards_;
	uint64_t batch_;
	uint64_t lease_ns_;
} ats_sharded;

/* The calling thread's process-wide index plus one: 0 before its first ats_sharded_allow_at,
 * UINT32_MAX once it is exiting (private). Initial-exec TLS: one %fs-relative load. */
ATS_API extern ATS__THREAD_LOCAL uint32_t ats__thread_index1 __attribute__((tls_model("initial-exec")));

/* Cold: lease a batch for shard p or fall back to the exact bucket. */
ATS_API bool ats__sharded_slow(ats_sharded *s, ATS_ATOMIC(uint64_t) * p, uint64_t n, uint64_t now_ns);

/* Cold: index assignment, leasing for the thread's slot, and the fallbacks. */
ATS_API bool ats__sharded_thread_slow(ats_sharded *s, uint64_t n, uint64_t now_ns);

static inline uint64_t ats_sharded_max_excess(const ats_sharded *s)
{
	return 2 * (uint64_t)s->nshards_ * s->batch_;
}

static inline bool ats_sharded_allow_shard_at(ats_sharded *s, unsigned shard, uint64_t n, uint64_t now_ns)
{
	if (shard >= s->nshards_)
		shard %= s->nshards_;
	ATS_ATOMIC(uint64_t) *p = &s->shards_[shard].word;
	/* relaxed: the CAS below validates it. */
	uint64_t w = ats__atomic_load(p, ats__mo_relaxed);
	for (;;) {
		uint64_t tok = w & ATS__SHARD_TOKENS;
		/* age of the lease's last use, as a signed 40-bit difference: < 0 means a stale now_ns */
		int64_t age = (int64_t)((now_ns - (w >> 24)) << 24) >> 24;
		if (tok == ATS__SHARD_LEASING || tok < n || age < 0 || (uint64_t)age > s->lease_ns_)
			return ats__sharded_slow(s, p, n, now_ns);
		if (n == 0)
			return true;
		/* relaxed, both: the shard's word is its whole state (a count and a time), it publishes no
		 * other data, and its modification order alone keeps the count exact. */
		if (ats__atomic_cas_weak(p, &w, (now_ns << 24) | (tok - n), ats__mo_relaxed, ats__mo_relaxed))
			return true;
	}
}

static inline bool ats_sharded_allow_at(ats_sharded *s, uint64_t n, uint64_t now_ns)
{
	uint32_t i = ats__thread_index1 - 1; /* 0 (no index yet) wraps to UINT32_MAX: slow path */
	if (__builtin_expect(i < s->nshards_, 1)) {
		ATS_ATOMIC(uint64_t) *p = &s->slots_[i].word;
		/* relaxed, this load and the store below: the slot belongs to this thread alone (the index
		 * lock in sharded.c orders a previous owner's last store before this thread's first load). */
		uint64_t w = ats__atomic_load(p, ats__mo_relaxed);
		uint64_t tok = w & ATS__SHARD_TOKENS;
		int64_t age = (int64_t)((now_ns - (w >> 24)) << 24) >> 24;
		if (__builtin_expect(tok >= n && n != 0 && age >= 0 && (uint64_t)age <= s->lease_ns_, 1)) {
			ats__atomic_store(p, (now_ns << 24) | (tok - n), ats__mo_relaxed);
			return true;
		}
	}
	return ats__sharded_thread_slow(s, n, now_ns);
}

static inline bool ats_sharded_allow(ats_sharded *s, uint64_t n)
{
	return ats_sharded_allow_at(s, n, ats_fast_now_ns());
}

#ifdef __cplusplus
}
#endif
#endif
