/* SPDX-License-Identifier: BSD-2-Clause */
/* The exact limiter: the cold and warm paths of include/atscale/limiter.h (the hot paths are inline
 * in limiter_inl.h). Written by hand because no library offers a lock-free exact GCRA with runtime
 * rate changes, reservations and per-core leasing on one 64-bit word. The sharded limiter is in
 * sharded.c, the multi-limit in multi.c; both build on this file's API. */
#include "atscale/limiter.h"
#include "internal/compiler.h"
#include "internal/limiter.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Debt (TAT - now) never passes this many units, so the signed "ahead" test on the 63-bit TAT
 * (2^62 units) stays unambiguous with room to spare. */
#define MAX_DEBT_UNITS (UINT64_C(1) << 61)
#define MAX_DEBT2 (MAX_DEBT_UNITS << 1)
/* A burst never passes this many units: half the debt limit, so that an empty bucket (debt =
 * burst) still takes a reservation of a whole burst. */
#define MAX_BURST_UNITS (MAX_DEBT_UNITS >> 1)

/* ---- Slots ---- */

struct slot_config {
	ats_token_clock c;
	ats_rate rate;
	uint64_t burst;
};

/* Writes a slot no acquirer may be using (the caller published a generation that makes readers of
 * its old contents retry, and issued a release fence after it). Relaxed, all thirteen stores: the
 * caller's release fence before them and its release store of gen_ after them order them for the
 * seqlock readers (or, in init, the publication of l). */
static void slot_write(struct ats__limiter_slot *s, const struct slot_config *cfg, uint64_t prev_shift_inf)
{
	const ats_token_clock *c = &cfg->c;
	atomic_store_explicit(&s->epoch_ns, c->epoch_ns, memory_order_relaxed);
	atomic_store_explicit(&s->base_units, c->base_units, memory_order_relaxed);
	atomic_store_explicit(&s->mul_int, c->mul_int, memory_order_relaxed);
	atomic_store_explicit(&s->frac_hi, c->frac_hi, memory_order_relaxed);
	atomic_store_explicit(&s->frac_lo, c->frac_lo, memory_order_relaxed);
	atomic_store_explicit(&s->burst2, c->inf ? cfg->burst : cfg->burst << (c->shift + 1), memory_order_relaxed);
	atomic_store_explicit(&s->burst, cfg->burst, memory_order_relaxed);
	atomic_store_explicit(&s->shift_inf, c->shift | (uint64_t)c->inf << 32, memory_order_relaxed);
	atomic_store_explicit(&s->events, cfg->rate.events, memory_order_relaxed);
	atomic_store_explicit(&s->period_ns, cfg->rate.period_ns, memory_order_relaxed);
	atomic_store_explicit(&s->conv_old, 0, memory_order_relaxed);
	atomic_store_explicit(&s->conv_new, 0, memory_order_relaxed);
	atomic_store_explicit(&s->prev_shift_inf, prev_shift_inf, memory_order_relaxed);
}

static void slot_read(struct ats__limiter_slot *s, struct slot_config *cfg)
{
	struct ats__limiter_view v;
	ats__limiter_load_slot(s, &v);
	cfg->c = v.c;
	cfg->c.burst_units = v.burst << v.c.shift;
	cfg->burst = v.burst;
	/* Relaxed, both (and ats__limiter_load_slot's): under the setters' lock, which orders every
	 * slot write before them. */
	cfg->rate.events = atomic_load_explicit(&s->events, memory_order_relaxed);
	cfg->rate.period_ns = atomic_load_explicit(&s->period_ns, memory_order_relaxed);
}

