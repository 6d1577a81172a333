/* SPDX-License-Identifier: BSD-2-Clause */
/* Contexts: the cancellation tree, deadlines (on the timer service, timer.c), after-funcs, values.
 *
 * Concurrency design (no global lock anywhere; every path counted in atomic read-modify-writes
 * (row floor.fetch_add each), since they are what create + cancel + release costs):
 *  - Each context's lock is a bit of its own state word. Every thread but the holder changes the
 *    word only by CAS from an unlocked value, so the holder knows the word exactly and unlocks with
 *    a plain release store, which can also carry the done reason: a cancel is one CAS and one
 *    store. Lock waiters spin, then yield (critical sections are a few instructions, except a
 *    wide cancel's walk over its children). Locks nest only parent -> child and timer shard ->
 *    context, so they cannot deadlock.
 *  - Lifetime has two counts. `refs` (atomic): the user's references, after-func registrations
 *    and descendants that read this context's value table. `kids` (under the context's lock):
 *    linked children, plus pins taken by a cancel walk, the timer or a merge while they work on
 *    it. A context is freed when both are zero. Taking a link costs nothing beyond the parent's
 *    lock, which linking takes anyway. A context whose refs reached zero while it still has kids
 *    is a zombie: still linked and still cancelled with its parent (so its children are), freed
 *    when the last kid goes.
 *  - A child unlinks itself: whoever made it done (its cancel, a parent's walk, the timer) or, for
 *    a child never cancelled, its final free. The link keeps the parent alive until then.
 *  - Cancel walks the subtree with an intrusive stack (walk_next), pinning each child under its
 *    parent's lock, so any depth and width work without recursion.
 *  - A deadline is a timer of the timer service (internal/timer.h) embedded in the context: the
 *    timer thread claims a due one by pinning the context under the shard lock, then cancels it.
 *  - Freeing is iterative too (a freed child can release a zombie parent, which releases its own).
 */
#include "atscale/ctx.h"
#include "atscale/clock.h"
#include "internal/compiler.h"
#include "internal/ctx_hooks.h"
#include "internal/futex.h"
#include "internal/timer.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- The context ---- */

enum {
	F_STATIC = 1,      /* the background: no reference counting */
	F_CANCELLABLE = 2, /* can become done (not background, not without_cancel) */
	F_OWN_VALS = 4,    /* vals points into this allocation */
};

struct merge_reg {
	ats_ctx_after a;
	ats_ctx *merged;
};

struct ats_ctx {
	struct ats__ctx_head h;  /* first: the inline fast paths cast the pointer; lock bit in state */
	_Atomic uint32_t refs;   /* users, after-func registrations, value-table readers */
	_Atomic uint32_t kids;   /* linked children + pins; changed under the lock */
	_Atomic uint32_t linked; /* in parent's child list; changed under the parent's lock */
	uint8_t zombie, freeing; /* under the lock */
	int efd;                 /* -1 until ats_ctx_fd */
	uint32_t nmerge;
	ats_ctx *parent;                /* while linked (the link keeps it alive) */
	ats_ctx *vals_owner;            /* counted reference to the context owning h.vals, or NULL */
	ats_ctx *sib_next, **sib_pprev; /* in parent->children, guarded by parent's lock */
	ats_ctx *children;
	ats_ctx_after *afters;
	int fired_efd;            /* the fd to signal, read under the lock by the cancel */
	uint8_t fired_wake;       /* the cancel saw waiters */
	uint8_t fired_afters;     /* the cancel saw after-funcs (none can be added once done) */
	ats_err *err;             /* set before the state turns done, immutable after */
	ats_err *deadline_err;    /* what expiry reports: NULL for the shared record, else a counted
	                           * reference to the record of the deadline cause whose deadline this
	                           * is (own, or inherited with the deadline); immutable */
	ats_ctx *walk_next;       /* the cancel walk's stack, then the free list of finalize */
	struct ats__timer timer;  /* its deadline's, armed while it waits (timer.h) */
	struct merge_reg merge[]; /* a merge's after-funcs on its other parents (or a value table) */
};

/* The lock bit. Returns the unlocked word seen; the holder unlocks with ctx_unlock(c, word). */
static inline uint32_t ctx_lock(ats_ctx *c)
{
	/* relaxed, this load and the one in the loop: the CAS validates them. */
	uint32_t s = atomic_load_explicit(&c->h.state, memory_order_relaxed);
	for (unsigned spins = 0;; spins++) {
		if (ats__likely(!(s & ATS__CTX_LOCKED))) {
			/* acquire: pairs with ctx_unlock's release, so the last holder's writes are seen;
			 * relaxed on failure: nothing taken, the loop retries. */
			if (ats__likely(atomic_compare_exchange_weak_explicit(
			        &c->h.state, &s, s | ATS__CTX_LOCKED, memory_order_acquire, memory_order_relaxed)))
				return s;
			continue;
		}
		ats__spin_pause(spins);
		s = atomic_load_explicit(&c->h.state, memory_order_relaxed);
	}
}

static inline void ctx_unlock(ats_ctx *c, uint32_t word)
{
	/* release: the critical section (and mark_locked's fields with a done reason) happens before
	 * the next lock's acquire and any acquire load that sees this word (ats_ctx_done). */
	atomic_store_explicit(&c->h.state, word, memory_order_release);
}

static ats_ctx background = {
    .h = {.state = 0, .flags = F_STATIC, .deadline_ns = ATS_CTX_NO_DEADLINE, .vals = NULL},
    .refs = 1,
    .efd = -1,
};

ats_ctx *ats_ctx_background(void)
{
	return &background;
}

/* Allocation failure injection for the tests (the OOM paths must change nothing). */
#ifdef ATS_TESTING
_Atomic uint32_t ats__ctx_fail_allocs;
void (*ats__ctx_after_stop_gap)(ats_ctx_after *a);
#endif

static void *ctx_malloc(size_t n)
{
#ifdef ATS_TESTING
	/* Relaxed, both: a test's failure-injection counter, ordered by nobody. */
	if (ats__unlikely(atomic_load_explicit(&ats__ctx_fail_allocs, memory_order_relaxed))) {
		atomic_fetch_sub_explicit(&ats__ctx_fail_allocs, 1, memory_order_relaxed);
		return NULL;
	}
#endif
	return malloc(n);
}

