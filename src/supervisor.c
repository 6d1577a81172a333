/* SPDX-License-Identifier: BSD-2-Clause */
/* Supervision (supervisor.h): one monitor thread per supervisor; each start of a ward is an
 * "incarnation" on the heap with its own thread, ctx and heartbeat.
 *
 * Who frees an incarnation. Its state word decides, by one CAS: the ward's thread moves it from
 * RUNNING to EXITED when its body returns (the monitor then joins and frees it), or the monitor
 * moves it to ABANDONED when a stop timed out (quarantine: the thread is detached, and when its
 * body finally returns, its CAS fails and it frees the incarnation itself, touching nothing of
 * the supervisor, which may be gone). Only the monitor (or stop, after joining the monitor)
 * changes the ward table, so it needs no lock. */
#include "atscale/supervisor.h"
#include "atscale/clock.h"
#include "internal/compiler.h"
#include "internal/ec.h"
#include "internal/futex.h"
#ifdef ATS_TESTING
#include "internal/supervisor_hooks.h"
#endif

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { RUNNING = 0, EXITED = 1, ABANDONED = 2 };

#ifdef ATS_TESTING
_Atomic int ats__sup_refuse_starts;

static bool refuse_start(void)
{
	int n = atomic_load(&ats__sup_refuse_starts);
	while (n > 0 && !atomic_compare_exchange_weak(&ats__sup_refuse_starts, &n, n - 1))
		;
	return n != 0;
}
#endif

/* What the monitor reads at every check, for each ward, is on two lines: the heartbeat's word (the
 * ward's line) and the line after the heartbeat, which holds the state and the watch's own fields,
 * ahead of its window of intervals. (With the state after the window, a check of 1000 wards missed
 * on a third line each.) */
struct incarnation {
	ats_heartbeat hb; /* first: 64-byte aligned; two lines */
	_Atomic uint32_t state;
	_Atomic uint32_t done; /* futex word: 1 once the body returned and the state is EXITED */
	ats_heartbeat_watch watch;
	ats_ward_fn run;
	void *arg;
	ats_ctx *ctx;
	ats_supervisor *sup; /* touched by the thread only before its CAS to EXITED */
	ats_err *result;
	pthread_t thread;
};
_Static_assert(offsetof(struct incarnation, watch) + offsetof(ats_heartbeat_watch, intervals_) <= 3 * 64,
               "the state and the watch's fields share the line after the heartbeat");

struct ward {
	ats_ward_spec spec;
	char *name;
	struct incarnation *inc; /* NULL: not running (ended for good, or between a stop and a start) */
	bool pending;            /* stopped to come back (go_down), not started again yet */
	_Atomic uint64_t starts;
};

struct ats_supervisor {
	char *name;
	ats_supervisor_config cfg;
	struct ward *w;
	unsigned n, cap;
	uint64_t check_ns;
	ats_ctx *ctx;
	ats_ctx_after ctx_done; /* kicks the monitor when ctx is done: it then stops every ward */
	pthread_t monitor;
	bool running;
	ats_err *result;       /* the give-up error */
	uint64_t *restarts_at; /* ring of the last max_restarts + 1 restart times */
	unsigned rs_len, rs_next;
	bool retry;            /* a start failed: the pending wards are started at the next check */
	_Atomic uint32_t kick; /* the monitor sleeps on it */
	_Atomic uint32_t stopping;
	_Atomic uint32_t finished; /* 1 once the monitor ended */
	struct ck_ec32 ended;      /* bumped once the monitor ended; ats_supervisor_wait parks on it */
	_Atomic uint64_t starts, restarts, stalls, exits, quarantined, give_ups;
};