static bool view_prev(ats_limiter *l, uint64_t gen, struct ats__limiter_view *v)
{
	/* The setter of `gen` has published but not yet converted the word: the previous slot is still
	 * intact (the next setter cannot start before the conversion) and is the word's clock. */
	ats__limiter_load_slot(&l->slot_[(gen - 1) & 1], v);
	/* The seqlock re-check of ats__limiter_view_fast, same orders and reasons: the fence catches a
	 * rewrite by setter gen + 1 (its predecessor's conversion then shows as parity gen, or gen_ moved
	 * on); the acquire word load pairs with the converting release CAS, so a word that setter gen + 1
	 * converted back to this parity makes the relaxed gen_ re-load see gen + 1. */
	atomic_thread_fence(memory_order_acquire);
	uint64_t w = atomic_load_explicit(&l->word_, memory_order_acquire);
	if (atomic_load_explicit(&l->gen_, memory_order_relaxed) != gen || ((w ^ (gen - 1)) & 1))
		return false;
	v->gen = gen - 1;
	v->word = w;
	return true;
}

void ats__limiter_view(ats_limiter *l, struct ats__limiter_view *v)
{
	for (;;) {
		if (ats__limiter_view_fast(l, v))
			return;
		/* acquire: pairs with setter g's release store of gen_; setter g - 1 wrote the previous slot
		 * before setter g took the lock, so view_prev sees those fields. */
		uint64_t g = atomic_load_explicit(&l->gen_, memory_order_acquire);
		if (g != 0 && view_prev(l, g, v))
			return;
	}
}

bool ats__limiter_allow_slow(ats_limiter *l, uint64_t n, uint64_t now_ns)
{
	struct ats__limiter_view v;
	for (;;) {
		ats__limiter_view(l, &v);
		int r = ats__limiter_try(l, &v, n, now_ns);
		if (r >= 0)
			return r;
	}
}

bool ats__limiter_check_slow(ats_limiter *l, uint64_t n, uint64_t now_ns)
{
	struct ats__limiter_view v;
	ats__limiter_view(l, &v);
	return ats__limiter_fits(&v, n, now_ns);
}

int64_t ats__limiter_tokens_slow(ats_limiter *l, uint64_t now_ns)
{
	struct ats__limiter_view v;
	ats__limiter_view(l, &v);
	return ats__limiter_tokens(&v, now_ns);
}

/* The token clock for a configuration. Its shift keeps burst << shift <= 2^60 (only burst > 2^30
 * loses precision), so that an empty bucket can still reserve a whole burst under the 2^61-unit
 * debt limit, and no debt reaches the 2^62 units where the word's signed "ahead" test would turn
 * ambiguous. */
static ats_err *check_config(ats_rate rate, uint64_t burst, uint64_t now_ns, ats_token_clock *c)
{
	uint32_t max_shift = 30;
	while (max_shift > 0 && burst <= ATS_GCRA_MAX_N && (burst << max_shift) > MAX_BURST_UNITS)
		max_shift--;
	return ats_token_clock_make_max_shift(c, rate, burst, now_ns, max_shift);
}

/* After relaxed reads of slot[gen & 1]'s cold fields: true when no setter can have rewritten that
 * slot meanwhile. Only the setter of gen + 2 rewrites it, and only after the word was converted to
 * gen + 1 (parity flipped); a word back at gen's parity would need gen + 2 published first. So if a
 * read saw that setter's store, the fences make the word's parity or the generation show it. */
static bool slot_stable(ats_limiter *l, uint64_t gen)
{
	/* acquire fence: synchronizes with that setter's release fence (set_at) when a read saw its
	 * store; acquire word load: pairs with the converting release CAS, so a word converted by setter
	 * gen + 2 makes the relaxed gen_ re-load (kept after it) see gen + 2. */
	atomic_thread_fence(memory_order_acquire);
	uint64_t w = atomic_load_explicit(&l->word_, memory_order_acquire);
	uint64_t g = atomic_load_explicit(&l->gen_, memory_order_relaxed);
	return ((w ^ gen) & 1) == 0 && (g == gen || g == gen + 1);
}