/* ---- The shared errors of cancels without a cause ----
 *
 * A cancel or expiry without a cause reports one process-wide record, marked shared (no place,
 * thread or time: see error.h), rather than one record per context. A per-context record would
 * either cost an allocation on every cancel and every expiry (the timer thread fires thousands
 * of them per tick under load, the cancel walk marks whole subtrees) or be made lazily in
 * ats_ctx_err, where it would race with other readers and could only say where the context was
 * made, which the caller's own wrap already tells better. The shared record is honest instead:
 * it says what happened and that it has no place or time; a caller that wants more wraps it at
 * the place it checked (ats_err_wrap) or gives a cause (ats_ctx_cancel, with_deadline_cause). */

static _Atomic(ats_err *) sentinel[3]; /* [ATS__CTX_CANCELLED], [ATS__CTX_DEADLINE] */

static ats_err *sentinel_err(uint32_t reason)
{
	/* acquire: pairs with the release CAS below, so the error's fields are seen. */
	ats_err *e = atomic_load_explicit(&sentinel[reason], memory_order_acquire);
	if (ats__likely(e))
		return e;
	e = reason == ATS__CTX_DEADLINE ? ats__err_shared(ATS_ERR_DEADLINE_EXCEEDED, NULL, "context deadline exceeded")
	                                : ats__err_shared(ATS_ERR_CANCELLED, NULL, "context cancelled");
	/* Out of memory: a static record with the right code (its ref and unref do nothing); the next
	 * cancel tries to make the shared one again. */
	if (e == ats_err_oom)
		return ats__err_static_shared(reason == ATS__CTX_DEADLINE ? ATS_ERR_DEADLINE_EXCEEDED
		                                                          : ATS_ERR_CANCELLED);
	ats_err *expected = NULL;
	/* release: publishes e's fields; acquire on failure: the winner's error is used instead, so its
	 * fields must be seen (the acquire half on success is not needed; cold path). */
	if (!atomic_compare_exchange_strong_explicit(&sentinel[reason], &expected, e, memory_order_acq_rel,
	                                             memory_order_acquire)) {
		ats_err_unref(e);
		e = expected;
	}
	return e;
}

static bool is_shared_err(const ats_err *e)
{
	/* Relaxed, both: an identity test, nothing dereferenced. A sentinel reached this thread after
	 * the load or CAS that returned it (sentinel_err), so coherence makes these loads see it. */
	return e == ats_err_oom || e == atomic_load_explicit(&sentinel[ATS__CTX_CANCELLED], memory_order_relaxed) ||
	       e == atomic_load_explicit(&sentinel[ATS__CTX_DEADLINE], memory_order_relaxed);
}

/* The error an expiry of c reports: its deadline cause's record, or the shared one. Borrowed;
 * no allocation once the shared record exists (the timer thread makes it at start). */
static ats_err *expiry_err(const ats_ctx *c)
{
	return c->deadline_err ? c->deadline_err : sentinel_err(ATS__CTX_DEADLINE);
}

static ats_err *err_ref(ats_err *e)
{
	return is_shared_err(e) ? e : ats_err_ref(e);
}

static void err_unref(ats_err *e)
{
	if (e && !is_shared_err(e))
		ats_err_unref(e);
}

/* ---- References and pins ---- */

ats_ctx *ats_ctx_ref(ats_ctx *ctx)
{
	if (ctx && !(ctx->h.flags & F_STATIC))
		/* relaxed: the caller holds a reference already; only the decrement orders (drop_ref). */
		atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
	return ctx;
}

/* Pins c (kids + 1) so it outlives the caller's work on it. The caller guarantees c's memory for
 * the call: c is linked under a parent whose lock it holds, on a wheel whose lock it holds, or a
 * merge whose after-func is running. Fails when c is already being freed. */
static bool pin(ats_ctx *c)
{
	uint32_t s = ctx_lock(c);
	bool ok = !c->freeing;
	/* Relaxed, both: under c's lock; an increment needs no release (a quick release that sees it
	 * takes the locked path). */
	if (ok)
		atomic_store_explicit(&c->kids, atomic_load_explicit(&c->kids, memory_order_relaxed) + 1,
		                      memory_order_relaxed);
	ctx_unlock(c, s);
	return ok;
}

static void finalize(ats_ctx *c);

/* Drops a kid (pin or link) with c's lock held; says whether c must now be freed. */
static bool drop_kid_locked(ats_ctx *c)
{
	/* relaxed load: under c's lock. release store: ats_ctx_release's quick path reads kids without
	 * the lock (acquire), then the lock bit; seeing this decrement must make this holder's lock bit
	 * (or its unlock) visible to that read, or the quick path could free c before our unlock. */
	uint32_t k = atomic_load_explicit(&c->kids, memory_order_relaxed) - 1;
	atomic_store_explicit(&c->kids, k, memory_order_release);
	if (k == 0 && c->zombie) {
		c->freeing = 1;
		return true;
	}
	return false;
}

static void unpin(ats_ctx *c)
{
	uint32_t s = ctx_lock(c);
	bool free_it = drop_kid_locked(c);
	ctx_unlock(c, s);
	if (free_it)
		finalize(c);
}

/* Drops a reference; says whether c must now be freed (no refs and no kids), else marks it a
 * zombie when its refs ran out. */
static bool drop_ref(ats_ctx *c)
{
	/* acq_rel: release so this holder's uses of c happen before the free; acquire for the one that
	 * reaches zero, so every other holder's uses happen before its free. */
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return false;
	uint32_t s = ctx_lock(c);
	/* relaxed: under c's lock. */
	bool free_it = atomic_load_explicit(&c->kids, memory_order_relaxed) == 0;
	if (free_it)
		c->freeing = 1;
	else
		c->zombie = 1;
	ctx_unlock(c, s);
	return free_it;
}

/* ---- Deadlines on the timer service ---- */

static bool cancel_direct(ats_ctx *c, uint32_t reason, ats_err *err);

/* The timer's owner is the context: claim pins it (false when it is being freed), fire cancels
 * it with the deadline's error and drops the pin. */
static bool timer_claim(struct ats__timer *t)
{
	return pin(ats__container_of(t, ats_ctx, timer));
}

static void timer_fire(struct ats__timer *t)
{
	ats_ctx *c = ats__container_of(t, ats_ctx, timer);
	cancel_direct(c, ATS__CTX_DEADLINE, expiry_err(c));
	unpin(c);
}

static const struct ats__timer_ops ctx_timer_ops = {timer_claim, timer_fire};