static void count(_Atomic uint64_t *c)
{
	/* relaxed: a statistic. */
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void kick(ats_supervisor *s)
{
	/* release: the monitor re-reads ward states after it sees the new value. */
	atomic_fetch_add_explicit(&s->kick, 1, memory_order_release);
	ats__futex_wake(&s->kick, 1);
}

static void kick_monitor(void *s)
{
	kick(s);
}

static void emit(ats_supervisor *s, ats_sup_event_kind kind, unsigned id, const char *name, const ats_err *err)
{
	if (s->cfg.on_event) {
		ats_supervisor_event ev = {kind, id, name, err};
		s->cfg.on_event(&ev, s->cfg.event_arg);
	}
}

static ats_err *tag(ats_err *err, ats_supervisor *s, const char *ward)
{
	err = ats_err_with_kv(err, "supervisor", "%s", s->name);
	return ward ? ats_err_with_kv(err, "ward", "%s", ward) : err;
}

/* ---- Incarnations ---- */

static void *ward_main(void *arg)
{
	struct incarnation *inc = arg;
	ats_err *r = inc->run(inc->arg, &inc->hb, inc->ctx);
	inc->result = r;
	uint32_t running = RUNNING;
	/* acq_rel: the monitor that sees EXITED sees the result; a monitor that abandoned us made
	 * its decision before, and we see that. */
	if (atomic_compare_exchange_strong_explicit(&inc->state, &running, EXITED, memory_order_acq_rel,
	                                            memory_order_acquire)) {
		ats_supervisor *s = inc->sup;
		atomic_store_explicit(&inc->done, 1, memory_order_release);
		ats__futex_wake(&inc->done, 1);
		kick(s);
	} else {
		/* Quarantined: nobody will join us; what was ours is ours to free. */
		ats_err_unref(r);
		ats_ctx_release(inc->ctx);
		free(inc);
	}
	return NULL;
}

static void free_inc(struct incarnation *inc)
{
	ats_err_unref(inc->result);
	ats_ctx_release(inc->ctx);
	free(inc);
}

/* Starts ward i: a restart when the monitor starts it, a first start when ats_supervisor_start does
 * (a supervisor started again after a stop starts its wards afresh). Errors: no memory, no thread. */
static ats_err *start_ward(ats_supervisor *s, unsigned i, bool restart)
{
	struct ward *w = &s->w[i];
	struct incarnation *inc = aligned_alloc(64, (sizeof *inc + 63) & ~(size_t)63);
	if (!inc)
		return ats_err_oom;
	memset(inc, 0, sizeof *inc);
	ats_err *err = ats_ctx_with_cancel(s->ctx, &inc->ctx);
	if (err) {
		free(inc);
		return err;
	}
	ats_err_unref(ats_heartbeat_init(&inc->hb, NULL)); /* cannot fail: hb is not NULL */
	if (w->spec.watch.timeout_ns)
		err = ats_heartbeat_watch_init(&inc->watch, &inc->hb, &w->spec.watch, ats_fast_now_ns());
	if (err) { /* (not expected: ats_supervisor_add checked the watch config) */
		ats_ctx_release(inc->ctx);
		free(inc);
		return tag(err, s, w->name);
	}
	inc->run = w->spec.run;
	inc->arg = w->spec.arg;
	inc->sup = s;
	atomic_init(&inc->state, RUNNING);
	atomic_init(&inc->done, 0);
	/* Counted before the thread starts, so whoever sees this incarnation run sees its start (and
	 * restart) counted (pthread_create orders the two); taken back if the thread cannot start. The
	 * supervisor's start first: a reader that sees a restart counted mostly sees its start too. */
	atomic_fetch_add_explicit(&w->starts, 1, memory_order_relaxed);
	count(&s->starts);
	if (restart)
		count(&s->restarts);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old); /* wards, like every library thread, block signals */
	int rc;
#ifdef ATS_TESTING
	if (refuse_start())
		rc = EAGAIN;
	else
#endif
		rc = pthread_create(&inc->thread, NULL, ward_main, inc);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		/* relaxed: statistics, as count(). */
		if (restart)
			atomic_fetch_sub_explicit(&s->restarts, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(&s->starts, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(&w->starts, 1, memory_order_relaxed);
		ats_ctx_release(inc->ctx);
		free(inc);
		return tag(ats_err_errno(rc, "supervisor: cannot start a ward thread"), s, w->name);
	}
	w->inc = inc;
	if (restart)
		emit(s, ATS_SUP_EVENT_RESTART, i, w->name, NULL);
	return NULL;
}

/* Stops ward i's incarnation: cancel, wait up to its shutdown timeout, join or quarantine. */
static void stop_ward(ats_supervisor *s, unsigned i)
{
	struct ward *w = &s->w[i];
	struct incarnation *inc = w->inc;
	if (!inc)
		return;
	w->inc = NULL;
	ats_ctx_cancel(inc->ctx, NULL);
	uint64_t timeout = w->spec.shutdown_timeout_ns ? w->spec.shutdown_timeout_ns : ATS_SUP_DEFAULT_SHUTDOWN_NS;
	uint64_t deadline = ats__add_sat(ats_now_ns(), timeout);
	/* acquire: pairs with ward_main's release store of done. */
	while (!atomic_load_explicit(&inc->done, memory_order_acquire) && ats_now_ns() < deadline)
		ats__futex_wait(&inc->done, 0, deadline);
	pthread_t thread = inc->thread; /* read before the CAS: once ABANDONED, the ward may free inc */
	uint32_t running = RUNNING;
	if (atomic_compare_exchange_strong_explicit(&inc->state, &running, ABANDONED, memory_order_acq_rel,
	                                            memory_order_acquire)) {
		pthread_detach(thread);
		count(&s->quarantined);
		ats_err *err = tag(
		    ats_err_new(ATS_ERR_UNAVAILABLE, "ward did not return within its shutdown timeout: quarantined"), s,
		    w->name);
		emit(s, ATS_SUP_EVENT_QUARANTINE, i, w->name, err);
		ats_err_unref(err);
		return;
	}
	pthread_join(inc->thread, NULL);
	free_inc(inc);
}

/* ---- The monitor ---- */

/* Records a restart at now; true when that passes the restart intensity. */
static bool too_many(ats_supervisor *s, uint64_t now)
{
	if (!s->restarts_at)
		return false;
	unsigned cap = s->cfg.max_restarts + 1;
	s->restarts_at[s->rs_next] = now;
	s->rs_next = (s->rs_next + 1) % cap;
	if (s->rs_len < cap)
		s->rs_len++;
	if (s->rs_len < cap)
		return false;
	/* The oldest of the last max_restarts + 1 restarts: all of them within the period? */
	return now - s->restarts_at[s->rs_next] < s->cfg.period_ns;
}

static void stop_all(ats_supervisor *s)
{
	for (unsigned j = s->n; j-- > 0;)
		stop_ward(s, j);
}

/* Whether a ward that ended (abnormally or not) is started again, by its restart type. */
static bool comes_back(const struct ward *w, bool abnormal)
{
	return w->spec.restart == ATS_WARD_PERMANENT || (w->spec.restart == ATS_WARD_TRANSIENT && abnormal);
}

/* Ward i's incarnation returned (EXITED): joins and frees it, counts and reports the exit, and
 * returns its result (tagged; NULL for a normal exit). */
static ats_err *reap(ats_supervisor *s, unsigned i)
{
	struct ward *w = &s->w[i];
	struct incarnation *inc = w->inc;
	pthread_join(inc->thread, NULL);
	ats_err *r = inc->result;
	inc->result = NULL;
	w->inc = NULL;
	free_inc(inc);
	count(&s->exits);
	if (r)
		r = tag(r, s, w->name);
	emit(s, ATS_SUP_EVENT_EXIT, i, w->name, r);
	return r;
}

static bool has_exited(const struct incarnation *inc)
{
	/* acquire: pairs with ward_main's CAS (its result is seen). */
	return atomic_load_explicit(&((struct incarnation *)inc)->state, memory_order_acquire) == EXITED;
}

/* Ward i failed and comes back: by the strategy, the wards that go down with it are stopped (last
 * started first) and marked pending with it, each by its own restart type (a running sibling
 * unless temporary; one that already returned, by its own result: a transient one that exited
 * normally stays down). */
static void go_down(ats_supervisor *s, unsigned i)
{
	unsigned from = i, to = i + 1;
	if (s->cfg.strategy == ATS_SUP_ONE_FOR_ALL)
		from = 0, to = s->n;
	else if (s->cfg.strategy == ATS_SUP_REST_FOR_ONE)
		to = s->n;
	for (unsigned j = from; j < to; j++) {
		struct ward *o = &s->w[j];
		if (j == i) {
			o->pending = true;
		} else if (o->inc && has_exited(o->inc)) {
			ats_err *r = reap(s, j);
			o->pending = comes_back(o, r != NULL);
			ats_err_unref(r);
		} else if (o->inc) {
			o->pending = o->spec.restart != ATS_WARD_TEMPORARY;
		} /* else: not running; a ward still pending from a failed start stays so */
	}
	for (unsigned j = to; j-- > from;)
		if (j != i)
			stop_ward(s, j);
}

/* Records a restart; on passing the restart intensity, gives up (every ward stopped, the event,
 * the result, consuming why) and returns true. */
static bool give_up_if_too_many(ats_supervisor *s, ats_err *why)
{
	if (!too_many(s, ats_fast_now_ns()))
		return false;
	s->result = tag(ats_err_wrapc(why, ATS_ERR_UNAVAILABLE, "supervisor gave up: more than %u restarts in %llu ns",
	                              s->cfg.max_restarts, (unsigned long long)s->cfg.period_ns),
	                s, NULL);
	stop_all(s);
	for (unsigned j = 0; j < s->n; j++)
		s->w[j].pending = false;
	count(&s->give_ups);
	emit(s, ATS_SUP_EVENT_GIVE_UP, 0, s->name, s->result);
	return true;
}

/* Starts the pending wards in order. A ward that cannot be started (no thread, no memory) counts
 * as a restart that failed at once: an EXIT event, the restart intensity, and its strategy again
 * (go_down); the wards still pending are then started at the next check, not at once, so a
 * machine out of threads is not spun on. Returns true when the supervisor gave up. */
static bool start_pending(ats_supervisor *s)
{
	s->retry = false;
	for (unsigned j = 0; j < s->n; j++) {
		struct ward *o = &s->w[j];
		if (!o->pending)
			continue;
		ats_err *err = start_ward(s, j, true);
		if (!err) {
			o->pending = false;
			continue;
		}
		count(&s->exits); /* an exit as any other: the counter and the events agree */
		emit(s, ATS_SUP_EVENT_EXIT, j, o->name, err);
		if (give_up_if_too_many(s, err))
			return true;
		ats_err_unref(err);
		go_down(s, j);
		s->retry = true;
		return false;
	}
	return false;
}

/* Ward i failed (stalled, already stopped) or exited (reaped). Applies restart type, intensity
 * and strategy. Consumes why. Returns true when the supervisor gave up. */
static bool handle(ats_supervisor *s, unsigned i, ats_err *why, bool abnormal)
{
	if (!comes_back(&s->w[i], abnormal) || ats_ctx_done(s->ctx)) {
		ats_err_unref(why);
		return false;
	}
	if (give_up_if_too_many(s, why))
		return true;
	ats_err_unref(why);
	go_down(s, i);
	return start_pending(s);
}

enum { PREFETCH_AHEAD = 8 }; /* wards: about as many misses as a core keeps in flight */

static void *monitor_main(void *arg)
{
	ats_supervisor *s = arg;
	for (;;) {
		/* acquire: pairs with kick()'s release (ward states are then seen). */
		uint32_t k = atomic_load_explicit(&s->kick, memory_order_acquire);
		if (atomic_load_explicit(&s->stopping, memory_order_acquire))
			break;
		if (ats_ctx_done(s->ctx)) { /* the start ctx is done: that stops them all (a normal end) */
			stop_all(s);
			break;
		}
		bool gave_up = s->retry && start_pending(s);
		uint64_t now = ats_fast_now_ns();
		/* The next look: the check period, or sooner, when a silent ward would become stalled, so
		 * a stall is acted on when it becomes one rather than at the next period. */
		uint64_t next = ats__add_sat(now, s->check_ns);
		bool any = false;
		for (unsigned i = 0; i < s->n && !gave_up; i++) {
			struct ward *w = &s->w[i];
			struct incarnation *inc = w->inc;
			/* Each ward's record is a cache miss at every check (the wards' threads and everything
			 * else ran since): ask for those of the wards PREFETCH_AHEAD on, so that the misses
			 * overlap rather than come one after the other. (A prefetch of a record freed meanwhile
			 * is harmless: it loads nothing it could fault on.) */
			if (i + PREFETCH_AHEAD < s->n) {
				const struct incarnation *ahead = s->w[i + PREFETCH_AHEAD].inc;
				if (ahead) {
					__builtin_prefetch(&ahead->hb);
					__builtin_prefetch(&ahead->state);
				}
			}
			any |= w->pending;
			if (!inc)
				continue;
			any = true;
			if (has_exited(inc)) {
				ats_err *r = reap(s, i);
				gave_up = handle(s, i, r, r != NULL);
			} else if (w->spec.watch.timeout_ns &&
			           ats_heartbeat_check(&inc->watch, now) == ATS_HB_STALLED) {
				count(&s->stalls);
				ats_err *err = tag(
				    ats_err_new(ATS_ERR_UNAVAILABLE, "ward stalled: work pending, no beat for %llu ns",
				                (unsigned long long)(now - ats_heartbeat_last_beat_ns(&inc->watch))),
				    s, w->name);
				emit(s, ATS_SUP_EVENT_STALL, i, w->name, err);
				stop_ward(s, i);
				gave_up = handle(s, i, err, true);
			} else if (w->spec.watch.timeout_ns) {
				uint64_t at = ats_heartbeat_stall_at(&inc->watch);
				if (at > now && at < next) /* (past it with phi still healthy: the period decides) */
					next = at;
			}
		}
		if (gave_up || !any)
			break;
		ats__futex_wait(&s->kick, k, next);
	}
	/* release: wait() reads the result after it sees finished. Then the bump (ck_ec orders the
	 * store before it) wakes the waiters that armed `ended`. */
	atomic_store_explicit(&s->finished, 1, memory_order_release);
	ck_ec32_inc(&s->ended, &ats__ec_mode_mp);
	return NULL;
}

/* ---- API ---- */

static char *dup_name(const char *name, const char *fallback, unsigned id)
{
	char buf[32];
	if (!name) {
		snprintf(buf, sizeof buf, "%s %u", fallback, id);
		name = buf;
	}
	return strdup(name);
}

ats_err *ats_supervisor_new(ats_supervisor **out, const ats_supervisor_config *cfg)
{
	if (!out || !cfg)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: NULL %s", out ? "config" : "out");
	*out = NULL;
	if ((unsigned)cfg->strategy > ATS_SUP_REST_FOR_ONE)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: unknown strategy %d", (int)cfg->strategy);
	if (cfg->period_ns && !cfg->max_restarts)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: a restart period with max_restarts 0");
	if (cfg->period_ns && cfg->max_restarts == UINT_MAX) /* a ring of max_restarts + 1 times */
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT,
		                   "supervisor: max_restarts %u with a period (to never give up: period 0 and "
		                   "max_restarts 0)",
		                   cfg->max_restarts);
	ats_supervisor *s = calloc(1, sizeof *s);
	if (!s)
		return ats_err_oom;
	s->cfg = *cfg;
	s->name = strdup(cfg->name ? cfg->name : "supervisor");
	if (cfg->period_ns)
		s->restarts_at = calloc(cfg->max_restarts + 1u, sizeof *s->restarts_at);
	if (!s->name || (cfg->period_ns && !s->restarts_at)) {
		free(s->name);
		free(s->restarts_at);
		free(s);
		return ats_err_oom;
	}
	s->cfg.name = s->name;
	*out = s;
	return NULL;
}

