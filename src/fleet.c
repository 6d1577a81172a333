/* SPDX-License-Identifier: BSD-2-Clause */
/* Fleet limiter: the background thread that leases from Redis, the refusal path and the reply
 * parser (include/atscale/fleet.h). hiredis is the client: no protocol code of our own. */
#include "atscale/fleet.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal/fleet_engine.h"
#include "internal/futex.h"

/* The Lua sources stay as written, one line of Lua per string: */
/* clang-format off */
/* ---- The scripts ----
 * State per key: a hash {tat, rem}. TAT = tat + rem/ev microseconds on Redis's clock, so the debt
 * (TAT - now) is counted in units of 1/ev us and one token is `per` units (per = the rate's period
 * in us, ev its events): exact for any rational rate. Only the debt is ever multiplied, and it is
 * at most burst * per <= 2^52 (checked at init), so Lua's doubles hold every value exactly; an
 * absolute time is never multiplied. Numbers go back to Redis through '%.0f' because Lua's
 * default formatting (%.14g) would round a microsecond timestamp.
 * Quotients are taken with a floor and then corrected by one either way, because a double
 * division may round up to the next integer. */
#define LUA_COMMON                                                                                                     \
	"if redis.replicate_commands then redis.replicate_commands() end\n"                                            \
	"local ev = tonumber(ARGV[1])\n"                                                                               \
	"local per = tonumber(ARGV[2])\n"                                                                              \
	"local burst = tonumber(ARGV[3])\n"                                                                            \
	"local n = tonumber(ARGV[4])\n"                                                                                \
	"local function idiv(a, b)\n"                                                                                  \
	"  local q = math.floor(a / b)\n"                                                                              \
	"  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"                                   \
	"  return q\n"                                                                                                 \
	"end\n"                                                                                                        \
	"local t = redis.call('TIME')\n"                                                                               \
	"local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"                                                      \
	"local s = redis.call('HMGET', KEYS[1], 'tat', 'rem')\n"                                                       \
	"local debt = 0\n"                                                                                             \
	"if s[1] then\n"                                                                                               \
	"  local tat = tonumber(s[1])\n"                                                                               \
	"  local rem = tonumber(s[2]) or 0\n"                                                                          \
	"  if tat and tat >= now then debt = (tat - now) * ev + rem end\n"                                             \
	"end\n"                                                                                                        \
	"local function store(d)\n"                                                                                    \
	"  if d <= 0 then redis.call('DEL', KEYS[1]) return end\n"                                                     \
	"  local us = idiv(d, ev)\n"                                                                                   \
	"  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', now + us), 'rem', string.format('%.0f', d - us * ev))\n" \
	"  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', idiv(us, 1000) + 1))\n"                               \
	"end\n"

/* ARGV: ev, per, burst, n (asked). Returns {granted, wait_us}: up to n tokens, as many as fit,
 * and the microseconds until one more token fits. */
const char ats__fleet_lease_lua[] = LUA_COMMON
	"local cap = burst * per\n"
	"local avail = 0\n"
	"if debt < cap then avail = idiv(cap - debt, per) end\n"
	"local g = math.min(n, avail)\n"
	"if g > 0 then\n"
	"  debt = debt + g * per\n"
	"  store(debt)\n"
	"end\n"
	"local wait = 0\n"
	"local over = debt - (cap - per)\n"
	"if over > 0 then wait = idiv(over + ev - 1, ev) end\n"
	"return {g, wait}\n";

/* ARGV: ev, per, burst, n (tokens to give back). TAT moves back by n tokens, never before now
 * (a debt of 0 is a full bucket: the key goes). Returns the remaining debt in whole tokens. */
const char ats__fleet_giveback_lua[] = LUA_COMMON
	"if debt == 0 then return 0 end\n"
	"debt = debt - n * per\n"
	"if debt < 0 then debt = 0 end\n"
	"store(debt)\n"
	"return idiv(debt, per)\n";

/* clang-format on */

/* ---- Reply parsing (pure) ---- */