static pthread_once_t sentinels_once = PTHREAD_ONCE_INIT;

/* Makes the shared errors before the first timer is filed, so the timer thread never makes one
 * on its firing path (the first error of a process can also calibrate the default clock). */
static void make_sentinels(void)
{
	sentinel_err(ATS__CTX_DEADLINE);
	sentinel_err(ATS__CTX_CANCELLED);
}

/* Files c's timer for its deadline. c is not yet visible to other threads. */
static int timer_arm(ats_ctx *c)
{
	pthread_once(&sentinels_once, make_sentinels);
	return ats__timer_arm(&c->timer, c->h.deadline_ns);
}

static void timer_disarm(ats_ctx *c)
{
	ats__timer_disarm(&c->timer);
}

uint64_t ats_ctx_timer_precision_ns(void)
{
	return ats__timer_precision_ns();
}

/* ---- Cancelling ---- */

/* The after-funcs running on this thread, innermost first (a callback may cancel another context
 * and so run more): a stop of any of them from this thread must not wait for itself, and a
 * callback that stops, then frees, its own handle must not have it touched afterwards. */
struct running_after {
	ats_ctx_after *a;
	bool self_stopped;
	struct running_after *outer;
};
static _Thread_local struct running_after *tls_running __attribute__((tls_model("initial-exec")));

enum {
	A_IDLE = 0,
	A_ARMED,          /* on ctx's list */
	A_RUNNING,        /* taken off the list by a canceller, which is running it */
	A_DONE,           /* ran */
	A_STOPPED,        /* stopped before it ran */
	A_NEVER,          /* registered on a context that can never be done */
	A_WAITER = 0x100, /* a stopper sleeps on the state word: wake it */
	/* A stopper that saw A_ARMED took over the registration's reference to ctx before locking it
	 * (the registration's reference may be the last one: the canceller that runs the callback
	 * would otherwise drop it and free ctx under the stopper's lock). Set only with A_ARMED. */
	A_PINNED = 0x200,
};

/* Runs one after-func taken off c's list (state A_RUNNING), then drops its reference to c unless
 * a stopper took that reference over (drop_ref false: A_PINNED was set). */
static void run_after(ats_ctx *c, ats_ctx_after *a, bool drop_ref)
{
	struct running_after frame = {.a = a, .self_stopped = false, .outer = tls_running};
	tls_running = &frame;
	a->fn_(a->arg_);
	tls_running = frame.outer;
	if (!frame.self_stopped) {
		/* acq_rel: release so a stopper's acquire load of A_DONE sees the callback's effects; the
		 * acquire half is more than needed (A_WAITER only decides the wake). */
		uint32_t old = atomic_exchange_explicit(&a->state_, A_DONE, memory_order_acq_rel);
		if (old & A_WAITER)
			ats__futex_wake(&a->state_, INT_MAX);
	}
	if (drop_ref)
		ats_ctx_release(c); /* the registration's reference */
}

/* Runs c's after-funcs (c is done), taking them off its list one at a time under its lock: one
 * not yet taken can still be stopped, so a stop only ever waits for the one callback running. */
static void run_afters(ats_ctx *c)
{
	for (;;) {
		uint32_t s = ctx_lock(c);
		ats_ctx_after *a = c->afters;
		if (!a) {
			ctx_unlock(c, s);
			return;
		}
		c->afters = a->next_;
		if (a->next_)
			a->next_->pprev_ = &c->afters;
		/* An RMW, not a store: a stopper may set A_PINNED at any time while a is armed, and the
		 * bit must survive (and tells who drops the registration's reference). Relaxed: under c's
		 * lock, which ats_ctx_after_stop takes before it trusts A_ARMED. */
		uint32_t old = atomic_fetch_add_explicit(&a->state_, A_RUNNING - A_ARMED, memory_order_relaxed);
		ctx_unlock(c, s);
		run_after(c, a, !(old & A_PINNED));
	}
}

/* Marks c done in its fields, c's lock held (word s, not done): takes the cause, claims the
 * after-funcs and notes what notify() must do once the lock is gone. The caller then unlocks with
 * the reason, which publishes it all. */
static void mark_locked(ats_ctx *c, uint32_t s, ats_err *err)
{
	c->err = err_ref(err);
	c->fired_efd = c->efd;
	c->fired_wake = (s & ATS__CTX_WAITERS) != 0;
	c->fired_afters = c->afters != NULL;
}

/* After mark_locked: whether notify() has anything to do for c. */
static bool needs_notify(const ats_ctx *c)
{
	/* relaxed: a hint; a timer armed concurrently and missed here is disarmed by finish_child
	 * (which re-checks done after arming) or by finalize. */
	return c->fired_afters || c->fired_efd >= 0 || c->fired_wake ||
	       atomic_load_explicit(&c->timer.armed, memory_order_relaxed);
}

/* After c went done and its lock is gone: disarm its timer, run its after-funcs, wake its waiters,
 * signal its fd. The caller holds a reference or a pin on c. */
static void notify(ats_ctx *c)
{
	timer_disarm(c);
	if (c->fired_afters)
		run_afters(c); /* its lock, taken only when there is something to run */
	if (c->fired_wake)
		ats__futex_wake(&c->h.state, INT_MAX);
	if (c->fired_efd >= 0) {
		uint64_t one = 1;
		ssize_t rc = write(c->fired_efd, &one, sizeof one);
		(void)rc; /* cannot fail: the counter is far from overflow */
	}
}

/* c's lock held and c done: marks every live child done under its own lock (nested, parent ->
 * child), unlinks it (this walk made it done) and, when it has more to do (children, after-funcs,
 * waiters, an fd, a timer), pins it onto *stack. A child being freed, or already made done by
 * another canceller, stays linked: it unlinks itself, and its link keeps c alive until it has.
 * One atomic write per child. */