ats_err *ats_limiter_init_at(ats_limiter *l, ats_rate rate, uint64_t burst, uint64_t now_ns)
{
	if (!l)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "limiter is NULL");
	struct slot_config cfg = {.rate = rate, .burst = burst};
	ats_err *err = check_config(rate, burst, now_ns, &cfg.c);
	if (err)
		return ats_err_wrap(err, "initializing a limiter");
	memset(l, 0, sizeof *l);
	atomic_init(&l->setting_, 0);
	slot_write(&l->slot_[0], &cfg, 0);
	/* TAT 0 at base 0: full. The release orders the slot before a hand-off of l to other threads
	 * made with a relaxed publication (the usual hand-off orders it anyway): a reader's acquire
	 * load of gen_ pairs with it. The word's store is relaxed: the release below orders it too. */
	atomic_store_explicit(&l->word_, 0, memory_order_relaxed);
	atomic_store_explicit(&l->gen_, 0, memory_order_release);
	return NULL;
}

ats_err *ats_limiter_init(ats_limiter *l, ats_rate rate, uint64_t burst)
{
	return ats_limiter_init_at(l, rate, burst, ats_fast_now_ns());
}

void ats_limiter_destroy(ats_limiter *l)
{
	(void)l;
}

ats_err *ats_limiter_new(ats_limiter **out, ats_rate rate, uint64_t burst)
{
	if (!out)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "out is NULL");
	*out = NULL;
	ats_limiter *l = aligned_alloc(ATS__CACHE_LINE, sizeof *l);
	if (!l)
		return ats_err_oom;
	ats_err *err = ats_limiter_init(l, rate, burst);
	if (err) {
		free(l);
		return err;
	}
	*out = l;
	return NULL;
}

void ats_limiter_free(ats_limiter *l)
{
	free(l);
}

/* ---- Time arithmetic ---- */

/* ns until the clock has advanced `units` (ceil(units / units-per-ns), so the units are surely
 * there then: floor(x + d*k) - floor(x) >= floor(d*k) >= units). UINT64_MAX: never (rate 0) or
 * beyond 2^64 ns. One 128-bit division. */
