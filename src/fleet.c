/* SPDX-License-Identifier: BSD-2-Clause */
/* Fleet limiter: the background thread that leases from Redis, the refusal path and the reply
 * parser (include/atscale/fleet.h). hiredis is the client: no protocol code of our own. */
#include "atscale/fleet.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	char host[256];
	uint16_t port;
	uint64_t ev, per_us, burst; /* the rate as the scripts take it */
	uint64_t batch_min, batch_max, refresh_ns, lease_ns, timeout_ns, rmin_ns, rmax_ns;

	pthread_t thread;
	_Atomic uint32_t wake;   /* futex word: bumped by a hungry miss and by stop */
	_Atomic uint32_t hungry; /* a miss happened since the last lease call */
	_Atomic uint32_t stop;

	pthread_mutex_t mu; /* guards last_error only */
	char last_error[256];

	/* counters (ats_fleet_stats) */
	_Atomic uint64_t redis_ops, leases, leased_tokens, expired_tokens, given_back, redis_errors, reconnects,
	    lease_misses, closed_denied, fallback_allowed, fallback_denied, batch;

	/* the background thread's own */
	redisContext *rc;
	char sha_lease[48], sha_give[48];
	bool ever_connected;
	bool probe;                         /* lease once after connecting, demand or not */
	uint64_t last_tok;                  /* the lease's token count after the thread's last look */
	uint64_t win_start_ns, win_used;    /* the consumption window */
	uint64_t last_round_ns, round_used; /* the short (one poll) window */
	uint64_t rate_est;                  /* tokens per second, smoothed */
	uint64_t backoff_ns, next_connect_ns, next_lease_ns;
	uint64_t rng;
};

/* Counters: relaxed, they order nothing (a snapshot of counters is all stats promise). */
#define BUMP(c, field, v) atomic_fetch_add_explicit(&(c)->field, (v), memory_order_relaxed)

static uint64_t lease_word(uint64_t expiry_ns, uint64_t tok)
{
	return ((expiry_ns >> 10) << 24) | tok;
}

static uint64_t rand_u64(struct ats__fleet_cold *c)
{
	uint64_t x = c->rng; /* xorshift64* */
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	c->rng = x;
	return x * UINT64_C(2685821657736338717);
}

static void set_error(ats_fleet *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(ats_fleet *f, const char *fmt, ...)
{
	struct ats__fleet_cold *c = f->cold_;
	va_list ap;
	pthread_mutex_lock(&c->mu);
	va_start(ap, fmt);
	vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&c->mu);
	BUMP(c, redis_errors, 1);
	/* relaxed: the flag alone picks the policy; nothing else is published with it */
	atomic_store_explicit(&f->down_, 1, memory_order_relaxed);
}

static void drop_connection(struct ats__fleet_cold *c, uint64_t now)
{
	if (c->rc)
		redisFree(c->rc);
	c->rc = NULL;
	uint64_t d = c->backoff_ns;
	/* jitter: uniform in [d/2, d], so a fleet that lost Redis together does not return together */
	c->next_connect_ns = now + d / 2 + rand_u64(c) % (d / 2 + 1);
	c->backoff_ns = d * 2 > c->rmax_ns ? c->rmax_ns : d * 2;
}

static struct timeval tv_of(uint64_t ns)
{
	return (struct timeval){.tv_sec = (time_t)(ns / 1000000000u),
	                        .tv_usec = (suseconds_t)(ns % 1000000000u / 1000)};
}

