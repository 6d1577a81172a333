/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale-example-server: a small RESP (Redis protocol) server on one epoll thread, written as the
 * pattern for a server that uses atscale's contexts, keyed limits and errors together.
 *
 *   PING                 -> +PONG
 *   GET key              -> $value-of-key after a simulated backend call of 0-3 ms
 *   CLIENT SETNAME name  -> +OK; from then on the connection is limited under `name`
 *   QUIT                 -> +OK, then the connection closes
 *
 * What it shows:
 *  - Per-client limits (ats_keyed_throttle_at): every PING and GET takes a token from the bucket of
 *    the client's name, or of its address "ip:port" when it has none. A denied request gets
 *    "-LIMITED Too many requests. Try again later. retry-after-ms=N".
 *  - Per-request deadlines: a GET runs under a context with a timeout (--timeout-ms), a child of
 *    the server's context. The simulated backend answers at a time tracked by the loop (never a
 *    blocking sleep). The loop wakes at the nearest backend answer or request deadline (a timerfd)
 *    and then checks ats_ctx_done_at(ctx, now) with `now` read once per batch. The check comes
 *    before the answer is used, so a request past its deadline gets "-DEADLINE_EXCEEDED ...", never
 *    a late success: ats_ctx_done alone would miss a deadline whose timer has not fired yet
 *    (the timer fires up to a wheel tick late), which is exactly when the loop wakes.
 *  - User-safe replies: an error reply is the error's code name and ats_err_user_text, never its
 *    message. Messages (client addresses, the port, backend timings) go only to the log (--log).
 *  - Shutdown: SIGTERM or SIGINT (a signalfd) cancels the server's context. Every request context
 *    is its child, so every request in flight is done at once and gets "-CANCELLED The server is
 *    shutting down."; the loop also watches the server context's ats_ctx_fd, so cancelling it from
 *    anywhere (another thread, an admin command) stops the server the same way. Every connection is
 *    closed, everything freed, and the counts are printed to stderr. Exit status 0.
 *
 * redis-benchmark stops at its first error reply, so benchmark with --no-limit (no per-client
 * limit) and, for GET, a --timeout-ms above --backend-max-ms:
 *   atscale-example-server --port 6380 --no-limit --timeout-ms 50 &
 *   redis-benchmark -p 6380 -n 100000 -c 50 -t ping,get
 *
 * One thread. The GETs waiting for the backend are kept in a binary heap by the time each must be
 * settled (the earlier of its answer and its deadline), so a batch touches only what is due.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, signalfd */
#endif
#include <atscale/atscale.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define MAX_ARGS 8
#define MAX_ARG_LEN 4096          /* longest argument accepted: keys are short */
#define MAX_IN (64 * 1024)        /* a connection's unparsed input */
#define MAX_OUT_PENDING (1 << 20) /* stop reading a client that does not read its replies */
#define MAX_QUEUED 1024           /* requests a connection may have in flight (pipelining) */

struct options {
	const char *bind;
	int port;
	uint64_t rate, burst;
	bool no_limit, log;
	uint64_t timeout_ns, backend_min_ns, backend_max_ns;
};

struct conn;

/* One request whose reply is not yet written: replies go out in request order, so a PING behind a
 * pending GET waits in the queue with its reply ready. */
struct req {
	struct req *next; /* the connection's queue */
	size_t hidx;      /* its place in the server's heap while it waits for the backend */
	uint64_t due;     /* min(ready_ns, deadline): when it must be settled */
	struct conn *c;
	ats_ctx *ctx;      /* the request's deadline; NULL once answered */
	uint64_t ready_ns; /* when the simulated backend answers */
	uint64_t delay_ns;
	char *reply; /* RESP text, NULL until answered */
	size_t reply_len;
	char key[];
};

struct conn {
	int fd;
	uint32_t events; /* what epoll watches now */
	bool eof;        /* the client closed its side: close once the queue is answered */
	bool dead;       /* a write failed or the input was malformed: close now */
	char addr[64];   /* "ip:port" */
	char *name;      /* CLIENT SETNAME, or NULL */
	size_t name_len;
	char in[MAX_IN];
	size_t in_len;
	char *out;
	size_t out_len, out_off, out_cap;
	struct req *head, *tail;
	size_t queued;
	struct conn *next, *prev;
};

