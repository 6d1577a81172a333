/* SPDX-License-Identifier: BSD-2-Clause */
/* The fleet limiters' connection and lease engine (internal/fleet_engine.h). hiredis is the
 * client: no protocol code of our own. */
#include "internal/fleet_engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- The connection ---- */

void ats__fleet_conn_init(struct ats__fleet_conn *c, const char *host, uint16_t port, uint64_t timeout_ns,
                          uint64_t rmin_ns, uint64_t rmax_ns, _Atomic uint32_t *down)
{
	snprintf(c->host, sizeof c->host, "%s", host ? host : "127.0.0.1");
	c->port = port ? port : 6379;
	c->timeout_ns = timeout_ns ? timeout_ns : 100000000;
	c->rmin_ns = rmin_ns ? rmin_ns : 10000000;
	c->rmax_ns = rmax_ns ? rmax_ns : ATS_NS_PER_SEC;
	if (c->rmax_ns < c->rmin_ns)
		c->rmax_ns = c->rmin_ns;
	c->backoff_ns = c->rmin_ns;
	c->down = down;
	pthread_mutex_init(&c->mu, NULL);
	snprintf(c->last_error, sizeof c->last_error, "not connected yet");
	uint64_t now = ats_fast_now_ns();
	c->rng = (now ^ (uintptr_t)c) | 1;
}

void ats__fleet_conn_destroy(struct ats__fleet_conn *c)
{
	if (c->rc)
		redisFree(c->rc);
	c->rc = NULL;
	pthread_mutex_destroy(&c->mu);
}

static void vrecord(struct ats__fleet_conn *c, const char *fmt, va_list ap)
{
	pthread_mutex_lock(&c->mu);
	vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
	pthread_mutex_unlock(&c->mu);
	ATS__FLEET_BUMP(c, redis_errors, 1);
}

void ats__fleet_conn_error(struct ats__fleet_conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vrecord(c, fmt, ap);
	va_end(ap);
	/* relaxed: the flag alone picks the policy; nothing else is published with it */
	atomic_store_explicit(c->down, 1, memory_order_relaxed);
}

void ats__fleet_conn_record_error(struct ats__fleet_conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vrecord(c, fmt, ap);
	va_end(ap);
}

void ats__fleet_conn_last_error(struct ats__fleet_conn *c, char *out, size_t len)
{
	pthread_mutex_lock(&c->mu);
	snprintf(out, len, "%s", c->last_error);
	pthread_mutex_unlock(&c->mu);
}

static uint64_t rand_u64(struct ats__fleet_conn *c)
{
	uint64_t x = c->rng; /* xorshift64* */
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	c->rng = x;
	return x * UINT64_C(2685821657736338717);
}

void ats__fleet_conn_drop(struct ats__fleet_conn *c, uint64_t now)
{
	if (c->rc)
		redisFree(c->rc);
	c->rc = NULL;
	uint64_t d = c->backoff_ns;
	/* jitter: uniform in [d/2, d], so a fleet that lost Redis together does not return together */
	c->next_connect_ns = now + d / 2 + rand_u64(c) % (d / 2 + 1);
	c->backoff_ns = d * 2 > c->rmax_ns ? c->rmax_ns : d * 2;
}

void ats__fleet_conn_call_failed(struct ats__fleet_conn *c, uint64_t now)
{
	c->next_call_ns = now + c->backoff_ns;
	c->backoff_ns = c->backoff_ns * 2 > c->rmax_ns ? c->rmax_ns : c->backoff_ns * 2;
}

void ats__fleet_conn_call_ok(struct ats__fleet_conn *c)
{
	c->backoff_ns = c->rmin_ns;
}

static struct timeval tv_of(uint64_t ns)
{
	/* rounded up: a zero timeval is "no timeout" to SO_RCVTIMEO/SO_SNDTIMEO (blocks forever) */
	uint64_t us = (ns + 999) / 1000;
	return (struct timeval){.tv_sec = (time_t)(us / 1000000u), .tv_usec = (suseconds_t)(us % 1000000u)};
}

bool ats__fleet_conn_load_scripts(struct ats__fleet_conn *c)
{
	const char *src[2] = {ats__fleet_lease_lua, ats__fleet_giveback_lua};
	char *dst[2] = {c->sha_lease, c->sha_give};
	for (int i = 0; i < 2; i++) {
		ATS__FLEET_BUMP(c, redis_ops, 1);
		redisReply *r = redisCommand(c->rc, "SCRIPT LOAD %s", src[i]);
		if (!r || r->type != REDIS_REPLY_STRING || r->len >= sizeof c->sha_lease) {
			ats__fleet_conn_error(c, "SCRIPT LOAD failed: %s",
			                      !r                             ? c->rc->errstr
			                      : r->type == REDIS_REPLY_ERROR ? r->str
			                                                     : "unexpected reply");
			if (r)
				freeReplyObject(r);
			return false;
		}
		memcpy(dst[i], r->str, r->len);
		dst[i][r->len] = 0;
		freeReplyObject(r);
	}
	return true;
}