ats_err *ats_supervisor_add(ats_supervisor *s, const ats_ward_spec *spec, unsigned *id)
{
	if (!s || !spec || !spec->run)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: NULL %s",
		                   !s      ? "supervisor"
		                   : !spec ? "spec"
		                           : "run");
	if ((unsigned)spec->restart > ATS_WARD_TEMPORARY)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: unknown restart type %d", (int)spec->restart);
	if (s->running)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: add after start");
	if (spec->watch.timeout_ns) { /* the watch's own rules, checked now rather than at each start */
		ats_heartbeat hb;
		ats_heartbeat_watch watch;
		ats_err_unref(ats_heartbeat_init(&hb, NULL));
		ats_err *err = ats_heartbeat_watch_init(&watch, &hb, &spec->watch, 0);
		if (err)
			return ats_err_wrapc(err, ATS_ERR_INVALID_ARGUMENT, "supervisor: ward %s: bad watch config",
			                     spec->name ? spec->name : "(unnamed)");
	}
	if (s->n == ATS_SUP_MAX_WARDS)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: %u wards already", s->n);
	if (s->n == s->cap) {
		unsigned cap = s->cap ? 2 * s->cap : 8;
		struct ward *w = realloc(s->w, cap * sizeof *w);
		if (!w)
			return ats_err_oom;
		s->w = w;
		s->cap = cap;
	}
	struct ward *w = &s->w[s->n];
	memset(w, 0, sizeof *w);
	w->spec = *spec;
	w->name = dup_name(spec->name, "ward", s->n);
	if (!w->name)
		return ats_err_oom;
	w->spec.name = w->name;
	if (id)
		*id = s->n;
	s->n++;
	return NULL;
}