struct server {
	struct options opt;
	int ep, lfd, sigfd, tfd, ctxfd;
	void *listen_tag;     /* the listener's epoll tag */
	uint64_t timer_armed; /* absolute time the timerfd is set to, 0 when disarmed */
	bool accept_paused;   /* out of descriptors: the listener is not watched until a connection closes */
	ats_ctx *ctx;         /* cancelled at shutdown; every request context is its child */
	ats_keyed *limits;
	struct conn *conns;
	struct req **heap; /* GETs waiting for the backend, earliest `due` first */
	size_t heap_len, heap_cap;
	uint64_t rng;
	uint64_t admitted, limited, timed_out, cancelled, rejected, served;
};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* The log gets the full record; clients get only the user text (format_err). */
static void log_err(struct server *s, const ats_err *err)
{
	if (!s->opt.log)
		return;
	fprintf(stderr, "[%s]", ats_code_name(ats_err_code(err)));
	for (const ats_err *e = err; e; e = ats_err_cause(e))
		fprintf(stderr, "%s%s", e == err ? " " : ": ", ats_err_message(e));
	fputc('\n', stderr);
}

/* ---- output ---- */

static void out_append(struct conn *c, const char *p, size_t n)
{
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		while (cap < c->out_len + n)
			cap *= 2;
		char *o = realloc(c->out, cap);
		if (!o) {
			c->dead = true; /* cannot answer: drop the client rather than reply out of order */
			return;
		}
		c->out = o;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
}

/* "-CODE user text[ suffix]\r\n": the code name upper-cased, the user text with any CR/LF made
 * spaces so that the reply stays one RESP line. */
static char *format_err(const ats_err *err, const char *suffix, size_t *len)
{
	char user[512];
	ats_err_user_text(err, user, sizeof user);
	const char *code = ats_code_name(ats_err_code(err));
	size_t need = strlen(code) + strlen(user) + (suffix ? strlen(suffix) : 0) + 8;
	char *r = malloc(need);
	if (!r)
		return NULL;
	int n = snprintf(r, need, "-%s %s%s\r\n", code, user, suffix ? suffix : "");
	for (int i = 1; i < n - 2; i++) {
		if (i <= (int)strlen(code))
			r[i] = (char)toupper((unsigned char)r[i]);
		else if (r[i] == '\r' || r[i] == '\n')
			r[i] = ' ';
	}
	*len = (size_t)n;
	return r;
}

static char *dup_reply(const char *text, size_t n, size_t *len)
{
	char *r = malloc(n ? n : 1);
	if (r)
		memcpy(r, text, n);
	*len = n;
	return r;
}

/* Moves the answered replies at the head of the queue into the output buffer. */
static void drain_queue(struct conn *c)
{
	while (c->head && c->head->reply) {
		struct req *r = c->head;
		out_append(c, r->reply, r->reply_len);
		c->head = r->next;
		if (!c->head)
			c->tail = NULL;
		c->queued--;
		free(r->reply);
		free(r);
	}
}

/* Gives a queued request its reply and sends what is now in order. NULL (out of memory) drops the
 * client: its replies could not stay in order. */
static void answer(struct conn *c, struct req *r, char *reply, size_t len)
{
	if (!reply) {
		c->dead = true;
		return;
	}
	r->reply = reply;
	r->reply_len = len;
	drain_queue(c);
}

static struct req *enqueue(struct conn *c, const char *key, size_t key_len)
{
	struct req *r = calloc(1, sizeof *r + key_len + 1);
	if (!r) {
		c->dead = true;
		return NULL;
	}
	memcpy(r->key, key, key_len);
	r->c = c;
	if (c->tail)
		c->tail->next = r;
	else
		c->head = r;
	c->tail = r;
	c->queued++;
	return r;
}

static void answer_err(struct server *s, struct conn *c, struct req *r, ats_err *err, const char *suffix)
{
	log_err(s, err);
	size_t len;
	char *reply = format_err(err, suffix, &len);
	ats_err_unref(err);
	answer(c, r, reply, len);
}

/* ---- the simulated backend and request deadlines ---- */