ats_err *ats__fleet_parse_reply(const void *reply, uint64_t asked, ats__fleet_reply *out)
{
	const redisReply *r = reply;
	out->granted = 0;
	out->wait_us = 0;
	out->noscript = false;
	if (!r)
		return ats_err_new(ATS_ERR_UNAVAILABLE, "no reply from Redis");
	if (r->type == REDIS_REPLY_ERROR) {
		const char *text = r->str ? r->str : "";
		size_t len = r->str ? r->len : 0;
		out->noscript = len >= 8 && memcmp(text, "NOSCRIPT", 8) == 0;
		return ats_err_with_kv(
		    ats_err_new(ATS_ERR_UNAVAILABLE, "Redis answered the lease script with an error"), "redis_error",
		    "%.*s", (int)(len > 200 ? 200 : len), text);
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !r->element || !r->element[0] || !r->element[1] ||
	    r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER)
		return ats_err_with_kv(ats_err_new(ATS_ERR_UNAVAILABLE, "malformed reply from the lease script"),
		                       "reply_type", "%d", r->type);
	long long g = r->element[0]->integer, w = r->element[1]->integer;
	if (g < 0 || (unsigned long long)g > asked || w < 0 || w > (1LL << 53))
		return ats_err_with_kv(ats_err_new(ATS_ERR_UNAVAILABLE, "malformed reply from the lease script"),
		                       "reply", "{%lld, %lld} for %llu asked", g, w, (unsigned long long)asked);
	out->granted = (uint64_t)g;
	out->wait_us = (uint64_t)w;
	return NULL;
}

/* ---- State ---- */

struct ats__fleet_cold {
	char key[ATS_FLEET_MAX_KEY + 1];
	size_t keylen;
	uint64_t limit[3]; /* ev, per_us, burst: the rate as the scripts take it */
	struct ats__fleet_policy_cfg pol;

	pthread_t thread;
	_Atomic uint32_t wake;   /* futex word: bumped by a hungry miss and by stop */
	_Atomic uint32_t hungry; /* a miss happened since the last lease call */
	_Atomic uint32_t stop;
	pthread_mutex_t stop_mu; /* held across a whole stop: a concurrent stop returns only once it is done */

	struct ats__fleet_conn conn;
	struct ats__fleet_lease_counters lc;
	_Atomic uint64_t lease_misses, closed_denied, fallback_allowed, fallback_denied, batch;

	struct ats__fleet_est est; /* the background thread's own */
};

#define BUMP ATS__FLEET_BUMP

/* One lease call for `asked` tokens. */
static void lease_once(ats_fleet *f, uint64_t asked, uint64_t now)
{
	struct ats__fleet_cold *c = f->cold_;
	/* relaxed: a hint to batch up; the lease call below is what it asks for */
	atomic_store_explicit(&c->hungry, 0, memory_order_relaxed);
	redisReply *r = ats__fleet_conn_script(&c->conn, true, c->key, c->keylen, c->limit, asked, now);
	if (!r)
		return;
	ats__fleet_reply rep;
	ats_err *err = ats__fleet_parse_reply(r, asked, &rep);
	freeReplyObject(r);
	uint64_t after = ats_fast_now_ns();
	if (err) {
		const char *e = ats_err_kv_get(err, "redis_error");
		ats__fleet_conn_error(&c->conn, "%s%s%s", ats_err_message(err), e ? ": " : "", e ? e : "");
		ats_err_unref(err);
		ats__fleet_conn_call_failed(&c->conn, after);
		return;
	}
	ats__fleet_conn_call_ok(&c->conn);
	ats__fleet_install(&f->lease_, &c->est, &c->pol, &c->lc, &rep, asked, after);
	/* relaxed: the flag alone picks the policy (the tokens just installed are in the word) */
	atomic_store_explicit(&f->down_, 0, memory_order_relaxed);
}

/* One round of the background loop: returns the time to wake up next. */
static uint64_t round_once(ats_fleet *f, uint64_t now)
{
	struct ats__fleet_cold *c = f->cold_;
	uint64_t poll = ats__fleet_poll_ns(&c->pol);
	uint64_t used;
	uint64_t tok = ats__fleet_observe(&f->lease_, &c->est, &c->lc, now, &used);
	int ready = ats__fleet_conn_ready(&c->conn, now);
	if (ready == 2)
		c->est.probe = true; /* only a lease call's answer says Redis is up */
	/* relaxed: a hint; acquirers set it when refused */
	bool hungry = atomic_load_explicit(&c->hungry, memory_order_relaxed);
	uint64_t asked = ats__fleet_want(&f->lease_, &c->est, &c->pol, tok, used, hungry, now);
	atomic_store_explicit(&c->batch, c->est.batch, memory_order_relaxed); /* a statistic */
	if (!ready) {
		uint64_t at = c->conn.next_connect_ns;
		return at < now + poll ? at : now + poll;
	}
	if (asked && now >= c->conn.next_call_ns) {
		lease_once(f, asked, now);
		if (!c->conn.rc)
			return c->conn.next_connect_ns;
	}
	uint64_t next = now + poll;
	uint64_t at = c->est.next_lease_ns > c->conn.next_call_ns ? c->est.next_lease_ns : c->conn.next_call_ns;
	return at > now && at < next ? at : next;
}