static void take_children_locked(ats_ctx *c, uint32_t reason, ats_err *err, ats_ctx **stack)
{
	ats_ctx *ch = c->children;
	while (ch) {
		ats_ctx *next = ch->sib_next;
		uint32_t s = ctx_lock(ch);
		if (ch->freeing || (s & ATS__CTX_DONE_MASK)) {
			ctx_unlock(ch, s);
			ch = next;
			continue;
		}
		mark_locked(ch, s, err);
		*ch->sib_pprev = ch->sib_next;
		if (ch->sib_next)
			ch->sib_next->sib_pprev = ch->sib_pprev;
		/* Relaxed, both: c's lock is held, and this never frees c for a quick release: the caller
		 * holds a reference or pin on c (cancel_direct), dropped later with release. */
		atomic_store_explicit(&c->kids, atomic_load_explicit(&c->kids, memory_order_relaxed) - 1,
		                      memory_order_relaxed);
		if (ch->children || needs_notify(ch)) {
			/* Relaxed, both: ch's lock is held; the release of linked below publishes the pin. */
			atomic_store_explicit(&ch->kids, atomic_load_explicit(&ch->kids, memory_order_relaxed) + 1,
			                      memory_order_relaxed); /* the release below publishes it */
			ch->walk_next = *stack;
			*stack = ch;
		}
		/* Release, and after the pin: ats_ctx_release's quick path reads `linked` (acquire) before
		 * `kids` and the lock bit, so a release that sees ch unlinked also sees the pin and this
		 * lock (see there). */
		atomic_store_explicit(&ch->linked, 0, memory_order_release);
		ctx_unlock(ch, reason); /* publishes done */
		ch = next;
	}
}

/* Takes c (done, linked) out of its parent's list; the parent may be a zombie that this frees.
 * Only the one who made c done, or c's final free, calls it, so it never races with itself. */
static void unlink_from_parent(ats_ctx *c)
{
	/* acquire: more than needed (linked == 1 comes from link_child, which the way this thread
	 * reached c orders before it, c->parent with it; a walk never unlinks a c made done by
	 * someone else); cold path. */
	if (!atomic_load_explicit(&c->linked, memory_order_acquire))
		return;
	ats_ctx *p = c->parent;
	uint32_t s = ctx_lock(p);
	*c->sib_pprev = c->sib_next;
	if (c->sib_next)
		c->sib_next->sib_pprev = c->sib_pprev;
	/* Release: the caller's reference or pin on c happens before a quick release sees c unlinked. */
	atomic_store_explicit(&c->linked, 0, memory_order_release);
	bool free_p = drop_kid_locked(p);
	ctx_unlock(p, s);
	if (free_p)
		finalize(p);
}

/* Cancels c and its subtree, iteratively. The caller holds a reference or a pin on c; err is
 * borrowed (each context takes its own reference). Returns whether this call made c done. */
static bool cancel_direct(ats_ctx *c, uint32_t reason, ats_err *err)
{
	if (!(c->h.flags & F_CANCELLABLE))
		return false;
	uint32_t s = ctx_lock(c);
	if (s & ATS__CTX_DONE_MASK) {
		ctx_unlock(c, s);
		return false;
	}
	ats_ctx *stack = NULL;
	mark_locked(c, s, err);
	take_children_locked(c, reason, err, &stack);
	ctx_unlock(c, reason); /* marks done and unlocks in one store; the waiter bit goes */
	notify(c);
	unlink_from_parent(c);
	while (stack) {
		ats_ctx *ch = stack;
		stack = ch->walk_next;
		notify(ch);
		uint32_t cs = ctx_lock(ch);
		take_children_locked(ch, reason, err, &stack);
		bool free_it = drop_kid_locked(ch); /* the walk's pin */
		ctx_unlock(ch, cs);
		if (free_it)
			finalize(ch);
	}
	return true;
}

bool ats_ctx_cancel(ats_ctx *ctx, ats_err *cause)
{
	if (!(ctx->h.flags & F_CANCELLABLE) || ats_ctx_done(ctx)) {
		ats_err_unref(cause);
		return false;
	}
	ats_err *err;
	if (!cause) {
		err = sentinel_err(ATS__CTX_CANCELLED);
	} else {
		/* Shared by the whole subtree, so it has no place or time of its own: the cause has
		 * the caller's. */
		err = ats__err_shared(ATS_ERR_CANCELLED, cause, "context cancelled");
		if (err == ats_err_oom)
			err = sentinel_err(ATS__CTX_CANCELLED); /* the cause is lost, the cancel is not */
	}
	bool did = cancel_direct(ctx, ATS__CTX_CANCELLED, err);
	err_unref(err);
	return did;
}

/* ---- Freeing ---- */

/* A per-thread cache of freed contexts of the base size: glibc's malloc + free is a sizeable
 * share of a create + cancel + release (row ctx.with_cancel_cancel). Bounded (1024 blocks, ~200 KB, enough for a
 * request fanning out to a thousand children); emptied when the thread exits. */
#define CACHE_MAX 1024
struct ctx_cache {
	unsigned n;
	void *obj[CACHE_MAX];
};
/* On the heap, made at a thread's first free, so that threads that never free a context pay no
 * TLS for it (the library may be dlopen'ed). */
static _Thread_local struct ctx_cache *cache __attribute__((tls_model("initial-exec")));
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_drain(void *arg)
{
	struct ctx_cache *cc = arg;
	while (cc->n)
		free(cc->obj[--cc->n]);
	free(cc);
	cache = NULL;
}

static void cache_key_make(void)
{
	pthread_key_create(&cache_key, cache_drain);
}

static void *ctx_alloc(size_t extra)
{
	struct ctx_cache *cc = cache;
	if (extra == 0 && cc && cc->n)
		return cc->obj[--cc->n];
	return ctx_malloc(sizeof(ats_ctx) + extra);
}

static void ctx_free(ats_ctx *c, bool base_size)
{
#ifdef ATS__ASAN
	/* A recycled block would hide a use after free from ASan. */
	(void)base_size;
	free(c);
	return;
#endif
	struct ctx_cache *cc = cache;
	if (ats__unlikely(!cc) && base_size) {
		pthread_once(&cache_once, cache_key_make);
		cc = malloc(sizeof *cc);
		if (cc) {
			cc->n = 0;
			cache = cc;
			pthread_setspecific(cache_key, cc); /* frees it at thread exit */
		}
	}
	if (base_size && cc && cc->n < CACHE_MAX) {
		cc->obj[cc->n++] = c;
		return;
	}
	free(c);
}

/* Frees c (refs and kids both zero, `freeing` set) and then whatever that frees in turn: a zombie
 * parent whose last link this was, a value owner whose last reader this was. Iterative. */