static uint64_t next_rand(struct server *s)
{
	uint64_t x = s->rng; /* xorshift64: the delays only need to spread */
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return s->rng = x;
}

/* ---- the heap of waiting GETs ---- */

static void heap_set(struct server *s, size_t i, struct req *r)
{
	s->heap[i] = r;
	r->hidx = i;
}

static void heap_fix(struct server *s, size_t i)
{
	struct req *r = s->heap[i];
	while (i > 0 && s->heap[(i - 1) / 2]->due > r->due) { /* up */
		heap_set(s, i, s->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	for (;;) { /* down */
		size_t c = 2 * i + 1;
		if (c >= s->heap_len)
			break;
		if (c + 1 < s->heap_len && s->heap[c + 1]->due < s->heap[c]->due)
			c++;
		if (s->heap[c]->due >= r->due)
			break;
		heap_set(s, i, s->heap[c]);
		i = c;
	}
	heap_set(s, i, r);
}

static bool heap_push(struct server *s, struct req *r)
{
	if (s->heap_len == s->heap_cap) {
		size_t cap = s->heap_cap ? 2 * s->heap_cap : 256;
		struct req **h = realloc(s->heap, cap * sizeof *h);
		if (!h)
			return false;
		s->heap = h;
		s->heap_cap = cap;
	}
	heap_set(s, s->heap_len++, r);
	heap_fix(s, r->hidx);
	return true;
}

static void heap_remove(struct server *s, struct req *r)
{
	size_t i = r->hidx;
	struct req *last = s->heap[--s->heap_len];
	if (last != r) {
		heap_set(s, i, last);
		heap_fix(s, i);
	}
}

/* Settles one waiting GET at `now` (read once for the batch): the deadline is checked first, so an
 * answer that came after it is never sent. Returns false when neither is due yet. */
static bool settle(struct server *s, struct req *r, uint64_t now)
{
	struct conn *c = r->c;
	if (ats_ctx_done_at(r->ctx, now)) {
		ats_err *err = ats_ctx_err(r->ctx); /* cancelled (shutdown) or deadline exceeded */
		if (!err) /* our `now` saw the deadline before the library's clock did: same verdict */
			err = ats_err_new(ATS_ERR_DEADLINE_EXCEEDED, "request deadline passed");
		if (ats_err_is(err, ATS_ERR_CANCELLED) && !ats_err_is(err, ATS_ERR_DEADLINE_EXCEEDED))
			s->cancelled++;
		else
			s->timed_out++;
		err = ats_err_wrap(err, "GET %s from %s on port %d: backend needs %llu us, budget %llu us", r->key,
		                   c->addr, s->opt.port, (unsigned long long)(r->delay_ns / 1000),
		                   (unsigned long long)(s->opt.timeout_ns / 1000));
		heap_remove(s, r);
		ats_ctx_release(r->ctx);
		r->ctx = NULL;
		answer_err(s, c, r, err, NULL);
		return true;
	} else if (now >= r->ready_ns) {
		s->served++;
		size_t klen = strlen(r->key);
		size_t need = klen + 64;
		char *reply = malloc(need);
		size_t len = 0;
		if (reply)
			len = (size_t)snprintf(reply, need, "$%zu\r\nvalue-of-%s\r\n", klen + 9, r->key);
		heap_remove(s, r);
		ats_ctx_release(r->ctx);
		r->ctx = NULL;
		answer(c, r, reply, len);
		return true;
	}
	return false;
}

/* Settles every waiting GET due at `now`, earliest first. */
static void settle_due(struct server *s, uint64_t now)
{
	while (s->heap_len && s->heap[0]->due <= now)
		if (!settle(s, s->heap[0], now))
			break; /* not reached: at `due` the answer or the deadline has come */
}

/* Sets the timerfd to the nearest backend answer or deadline of the waiting GETs. */
static void arm_timer(struct server *s)
{
	uint64_t next = s->heap_len ? s->heap[0]->due : 0; /* 0 disarms */
	if (next == s->timer_armed)
		return;
	struct itimerspec its = {.it_value = {(time_t)(next / 1000000000u), (long)(next % 1000000000u)}};
	if (timerfd_settime(s->tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
		die("timerfd_settime");
	s->timer_armed = next;
}

/* ---- commands ---- */

static bool arg_is(const char *a, size_t n, const char *word)
{
	return n == strlen(word) && strncasecmp(a, word, n) == 0;
}

/* The per-client limit. Returns true when the request may go on; otherwise it was answered. */
static bool admit(struct server *s, struct conn *c, struct req **rp, uint64_t now)
{
	if (s->opt.no_limit) {
		s->admitted++;
		return true;
	}
	const char *key = c->name ? c->name : c->addr;
	size_t key_len = c->name ? c->name_len : strlen(c->addr);
	ats_limiter_result res;
	ats_keyed_status st = ats_keyed_throttle_at(s->limits, key, key_len, 1, now, &res);
	if (st == ATS_KEYED_ALLOWED) {
		s->admitted++;
		return true;
	}
	ats_err *err;
	char suffix[48] = "";
	if (st == ATS_KEYED_DENIED) {
		s->limited++;
		/* Rounded up, so a client that waits this long finds a token (unless it raced itself). */
		uint64_t ms = ((uint64_t)res.retry_after_ns + 999999u) / 1000000u;
		snprintf(suffix, sizeof suffix, " retry-after-ms=%llu", (unsigned long long)ms);
		err = ats_err_new(ATS_ERR_LIMITED, "client %.*s over %llu/s burst %llu", (int)key_len, key,
		                  (unsigned long long)s->opt.rate, (unsigned long long)s->opt.burst);
	} else {
		/* A key the map refuses (CLIENT SETNAME checks names, so not expected), or no room for a
		 * new key: the status's own code, and nothing taken. */
		s->rejected++;
		err = ats_err_new(ats_keyed_status_code(st), "client %.*s: keyed limiter status %d", (int)key_len, key,
		                  (int)st);
		if (st == ATS_KEYED_NO_ROOM)
			err = ats_err_with_user(err, "The server is busy right now. Try again later.");
	}
	if (!*rp)
		*rp = enqueue(c, "", 0);
	if (*rp)
		answer_err(s, c, *rp, err, suffix);
	else
		ats_err_unref(err);
	return false;
}

/* A reply known at once: straight to the output, unless earlier requests still wait for theirs. */
static void reply_now(struct conn *c, const char *text)
{
	if (!c->head) {
		out_append(c, text, strlen(text));
		return;
	}
	struct req *r = enqueue(c, "", 0);
	if (r) {
		size_t len;
		char *reply = dup_reply(text, strlen(text), &len);
		answer(c, r, reply, len);
	}
}

static void reject(struct server *s, struct conn *c, ats_err *err)
{
	s->rejected++;
	struct req *r = enqueue(c, "", 0);
	if (r)
		answer_err(s, c, r, err, NULL);
	else
		ats_err_unref(err);
}

static void command(struct server *s, struct conn *c, int argc, char **argv, size_t *lens, uint64_t now)
{
	if (argc == 0)
		return;
	struct req *r = NULL;
	if (arg_is(argv[0], lens[0], "PING") && argc == 1) {
		if (admit(s, c, &r, now)) {
			s->served++;
			reply_now(c, "+PONG\r\n");
		}
	} else if (arg_is(argv[0], lens[0], "GET") && argc == 2) {
		if (!admit(s, c, &r, now))
			return;
		r = enqueue(c, argv[1], lens[1]);
		if (!r)
			return;
		ats_err *err = ats_ctx_with_timeout_at(s->ctx, s->opt.timeout_ns, now, &r->ctx);
		if (err) {
			answer_err(s, c, r, ats_err_wrap(err, "GET %s: no request context", r->key), NULL);
			return;
		}
		uint64_t span = s->opt.backend_max_ns - s->opt.backend_min_ns;
		r->delay_ns = s->opt.backend_min_ns + (span ? next_rand(s) % (span + 1) : 0);
		r->ready_ns = now + r->delay_ns;
		uint64_t deadline = ats_ctx_deadline(r->ctx);
		r->due = r->ready_ns < deadline ? r->ready_ns : deadline;
		if (!heap_push(s, r)) {
			ats_ctx_release(r->ctx);
			r->ctx = NULL;
			answer_err(s, c, r, ats_err_new(ATS_ERR_OUT_OF_MEMORY, "GET %s: no room to wait", r->key),
			           NULL);
		}
	} else if (arg_is(argv[0], lens[0], "CLIENT") && argc == 3 && arg_is(argv[1], lens[1], "SETNAME")) {
		if (!ats_keyed_key_ok(argv[2], lens[2])) {
			ats_err *err =
			    ats_err_new(ATS_ERR_INVALID_ARGUMENT, "client %s: name of %zu bytes", c->addr, lens[2]);
			reject(s, c, ats_err_with_user(err, "A client name must be 1 to %d bytes.", ATS_KEYED_MAX_KEY));
			return;
		}
		char *name = malloc(lens[2]);
		if (!name) {
			c->dead = true;
			return;
		}
		memcpy(name, argv[2], lens[2]);
		free(c->name);
		c->name = name;
		c->name_len = lens[2];
		reply_now(c, "+OK\r\n");
	} else if (arg_is(argv[0], lens[0], "QUIT")) {
		reply_now(c, "+OK\r\n");
		c->eof = true;
	} else {
		ats_err *err =
		    ats_err_new(ATS_ERR_INVALID_ARGUMENT, "client %s: unknown command '%.*s' with %d arguments",
		                c->addr, (int)(lens[0] > 64 ? 64 : lens[0]), argv[0], argc - 1);
		reject(s, c, ats_err_with_user(err, "Unknown command or wrong number of arguments."));
	}
}

/* ---- RESP parsing: arrays of bulk strings, and inline commands (redis-benchmark's PING_INLINE) ---- */

/* Parses one command at the start of buf. Returns the bytes it used, 0 when more input is needed,
 * -1 for malformed input. Arguments point into buf and are NUL-terminated in place. */
static long parse(char *buf, size_t len, int *argc, char **argv, size_t *lens)
{
	char *end = memchr(buf, '\n', len);
	if (buf[0] != '*') {
		if (!end)
			return len >= MAX_ARG_LEN ? -1 : 0;
		size_t used = (size_t)(end - buf) + 1;
		if (end > buf && end[-1] == '\r')
			end--;
		*end = 0;
		*argc = 0;
		for (char *save = NULL, *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
			if (*argc == MAX_ARGS)
				return -1;
			argv[*argc] = t;
			lens[(*argc)++] = strlen(t);
		}
		return (long)used;
	}
	if (!end)
		return len >= 32 ? -1 : 0;
	long n = strtol(buf + 1, NULL, 10);
	if (n < 1 || n > MAX_ARGS)
		return -1;
	size_t pos = (size_t)(end - buf) + 1;
	for (long i = 0; i < n; i++) {
		if (pos >= len)
			return 0;
		char *line = buf + pos;
		char *e = memchr(line, '\n', len - pos);
		if (!e)
			return len - pos >= 32 ? -1 : 0;
		if (line[0] != '$')
			return -1;
		long alen = strtol(line + 1, NULL, 10);
		if (alen < 0 || alen > MAX_ARG_LEN)
			return -1;
		pos = (size_t)(e - buf) + 1;
		if (len - pos < (size_t)alen + 2)
			return 0;
		argv[i] = buf + pos;
		lens[i] = (size_t)alen;
		if (buf[pos + (size_t)alen] != '\r' || buf[pos + (size_t)alen + 1] != '\n')
			return -1;
		pos += (size_t)alen + 2;
	}
	/* Terminated only once the whole command is in: a partial one is parsed again later. */
	for (long i = 0; i < n; i++)
		argv[i][lens[i]] = 0;
	*argc = (int)n;
	return (long)pos;
}

/* Runs the commands waiting in the input buffer while the client keeps up with its replies. */
static void process_input(struct server *s, struct conn *c, uint64_t now)
{
	size_t off = 0;
	while (!c->dead && !c->eof && off < c->in_len && c->queued < MAX_QUEUED &&
	       c->out_len - c->out_off < MAX_OUT_PENDING) {
		int argc = 0;
		char *argv[MAX_ARGS];
		size_t lens[MAX_ARGS];
		long used = parse(c->in + off, c->in_len - off, &argc, argv, lens);
		if (used == 0)
			break;
		if (used < 0) {
			s->rejected++;
			ats_err *err = ats_err_new(ATS_ERR_INVALID_ARGUMENT, "client %s: malformed RESP at byte %zu",
			                           c->addr, off);
			log_err(s, err);
			ats_err_unref(err);
			c->dead = true; /* the stream cannot be resynchronised */
			break;
		}
		off += (size_t)used;
		command(s, c, argc, argv, lens, now);
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
}

/* ---- connections ---- */

static void conn_free(struct server *s, struct conn *c)
{
	for (struct req *r = c->head, *next; r; r = next) {
		next = r->next;
		if (r->ctx) {
			heap_remove(s, r);
			ats_ctx_release(r->ctx);
		}
		free(r->reply);
		free(r);
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	close(c->fd); /* also removes it from the epoll set */
	if (s->accept_paused && s->lfd >= 0) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s->listen_tag};
		if (epoll_ctl(s->ep, EPOLL_CTL_MOD, s->lfd, &ev) != 0)
			die("epoll_ctl");
		s->accept_paused = false;
	}
	free(c->name);
	free(c->out);
	free(c);
}

static void flush_out(struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n > 0) {
			c->out_off += (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				c->dead = true;
			return;
		}
	}
	c->out_off = c->out_len = 0;
}

/* Reading stops while the client is behind on its replies or has too much in flight; writing is
 * watched only while replies wait. Closes the connection when it is finished; returns false then. */
static bool conn_update(struct server *s, struct conn *c)
{
	if (!c->dead && c->eof && !c->head && c->out_off == c->out_len)
		c->dead = true;
	if (c->dead) {
		conn_free(s, c);
		return false;
	}
	uint32_t want = 0;
	if (!c->eof && c->in_len < MAX_IN && c->queued < MAX_QUEUED && c->out_len - c->out_off < MAX_OUT_PENDING)
		want |= EPOLLIN;
	if (c->out_off < c->out_len)
		want |= EPOLLOUT;
	if (want != c->events) {
		struct epoll_event ev = {.events = want, .data.ptr = c};
		if (epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
			die("epoll_ctl");
		c->events = want;
	}
	return true;
}

static void conn_readable(struct server *s, struct conn *c, uint64_t now)
{
	ssize_t n = recv(c->fd, c->in + c->in_len, MAX_IN - c->in_len, 0);
	if (n > 0)
		c->in_len += (size_t)n;
	else if (n == 0)
		c->eof = true;
	else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
		c->dead = true;
	if (n > 0) {
		process_input(s, c, now);
		if (c->in_len == MAX_IN && c->queued == 0 && c->out_off == c->out_len)
			c->dead = true; /* one command larger than the buffer */
	}
}

static void accept_all(struct server *s)
{
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* The listener stays readable: stop watching it (or the loop spins) until a
				 * connection closes (conn_free). */
				struct epoll_event ev = {.events = 0, .data.ptr = s->listen_tag};
				if (epoll_ctl(s->ep, EPOLL_CTL_MOD, s->lfd, &ev) != 0)
					die("epoll_ctl");
				s->accept_paused = true;
			}
			return; /* EAGAIN */
		}
		struct conn *c = calloc(1, sizeof *c);
		if (!c) {
			close(fd);
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		char ip[INET6_ADDRSTRLEN] = "?";
		int port = 0;
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
			port = ntohs(a->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
			port = ntohs(a->sin6_port);
		}
		snprintf(c->addr, sizeof c->addr, "%s:%d", ip, port);
		c->fd = fd;
		c->events = EPOLLIN;
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
	}
}

/* ---- setup ---- */

static int listen_on(const char *host, int port, int *bound_port)
{
	struct sockaddr_storage ss = {0};
	socklen_t sl;
	struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
		sl = sizeof *a4;
	} else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		sl = sizeof *a6;
	} else {
		fprintf(stderr, "--bind %s: not an IPv4 or IPv6 address\n", host);
		exit(2);
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
		die("socket");
	if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 512) != 0)
		die("bind/listen");
	sl = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
		die("getsockname");
	*bound_port = ntohs(ss.ss_family == AF_INET ? a4->sin_port : a6->sin6_port);
	return fd;
}

