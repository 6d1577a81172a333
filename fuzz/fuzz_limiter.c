/* SPDX-License-Identifier: BSD-2-Clause */
/* Model-based fuzz target for the exact limiter: random sequences of allow, check, tokens, reserve,
 * cancel, throttle, set rate, set burst and time steps (backwards too) run against the limiter and
 * against a slow reference model that keeps time and TAT as unbounded 128-bit integers and reads
 * its clock with a 128-bit division (the limiter: modular 63-bit words and a fixed-point multiply).
 * Any difference in any answer aborts.
 *
 *   build/fuzz/fuzz/fuzz_limiter -max_total_time=600 fuzz/corpus/fuzz_limiter
 */
#include "atscale/limiter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef __int128 i128;
typedef unsigned __int128 u128;

#define T0 (UINT64_C(1) << 52)
#define TMAX (T0 + (UINT64_C(1) << 50)) /* keeps idle time far below the 2^62-unit horizon */
#define MAX_DEBT ((i128)1 << 61)

struct mcfg {
	uint64_t events, period, burst;
	uint32_t shift;
	bool inf;
	uint64_t epoch;
	i128 base;
};

struct model {
	struct mcfg c;
	i128 tat;
	uint64_t gen;
	/* the last conversion, for cancels one generation back */
	i128 conv_old, conv_new;
	uint32_t prev_shift;
	bool prev_inf;
};

struct mres {
	bool ok, inf;
	uint64_t n, act, delay, gen;
	i128 front, n_units; /* front: max(TAT after it, now + burst) */
	i128 before, after;  /* the TAT before and after it */
};

static uint32_t shift_for(uint64_t events, uint64_t period, uint64_t burst)
{
	uint32_t s = 0;
	while (s < 30 && ((u128)events << (s + 1)) <= period && ((u128)burst << (s + 1)) <= ((u128)1 << 60))
		s++;
	return s;
}

static i128 m_units(const struct mcfg *c, uint64_t t)
{
	if (c->inf)
		return c->base;
	uint64_t dt = t > c->epoch ? t - c->epoch : 0;
	return c->base + (i128)(((u128)dt * c->events << c->shift) / c->period);
}

static i128 max128(i128 a, i128 b)
{
	return a > b ? a : b;
}