static void finalize(ats_ctx *c)
{
	c->walk_next = NULL;
	while (c) {
		ats_ctx *more = c->walk_next;
		for (uint32_t i = 0; i < c->nmerge; i++)
			ats_ctx_after_stop(&c->merge[i].a);
		timer_disarm(c);
		/* acquire: pairs with the release stores of linked = 0 (a walk's, an unlinker's), so their
		 * work on c before it is seen; a still-linked c's list is read under p's lock. */
		if (atomic_load_explicit(&c->linked, memory_order_acquire)) {
			ats_ctx *p = c->parent;
			uint32_t s = ctx_lock(p);
			*c->sib_pprev = c->sib_next;
			if (c->sib_next)
				c->sib_next->sib_pprev = c->sib_pprev;
			bool free_p = drop_kid_locked(p);
			ctx_unlock(p, s);
			if (free_p) {
				p->walk_next = more;
				more = p;
			}
		}
		ats_ctx *owner = c->vals_owner;
		err_unref(c->err);
		if (c->deadline_err)
			ats_err_unref(c->deadline_err);
		if (c->efd >= 0)
			close(c->efd);
		ctx_free(c, c->nmerge == 0 && !(c->h.flags & F_OWN_VALS));
		if (owner && drop_ref(owner)) {
			owner->walk_next = more;
			more = owner;
		}
		c = more;
	}
}

void ats_ctx_release(ats_ctx *ctx)
{
	if (!ctx || (ctx->h.flags & F_STATIC))
		return;
	/* The common case, no atomic write: the caller holds the only reference and nothing else can
	 * reach c (no link, no timer, no merge, no kids), so no one can take a new one.
	 * Why these loads suffice on a weakly ordered CPU: every other thread that can still touch c
	 * reached it through its parent's list, a timer wheel or a reference. A parent's cancel walk
	 * pins c (kids + 1) if it will touch c after unlocking it, and only then stores linked = 0
	 * with release, all under c's lock; the timer pins c under its lock and then stores
	 * armed = 0 with release; the one who unlinks c itself holds a reference or a pin and stores
	 * linked = 0 with release. So a load here that sees linked == 0 or armed == 0 from such a
	 * thread synchronizes with it: the later loads (acquire, in this order) see its pin in
	 * `kids`, or its lock bit still set in `state`, or the unlock that ended its last touch of
	 * c. Any of the first two sends this call to the locked path. A pin or link dropped later is
	 * dropped by a holder of c's lock with a release store of kids (drop_kid_locked), so a
	 * kids == 0 read here that comes from such a store also makes that holder's lock bit, or its
	 * unlock, visible to the state load below (a relaxed store would not: the quick path could
	 * then free c before that holder's unlock store).
	 * Acquire, all five loads: each pairs with the release named above (refs: drop_ref's
	 * decrement; linked, armed, kids: the stores above; state: ctx_unlock) and keeps the loads
	 * after it in order. */
	if (atomic_load_explicit(&ctx->refs, memory_order_acquire) == 1 &&
	    !atomic_load_explicit(&ctx->linked, memory_order_acquire) &&
	    !atomic_load_explicit(&ctx->timer.armed, memory_order_acquire) && ctx->nmerge == 0 &&
	    atomic_load_explicit(&ctx->kids, memory_order_acquire) == 0 &&
	    !(atomic_load_explicit(&ctx->h.state, memory_order_acquire) & ATS__CTX_LOCKED)) {
		ctx->freeing = 1;
		finalize(ctx);
		return;
	}
	if (drop_ref(ctx))
		finalize(ctx);
}

/* ---- Making contexts ---- */

static ats_ctx *ctx_new(ats_ctx *parent, size_t extra, uint32_t flags)
{
	ats_ctx *c = ctx_alloc(extra);
	if (!c)
		return NULL;
	atomic_init(&c->h.state, 0);
	c->h.flags = flags;
	c->h.deadline_ns = parent->h.deadline_ns;
	c->h.vals = parent->h.vals;
	atomic_init(&c->refs, 1);
	atomic_init(&c->kids, 0);
	atomic_init(&c->linked, 0);
	c->zombie = 0;
	c->freeing = 0;
	c->efd = -1;
	c->nmerge = 0;
	c->parent = NULL;
	/* The value table lives in the context that made it; readers below keep that one alive. */
	c->vals_owner =
	    (flags & F_OWN_VALS) ? NULL : ats_ctx_ref((parent->h.flags & F_OWN_VALS) ? parent : parent->vals_owner);
	c->sib_next = NULL;
	c->sib_pprev = NULL;
	c->children = NULL;
	c->afters = NULL;
	c->fired_efd = -1;
	c->fired_wake = 0;
	c->fired_afters = 0;
	c->err = NULL;
	/* Goes with the deadline; NULL (the shared record) unless an ancestor gave a deadline cause. */
	c->deadline_err = parent->deadline_err ? ats_err_ref(parent->deadline_err) : NULL;
	c->walk_next = NULL;
	ats__timer_init(&c->timer, &ctx_timer_ops);
	return c;
}

/* Links c under p (cancellable), or makes it born done when p already is. The link counts as one
 * of p's kids, which keeps p alive while c is in its list. */
static void link_child(ats_ctx *p, ats_ctx *c)
{
	uint32_t s = ctx_lock(p);
	uint32_t reason = s & ATS__CTX_DONE_MASK;
	if (reason) {
		c->err = err_ref(p->err);
		/* relaxed: c is not linked and not yet visible to other threads (its hand-off orders it). */
		atomic_store_explicit(&c->h.state, reason, memory_order_relaxed);
	} else {
		c->sib_next = p->children;
		if (p->children)
			p->children->sib_pprev = &c->sib_next;
		p->children = c;
		c->sib_pprev = &p->children;
		c->parent = p;
		/* Relaxed, linked and kids: under p's lock; linked = 1 and an increment need no release
		 * (whoever reads them without a lock reached c or p through this thread). */
		atomic_store_explicit(&c->linked, 1, memory_order_relaxed);
		atomic_store_explicit(&p->kids, atomic_load_explicit(&p->kids, memory_order_relaxed) + 1,
		                      memory_order_relaxed);
	}
	ctx_unlock(p, s);
}

/* The common body of with_cancel/with_deadline/with_value: c is fully built but for its deadline
 * and linking. A timer is armed only when the child's own deadline is earlier than its parent's:
 * otherwise the parent's timer cancels the child through the link. */