static uint64_t ns_for_units(uint64_t events, uint64_t period_ns, uint32_t shift, uint64_t units)
{
	if (units == 0)
		return 0;
	if (events == 0)
		return UINT64_MAX;
	unsigned __int128 num = (unsigned __int128)units * period_ns;
	unsigned __int128 den = (unsigned __int128)events << shift;
	unsigned __int128 q = (num + den - 1) / den;
	return q >= UINT64_MAX ? UINT64_MAX : (uint64_t)q;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

/* The delay from now_ns until `units` more units have passed on the view's clock (which does not
 * move before its epoch: a now_ns before it waits for the epoch too). UINT64_MAX: never. */
static uint64_t delay_for(ats_limiter *l, const struct ats__limiter_view *v, uint64_t now_ns, uint64_t units)
{
	if (units == 0)
		return 0;
	struct ats__limiter_slot *s = &l->slot_[v->gen & 1];
	/* Relaxed, both: the caller validates them with slot_stable() before it uses the result. */
	uint64_t events = atomic_load_explicit(&s->events, memory_order_relaxed);
	uint64_t period = atomic_load_explicit(&s->period_ns, memory_order_relaxed);
	uint64_t d = ns_for_units(events, period, v->c.shift, units);
	if (d == UINT64_MAX)
		return UINT64_MAX;
	uint64_t from = now_ns < v->c.epoch_ns ? v->c.epoch_ns : now_ns;
	uint64_t act = sat_add(from, d);
	return act == UINT64_MAX ? UINT64_MAX : act - now_ns;
}

/* ---- Reservations ---- */

bool ats_limiter_reserve_within_at(ats_limiter *l, uint64_t n, uint64_t max_delay_ns, uint64_t now_ns,
                                   ats_reservation *r)
{
	memset(r, 0, sizeof *r);
	r->lim_ = l;
	struct ats__limiter_view v;
	for (;;) {
		ats__limiter_view(l, &v);
		/* The events/period read by delay_for come from the same slot; a setter that rewrote it in
		 * between bumps gen, caught by the check below. */
		if (v.c.inf) {
			*r = (ats_reservation){
			    .ok = true, .n = n, .act_ns = now_ns, .lim_ = l, .gen_ = v.gen, .inf_ = 1};
			return true;
		}
		if (n > v.burst)
			return false;
		uint64_t now2 = ats__limiter_now2(&v, now_ns);
		uint64_t n2 = n << (v.c.shift + 1);
		uint64_t after;
		if (!ats__gcra_step(v.word & ~(uint64_t)1, now2, n2, MAX_DEBT2, &after))
			return false;
		uint64_t debt2 = after - now2;
		uint64_t delay = debt2 > v.c.burst_units ? delay_for(l, &v, now_ns, (debt2 - v.c.burst_units) >> 1) : 0;
		if (!slot_stable(l, v.gen))
			continue;
		if (delay == UINT64_MAX || delay > max_delay_ns)
			return false;
		uint64_t w = v.word;
		/* release: every grant on the word is a release, as allow's (limiter.h); relaxed on
		 * failure: the loop takes a new view. */
		if (n2 != 0 && !atomic_compare_exchange_strong_explicit(&l->word_, &w, after | (v.gen & 1),
		                                                        memory_order_release, memory_order_relaxed))
			continue;
		/* The TAT at this reservation's time to act (max(now, after - burst)) plus the burst: later
		 * grants that push the TAT past it act after this one, counting on its tokens. */
		uint64_t full2 = now2 + v.c.burst_units;
		r->ok = true;
		r->n = n;
		r->delay_ns = delay;
		r->act_ns = now_ns + delay;
		r->gen_ = v.gen;
		r->front2_ = (int64_t)(after - full2) > 0 ? after : full2;
		r->before_ = v.word;
		r->after_ = after | (v.gen & 1);
		r->n2_ = n2;
		return true;
	}
}

bool ats_limiter_reserve_at(ats_limiter *l, uint64_t n, uint64_t now_ns, ats_reservation *r)
{
	return ats_limiter_reserve_within_at(l, n, UINT64_MAX, now_ns, r);
}

bool ats_limiter_reserve(ats_limiter *l, uint64_t n, ats_reservation *r)
{
	return ats_limiter_reserve_at(l, n, ats_fast_now_ns(), r);
}

static uint64_t pos_diff(uint64_t a, uint64_t b)
{
	return (int64_t)(a - b) > 0 ? a - b : 0;
}

uint64_t ats_limiter_cancel_at(ats_reservation *r, uint64_t now_ns)
{
	if (!r || !r->ok)
		return 0;
	r->ok = false; /* a second cancel gives nothing */
	if (r->inf_ || r->n2_ == 0 || now_ns > r->act_ns)
		return 0;
	ats_limiter *l = r->lim_;
	struct ats__limiter_view v;
	for (;;) {
		ats__limiter_view(l, &v);
		if (v.c.inf)
			return 0;
		uint64_t tat2 = v.word & ~(uint64_t)1;
		uint64_t restore2;
		if (v.gen == r->gen_) {
			/* Units of later callers that act after this reservation are theirs. */
			uint64_t later = pos_diff(tat2, r->front2_);
			restore2 = r->n2_ > later ? r->n2_ - later : 0;
		} else if (v.gen == r->gen_ + 1) {
			/* One change in between: apply the rule in the old units up to the conversion, convert
			 * what is left (rounding down) and cap it at the debt the conversion kept (a smaller
			 * burst forgives debt, this reservation's first), then count every unit granted after
			 * the conversion as built on it. */
			struct ats__limiter_slot *s = &l->slot_[v.gen & 1];
			/* Relaxed, all three: the view's acquire word load saw the converting release CAS (or
			 * a grant in its release sequence), which setter v.gen made after storing these; a
			 * rewrite by setter v.gen + 2 is caught by slot_stable(). */
			uint64_t conv_old = atomic_load_explicit(&s->conv_old, memory_order_relaxed);
			uint64_t conv_new = atomic_load_explicit(&s->conv_new, memory_order_relaxed);
			uint64_t prev = atomic_load_explicit(&s->prev_shift_inf, memory_order_relaxed);
			if (!slot_stable(l, v.gen))
				continue;
			if (prev >> 32)
				return 0;
			uint32_t so = (uint32_t)prev, sn = v.c.shift;
			uint64_t later_old = pos_diff(conv_old & ~(uint64_t)1, r->front2_);
			uint64_t left_old = r->n2_ > later_old ? (r->n2_ - later_old) >> 1 : 0;
			uint64_t left_new = sn >= so ? left_old << (sn - so) : left_old >> (so - sn);
			uint64_t kept = pos_diff(conv_new & ~(uint64_t)1, v.c.base_units << 1) >> 1;
			if (left_new > kept)
				left_new = kept;
			uint64_t later_new = pos_diff(tat2, conv_new & ~(uint64_t)1);
			restore2 = (left_new << 1) > later_new ? (left_new << 1) - later_new : 0;
		} else {
			return 0;
		}
		uint64_t now2 = ats__limiter_now2(&v, now_ns);
		uint64_t debt2 = pos_diff(tat2, now2);
		if (restore2 > debt2)
			restore2 = debt2; /* never above full */
		if (restore2 == 0)
			return 0;
		/* The word as this reservation left it (nothing happened since): put back the one from
		 * before it, which reads as the rule's result from now_ns on and, unlike it, is also right
		 * for earlier times. */
		uint64_t next = v.gen == r->gen_ && v.word == r->after_ ? r->before_ : (tat2 - restore2) | (v.gen & 1);
		uint64_t w = v.word;
		/* release and relaxed on failure: as the reservation's CAS. */
		if (atomic_compare_exchange_strong_explicit(&l->word_, &w, next, memory_order_release,
		                                            memory_order_relaxed))
			return restore2 >> (v.c.shift + 1);
	}
}

uint64_t ats_limiter_cancel(ats_reservation *r)
{
	return ats_limiter_cancel_at(r, ats_fast_now_ns());
}

/* ---- Blocking ---- */

ats_err *ats_limiter_wait(ats_limiter *l, uint64_t n, ats_ctx *ctx)
{
	if (!l || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "limiter or ctx is NULL");
	uint64_t now = ats_fast_now_ns(); /* the library's one time base, as the plain calls */
	if (ats_ctx_done_at(ctx, now))
		return ats_err_wrap(ats_ctx_err(ctx), "waiting for %llu tokens", (unsigned long long)n);
	uint64_t burst = ats_limiter_burst(l);
	if (n > burst && ats_limiter_tokens_at(l, now) != INT64_MAX)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT,
		                   "waiting for %llu tokens: exceeds the limiter's burst of %llu",
		                   (unsigned long long)n, (unsigned long long)burst);
	uint64_t deadline = ats_ctx_deadline(ctx);
	uint64_t max_delay = deadline == ATS_CTX_NO_DEADLINE ? UINT64_MAX : deadline - now;
	ats_reservation r;
	if (!ats_limiter_reserve_within_at(l, n, max_delay, now, &r)) {
		if (deadline == ATS_CTX_NO_DEADLINE)
			return ats_err_new(ATS_ERR_LIMITED,
			                   "waiting for %llu tokens: they will never be there (rate 0)",
			                   (unsigned long long)n);
		return ats_err_new(ATS_ERR_DEADLINE_EXCEEDED, "waiting for %llu tokens: would exceed deadline",
		                   (unsigned long long)n);
	}
	if (r.delay_ns == 0)
		return NULL;
	if (!ats_ctx_wait(ctx, r.act_ns))
		return NULL;
	/* Done as the tokens came due (a deadline at their very time fires with them): they are
	 * taken, and cancel could not give them back. */
	uint64_t done_ns = ats_now_ns();
	if (done_ns >= r.act_ns)
		return NULL;
	/* Done before the tokens' time (cancelled; or its deadline, which a clock step can bring
	 * before act_ns): give back what can be given back, report why. */
	ats_limiter_cancel_at(&r, done_ns);
	return ats_err_wrap(ats_ctx_err(ctx), "waiting for %llu tokens", (unsigned long long)n);
}