ats_err *ats_supervisor_start(ats_supervisor *s, ats_ctx *ctx)
{
	if (!s || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: NULL %s", s ? "ctx" : "supervisor");
	if (s->running)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: already running");
	ats_err *err = ats_ctx_with_cancel(ctx, &s->ctx);
	if (err)
		return err;
	ats_ctx_after_func(s->ctx, &s->ctx_done, kick_monitor, s);
	s->check_ns = s->cfg.check_ns;
	if (!s->check_ns) {
		s->check_ns = 100000000u;
		for (unsigned i = 0; i < s->n; i++)
			if (s->w[i].spec.watch.timeout_ns && s->w[i].spec.watch.timeout_ns / 4 < s->check_ns)
				s->check_ns = s->w[i].spec.watch.timeout_ns / 4 ? s->w[i].spec.watch.timeout_ns / 4 : 1;
	}
	ats_err_unref(s->result);
	s->result = NULL;
	s->rs_len = s->rs_next = 0;
	s->retry = false;
	for (unsigned i = 0; i < s->n; i++)
		s->w[i].pending = false;
	atomic_store(&s->stopping, 0);
	atomic_store(&s->finished, 0);
	for (unsigned i = 0; i < s->n && !err; i++)
		err = start_ward(s, i, false);
	int rc = 0;
	if (!err) {
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		rc = pthread_create(&s->monitor, NULL, monitor_main, s);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (rc)
			err = tag(ats_err_errno(rc, "supervisor: cannot start the monitor thread"), s, NULL);
	}
	if (err) {
		ats_ctx_cancel(s->ctx, NULL);
		stop_all(s);
		ats_ctx_after_stop(&s->ctx_done);
		ats_ctx_release(s->ctx);
		s->ctx = NULL;
		return err;
	}
	s->running = true;
	return NULL;
}

ats_err *ats_supervisor_wait(ats_supervisor *s, ats_ctx *ctx)
{
	if (!s || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "supervisor: NULL %s", s ? "ctx" : "supervisor");
	if (!s->running)
		return s->result ? ats_err_ref(s->result) : NULL;
	/* A cancel also bumps `ended`, so it wakes this thread even where it sleeps on one word only
	 * (ats__ec_park). */
	ats__ec_kicker k = {.ec = &s->ended};
	atomic_init(&k.word, 0);
	ats_ctx_after after;
	ats_ctx_after_func(ctx, &after, ats__ec_kick_bump, &k);
	ats_err *err = NULL;
	for (;;) {
		/* acquire: pairs with ats__ec_kick's release (the ctx check below then sees done). */
		uint32_t kv = atomic_load_explicit(&k.word, memory_order_acquire);
		uint32_t val = ats__ec_arm(&s->ended);
		/* seq_cst: the flag set before the look at finished, the other half of monitor_main's
		 * store and bump (the eventcount protocol: src/chan.c, step 3). */
		atomic_thread_fence(memory_order_seq_cst);
		/* acquire: pairs with monitor_main's release store of finished. */
		if (atomic_load_explicit(&s->finished, memory_order_acquire)) {
			err = s->result ? ats_err_ref(s->result) : NULL;
			break;
		}
		if (ats_ctx_done(ctx) && (err = ats_ctx_err(ctx)))
			break;
		struct futex_waitv wv[2] = {
		    {.val = val, .uaddr = (uintptr_t)&s->ended.counter, .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG},
		    {.val = kv, .uaddr = (uintptr_t)&k.word, .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG},
		};
		ats__ec_park(wv, 2, ats_ctx_deadline(ctx), true);
	}
	ats_ctx_after_stop(&after);
	return err;
}

void ats_supervisor_stop(ats_supervisor *s)
{
	if (!s || !s->running)
		return;
	atomic_store_explicit(&s->stopping, 1, memory_order_release);
	kick(s);
	pthread_join(s->monitor, NULL);
	stop_all(s);
	ats_ctx_cancel(s->ctx, NULL);
	ats_ctx_after_stop(&s->ctx_done); /* waits for the kick, if it is running */
	ats_ctx_release(s->ctx);
	s->ctx = NULL;
	s->running = false;
}

void ats_supervisor_free(ats_supervisor *s)
{
	if (!s)
		return;
	ats_supervisor_stop(s);
	for (unsigned i = 0; i < s->n; i++)
		free(s->w[i].name);
	free(s->w);
	free(s->restarts_at);
	ats_err_unref(s->result);
	free(s->name);
	free(s);
}

void ats_supervisor_stats_get(const ats_supervisor *s, ats_supervisor_stats *out)
{
	if (!s || !out)
		return;
	ats_supervisor *m = (ats_supervisor *)s;
	/* relaxed: statistics. */
	out->starts = atomic_load_explicit(&m->starts, memory_order_relaxed);
	out->restarts = atomic_load_explicit(&m->restarts, memory_order_relaxed);
	out->stalls = atomic_load_explicit(&m->stalls, memory_order_relaxed);
	out->exits = atomic_load_explicit(&m->exits, memory_order_relaxed);
	out->quarantined = atomic_load_explicit(&m->quarantined, memory_order_relaxed);
	out->give_ups = atomic_load_explicit(&m->give_ups, memory_order_relaxed);
}

uint64_t ats_supervisor_ward_starts(const ats_supervisor *s, unsigned id)
{
	if (!s || id >= s->n)
		return 0;
	uint64_t n = atomic_load_explicit(&((ats_supervisor *)s)->w[id].starts, memory_order_relaxed);
	return n;
}

/* ---- Nesting ---- */

static ats_err *child_run(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	ats_supervisor *child = arg;
	ats_heartbeat_work_end(hb); /* idle: only the child's exit matters to the parent */
	ats_err *err = ats_supervisor_start(child, ctx);
	if (err)
		return err;
	err = ats_supervisor_wait(child, ctx);
	if (ats_ctx_done(ctx)) { /* stopped by the parent: a normal end */
		ats_err_unref(err);
		err = NULL;
	}
	ats_supervisor_stop(child);
	return err;
}

ats_ward_spec ats_supervisor_ward(ats_supervisor *child, const char *name, ats_ward_restart restart)
{
	ats_ward_spec spec;
	memset(&spec, 0, sizeof spec);
	spec.name = name;
	spec.run = child_run;
	spec.arg = child;
	spec.restart = restart;
	/* Wait for the child's stop however long: it is bounded (the child quarantines its own wards
	 * that overstay), and a child_run left behind in quarantine would still be stopping the child
	 * while its replacement started it again. */
	spec.shutdown_timeout_ns = UINT64_MAX;
	return spec;
}

/* ---- Pool steward ---- */

static ats_err *steward_run(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	ats_pool_steward *st = arg;
	if (!st || !st->pool || !st->stuck_ns)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool steward: %s",
		                   !st || !st->pool ? "NULL pool" : "stuck_ns 0");
	uint64_t period = st->stuck_ns / 4 ? st->stuck_ns / 4 : 1;
	for (;;) {
		ats_heartbeat_work_begin(hb);
		ats_err *err = ats_pool_replace_stuck(st->pool, st->stuck_ns, NULL);
		ats_heartbeat_work_end(hb);
		if (err) {
			if (ats_err_code(err) == ATS_ERR_INVALID_ARGUMENT)
				return err; /* not for this pool (called from one of its workers): give up */
			ats_err_unref(err); /* no memory or no thread: the next pass tries again */
		}
		if (ats_ctx_wait(ctx, ats_now_ns() + period))
			return NULL;
	}
}

ats_ward_spec ats_pool_steward_ward(ats_pool_steward *st, const char *name)
{
	ats_ward_spec spec;
	memset(&spec, 0, sizeof spec);
	spec.name = name ? name : "pool steward";
	spec.run = steward_run;
	spec.arg = st;
	spec.restart = ATS_WARD_PERMANENT;
	uint64_t stuck = st ? st->stuck_ns : 0;
	spec.watch.timeout_ns = stuck > 100000000u ? stuck : 100000000u;
	return spec;
}