static ats_err *finish_child(ats_ctx *parent, ats_ctx *c, uint64_t deadline_ns, uint64_t now_ns, ats_err *expiry,
                             ats_ctx **out)
{
	bool own_deadline = deadline_ns < c->h.deadline_ns;
	if (own_deadline) {
		c->h.deadline_ns = deadline_ns;
		ats_err_unref(c->deadline_err);
		c->deadline_err = expiry;
	} else {
		ats_err_unref(expiry); /* the parent's deadline comes first, and its cause with it */
	}
	if (parent->h.flags & F_CANCELLABLE)
		link_child(parent, c);
	if (own_deadline && !ats_ctx_done(c)) {
		if (now_ns == 0)
			now_ns = ats_fast_now_ns();
		int rc = deadline_ns <= now_ns ? ATS__TIMER_EXPIRED : timer_arm(c);
		if (rc == ATS__TIMER_EXPIRED) {
			cancel_direct(c, ATS__CTX_DEADLINE, expiry_err(c));
		} else if (rc == ATS__TIMER_FAILED) {
			int saved = errno;
			ats_ctx_release(c);
			*out = NULL;
			return ats_err_wrapc(ats_err_errno(saved, "pthread_create"), ATS_ERR_UNAVAILABLE,
			                     "cannot start the ctx timer thread");
		} else if (ats_ctx_done(c)) {
			timer_disarm(c); /* the parent was cancelled while the timer was being armed */
		}
	}
	*out = c;
	return NULL;
}

ats_err *ats_ctx_with_cancel(ats_ctx *parent, ats_ctx **out)
{
	ats_ctx *c = ctx_new(parent, 0, F_CANCELLABLE);
	if (!c) {
		*out = NULL;
		return ats_err_oom;
	}
	return finish_child(parent, c, ATS_CTX_NO_DEADLINE, 0, NULL, out);
}

/* Consumes cause. Its record is made here, at construction, so that expiry (on the timer thread,
 * in ats_ctx_err or ats_ctx_wait) never allocates: it is a shared record (no place or time: it is
 * made before it fires, and the whole subtree reports it) carrying the cause and the deadline. */
static ats_err *with_deadline(ats_ctx *parent, uint64_t deadline_ns, uint64_t now_ns, ats_err *cause, ats_ctx **out)
{
	ats_err *expiry = NULL;
	if (cause) {
		expiry = ats__err_shared(ATS_ERR_DEADLINE_EXCEEDED, cause, "context deadline exceeded");
		if (expiry == ats_err_oom) {
			*out = NULL;
			return ats_err_oom;
		}
		expiry = ats_err_with_kv(expiry, "deadline_ns", "%llu", (unsigned long long)deadline_ns);
	}
	ats_ctx *c = ctx_new(parent, 0, F_CANCELLABLE);
	if (!c) {
		ats_err_unref(expiry);
		*out = NULL;
		return ats_err_oom;
	}
	return finish_child(parent, c, deadline_ns, now_ns, expiry, out);
}

ats_err *ats_ctx_with_deadline(ats_ctx *parent, uint64_t deadline_ns, ats_ctx **out)
{
	return with_deadline(parent, deadline_ns, 0, NULL, out);
}

ats_err *ats_ctx_with_deadline_cause(ats_ctx *parent, uint64_t deadline_ns, ats_err *cause, ats_ctx **out)
{
	return with_deadline(parent, deadline_ns, 0, cause, out);
}

static ats_err *with_timeout(ats_ctx *parent, uint64_t timeout_ns, uint64_t now_ns, ats_err *cause, ats_ctx **out)
{
	uint64_t d = now_ns + timeout_ns;
	if (d < now_ns || timeout_ns == ATS_CTX_NO_DEADLINE)
		d = ATS_CTX_NO_DEADLINE;
	/* now_ns + 1: a caller's now of 0 must not read as "unknown". */
	return with_deadline(parent, d, now_ns ? now_ns : 1, cause, out);
}

ats_err *ats_ctx_with_timeout_at(ats_ctx *parent, uint64_t timeout_ns, uint64_t now_ns, ats_ctx **out)
{
	return with_timeout(parent, timeout_ns, now_ns, NULL, out);
}

ats_err *ats_ctx_with_timeout(ats_ctx *parent, uint64_t timeout_ns, ats_ctx **out)
{
	return with_timeout(parent, timeout_ns, ats_fast_now_ns(), NULL, out);
}

ats_err *ats_ctx_with_timeout_cause(ats_ctx *parent, uint64_t timeout_ns, ats_err *cause, ats_ctx **out)
{
	return with_timeout(parent, timeout_ns, ats_fast_now_ns(), cause, out);
}

/* Slot assignment for value keys: the first ATS_CTX_VALUE_SLOTS keys used get a slot each. */
static _Atomic uint32_t next_key_slot;

static uint32_t key_slot(ats_ctx_key *key)
{
	/* acquire: more than needed (the slot number is the whole message, see ats_ctx_lookup); cold. */
	uint32_t s = atomic_load_explicit(&key->slot_, memory_order_acquire);
	if (ats__likely(s != ATS__CTX_KEY_UNASSIGNED))
		return s;
	/* Relaxed, the load and the CAS: a counter handing out slot numbers; no data rides on it. */
	uint32_t mine = atomic_load_explicit(&next_key_slot, memory_order_relaxed);
	do {
		if (mine >= ATS_CTX_VALUE_SLOTS) {
			mine = ATS_CTX_VALUE_SLOTS; /* overflow: linear lookup */
			break;
		}
	} while (!atomic_compare_exchange_weak_explicit(&next_key_slot, &mine, mine + 1, memory_order_relaxed,
	                                                memory_order_relaxed));
	uint32_t expected = ATS__CTX_KEY_UNASSIGNED;
	/* acq_rel and acquire on failure: more than needed (only the value is used); cold path. */
	if (!atomic_compare_exchange_strong_explicit(&key->slot_, &expected, mine, memory_order_acq_rel,
	                                             memory_order_acquire))
		return expected; /* another thread assigned it first; the slot taken here stays unused */
	return mine;
}

bool ats__ctx_lookup_overflow(const struct ats__ctx_vals *v, const ats_ctx_key *key, void **out)
{
	for (const struct ats__ctx_xval *x = v->overflow; x; x = x->next) {
		if (x->key == key) {
			*out = x->value;
			return true;
		}
	}
	return false;
}