/* ---- redis-cell result ---- */

static int64_t to_i64(uint64_t ns)
{
	return ns > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)ns;
}

bool ats_limiter_throttle_at(ats_limiter *l, uint64_t n, uint64_t now_ns, ats_limiter_result *res)
{
	struct ats__limiter_view v;
	for (;;) {
		ats__limiter_view(l, &v);
		*res = (ats_limiter_result){.limit = v.burst, .retry_after_ns = -1};
		if (v.c.inf) {
			res->allowed = true;
			res->remaining = v.burst;
			return true;
		}
		uint64_t now2 = ats__limiter_now2(&v, now_ns);
		uint64_t start = ats__gcra_start(v.word & ~(uint64_t)1, now2);
		uint64_t debt2 = start - now2;
		uint32_t s1 = v.c.shift + 1;
		uint64_t after;
		bool fits =
		    n <= v.burst && ats__gcra_step(v.word & ~(uint64_t)1, now2, n << s1, v.c.burst_units, &after);
		if (!fits)
			after = start;
		uint64_t debt_after2 = after - now2;
		res->remaining = debt_after2 >= v.c.burst_units ? 0 : (v.c.burst_units - debt_after2) >> s1;
		res->reset_after_ns = to_i64(delay_for(l, &v, now_ns, debt_after2 >> 1));
		if (!fits) {
			if (n > v.burst)
				res->retry_after_ns = INT64_MAX;
			else
				res->retry_after_ns =
				    to_i64(delay_for(l, &v, now_ns, (debt2 + (n << s1) - v.c.burst_units) >> 1));
		}
		if (!slot_stable(l, v.gen))
			continue;
		if (!fits)
			return false;
		res->allowed = true;
		uint64_t w = v.word;
		/* release and relaxed on failure: as the reservation's CAS. */
		if (n == 0 || atomic_compare_exchange_strong_explicit(&l->word_, &w, after | (v.gen & 1),
		                                                      memory_order_release, memory_order_relaxed))
			return true;
	}
}