/* Loads both scripts; false (and the error kept) on failure. */
static bool load_scripts(ats_fleet *f)
{
	struct ats__fleet_cold *c = f->cold_;
	const char *src[2] = {ats__fleet_lease_lua, ats__fleet_giveback_lua};
	char *dst[2] = {c->sha_lease, c->sha_give};
	for (int i = 0; i < 2; i++) {
		BUMP(c, redis_ops, 1);
		redisReply *r = redisCommand(c->rc, "SCRIPT LOAD %s", src[i]);
		if (!r || r->type != REDIS_REPLY_STRING || r->len >= sizeof c->sha_lease) {
			set_error(f, "SCRIPT LOAD failed: %s",
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

static bool connect_redis(ats_fleet *f, uint64_t now)
{
	struct ats__fleet_cold *c = f->cold_;
	redisContext *rc = redisConnectWithTimeout(c->host, c->port, tv_of(c->timeout_ns));
	if (!rc || rc->err) {
		set_error(f, "connect to %s:%u: %s", c->host, c->port, rc ? rc->errstr : "out of memory");
		c->rc = rc;
		drop_connection(c, now);
		return false;
	}
	c->rc = rc;
	if (redisSetTimeout(rc, tv_of(c->timeout_ns)) != REDIS_OK || !load_scripts(f)) {
		if (rc->err)
			set_error(f, "setting up %s:%u: %s", c->host, c->port, rc->errstr);
		drop_connection(c, now);
		return false;
	}
	if (c->ever_connected)
		BUMP(c, reconnects, 1);
	c->ever_connected = true;
	c->probe = true; /* a lease call right away: only a lease call's answer says Redis is up */
	return true;
}

/* Runs a script; NOSCRIPT reloads both and retries once. The reply (caller frees) or NULL with the
 * connection dropped (an I/O error). */
static redisReply *run_script(ats_fleet *f, bool lease, uint64_t n, uint64_t now)
{
	struct ats__fleet_cold *c = f->cold_;
	for (int attempt = 0; attempt < 2; attempt++) {
		BUMP(c, redis_ops, 1);
		redisReply *r =
		    redisCommand(c->rc, "EVALSHA %s 1 %b %llu %llu %llu %llu", lease ? c->sha_lease : c->sha_give,
		                 c->key, c->keylen, (unsigned long long)c->ev, (unsigned long long)c->per_us,
		                 (unsigned long long)c->burst, (unsigned long long)n);
		if (!r) {
			set_error(f, "EVALSHA on %s:%u: %s", c->host, c->port, c->rc->errstr);
			drop_connection(c, now);
			return NULL;
		}
		if (attempt == 0 && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0) {
			freeReplyObject(r);
			if (!load_scripts(f)) {
				drop_connection(c, now);
				return NULL;
			}
			continue;
		}
		return r;
	}
	return NULL; /* not reached: the second attempt returns */
}

/* The tokens the lease word holds at now (0 when expired), dropping expired ones (counted), and
 * the consumption since the thread's last look. */
static uint64_t observe(ats_fleet *f, uint64_t now, uint64_t *used)
{
	struct ats__fleet_cold *c = f->cold_;
	/* relaxed: the thread needs the count only; the CAS below validates it */
	uint64_t w = atomic_load_explicit(&f->lease_, memory_order_relaxed);
	for (;;) {
		uint64_t tok = w & ATS__FLEET_TOKENS;
		/* Acquirers only take from the word and the thread is the only one that adds, so the
		 * difference is what they took (expired tokens are not taken: acquirers skip them). */
		*used = c->last_tok >= tok ? c->last_tok - tok : 0;
		if (!ats__fleet_expired(w, now) || tok == 0) {
			c->last_tok = tok;
			return ats__fleet_expired(w, now) ? 0 : tok;
		}
		/* relaxed: as in the acquire path, the word carries only its count */
		if (atomic_compare_exchange_weak_explicit(&f->lease_, &w, w & ~ATS__FLEET_TOKENS, memory_order_relaxed,
		                                          memory_order_relaxed)) {
			BUMP(c, expired_tokens, tok);
			c->last_tok = 0;
			return 0;
		}
	}
}

/* Adds g tokens to the lease and sets its expiry to now + lease_ns. */
static void install(ats_fleet *f, uint64_t g, uint64_t now)
{
	struct ats__fleet_cold *c = f->cold_;
	uint64_t w = atomic_load_explicit(&f->lease_, memory_order_relaxed); /* the CAS validates it */
	for (;;) {
		uint64_t tok = ats__fleet_expired(w, now) ? 0 : w & ATS__FLEET_TOKENS;
		uint64_t sum = tok + g > ATS__FLEET_TOKENS ? ATS__FLEET_TOKENS : tok + g;
		/* relaxed: the count is all the word carries */
		if (atomic_compare_exchange_weak_explicit(&f->lease_, &w, lease_word(now + c->lease_ns, sum),
		                                          memory_order_relaxed, memory_order_relaxed)) {
			if (ats__fleet_expired(w, now))
				BUMP(c, expired_tokens, w & ATS__FLEET_TOKENS);
			c->last_tok = sum;
			return;
		}
	}
}

/* One lease call for `asked` tokens. */
static void lease_once(ats_fleet *f, uint64_t asked, uint64_t now)
{
	struct ats__fleet_cold *c = f->cold_;
	/* relaxed: a hint to batch up; the lease call below is what it asks for */
	atomic_store_explicit(&c->hungry, 0, memory_order_relaxed);
	redisReply *r = run_script(f, true, asked, now);
	if (!r)
		return;
	ats__fleet_reply rep;
	ats_err *err = ats__fleet_parse_reply(r, asked, &rep);
	freeReplyObject(r);
	uint64_t after = ats_fast_now_ns();
	if (err) {
		const char *e = ats_err_kv_get(err, "redis_error");
		set_error(f, "%s%s%s", ats_err_message(err), e ? ": " : "", e ? e : "");
		ats_err_unref(err);
		c->next_lease_ns = after + c->backoff_ns;
		c->backoff_ns = c->backoff_ns * 2 > c->rmax_ns ? c->rmax_ns : c->backoff_ns * 2;
		return;
	}
	c->backoff_ns = c->rmin_ns;
	if (rep.granted) {
		install(f, rep.granted, after);
		BUMP(c, leases, 1);
		BUMP(c, leased_tokens, rep.granted);
	}
	/* relaxed: the flag alone picks the policy (the tokens just installed are in the word) */
	atomic_store_explicit(&f->down_, 0, memory_order_relaxed);
	/* Redis had fewer than asked: come back once some have accrued, not at every token. */
	if (rep.granted < asked) {
		/* at most a second: a slow rate's next token may be hours away, and demand may change */
		uint64_t wait = rep.wait_us > 1000000 ? ATS_NS_PER_SEC : rep.wait_us * 1000;
		c->next_lease_ns = after + (wait > c->refresh_ns / 8 ? wait : c->refresh_ns / 8);
	}
}

/* One round of the background loop: returns the time to wake up next. */
static uint64_t round_once(ats_fleet *f, uint64_t now)
{
	struct ats__fleet_cold *c = f->cold_;
	uint64_t poll = c->refresh_ns / 4 > 100000 ? c->refresh_ns / 4 : 100000;
	uint64_t used;
	uint64_t tok = observe(f, now, &used);
	c->win_used += used;
	/* Up at once, from this round alone (a stream that starts or speeds up is seen within one
	 * round, not one window); down only window by window, below. */
	c->round_used += used;
	if (now - c->last_round_ns >= poll) { /* over a whole poll: a short round's rate is noise */
		uint64_t inst =
		    (uint64_t)((unsigned __int128)c->round_used * ATS_NS_PER_SEC / (now - c->last_round_ns));
		if (inst > c->rate_est)
			c->rate_est = inst;
		c->round_used = 0;
		c->last_round_ns = now;
	}
	if (now - c->win_start_ns >= c->refresh_ns) {
		uint64_t dt = now - c->win_start_ns;
		uint64_t inst = (uint64_t)((unsigned __int128)c->win_used * ATS_NS_PER_SEC / dt);
		/* up at once (demand grew), down slowly (one quiet window is not the end of a stream) */
		c->rate_est = inst >= c->rate_est ? inst : (3 * c->rate_est + inst) / 4;
		c->win_start_ns = now;
		c->win_used = 0;
	}
	uint64_t b = (uint64_t)((unsigned __int128)c->rate_est * c->refresh_ns / ATS_NS_PER_SEC);
	/* relaxed: a hint; acquirers set it when refused */
	bool hungry = atomic_load_explicit(&c->hungry, memory_order_relaxed);
	uint64_t prev = atomic_load_explicit(&c->batch, memory_order_relaxed); /* only this thread writes it */
	if (hungry && b < 2 * prev)
		b = 2 * prev;
	if (b < c->batch_min)
		b = c->batch_min;
	if (b > c->batch_max)
		b = c->batch_max;
	atomic_store_explicit(&c->batch, b, memory_order_relaxed); /* a statistic */

	if (!c->rc) {
		if (now < c->next_connect_ns)
			return c->next_connect_ns < now + poll ? c->next_connect_ns : now + poll;
		if (!connect_redis(f, now))
			return c->next_connect_ns;
	}
	if (now >= c->next_lease_ns) {
		/* relaxed: a snapshot of the expiry; install() re-reads the word with its CAS */
		uint64_t w = atomic_load_explicit(&f->lease_, memory_order_relaxed);
		bool demand = used > 0 || hungry || c->probe || c->rate_est > 0 ||
		              atomic_load_explicit(&c->leased_tokens, memory_order_relaxed) == 0; /* a counter */
		/* Low water = one batch: the lease still covers one refresh interval of the stream when the
		 * refill is asked for, four polls of slack before it would run dry. */
		bool low = tok < b;
		bool expiring = tok > 0 && ats__fleet_expired(w, now + 2 * poll);
		if (demand && (low || expiring || c->probe) && tok < c->batch_max) {
			c->probe = false;
			uint64_t asked = b;
			if (tok + asked > c->batch_max)
				asked = c->batch_max - tok;
			lease_once(f, asked, now);
			if (!c->rc)
				return c->next_connect_ns;
		}
	}
	uint64_t next = now + poll;
	return c->next_lease_ns > now && c->next_lease_ns < next ? c->next_lease_ns : next;
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
	uint64_t w = atomic_exchange_explicit(&f->lease_, lease_word(now, 0), memory_order_relaxed);
	uint64_t tok = w & ATS__FLEET_TOKENS;
	bool back = false;
	if (tok && !ats__fleet_expired(w, now) && c->rc) {
		redisReply *r = run_script(f, false, tok, now);
		back = r && r->type == REDIS_REPLY_INTEGER;
		if (r)
			freeReplyObject(r);
	}
	/* Every leased token ends granted, given back or dropped: an expired lease's tokens, and
	 * those Redis could not take back (down, or an error), are dropped (counted as expired). */
	if (back)
		BUMP(c, given_back, tok);
	else if (tok)
		BUMP(c, expired_tokens, tok);
	if (c->rc)
		redisFree(c->rc);
	c->rc = NULL;
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

ats_err *ats_fleet_init(ats_fleet *f, const ats_fleet_config *cfg)
{
	if (!f || !cfg)
		return invalid("limiter or config is NULL");
	if (!cfg->key)
		return invalid("key is NULL");
	size_t keylen = strlen(cfg->key);
	if (keylen == 0)
		return invalid("key is empty");
	if (keylen > ATS_FLEET_MAX_KEY)
		return ats_err_with_kv(invalid("key is longer than ATS_FLEET_MAX_KEY (256 bytes)"), "key_len", "%zu",
		                       keylen);
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
	if (cfg->policy != ATS_FLEET_FAIL_CLOSED && cfg->policy != ATS_FLEET_FAIL_OPEN)
		return invalid("unknown policy");
	uint32_t inst = cfg->expected_instances ? cfg->expected_instances : 1;
	ats_rate fb = cfg->fallback_rate;
	if (fb.events == 0 && fb.period_ns == 0) {
		fb.events = cfg->rate.events;
		if (__builtin_mul_overflow(cfg->rate.period_ns, (uint64_t)inst, &fb.period_ns))
			return invalid("rate period * expected_instances overflows");
	}
	uint64_t fb_burst = cfg->fallback_burst ? cfg->fallback_burst : (cfg->burst / inst ? cfg->burst / inst : 1);

	struct ats__fleet_cold *c = calloc(1, sizeof *c);
	if (!c)
		return ats_err_oom;
	ats_err *err = ats_limiter_init_at(&f->fallback_, fb, fb_burst, ats_fast_now_ns());
	if (err) {
		free(c);
		return ats_err_wrap(err, "fleet limiter: the fallback limit");
	}
	memcpy(c->key, cfg->key, keylen + 1);
	c->keylen = keylen;
	snprintf(c->host, sizeof c->host, "%s", cfg->host ? cfg->host : "127.0.0.1");
	c->port = cfg->port ? cfg->port : 6379;
	c->ev = ev;
	c->per_us = per;
	c->burst = cfg->burst;
	c->batch_min = bmin;
	c->batch_max = bmax;
	c->refresh_ns = cfg->refresh_ns ? cfg->refresh_ns : 10000000;
	c->lease_ns = lease_ns;
	c->timeout_ns = cfg->timeout_ns ? cfg->timeout_ns : 100000000;
	c->rmin_ns = cfg->reconnect_min_ns ? cfg->reconnect_min_ns : 10000000;
	c->rmax_ns = cfg->reconnect_max_ns ? cfg->reconnect_max_ns : ATS_NS_PER_SEC;
	if (c->rmax_ns < c->rmin_ns)
		c->rmax_ns = c->rmin_ns;
	c->backoff_ns = c->rmin_ns;
	pthread_mutex_init(&c->mu, NULL);
	snprintf(c->last_error, sizeof c->last_error, "not connected yet");
	uint64_t now = ats_fast_now_ns();
	c->win_start_ns = now;
	c->last_round_ns = now;
	c->rng = (now ^ (uintptr_t)c) | 1;
	atomic_init(&c->batch, bmin);
	/* Empty and expired: the first lease fills it. */
	atomic_init(&f->lease_, lease_word(now, 0));
	atomic_init(&f->down_, 1);
	f->policy_ = cfg->policy;
	f->cold_ = c;

	/* The thread takes no signals: the application's handlers run on its own threads. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&c->thread, NULL, fleet_thread, f);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		pthread_mutex_destroy(&c->mu);
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
	/* relaxed: the exchange only makes stop idempotent; the thread re-reads the flag every round
	 * and pthread_join orders everything it did before this caller goes on */
	if (atomic_exchange_explicit(&c->stop, 1, memory_order_relaxed))
		return;
	/* release: the thread's acquire load of `wake` then sees stop set (it re-checks after waking) */
	atomic_fetch_add_explicit(&c->wake, 1, memory_order_release);
	ats__futex_wake(&c->wake, 1);
	pthread_join(c->thread, NULL); /* it gave the lease back and disconnected */
	pthread_mutex_lock(&c->mu);
	snprintf(c->last_error, sizeof c->last_error, "stopped");
	pthread_mutex_unlock(&c->mu);
	atomic_store_explicit(&f->down_, 1, memory_order_relaxed); /* the policy from now on */
}

void ats_fleet_destroy(ats_fleet *f)
{
	if (!f || !f->cold_)
		return;
	ats_fleet_stop(f);
	pthread_mutex_destroy(&f->cold_->mu);
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
	char text[sizeof c->last_error];
	pthread_mutex_lock(&c->mu);
	memcpy(text, c->last_error, sizeof text);
	pthread_mutex_unlock(&c->mu);
	ats_err *err =
	    ats_err_new(ATS_ERR_UNAVAILABLE, "fleet limit '%s': Redis at %s:%u is unavailable (%s)", c->key, c->host,
	                c->port, f->policy_ == ATS_FLEET_FAIL_OPEN ? "failing open" : "failing closed");
	err = ats_err_with_kv(err, "redis", "%s:%u", c->host, c->port);
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
#define LOAD(field) out->field = atomic_load_explicit(&c->field, memory_order_relaxed) /* counters */
	LOAD(redis_ops);
	LOAD(leases);
	LOAD(leased_tokens);
	LOAD(expired_tokens);
	LOAD(given_back);
	LOAD(redis_errors);
	LOAD(reconnects);
	LOAD(lease_misses);
	LOAD(closed_denied);
	LOAD(fallback_allowed);
	LOAD(fallback_denied);
	LOAD(batch);
#undef LOAD
	out->up = !atomic_load_explicit(&f->down_, memory_order_relaxed); /* a snapshot */
}