ats_err *ats_ctx_with_value(ats_ctx *parent, ats_ctx_key *key, void *value, ats_ctx **out)
{
	uint32_t s = key_slot(key);
	/* The child owns a whole table (slots and overflow entries copied), so it needs no reference
	 * to the tables above it: lookups stay two loads for slotted keys. */
	const struct ats__ctx_vals *pv = parent->h.vals;
	size_t nx = s >= ATS_CTX_VALUE_SLOTS;
	for (const struct ats__ctx_xval *x = pv ? pv->overflow : NULL; x; x = x->next)
		nx++;
	size_t extra = sizeof(struct ats__ctx_vals) + nx * sizeof(struct ats__ctx_xval);
	ats_ctx *c = ctx_new(parent, extra, F_CANCELLABLE | F_OWN_VALS);
	if (!c) {
		*out = NULL;
		return ats_err_oom;
	}
	/* The table lives right after the context (the flexible merge[] array is empty here). */
	struct ats__ctx_vals *v = (struct ats__ctx_vals *)(void *)c->merge;
	struct ats__ctx_xval *xs = (struct ats__ctx_xval *)(v + 1);
	if (pv)
		*v = *pv;
	else
		memset(v, 0, sizeof *v);
	size_t i = 0;
	struct ats__ctx_xval **tail = (struct ats__ctx_xval **)&v->overflow;
	if (s >= ATS_CTX_VALUE_SLOTS) {
		xs[i] = (struct ats__ctx_xval){.key = key, .value = value, .next = NULL};
		*tail = &xs[i];
		tail = (struct ats__ctx_xval **)&xs[i].next;
		i++;
	} else {
		v->mask |= 1u << s;
		v->slot[s] = value;
	}
	for (const struct ats__ctx_xval *x = pv ? pv->overflow : NULL; x; x = x->next) {
		xs[i] = (struct ats__ctx_xval){.key = x->key, .value = x->value, .next = NULL};
		*tail = &xs[i];
		tail = (struct ats__ctx_xval **)&xs[i].next;
		i++;
	}
	*tail = NULL;
	c->h.vals = v;
	return finish_child(parent, c, ATS_CTX_NO_DEADLINE, 0, NULL, out);
}

ats_err *ats_ctx_without_cancel(ats_ctx *parent, ats_ctx **out)
{
	ats_ctx *c = ctx_new(parent, 0, 0);
	if (!c) {
		*out = NULL;
		return ats_err_oom;
	}
	c->h.deadline_ns = ATS_CTX_NO_DEADLINE;
	ats_err_unref(c->deadline_err);
	c->deadline_err = NULL;
	*out = c;
	return NULL;
}

/* A merge's after-func on one of its other parents: cancel the merge with that parent's error.
 * The merge's memory is valid here (its free stops this registration, waiting for a running
 * callback); the pin fails when that free has begun. */
static void merge_fire(void *arg)
{
	struct merge_reg *r = arg;
	ats_ctx *merged = r->merged, *parent = r->a.ctx_;
	if (!pin(merged))
		return;
	/* acquire: pairs with the parent's release unlock that made it done, so parent->err is seen. */
	uint32_t reason = atomic_load_explicit(&parent->h.state, memory_order_acquire) & ATS__CTX_DONE_MASK;
	cancel_direct(merged, reason, parent->err);
	unpin(merged);
}

ats_err *ats_ctx_merge(ats_ctx *const *parents, size_t n, ats_ctx **out)
{
	*out = NULL;
	if (n == 0)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_ctx_merge needs at least one parent");
	if (n > UINT32_MAX)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "ats_ctx_merge: %zu parents", n);
	ats_ctx *first = parents[0];
	ats_ctx *c = ctx_new(first, (n - 1) * sizeof(struct merge_reg), F_CANCELLABLE);
	if (!c)
		return ats_err_oom;
	for (size_t i = 1; i < n; i++) {
		if (parents[i]->h.deadline_ns < c->h.deadline_ns) {
			c->h.deadline_ns = parents[i]->h.deadline_ns;
			ats_err_unref(c->deadline_err);
			c->deadline_err = ats_err_ref(parents[i]->deadline_err);
		}
	}
	/* No timer of its own: every deadline it has is a parent's, whose timer cancels the parent
	 * and so, through the link or an after-func, the merge. */
	if (first->h.flags & F_CANCELLABLE)
		link_child(first, c);
	for (size_t i = 1; i < n; i++) {
		struct merge_reg *r = &c->merge[c->nmerge++];
		r->merged = c;
		ats_ctx_after_func(parents[i], &r->a, merge_fire, r);
	}
	*out = c;
	return NULL;
}

/* ---- Asking and waiting ---- */

/* A deadline passed but the timer has not fired yet: cancel now, as the timer would. */
static bool expire_if_due(ats_ctx *c, uint64_t now_ns)
{
	if (now_ns < c->h.deadline_ns || !(c->h.flags & F_CANCELLABLE))
		return false;
	cancel_direct(c, ATS__CTX_DEADLINE, expiry_err(c));
	return true;
}

ats_err *ats_ctx_err(ats_ctx *ctx)
{
	if (!ats_ctx_done(ctx)) {
		if (ctx->h.deadline_ns == ATS_CTX_NO_DEADLINE || !expire_if_due(ctx, ats_fast_now_ns()))
			return NULL;
	}
	/* A real reference, sentinels included: the caller unrefs it (the sentinel array keeps its own). */
	return ats_err_ref(ctx->err);
}

const ats_err *ats_ctx_cause(const ats_ctx *ctx)
{
	if (!ats_ctx_done(ctx))
		return NULL;
	const ats_err *cause = ats_err_cause(ctx->err);
	return cause ? cause : ctx->err;
}

bool ats_ctx_wait(ats_ctx *ctx, uint64_t deadline_ns)
{
	uint64_t until = deadline_ns < ctx->h.deadline_ns ? deadline_ns : ctx->h.deadline_ns;
	for (;;) {
		/* acquire: pairs with the canceller's release unlock, so ctx->err is seen by the caller. */
		uint32_t st = atomic_load_explicit(&ctx->h.state, memory_order_acquire);
		if (st & ATS__CTX_DONE_MASK)
			return true;
		uint64_t now = ats_now_ns(); /* the futex's clock, as the timer thread's */
		if (expire_if_due(ctx, now))
			return true;
		if (now >= deadline_ns)
			return false;
		/* Announce the waiter in the word itself: a cancel exchanges the word and wakes only when
		 * it saw the bit, and the futex compares the word with what was announced, so a cancel
		 * between the check and the sleep makes the sleep return at once. */
		if (st & ATS__CTX_LOCKED) {
			/* Only the holder may change a locked word; it holds it for a few instructions. */
			ats__cpu_relax();
			continue;
		}
		if (!(st & ATS__CTX_WAITERS)) {
			/* acq_rel, acquire on failure: more than needed (the bit carries no data: the
			 * canceller's lock CAS reads it, the loop re-loads with acquire); cold path. */
			if (!atomic_compare_exchange_weak_explicit(&ctx->h.state, &st, st | ATS__CTX_WAITERS,
			                                           memory_order_acq_rel, memory_order_acquire))
				continue;
			st |= ATS__CTX_WAITERS;
		}
		/* A lock holder may change the word meanwhile (EAGAIN, loop) and puts it back as it was
		 * unless it cancels, which wakes us. */
		ats__futex_wait(&ctx->h.state, st, until);
	}
}