static void *fleet_thread(void *arg)
{
	ats_fleet *f = arg;
	struct ats__fleet_cold *c = f->cold_;
	/* relaxed: stop is re-read every round; join orders the rest */
	while (!atomic_load_explicit(&c->stop, memory_order_relaxed)) {
		/* acquire: pairs with the release bump of a miss, so its hungry flag is seen */
		uint32_t seen = atomic_load_explicit(&c->wake, memory_order_acquire);
		uint64_t next = round_once(f, ats_fast_now_ns());
		if (atomic_load_explicit(&c->stop, memory_order_relaxed)) /* relaxed: as above */
			break;
		/* A miss between the round and here changed `wake`, so the wait returns at once. */
		ats__futex_wait(&c->wake, seen, next);
	}
	/* Stopping: give the unexpired rest back, from this thread, which blocks every signal (a write
	 * to a connection Redis closed raises SIGPIPE, which would kill a caller's process).
	 * relaxed: acquirers still running take from the word before or after the exchange, never the
	 * same token; pthread_join orders the rest for the stopping caller. */
	uint64_t now = ats_fast_now_ns();
	uint64_t w = atomic_exchange_explicit(&f->lease_, ats__fleet_lease_word(now, 0), memory_order_relaxed);
	uint64_t tok = w & ATS__FLEET_TOKENS;
	bool back = false;
	if (tok && !ats__fleet_expired(w, now) && c->conn.rc) {
		redisReply *r = ats__fleet_conn_script(&c->conn, false, c->key, c->keylen, c->limit, tok, now);
		back = r && r->type == REDIS_REPLY_INTEGER;
		if (r)
			freeReplyObject(r);
	}
	/* Every leased token ends granted, given back or dropped: an expired lease's tokens, and
	 * those Redis could not take back (down, or an error), are dropped (counted as expired). */
	if (back)
		BUMP(&c->lc, given_back, tok);
	else if (tok)
		BUMP(&c->lc, expired_tokens, tok);
	if (c->conn.rc)
		redisFree(c->conn.rc);
	c->conn.rc = NULL;
	return NULL;
}

/* ---- Refusal path ---- */

bool ats__fleet_miss(ats_fleet *f, uint64_t n, uint64_t now_ns)
{
	if (n == 0)
		return true;
	struct ats__fleet_cold *c = f->cold_;
	/* relaxed: the flag alone decides; a stale read only delays the policy switch by a moment */
	if (atomic_load_explicit(&f->down_, memory_order_relaxed)) {
		if (f->policy_ == ATS_FLEET_FAIL_OPEN) {
			bool ok = n <= ATS_GCRA_MAX_N && ats_limiter_allow_at(&f->fallback_, n, now_ns);
			if (ok)
				BUMP(c, fallback_allowed, 1);
			else
				BUMP(c, fallback_denied, 1);
			/* demand for the thread's next lease call (a load first: no write while already set) */
			if (!atomic_load_explicit(&c->hungry, memory_order_relaxed))
				atomic_store_explicit(&c->hungry, 1, memory_order_relaxed); /* a hint */
			return ok;
		}
		BUMP(c, closed_denied, 1);
		goto hungry;
	}
	BUMP(c, lease_misses, 1);
hungry:
	/* The first miss since the last lease call wakes the thread (one system call per round, not per
	 * refusal; while down the thread is in backoff and the wake only makes it re-check its timer).
	 * A load first, so refusals write nothing while the flag is set. relaxed exchange: the release
	 * bump of `wake` below publishes it. */
	if (!atomic_load_explicit(&c->hungry, memory_order_relaxed) &&
	    !atomic_exchange_explicit(&c->hungry, 1, memory_order_relaxed)) {
		atomic_fetch_add_explicit(&c->wake, 1, memory_order_release); /* pairs with the thread's acquire */
		ats__futex_wake(&c->wake, 1);
	}
	return false;
}