bool ats_limiter_throttle(ats_limiter *l, uint64_t n, ats_limiter_result *res)
{
	return ats_limiter_throttle_at(l, n, ats_fast_now_ns(), res);
}

/* ---- Runtime changes ---- */

/* The word of the new generation for the old word w (see the rule in limiter.h). Pure. */
static uint64_t convert_word(const struct slot_config *o, const struct slot_config *nw, uint64_t w, uint64_t new_gen,
                             uint64_t at_ns)
{
	uint64_t base = nw->c.base_units;
	uint64_t debt = 0;
	if (!o->c.inf && !nw->c.inf) {
		uint64_t now_o2 = ats_token_clock_units(&o->c, at_ns) << 1;
		uint64_t debt_o = pos_diff(w & ~(uint64_t)1, now_o2) >> 1;
		uint32_t so = o->c.shift, sn = nw->c.shift;
		unsigned __int128 d = sn >= so
		                          ? (unsigned __int128)debt_o << (sn - so)
		                          : ((unsigned __int128)debt_o + ((UINT64_C(1) << (so - sn)) - 1)) >> (so - sn);
		__int128 dn = (__int128)d + ((__int128)nw->burst << sn) - ((__int128)o->burst << sn);
		if (dn < 0)
			dn = 0;
		if (dn > (__int128)MAX_DEBT_UNITS)
			dn = MAX_DEBT_UNITS;
		debt = (uint64_t)dn;
	}
	return ((base + debt) << 1) | (new_gen & 1);
}