ats_err *ats_ctx_fd(ats_ctx *ctx, int *fd)
{
	uint32_t s = ctx_lock(ctx);
	if (ctx->efd < 0) {
		bool done = (s & ATS__CTX_DONE_MASK) != 0;
		int e = eventfd(done ? 1 : 0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (e < 0) {
			int saved = errno;
			ctx_unlock(ctx, s);
			*fd = -1;
			return ats_err_wrapc(ats_err_errno(saved, "eventfd"), ATS_ERR_UNAVAILABLE,
			                     "cannot make the context's file descriptor");
		}
		ctx->efd = e;
	}
	*fd = ctx->efd;
	ctx_unlock(ctx, s);
	return NULL;
}

/* ---- After-funcs ---- */

void ats_ctx_after_func(ats_ctx *ctx, ats_ctx_after *a, void (*fn)(void *), void *arg)
{
	a->ctx_ = ctx;
	a->fn_ = fn;
	a->arg_ = arg;
	a->next_ = NULL;
	a->pprev_ = NULL;
	if (!(ctx->h.flags & F_CANCELLABLE)) {
		/* relaxed: a is the caller's; no other thread can reach it through ctx. */
		atomic_store_explicit(&a->state_, A_NEVER, memory_order_relaxed);
		return;
	}
	uint32_t s = ctx_lock(ctx);
	if (!(s & ATS__CTX_DONE_MASK)) {
		ats_ctx_ref(ctx);
		/* relaxed: under ctx's lock, which every other reader of A_ARMED takes. */
		atomic_store_explicit(&a->state_, A_ARMED, memory_order_relaxed);
		a->next_ = ctx->afters;
		if (ctx->afters)
			ctx->afters->pprev_ = &a->next_;
		ctx->afters = a;
		a->pprev_ = &ctx->afters;
		ctx_unlock(ctx, s);
		return;
	}
	ctx_unlock(ctx, s);
	/* Already done: run it now, on this thread. */
	/* relaxed: a was never on a list; only this thread and the caller's own stop can see it. */
	atomic_store_explicit(&a->state_, A_RUNNING, memory_order_relaxed);
	ats_ctx_ref(ctx); /* run_after drops the registration's reference */
	run_after(ctx, a, true);
}

bool ats_ctx_after_stop(ats_ctx_after *a)
{
	/* acquire: more than needed (an A_DONE read here is read again, with acquire, by the loop
	 * below); relaxed store: a is idle, never armed or already stopped, so no other thread
	 * touches it. */
	uint32_t st = atomic_load_explicit(&a->state_, memory_order_acquire);
	if (st == A_NEVER || st == A_STOPPED || st == A_IDLE) {
		atomic_store_explicit(&a->state_, A_STOPPED, memory_order_relaxed);
		return true;
	}
	ats_ctx *ctx = a->ctx_;
#ifdef ATS_TESTING
	if (ats__ctx_after_stop_gap)
		ats__ctx_after_stop_gap(a);
#endif
	/* Armed: take the registration's reference over (A_PINNED) before touching ctx, which the
	 * reference keeps alive; a canceller that takes a off the list from now on leaves that
	 * reference to us. The CAS fails once a canceller took a (A_RUNNING, then A_DONE): ctx may be
	 * freed by then, so it is not touched. Relaxed: the bit only moves a reference; ctx's lock
	 * orders the list. */
	if (st == A_ARMED && atomic_compare_exchange_strong_explicit(&a->state_, &st, A_ARMED | A_PINNED,
	                                                             memory_order_relaxed, memory_order_relaxed)) {
		uint32_t s = ctx_lock(ctx);
		/* Relaxed, this load and the store below: under ctx's lock. */
		bool armed = atomic_load_explicit(&a->state_, memory_order_relaxed) == (A_ARMED | A_PINNED);
		if (armed) {
			*a->pprev_ = a->next_;
			if (a->next_)
				a->next_->pprev_ = a->pprev_;
			atomic_store_explicit(&a->state_, A_STOPPED, memory_order_relaxed);
		}
		ctx_unlock(ctx, s);
		ats_ctx_release(ctx); /* the registration's reference, ours since the CAS */
		if (armed)
			return true;
	}
	for (struct running_after *f = tls_running; f; f = f->outer) {
		if (f->a == a) {
			f->self_stopped = true; /* its runner, up this thread's stack, will not touch it again */
			/* So the outcome is recorded here, while a is still the caller's: a later stop, or one
			 * waiting on another thread, reads A_DONE rather than wait for good on an A_RUNNING that
			 * nobody would change. acq_rel: as run_after's exchange. */
			if (atomic_exchange_explicit(&a->state_, A_DONE, memory_order_acq_rel) & A_WAITER)
				ats__futex_wake(&a->state_, INT_MAX);
			return false;
		}
	}
	/* Running on another thread: wait for it to finish. */
	for (;;) {
		/* acquire: pairs with run_after's release exchange, so the callback's effects are seen
		 * once this returns. */
		st = atomic_load_explicit(&a->state_, memory_order_acquire);
		if ((st & ~(uint32_t)(A_WAITER | A_PINNED)) == A_DONE)
			return false;
		if (!(st & A_WAITER)) {
			/* acq_rel, acquire on failure: more than needed (the bit only asks for a wake; the
			 * loop re-loads with acquire); cold path. */
			if (!atomic_compare_exchange_weak_explicit(&a->state_, &st, st | A_WAITER, memory_order_acq_rel,
			                                           memory_order_acquire))
				continue;
			st |= A_WAITER;
		}
		ats__futex_wait(&a->state_, st, ATS_CTX_NO_DEADLINE);
	}
}