int ats__fleet_conn_ready(struct ats__fleet_conn *c, uint64_t now)
{
	if (c->rc)
		return 1;
	if (now < c->next_connect_ns)
		return 0;
	redisContext *rc = redisConnectWithTimeout(c->host, c->port, tv_of(c->timeout_ns));
	if (!rc || rc->err) {
		ats__fleet_conn_error(c, "connect to %s:%u: %s", c->host, c->port, rc ? rc->errstr : "out of memory");
		c->rc = rc;
		ats__fleet_conn_drop(c, now);
		return 0;
	}
	c->rc = rc;
	if (redisSetTimeout(rc, tv_of(c->timeout_ns)) != REDIS_OK || !ats__fleet_conn_load_scripts(c)) {
		if (rc->err)
			ats__fleet_conn_error(c, "setting up %s:%u: %s", c->host, c->port, rc->errstr);
		ats__fleet_conn_drop(c, now);
		return 0;
	}
	if (c->ever_connected)
		ATS__FLEET_BUMP(c, reconnects, 1);
	c->ever_connected = true;
	return 2;
}

bool ats__fleet_conn_append(struct ats__fleet_conn *c, bool lease, const char *key, size_t keylen,
                            const uint64_t limit[3], uint64_t n)
{
	ATS__FLEET_BUMP(c, redis_ops, 1);
	return redisAppendCommand(c->rc, "EVALSHA %s 1 %b %llu %llu %llu %llu", lease ? c->sha_lease : c->sha_give, key,
	                          keylen, (unsigned long long)limit[0], (unsigned long long)limit[1],
	                          (unsigned long long)limit[2], (unsigned long long)n) == REDIS_OK;
}

redisReply *ats__fleet_conn_reply(struct ats__fleet_conn *c, uint64_t now)
{
	void *r = NULL;
	if (redisGetReply(c->rc, &r) != REDIS_OK || !r) {
		ats__fleet_conn_error(c, "EVALSHA on %s:%u: %s", c->host, c->port, c->rc->errstr);
		ats__fleet_conn_drop(c, now);
		return NULL;
	}
	return r;
}

redisReply *ats__fleet_conn_script(struct ats__fleet_conn *c, bool lease, const char *key, size_t keylen,
                                   const uint64_t limit[3], uint64_t n, uint64_t now)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!ats__fleet_conn_append(c, lease, key, keylen, limit, n)) {
			ats__fleet_conn_error(c, "EVALSHA on %s:%u: out of memory", c->host, c->port);
			ats__fleet_conn_drop(c, now);
			return NULL;
		}
		redisReply *r = ats__fleet_conn_reply(c, now);
		if (!r)
			return NULL;
		if (attempt == 0 && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0) {
			freeReplyObject(r);
			if (!ats__fleet_conn_load_scripts(c)) {
				ats__fleet_conn_drop(c, now);
				return NULL;
			}
			continue;
		}
		return r;
	}
	return NULL; /* not reached: the second attempt returns */
}

/* ---- A lease ---- */

void ats__fleet_est_init(struct ats__fleet_est *e, uint64_t now, uint64_t batch_min)
{
	memset(e, 0, sizeof *e);
	e->win_start_ns = now;
	e->last_round_ns = now;
	e->batch = batch_min;
}

uint64_t ats__fleet_observe(_Atomic uint64_t *word, struct ats__fleet_est *e, struct ats__fleet_lease_counters *k,
                            uint64_t now, uint64_t *used)
{
	/* relaxed: the thread needs the count only; the CAS below validates it */
	uint64_t w = atomic_load_explicit(word, memory_order_relaxed);
	for (;;) {
		uint64_t tok = w & ATS__FLEET_TOKENS;
		/* Acquirers only take from the word and the thread is the only one that adds, so the
		 * difference is what they took (expired tokens are not taken: acquirers skip them). */
		*used = e->last_tok >= tok ? e->last_tok - tok : 0;
		if (!ats__fleet_expired(w, now) || tok == 0) {
			e->last_tok = tok;
			return ats__fleet_expired(w, now) ? 0 : tok;
		}
		/* relaxed: as in the acquire path, the word carries only its count */
		if (atomic_compare_exchange_weak_explicit(word, &w, w & ~ATS__FLEET_TOKENS, memory_order_relaxed,
		                                          memory_order_relaxed)) {
			ATS__FLEET_BUMP(k, expired_tokens, tok);
			e->last_tok = 0;
			return 0;
		}
	}
}