/* Sets the rate, the burst or both (NULL: keep the current one, read under the lock, so that a
 * concurrent change of the other is never undone). */
static ats_err *set_config(ats_limiter *l, const ats_rate *rate, const uint64_t *burst, uint64_t now_ns)
{
	if (!l)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "limiter is NULL");
	ats__spin_lock(&l->setting_);
	/* relaxed: under the lock; only setters (under it) store gen_. */
	uint64_t g = atomic_load_explicit(&l->gen_, memory_order_relaxed);
	struct ats__limiter_slot *os = &l->slot_[g & 1];
	struct slot_config o;
	slot_read(os, &o);
	/* A now_ns before the current clock's epoch (a stale time) changes the configuration at the
	 * epoch: the old clock reads the same there, and a new clock started before it would run ahead
	 * of the old one by the difference and hand out tokens already taken. */
	if (now_ns < o.c.epoch_ns)
		now_ns = o.c.epoch_ns;
	struct slot_config nw = {.rate = rate ? *rate : o.rate, .burst = burst ? *burst : o.burst};
	ats_err *err = check_config(nw.rate, nw.burst, now_ns, &nw.c);
	if (err) { /* bad input: nothing changed (made under the lock, which only other setters wait on) */
		ats__spin_unlock(&l->setting_);
		return ats_err_wrap(err, "changing a limiter");
	}
	/* The new clock reads, at now_ns, one unit past both the old clock and the word's TAT (any
	 * base works for the rule, since debt is kept relative to now). So every word of the new
	 * generation lies above every word the old one held at this point (an acquire only raises the
	 * TAT, a cancel never lowers it below now): an acquirer that still holds an old generation's
	 * word can never see it again after later changes and commit a value computed in the old
	 * units (the parity bit alone guards only one change: at a fixed instant a full bucket's word
	 * used to come back identical two changes later, in other units). */
	uint64_t old_units = ats_token_clock_units(&o.c, now_ns);
	/* acquire: more than needed (only the word's value is used, and the release fence below keeps
	 * this load before the slot writes); free on x86, and this is the cold path. */
	uint64_t ahead2 = (atomic_load_explicit(&l->word_, memory_order_acquire) & ~(uint64_t)1) - (old_units << 1);
	nw.c.base_units = old_units + ((int64_t)ahead2 > 0 ? ahead2 >> 1 : 0) + 1;
	/* Seqlock writer: readers that still name generation g-1 (the slot about to be rewritten) see
	 * gen >= g after any load that observed these stores. Release fence: the previous setter's store
	 * of gen_ = g and its conversion of the word happen before it (through the lock), and it
	 * synchronizes with the acquire fence of any reader whose relaxed slot load sees a store below. */
	atomic_thread_fence(memory_order_release);
	struct ats__limiter_slot *ns = &l->slot_[(g + 1) & 1];
	/* relaxed: under the lock. release store of gen_: publishes slot g + 1 (slot_write's relaxed
	 * stores) to readers whose acquire load of gen_ sees g + 1. */
	slot_write(ns, &nw, atomic_load_explicit(&os->shift_inf, memory_order_relaxed));
	atomic_store_explicit(&l->gen_, g + 1, memory_order_release);
	/* Convert the word; acquirers keep using the old slot until this CAS flips the parity.
	 * acquire load: more than needed (the value is all the CAS loop uses); cold path. */
	uint64_t w = atomic_load_explicit(&l->word_, memory_order_acquire);
	for (;;) {
		uint64_t nw_word = convert_word(&o, &nw, w, g + 1, now_ns);
		/* Relaxed, both: published by the CAS's release half (a canceller reads them only with a
		 * view whose acquire word load saw this conversion). */
		atomic_store_explicit(&ns->conv_old, w, memory_order_relaxed);
		atomic_store_explicit(&ns->conv_new, nw_word, memory_order_relaxed);
		/* acq_rel: the release half is required: it orders gen_ = g + 1 and conv_* before the new
		 * parity, so a reader whose acquire word load sees it re-loads gen_ >= g + 1. The acquire
		 * halves (success and failure) are more than needed (only the value is used); cold path. */
		if (atomic_compare_exchange_weak_explicit(&l->word_, &w, nw_word, memory_order_acq_rel,
		                                          memory_order_acquire))
			break;
	}
	ats__spin_unlock(&l->setting_);
	return NULL;
}