bool ats__fleet_check_miss(ats_fleet *f, uint64_t n, uint64_t now_ns)
{
	if (n == 0)
		return true;
	/* relaxed: as in ats__fleet_miss */
	if (f->policy_ == ATS_FLEET_FAIL_OPEN && atomic_load_explicit(&f->down_, memory_order_relaxed))
		return n <= ATS_GCRA_MAX_N && ats_limiter_check_at(&f->fallback_, n, now_ns);
	return false;
}

int64_t ats__fleet_fallback_tokens(ats_fleet *f, uint64_t now_ns)
{
	/* relaxed: as in ats__fleet_miss */
	if (f->policy_ == ATS_FLEET_FAIL_OPEN && atomic_load_explicit(&f->down_, memory_order_relaxed)) {
		int64_t t = ats_limiter_tokens_at(&f->fallback_, now_ns);
		return t > 0 ? t : 0;
	}
	return 0;
}

/* ---- Life cycle ---- */

static ats_err *invalid(const char *what)
{
	return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "fleet limiter: %s", what);
}

ats_err *ats__fleet_settings_of(const ats_fleet_config *cfg, size_t max_key, struct ats__fleet_settings *out)
{
	if (!cfg->key)
		return invalid("key is NULL");
	size_t keylen = strlen(cfg->key);
	if (keylen == 0)
		return invalid("key is empty");
	if (keylen > max_key)
		return ats_err_with_kv(
		    ats_err_new(ATS_ERR_INVALID_ARGUMENT, "fleet limiter: key is longer than %zu bytes", max_key),
		    "key_len", "%zu", keylen);
	if (cfg->host && strlen(cfg->host) >= 256)
		return invalid("host is longer than 255 bytes");
	if (ats_rate_is_inf(cfg->rate) || cfg->rate.events == 0)
		return invalid("rate must be finite and non-zero");
	if (cfg->burst == 0 || cfg->burst > ATS_GCRA_MAX_N)
		return invalid("burst must be 1..2^32");
	/* The scripts count in microseconds: a period that is not whole microseconds is scaled, which
	 * keeps the rate exact (events per period_ns ns = events*1000 per period_ns us). */
	uint64_t ev = cfg->rate.events, per = cfg->rate.period_ns / 1000;
	if (cfg->rate.period_ns % 1000) {
		if (ev > (UINT64_C(1) << 52) / 1000)
			return invalid("rate events too large");
		ev *= 1000;
		per = cfg->rate.period_ns;
	}
	if (ev > (UINT64_C(1) << 52) || per > (UINT64_C(1) << 52) ||
	    (unsigned __int128)cfg->burst * per > (UINT64_C(1) << 52))
		return invalid("burst * period (in microseconds) must stay <= 2^52");
	if ((unsigned __int128)ev * ATS_NS_PER_SEC > (unsigned __int128)ATS_RATE_MAX_PER_SEC * per * 1000)
		return invalid("rate above 10^12 per second");
	uint64_t bmax =
	    cfg->batch_max ? cfg->batch_max : (cfg->burst < ATS_FLEET_MAX_BATCH ? cfg->burst : ATS_FLEET_MAX_BATCH);
	uint64_t bmin = cfg->batch_min ? cfg->batch_min : 1;
	if (bmax > cfg->burst || bmax > ATS_FLEET_MAX_BATCH)
		return invalid("batch_max exceeds the burst or 2^24 - 1");
	if (bmin > bmax)
		return invalid("batch_min exceeds batch_max");
	uint64_t lease_ns = cfg->lease_ns ? cfg->lease_ns : ATS_NS_PER_SEC;
	if (lease_ns > ATS_FLEET_MAX_LEASE_NS)
		return invalid("lease_ns exceeds 2^38 ns");
	/* A lease must outlive its hand-over to acquirers: a shorter one expires before it serves,
	 * while Redis has charged every token of it (the fleet's rate spent, nothing granted). */
	if (lease_ns < ATS_FLEET_MIN_LEASE_NS)
		return invalid("lease_ns is below 1 ms");
	if (cfg->policy != ATS_FLEET_FAIL_CLOSED && cfg->policy != ATS_FLEET_FAIL_OPEN)
		return invalid("unknown policy");
	/* Bounded so that nothing wraps: the thread adds these to now (a poll past half the lease
	 * word's 40-bit expiry range would read an expired lease as live), and hiredis refuses a
	 * timeout above 2^31 - 1 ms (the limiter could never connect). */
	if (cfg->refresh_ns > ATS_FLEET_MAX_LEASE_NS)
		return invalid("refresh_ns exceeds 2^38 ns");
	if (cfg->timeout_ns > ATS_FLEET_MAX_TIMEOUT_NS)
		return invalid("timeout_ns exceeds 2^31 - 1 ms");
	if (cfg->reconnect_min_ns > ATS_FLEET_MAX_RECONNECT_NS || cfg->reconnect_max_ns > ATS_FLEET_MAX_RECONNECT_NS)
		return invalid("reconnect_min_ns or reconnect_max_ns exceeds 2^42 ns");
	uint32_t inst = cfg->expected_instances ? cfg->expected_instances : 1;
	ats_rate fb = cfg->fallback_rate;
	if (fb.events == 0 && fb.period_ns == 0) {
		fb.events = cfg->rate.events;
		if (__builtin_mul_overflow(cfg->rate.period_ns, (uint64_t)inst, &fb.period_ns))
			return invalid("rate period * expected_instances overflows");
	}
	if (ats_rate_is_inf(fb) || fb.events == 0)
		return invalid("fallback_rate must be finite and non-zero");
	out->keylen = keylen;
	out->limit[0] = ev;
	out->limit[1] = per;
	out->limit[2] = cfg->burst;
	out->pol = (struct ats__fleet_policy_cfg){.batch_min = bmin,
	                                          .batch_max = bmax,
	                                          .refresh_ns = cfg->refresh_ns ? cfg->refresh_ns : 10000000,
	                                          .lease_ns = lease_ns};
	out->fallback_rate = fb;
	out->fallback_burst = cfg->fallback_burst ? cfg->fallback_burst : (cfg->burst / inst ? cfg->burst / inst : 1);
	return NULL;
}