static i128 floordiv(i128 a, i128 b)
{
	i128 q = a / b;
	return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static bool m_allow(struct model *m, uint64_t n, uint64_t t, bool take)
{
	if (m->c.inf)
		return true;
	if (n > m->c.burst)
		return false;
	i128 now = m_units(&m->c, t);
	i128 after = max128(m->tat, now) + ((i128)n << m->c.shift);
	if (after - now > ((i128)m->c.burst << m->c.shift))
		return false;
	if (take && n > 0)
		m->tat = after;
	return true;
}

static int64_t m_tokens(const struct model *m, uint64_t t)
{
	if (m->c.inf)
		return INT64_MAX;
	i128 now = m_units(&m->c, t);
	i128 avail = ((i128)m->c.burst << m->c.shift) - (max128(m->tat, now) - now);
	return (int64_t)floordiv(avail, (i128)1 << m->c.shift);
}

/* ns from t until `units` more units have passed (ceil), UINT64_MAX for never. */
static uint64_t m_delay(const struct mcfg *c, uint64_t t, i128 units)
{
	if (units <= 0)
		return 0;
	if (c->events == 0)
		return UINT64_MAX;
	u128 den = (u128)c->events << c->shift;
	u128 d = ((u128)units * c->period + den - 1) / den;
	u128 from = t < c->epoch ? c->epoch : t;
	u128 act = from + d;
	return act >= UINT64_MAX ? UINT64_MAX : (uint64_t)(act - t);
}

static bool m_reserve(struct model *m, uint64_t n, uint64_t maxd, uint64_t t, struct mres *r)
{
	memset(r, 0, sizeof *r);
	if (m->c.inf) {
		*r = (struct mres){.ok = true, .inf = true, .n = n, .act = t, .gen = m->gen};
		return true;
	}
	if (n > m->c.burst)
		return false;
	i128 now = m_units(&m->c, t), nu = (i128)n << m->c.shift;
	i128 after = max128(m->tat, now) + nu;
	if (after - now > MAX_DEBT)
		return false;
	uint64_t d = m_delay(&m->c, t, after - now - ((i128)m->c.burst << m->c.shift));
	if (d == UINT64_MAX || d > maxd)
		return false;
	i128 before = m->tat;
	if (n > 0)
		m->tat = after;
	i128 full = now + ((i128)m->c.burst << m->c.shift);
	*r = (struct mres){.ok = true,
	                   .n = n,
	                   .act = t + d,
	                   .delay = d,
	                   .gen = m->gen,
	                   .front = max128(after, full),
	                   .n_units = nu,
	                   .before = before,
	                   .after = after};
	return true;
}

static uint64_t m_cancel(struct model *m, struct mres *r, uint64_t t)
{
	if (!r->ok)
		return 0;
	r->ok = false;
	if (r->inf || r->n_units == 0 || t > r->act || m->c.inf)
		return 0;
	i128 restore;
	if (r->gen == m->gen) {
		restore = r->n_units - max128(0, m->tat - r->front);
	} else if (r->gen + 1 == m->gen) {
		if (m->prev_inf)
			return 0;
		i128 left_old = max128(0, r->n_units - max128(0, m->conv_old - r->front));
		i128 left_new = m->c.shift >= m->prev_shift ? left_old << (m->c.shift - m->prev_shift)
		                                            : left_old >> (m->prev_shift - m->c.shift);
		if (left_new > m->conv_new - m->c.base) /* the debt the change kept */
			left_new = m->conv_new - m->c.base;
		restore = left_new - max128(0, m->tat - m->conv_new);
	} else {
		return 0;
	}
	i128 now = m_units(&m->c, t);
	i128 debt = max128(0, m->tat - now);
	if (restore > debt)
		restore = debt;
	if (restore <= 0)
		return 0;
	if (r->gen == m->gen && m->tat == r->after) /* nothing happened since: the TAT from before it */
		m->tat = r->before;
	else
		m->tat -= restore;
	return (uint64_t)(restore >> m->c.shift);
}

static bool m_valid(ats_rate r, uint64_t burst)
{
	if (burst > ATS_GCRA_MAX_N)
		return false;
	return r.period_ns == 0 || (u128)r.events * ATS_NS_PER_SEC <= (u128)ATS_RATE_MAX_PER_SEC * r.period_ns;
}

static void m_set(struct model *m, ats_rate r, uint64_t burst, uint64_t t)
{
	if (t < m->c.epoch) /* a stale time changes the configuration at the current epoch */
		t = m->c.epoch;
	struct mcfg n = {
	    .events = r.events, .period = r.period_ns, .burst = burst, .inf = r.period_ns == 0, .epoch = t};
	n.shift = n.inf ? 0 : shift_for(r.events, r.period_ns, burst);
	n.base = m_units(&m->c, t);
	i128 debt = 0;
	if (!m->c.inf && !n.inf) {
		i128 d_old = max128(0, m->tat - m_units(&m->c, t));
		i128 d = n.shift >= m->c.shift
		             ? d_old << (n.shift - m->c.shift)
		             : (d_old + ((i128)1 << (m->c.shift - n.shift)) - 1) >> (m->c.shift - n.shift);
		debt = d + ((i128)burst << n.shift) - ((i128)m->c.burst << n.shift);
		if (debt < 0)
			debt = 0;
		if (debt > MAX_DEBT)
			debt = MAX_DEBT;
	}
	m->conv_old = m->tat;
	m->prev_shift = m->c.shift;
	m->prev_inf = m->c.inf;
	m->c = n;
	m->tat = n.base + debt;
	m->conv_new = m->tat;
	m->gen++;
}

/* ---- Input decoding ---- */

struct in {
	const uint8_t *p;
	size_t n;
};

static uint64_t take(struct in *in, int bytes)
{
	uint64_t v = 0;
	for (int i = 0; i < bytes; i++) {
		v = v << 8 | (in->n ? *in->p : 0);
		if (in->n) {
			in->p++;
			in->n--;
		}
	}
	return v;
}

static ats_rate gen_rate(struct in *in)
{
	switch (take(in, 1) % 8) {
	case 0: return ATS_RATE_INF;
	case 1: return (ats_rate){0, ATS_NS_PER_SEC};
	case 2: return ats_rate_every(3600 * ATS_NS_PER_SEC);
	case 3: return ats_rate_per_sec(12500000000u);
	case 4: return ats_rate_per_sec(1 + take(in, 2));
	case 5: return (ats_rate){1 + take(in, 4), 1 + take(in, 5)};
	case 6: return (ats_rate){1 + take(in, 8), 1 + take(in, 8)};  /* often too fast: an error */
	default: return (ats_rate){1 + take(in, 1), 1 + take(in, 8)}; /* very slow */
	}
}

static uint64_t gen_burst(struct in *in)
{
	switch (take(in, 1) % 6) {
	case 0: return 0;
	case 1: return 1;
	case 2: return ATS_GCRA_MAX_N;
	case 3: return ATS_GCRA_MAX_N + take(in, 1) % 2;
	default: return take(in, 2);
	}
}

static uint64_t gen_n(struct in *in, uint64_t burst)
{
	switch (take(in, 1) % 6) {
	case 0: return 0;
	case 1: return burst;
	case 2: return burst + 1;
	case 3: return take(in, 1) % 2 ? ATS_GCRA_MAX_N : UINT64_MAX;
	default: return take(in, 1) % (burst + 1 > 8 ? 8 : burst + 1);
	}
}

#define CHECK(cond, ...)                                                                                               \
	do {                                                                                                           \
		if (!(cond)) {                                                                                         \
			fprintf(stderr, "op %d: ", op);                                                                \
			fprintf(stderr, __VA_ARGS__);                                                                  \
			fprintf(stderr, "\n");                                                                         \
			abort();                                                                                       \
		}                                                                                                      \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = {data, size};
	ats_rate r0 = gen_rate(&in);
	uint64_t b0 = gen_burst(&in);
	if (!m_valid(r0, b0))
		return 0;
	static ats_limiter l;
	ats_err *err = ats_limiter_init_at(&l, r0, b0, T0);
	if (err) {
		ats_err_unref(err);
		abort();
	}
	struct model m = {
	    .c = {.events = r0.events, .period = r0.period_ns, .burst = b0, .inf = r0.period_ns == 0, .epoch = T0}};
	m.c.shift = m.c.inf ? 0 : shift_for(r0.events, r0.period_ns, b0);
	ats_reservation rs[8];
	struct mres ms[8];
	memset(rs, 0, sizeof rs);
	memset(ms, 0, sizeof ms);
	uint64_t t = T0;
	for (int op = 0; in.n > 0 && op < 4096; op++) {
		uint8_t code = (uint8_t)take(&in, 1);
		switch (code % 11) {
		case 0: { /* time step: forwards, backwards, or to a far point */
			uint64_t d = take(&in, 1) % 4 == 0 ? take(&in, 6) : take(&in, 3);
			if (code & 0x80)
				t = t - d < T0 - (UINT64_C(1) << 40) ? T0 : t - d;
			else
				t = t + d > TMAX ? TMAX : t + d;
			break;
		}
		case 1:
		case 2: {
			uint64_t n = gen_n(&in, m.c.burst);
			bool a = ats_limiter_allow_at(&l, n, t), b = m_allow(&m, n, t, true);
			CHECK(a == b, "allow(%llu) = %d, model %d", (unsigned long long)n, a, b);
			break;
		}
		case 3: {
			uint64_t n = gen_n(&in, m.c.burst);
			bool a = ats_limiter_check_at(&l, n, t), b = m_allow(&m, n, t, false);
			CHECK(a == b, "check(%llu) = %d, model %d", (unsigned long long)n, a, b);
			break;
		}
		case 4: {
			int64_t a = ats_limiter_tokens_at(&l, t), b = m_tokens(&m, t);
			CHECK(a == b, "tokens = %lld, model %lld", (long long)a, (long long)b);
			break;
		}
		case 5:
		case 6: {
			unsigned i = (unsigned)take(&in, 1) % 8;
			uint64_t n = gen_n(&in, m.c.burst);
			uint64_t maxd = take(&in, 1) % 2 ? UINT64_MAX : take(&in, 4);
			bool a = ats_limiter_reserve_within_at(&l, n, maxd, t, &rs[i]);
			bool b = m_reserve(&m, n, maxd, t, &ms[i]);
			CHECK(a == b, "reserve(%llu) = %d, model %d", (unsigned long long)n, a, b);
			CHECK(!a || rs[i].delay_ns == ms[i].delay, "reserve delay %llu, model %llu",
			      (unsigned long long)rs[i].delay_ns, (unsigned long long)ms[i].delay);
			/* The tokens are really there at the time to act (absent other callers). */
			if (a && !ms[i].inf && rs[i].act_ns <= TMAX)
				CHECK(m_tokens(&m, rs[i].act_ns) >= 0, "reserved tokens not there at act");
			break;
		}
		case 7: {
			unsigned i = (unsigned)take(&in, 1) % 8;
			uint64_t a = ats_limiter_cancel_at(&rs[i], t), b = m_cancel(&m, &ms[i], t);
			CHECK(a == b, "cancel = %llu, model %llu", (unsigned long long)a, (unsigned long long)b);
			break;
		}
		case 8: {
			uint64_t n = gen_n(&in, m.c.burst);
			ats_limiter_result res;
			int64_t before = m_tokens(&m, t);
			bool a = ats_limiter_throttle_at(&l, n, t, &res), b = m_allow(&m, n, t, true);
			CHECK(a == b && res.allowed == a, "throttle(%llu) = %d, model %d", (unsigned long long)n, a, b);
			CHECK(res.limit == m.c.burst, "throttle limit");
			if (!m.c.inf) {
				int64_t after = m_tokens(&m, t);
				CHECK(res.remaining == (uint64_t)(after < 0 ? 0 : after), "remaining %llu, model %lld",
				      (unsigned long long)res.remaining, (long long)after);
				CHECK(a || after == before, "a refusal changed the tokens");
			}
			break;
		}
		case 9:
		case 10: {
			ats_rate r = code % 11 == 9 ? gen_rate(&in) : (ats_rate){m.c.events, m.c.inf ? 0 : m.c.period};
			uint64_t b = code % 11 == 10 ? gen_burst(&in) : m.c.burst;
			if (code % 11 == 9 && (code & 0x40))
				b = gen_burst(&in);
			err = ats_limiter_set_at(&l, r, b, t);
			bool ok = m_valid(r, b);
			CHECK((err == NULL) == ok, "set: error %s, model valid %d", ats_err_message(err), ok);
			ats_err_unref(err);
			if (ok)
				m_set(&m, r, b, t);
			break;
		}
		}
	}
	return 0;
}