uint64_t ats__fleet_want(_Atomic uint64_t *word, struct ats__fleet_est *e, const struct ats__fleet_policy_cfg *p,
                         uint64_t tok, uint64_t used, bool hungry, uint64_t now)
{
	uint64_t poll = ats__fleet_poll_ns(p);
	e->win_used += used;
	/* Up at once, from this round alone (a stream that starts or speeds up is seen within one
	 * round, not one window); down only window by window, below. */
	e->round_used += used;
	if (now - e->last_round_ns >= poll) { /* over a whole poll: a short round's rate is noise */
		uint64_t inst =
		    (uint64_t)((unsigned __int128)e->round_used * ATS_NS_PER_SEC / (now - e->last_round_ns));
		if (inst > e->rate_est)
			e->rate_est = inst;
		e->round_used = 0;
		e->last_round_ns = now;
	}
	if (now - e->win_start_ns >= p->refresh_ns) {
		uint64_t dt = now - e->win_start_ns;
		uint64_t inst = (uint64_t)((unsigned __int128)e->win_used * ATS_NS_PER_SEC / dt);
		/* up at once (demand grew), down slowly (one quiet window is not the end of a stream) */
		e->rate_est = inst >= e->rate_est ? inst : (3 * e->rate_est + inst) / 4;
		e->win_start_ns = now;
		e->win_used = 0;
	}
	uint64_t b = (uint64_t)((unsigned __int128)e->rate_est * p->refresh_ns / ATS_NS_PER_SEC);
	if (hungry && b < 2 * e->batch)
		b = 2 * e->batch; /* refusals: double the batch, up to the cap */
	if (b < p->batch_min)
		b = p->batch_min;
	if (b > p->batch_max)
		b = p->batch_max;
	e->batch = b;
	if (now < e->next_lease_ns)
		return 0;
	/* relaxed: a snapshot of the expiry; install re-reads the word with its CAS */
	uint64_t w = atomic_load_explicit(word, memory_order_relaxed);
	bool demand = used > 0 || hungry || e->probe || e->rate_est > 0 || !e->ever_leased;
	/* Low water = one batch: the lease still covers one refresh interval of the stream when the
	 * refill is asked for, four polls of slack before it would run dry. */
	bool low = tok < b;
	bool expiring = tok > 0 && ats__fleet_expired(w, now + 2 * poll);
	if (!demand || !(low || expiring || e->probe) || tok >= p->batch_max)
		return 0;
	e->probe = false;
	return tok + b > p->batch_max ? p->batch_max - tok : b;
}

void ats__fleet_install(_Atomic uint64_t *word, struct ats__fleet_est *e, const struct ats__fleet_policy_cfg *p,
                        struct ats__fleet_lease_counters *k, const ats__fleet_reply *rep, uint64_t asked, uint64_t now)
{
	if (rep->granted) {
		uint64_t w = atomic_load_explicit(word, memory_order_relaxed); /* the CAS validates it */
		for (;;) {
			uint64_t tok = ats__fleet_expired(w, now) ? 0 : w & ATS__FLEET_TOKENS;
			uint64_t sum = tok + rep->granted > ATS__FLEET_TOKENS ? ATS__FLEET_TOKENS : tok + rep->granted;
			/* relaxed: the count is all the word carries */
			if (atomic_compare_exchange_weak_explicit(word, &w,
			                                          ats__fleet_lease_word(now + p->lease_ns, sum),
			                                          memory_order_relaxed, memory_order_relaxed)) {
				if (ats__fleet_expired(w, now))
					ATS__FLEET_BUMP(k, expired_tokens, w & ATS__FLEET_TOKENS);
				e->last_tok = sum;
				break;
			}
		}
		e->ever_leased = true;
		ATS__FLEET_BUMP(k, leases, 1);
		ATS__FLEET_BUMP(k, leased_tokens, rep->granted);
	}
	/* Redis had fewer than asked: come back once some have accrued, not at every token. */
	if (rep->granted < asked) {
		/* at most a second: a slow rate's next token may be hours away, and demand may change */
		uint64_t wait = rep->wait_us > 1000000 ? ATS_NS_PER_SEC : rep->wait_us * 1000;
		e->next_lease_ns = now + (wait > p->refresh_ns / 8 ? wait : p->refresh_ns / 8);
	}
}