static void epoll_add(struct server *s, int fd, void *tag)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
	if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
		die("epoll_ctl");
}

static void usage(FILE *f)
{
	fputs("usage: atscale-example-server [options]\n"
	      "  --bind ADDR           address to listen on (default 127.0.0.1)\n"
	      "  --port N              port (default 6380; 0 picks a free one)\n"
	      "  --rate N              requests per second per client (default 100)\n"
	      "  --burst N             burst per client (default 20)\n"
	      "  --no-limit            no per-client limit (for redis-benchmark, which stops at an error)\n"
	      "  --timeout-ms N        per-request deadline for GET (default 2)\n"
	      "  --backend-min-ms N    simulated backend time, lower end (default 0)\n"
	      "  --backend-max-ms N    simulated backend time, upper end (default 3)\n"
	      "  --log                 log every error reply's full record to stderr\n"
	      "Prints \"listening on ADDR port N\" on stdout when ready; SIGTERM or SIGINT stops it.\n",
	      f);
}

static uint64_t num(const char *flag, const char *v, uint64_t max)
{
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno || end == v || *end || n > max || v[0] == '-') {
		fprintf(stderr, "%s: not a number in 0..%llu: %s\n", flag, (unsigned long long)max, v);
		exit(2);
	}
	return n;
}