/* Starts fn(arg) on a thread that takes no signals: the application's handlers run on its own
 * threads. */
int ats__fleet_start_thread(pthread_t *th, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(th, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

ats_err *ats_fleet_init(ats_fleet *f, const ats_fleet_config *cfg)
{
	if (!f || !cfg)
		return invalid("limiter or config is NULL");
	struct ats__fleet_settings st;
	ats_err *err = ats__fleet_settings_of(cfg, ATS_FLEET_MAX_KEY, &st);
	if (err)
		return err;
	struct ats__fleet_cold *c = calloc(1, sizeof *c);
	if (!c)
		return ats_err_oom;
	err = ats_limiter_init_at(&f->fallback_, st.fallback_rate, st.fallback_burst, ats_fast_now_ns());
	if (err) {
		free(c);
		return ats_err_wrap(err, "fleet limiter: the fallback limit");
	}
	memcpy(c->key, cfg->key, st.keylen + 1);
	c->keylen = st.keylen;
	memcpy(c->limit, st.limit, sizeof c->limit);
	c->pol = st.pol;
	ats__fleet_conn_init(&c->conn, cfg->host, cfg->port, cfg->timeout_ns, cfg->reconnect_min_ns,
	                     cfg->reconnect_max_ns, &f->down_);
	uint64_t now = ats_fast_now_ns();
	ats__fleet_est_init(&c->est, now, st.pol.batch_min);
	atomic_init(&c->batch, st.pol.batch_min);
	/* Empty and expired: the first lease fills it. */
	atomic_init(&f->lease_, ats__fleet_lease_word(now, 0));
	atomic_init(&f->down_, 1);
	f->policy_ = cfg->policy;
	f->cold_ = c;
	pthread_mutex_init(&c->stop_mu, NULL);
	int rc = ats__fleet_start_thread(&c->thread, fleet_thread, f);
	if (rc) {
		pthread_mutex_destroy(&c->stop_mu);
		ats__fleet_conn_destroy(&c->conn);
		free(c);
		f->cold_ = NULL;
		return ats_err_errno(rc, "fleet limiter: starting its thread");
	}
	return NULL;
}

void ats_fleet_stop(ats_fleet *f)
{
	if (!f || !f->cold_)
		return;
	struct ats__fleet_cold *c = f->cold_;
	pthread_mutex_lock(&c->stop_mu); /* a second caller waits for the first to finish */
	/* relaxed: the exchange only makes stop idempotent; the thread re-reads the flag every round
	 * and pthread_join orders everything it did before this caller goes on */
	if (atomic_exchange_explicit(&c->stop, 1, memory_order_relaxed)) {
		pthread_mutex_unlock(&c->stop_mu);
		return;
	}
	/* release: the thread's acquire load of `wake` then sees stop set (it re-checks after waking) */
	atomic_fetch_add_explicit(&c->wake, 1, memory_order_release);
	ats__futex_wake(&c->wake, 1);
	pthread_join(c->thread, NULL); /* it gave the lease back and disconnected */
	pthread_mutex_lock(&c->conn.mu);
	snprintf(c->conn.last_error, sizeof c->conn.last_error, "stopped");
	pthread_mutex_unlock(&c->conn.mu);
	atomic_store_explicit(&f->down_, 1, memory_order_relaxed); /* the policy from now on */
	pthread_mutex_unlock(&c->stop_mu);
}

void ats_fleet_destroy(ats_fleet *f)
{
	if (!f || !f->cold_)
		return;
	ats_fleet_stop(f);
	pthread_mutex_destroy(&f->cold_->stop_mu);
	ats__fleet_conn_destroy(&f->cold_->conn);
	free(f->cold_);
	f->cold_ = NULL;
}

ats_err *ats_fleet_new(ats_fleet **out, const ats_fleet_config *cfg)
{
	if (!out)
		return invalid("out is NULL");
	*out = NULL;
	ats_fleet *f = aligned_alloc(64, sizeof *f);
	if (!f)
		return ats_err_oom;
	memset(f, 0, sizeof *f);
	ats_err *err = ats_fleet_init(f, cfg);
	if (err) {
		free(f);
		return err;
	}
	*out = f;
	return NULL;
}

void ats_fleet_free(ats_fleet *f)
{
	ats_fleet_destroy(f);
	free(f);
}

/* ---- State ---- */

ats_err *ats_fleet_status(ats_fleet *f)
{
	if (!f || !f->cold_)
		return invalid("limiter is NULL or destroyed");
	/* relaxed: a report, not a decision */
	if (!atomic_load_explicit(&f->down_, memory_order_relaxed))
		return NULL;
	struct ats__fleet_cold *c = f->cold_;
	char text[sizeof c->conn.last_error];
	ats__fleet_conn_last_error(&c->conn, text, sizeof text);
	ats_err *err = ats_err_new(ATS_ERR_UNAVAILABLE, "fleet limit '%s': Redis at %s:%u is unavailable (%s)", c->key,
	                           c->conn.host, c->conn.port,
	                           f->policy_ == ATS_FLEET_FAIL_OPEN ? "failing open" : "failing closed");
	err = ats_err_with_kv(err, "redis", "%s:%u", c->conn.host, c->conn.port);
	err = ats_err_with_kv(err, "key", "%s", c->key);
	err = ats_err_with_kv(err, "policy", "%s", f->policy_ == ATS_FLEET_FAIL_OPEN ? "fail_open" : "fail_closed");
	return ats_err_with_kv(err, "redis_error", "%s", text);
}

void ats_fleet_stats_get(ats_fleet *f, ats_fleet_stats *out)
{
	memset(out, 0, sizeof *out);
	if (!f || !f->cold_)
		return;
	struct ats__fleet_cold *c = f->cold_;
#define LOAD_FROM(s, field) out->field = atomic_load_explicit(&(s)->field, memory_order_relaxed) /* counters */
#define LOAD(field) LOAD_FROM(c, field)
	LOAD_FROM(&c->conn, redis_ops);
	LOAD_FROM(&c->lc, leases);
	LOAD_FROM(&c->lc, leased_tokens);
	LOAD_FROM(&c->lc, expired_tokens);
	LOAD_FROM(&c->lc, given_back);
	LOAD_FROM(&c->conn, redis_errors);
	LOAD_FROM(&c->conn, reconnects);
	LOAD(lease_misses);
	LOAD(closed_denied);
	LOAD(fallback_allowed);
	LOAD(fallback_denied);
	LOAD(batch);
#undef LOAD
#undef LOAD_FROM
	out->up = !atomic_load_explicit(&f->down_, memory_order_relaxed); /* a snapshot */
}