ats_err *ats_limiter_set_at(ats_limiter *l, ats_rate rate, uint64_t burst, uint64_t now_ns)
{
	return set_config(l, &rate, &burst, now_ns);
}

ats_rate ats_limiter_rate(ats_limiter *l)
{
	for (;;) {
		/* A seqlock read: acquire gen_ (pairs with the setter's release store: the slot is seen),
		 * relaxed fields, an acquire fence (pairs with the next-but-one setter's release fence if a
		 * field was rewritten), relaxed re-load of gen_ (that setter's predecessor stored g + 1). */
		uint64_t g = atomic_load_explicit(&l->gen_, memory_order_acquire);
		struct ats__limiter_slot *s = &l->slot_[g & 1];
		ats_rate r = {atomic_load_explicit(&s->events, memory_order_relaxed),
		              atomic_load_explicit(&s->period_ns, memory_order_relaxed)};
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&l->gen_, memory_order_relaxed) == g)
			return r;
	}
}

uint64_t ats_limiter_burst(ats_limiter *l)
{
	for (;;) {
		/* The seqlock read of ats_limiter_rate, same orders and reasons. */
		uint64_t g = atomic_load_explicit(&l->gen_, memory_order_acquire);
		uint64_t b = atomic_load_explicit(&l->slot_[g & 1].burst, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&l->gen_, memory_order_relaxed) == g)
			return b;
	}
}

ats_err *ats_limiter_set_rate_at(ats_limiter *l, ats_rate rate, uint64_t now_ns)
{
	return set_config(l, &rate, NULL, now_ns);
}

ats_err *ats_limiter_set_burst_at(ats_limiter *l, uint64_t burst, uint64_t now_ns)
{
	return set_config(l, NULL, &burst, now_ns);
}

ats_err *ats_limiter_set_rate(ats_limiter *l, ats_rate rate)
{
	return ats_limiter_set_rate_at(l, rate, ats_fast_now_ns());
}

ats_err *ats_limiter_set_burst(ats_limiter *l, uint64_t burst)
{
	return ats_limiter_set_burst_at(l, burst, ats_fast_now_ns());
}

uint64_t ats__limiter_take_upto_at(ats_limiter *l, uint64_t min_n, uint64_t max_n, uint64_t now_ns)
{
	struct ats__limiter_view v;
	for (;;) {
		ats__limiter_view(l, &v);
		if (v.c.inf)
			return max_n;
		if (min_n > v.burst)
			return 0;
		uint32_t s1 = v.c.shift + 1;
		uint64_t now2 = ats__limiter_now2(&v, now_ns);
		uint64_t start = ats__gcra_start(v.word & ~(uint64_t)1, now2);
		uint64_t debt2 = start - now2;
		uint64_t avail = debt2 >= v.c.burst_units ? 0 : (v.c.burst_units - debt2) >> s1;
		uint64_t k = avail < max_n ? avail : max_n;
		if (k < min_n)
			return 0;
		uint64_t w = v.word;
		/* release and relaxed on failure: as the reservation's CAS. */
		if (atomic_compare_exchange_weak_explicit(&l->word_, &w, (start + (k << s1)) | (v.gen & 1),
		                                          memory_order_release, memory_order_relaxed))
			return k;
	}
}