static void parse_options(struct options *o, int argc, char **argv)
{
	static const struct option longs[] = {
	    {"bind", required_argument, NULL, 'b'},
	    {"port", required_argument, NULL, 'p'},
	    {"rate", required_argument, NULL, 'r'},
	    {"burst", required_argument, NULL, 'B'},
	    {"no-limit", no_argument, NULL, 'n'},
	    {"timeout-ms", required_argument, NULL, 't'},
	    {"backend-min-ms", required_argument, NULL, 'm'},
	    {"backend-max-ms", required_argument, NULL, 'M'},
	    {"log", no_argument, NULL, 'l'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	*o = (struct options){.bind = "127.0.0.1",
	                      .port = 6380,
	                      .rate = 100,
	                      .burst = 20,
	                      .timeout_ns = 2 * UINT64_C(1000000),
	                      .backend_max_ns = 3 * UINT64_C(1000000)};
	const uint64_t hour_ms = 3600u * 1000u;
	for (int ch; (ch = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
		switch (ch) {
		case 'b': o->bind = optarg; break;
		case 'p': o->port = (int)num("--port", optarg, 65535); break;
		case 'r': o->rate = num("--rate", optarg, 1000000000); break;
		case 'B': o->burst = num("--burst", optarg, UINT32_MAX); break;
		case 'n': o->no_limit = true; break;
		case 't': o->timeout_ns = num("--timeout-ms", optarg, hour_ms) * UINT64_C(1000000); break;
		case 'm': o->backend_min_ns = num("--backend-min-ms", optarg, hour_ms) * UINT64_C(1000000); break;
		case 'M': o->backend_max_ns = num("--backend-max-ms", optarg, hour_ms) * UINT64_C(1000000); break;
		case 'l': o->log = true; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind != argc || o->backend_min_ns > o->backend_max_ns || o->burst == 0) {
		usage(stderr);
		exit(2);
	}
}

int main(int argc, char **argv)
{
	struct server s = {.ep = -1};
	parse_options(&s.opt, argc, argv);

	/* The signals arrive as reads on a signalfd, handled in the loop like any other event. They are
	 * blocked before any thread starts (the context timer thread, liburcu's), so every thread
	 * inherits the mask and a signal can only be taken through the signalfd. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	if (sigprocmask(SIG_BLOCK, &sigs, NULL) != 0)
		die("sigprocmask");

	ats_err *err = ats_ctx_with_cancel(ats_ctx_background(), &s.ctx);
	if (!err && !s.opt.no_limit) {
		ats_keyed_config cfg = {.rate = ats_rate_per_sec(s.opt.rate),
		                        .burst = s.opt.burst,
		                        .max_keys = 100000,
		                        .capacity_hint = 1024,
		                        .max_bytes = 16 << 20};
		err = ats_keyed_new(&s.limits, &cfg);
	}
	if (!err)
		err = ats_ctx_fd(s.ctx, &s.ctxfd);
	if (err) {
		ats_err_print(err, stderr);
		ats_err_unref(err);
		ats_keyed_free(s.limits);
		ats_ctx_release(s.ctx);
		return 1;
	}

	s.rng = ats_now_ns() | 1;
	s.ep = epoll_create1(EPOLL_CLOEXEC);
	s.sigfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	s.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); /* the clock of ats_now_ns */
	if (s.ep < 0 || s.sigfd < 0 || s.tfd < 0)
		die("epoll/signalfd/timerfd");
	int bound;
	s.lfd = listen_on(s.opt.bind, s.opt.port, &bound);
	s.opt.port = bound;
	/* Tags for the server's own descriptors: addresses no connection can have. */
	static char tag_listen, tag_signal, tag_timer, tag_ctx;
	s.listen_tag = &tag_listen;
	epoll_add(&s, s.lfd, &tag_listen);
	epoll_add(&s, s.sigfd, &tag_signal);
	epoll_add(&s, s.tfd, &tag_timer);
	epoll_add(&s, s.ctxfd, &tag_ctx);
	printf("listening on %s port %d\n", s.opt.bind, bound);
	fflush(stdout);

	struct epoll_event evs[64];
	while (!ats_ctx_done(s.ctx)) {
		int n = epoll_wait(s.ep, evs, 64, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		uint64_t now = ats_now_ns(); /* one clock read for the whole batch */
		for (int i = 0; i < n; i++) {
			void *tag = evs[i].data.ptr;
			if (tag == &tag_listen) {
				accept_all(&s);
			} else if (tag == &tag_signal) {
				struct signalfd_siginfo si;
				if (read(s.sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
					ats_err *why =
					    ats_err_new(ATS_ERR_UNAVAILABLE, "signal %u: shutting down", si.ssi_signo);
					ats_ctx_cancel(s.ctx, ats_err_with_user(why, "The server is shutting down."));
				}
			} else if (tag == &tag_timer) {
				uint64_t expirations;
				if (read(s.tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
					die("read timerfd");
				s.timer_armed = 0;
			} else if (tag == &tag_ctx) {
				/* The server context is done (the loop condition ends the loop). The eventfd is
				 * the context's: it stays readable and is never read here. */
			} else {
				struct conn *c = tag;
				if (evs[i].events & (EPOLLERR | EPOLLHUP))
					c->dead = true;
				if (!c->dead && (evs[i].events & EPOLLIN))
					conn_readable(&s, c, now);
				if (!c->dead && (evs[i].events & EPOLLOUT))
					flush_out(c);
			}
		}
		/* Settle what this batch's `now` decides: answers due and deadlines passed. */
		settle_due(&s, now);
		for (struct conn *c = s.conns, *next; c; c = next) {
			next = c->next;
			if (!c->dead && c->in_len)
				process_input(&s, c, now); /* input held back while the client was behind */
			if (!c->dead)
				flush_out(c);
			conn_update(&s, c);
		}
		arm_timer(&s); /* after the loop above, which can queue GETs from held-back input */
	}

	/* Shutdown: the server context is cancelled, so every request context (its child) is done and
	 * settles as cancelled; the replies get one non-blocking write and every connection closes. */
	close(s.lfd);
	s.lfd = -1;
	uint64_t now = ats_now_ns();
	while (s.heap_len)
		if (!settle(&s, s.heap[0], now)) /* not reached: every request context is done now */
			break;
	while (s.conns) {
		flush_out(s.conns);
		conn_free(&s, s.conns);
	}
	fprintf(stderr,
	        "atscale-example-server: admitted %llu, limited %llu, timed out %llu, cancelled %llu, "
	        "rejected %llu, served %llu\n",
	        (unsigned long long)s.admitted, (unsigned long long)s.limited, (unsigned long long)s.timed_out,
	        (unsigned long long)s.cancelled, (unsigned long long)s.rejected, (unsigned long long)s.served);
	close(s.tfd);
	close(s.sigfd);
	close(s.ep);
	free(s.heap);
	ats_keyed_free(s.limits);
	ats_ctx_release(s.ctx); /* closes the context's eventfd too */
	return 0;
}
