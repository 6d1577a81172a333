/* Contexts: the cancellation tree, deadlines and the timer service, after-funcs, values.
 *
 * Concurrency design (no global lock anywhere):
 *  - Each context has a small futex lock guarding its child list, its after-func list, its
 *    eventfd and the transition to done. No code path ever holds two context locks at once, so
 *    lock order cannot deadlock.
 *  - A child holds a counted reference to its parent; the parent's child list holds weak links.
 *    The race between a parent's cancel walking its children and a child's last release is
 *    settled under the parent's lock: the walker takes a reference only if the count is not
 *    already zero (try_ref) and unlinks every child it meets; a child whose count reached zero
 *    unlinks itself under the same lock before it is freed, unless the walker already did.
 *  - Cancel walks the subtree with an intrusive stack (walk_next): a context sits in one parent
 *    list, so only one walker can ever push it.
 *  - The timer wheel is sharded (one lock per shard, a thread sticks to one shard); the timer
 *    thread advances every shard. A fired timer takes a reference by try_ref under the shard
 *    lock, which settles the race with a concurrent last release the same way.
 */
#include "atscale/ctx.h"
#include "atscale/clock.h"
#include "internal/ctx_hooks.h"
#include "internal/timer_wheel.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ---- Futex helpers ---- */

static void futex_wait(_Atomic uint32_t *addr, uint32_t val, uint64_t deadline_ns)
{
	struct timespec ts, *tsp = NULL;
	if (deadline_ns != ATS_CTX_NO_DEADLINE) {
		ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
		ts.tv_nsec = (long)(deadline_ns % 1000000000u);
		tsp = &ts;
	}
	/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC timeout (FUTEX_CLOCK_REALTIME unset). */
	syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, val, tsp, NULL,
	        FUTEX_BITSET_MATCH_ANY);
}

static void futex_wake(_Atomic uint32_t *addr, int n)
{
	syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

/* A three-state futex mutex (Drepper, "Futexes are tricky"): 0 free, 1 held, 2 held with waiters.
 * Written here because pthread_mutex costs twice as much uncontended and the lock sits in every
 * context (4 bytes); a brief spin first, since the critical sections are a few instructions
 * except a wide cancel's. */
struct ctx_lock {
	_Atomic uint32_t v;
};

static void lock_slow(struct ctx_lock *l)
{
	for (int i = 0; i < 64; i++) {
		uint32_t z = 0;
		if (atomic_load_explicit(&l->v, memory_order_relaxed) == 0 &&
		    atomic_compare_exchange_weak_explicit(&l->v, &z, 1, memory_order_acquire, memory_order_relaxed))
			return;
		cpu_relax();
	}
	while (atomic_exchange_explicit(&l->v, 2, memory_order_acquire) != 0)
		futex_wait(&l->v, 2, ATS_CTX_NO_DEADLINE);
}

static inline void lock_acquire(struct ctx_lock *l)
{
	uint32_t z = 0;
	if (likely(atomic_compare_exchange_strong_explicit(&l->v, &z, 1, memory_order_acquire, memory_order_relaxed)))
		return;
	lock_slow(l);
}

static inline void lock_release(struct ctx_lock *l)
{
	if (unlikely(atomic_exchange_explicit(&l->v, 0, memory_order_release) == 2))
		futex_wake(&l->v, 1);
}

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
	struct ats__ctx_head h; /* first: the inline fast paths cast the pointer */
	_Atomic uint32_t refs;
	struct ctx_lock lock;    /* guards children, afters, efd and the transition to done */
	_Atomic uint32_t linked; /* in parent's child list; changed under the parent's lock */
	_Atomic uint32_t armed;  /* on a timer wheel; changed under the shard's lock */
	int efd;                 /* -1 until ats_ctx_fd */
	uint32_t shard;
	uint32_t nmerge;
	ats_ctx *parent;                /* counted reference (values, unlinking), NULL for roots */
	ats_ctx *sib_next, **sib_pprev; /* in parent->children, guarded by parent->lock */
	ats_ctx *children;
	ats_ctx_after *afters;
	ats_err *err;       /* set before the state turns done, immutable after */
	ats_ctx *walk_next; /* the cancel walk's intrusive stack */
	struct ats__tw_node tnode;
	struct merge_reg merge[]; /* a merge's after-funcs on its other parents (or a value table) */
};

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
_Atomic uint32_t ats__ctx_fail_allocs;

static void *ctx_malloc(size_t n)
{
	if (unlikely(atomic_load_explicit(&ats__ctx_fail_allocs, memory_order_relaxed))) {
		atomic_fetch_sub_explicit(&ats__ctx_fail_allocs, 1, memory_order_relaxed);
		return NULL;
	}
	return malloc(n);
}

/* ---- The shared errors of cancels without a cause ---- */

static _Atomic(ats_err *) sentinel[3]; /* [ATS__CTX_CANCELLED], [ATS__CTX_DEADLINE] */

static ats_err *sentinel_err(uint32_t reason)
{
	ats_err *e = atomic_load_explicit(&sentinel[reason], memory_order_acquire);
	if (likely(e))
		return e;
	e = reason == ATS__CTX_DEADLINE ? ats_err_new(ATS_ERR_DEADLINE_EXCEEDED, "context deadline exceeded")
	                                : ats_err_new(ATS_ERR_CANCELLED, "context cancelled");
	if (e == ats_err_oom)
		return e; /* static and uncounted too; try again next time */
	ats_err *expected = NULL;
	if (!atomic_compare_exchange_strong_explicit(&sentinel[reason], &expected, e, memory_order_acq_rel,
	                                             memory_order_acquire)) {
		ats_err_unref(e);
		e = expected;
	}
	return e;
}

static bool is_shared_err(const ats_err *e)
{
	return e == ats_err_oom || e == atomic_load_explicit(&sentinel[ATS__CTX_CANCELLED], memory_order_relaxed) ||
	       e == atomic_load_explicit(&sentinel[ATS__CTX_DEADLINE], memory_order_relaxed);
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

/* ---- References ---- */

static inline bool try_ref(ats_ctx *c)
{
	uint32_t r = atomic_load_explicit(&c->refs, memory_order_relaxed);
	do {
		if (r == 0)
			return false;
	} while (
	    !atomic_compare_exchange_weak_explicit(&c->refs, &r, r + 1, memory_order_acquire, memory_order_relaxed));
	return true;
}

ats_ctx *ats_ctx_ref(ats_ctx *ctx)
{
	if (ctx && !(ctx->h.flags & F_STATIC))
		atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
	return ctx;
}

/* ---- The timer service ---- */

#define TICK_SHIFT 16 /* 65.536 us: p99 lateness well under the 1 ms target, 64 slots per 4 ms */
#define MAX_SHARDS 64

struct shard {
	_Alignas(64) struct ctx_lock lock;
	struct ats__tw wheel;
};

static struct {
	pthread_once_t once;
	bool ok;
	bool joined;
	pthread_t thread;
	unsigned nshards;
	struct shard *shards; /* never freed: other threads may arm after exit() began */
	_Atomic uint32_t next_shard;
	_Alignas(64) _Atomic uint32_t seq; /* the thread sleeps on it; armers bump it to kick */
	_Atomic uint32_t sleeping;
	_Atomic uint32_t stop;
	_Atomic uint64_t planned; /* tick the thread will wake at; UINT64_MAX while it scans */
} svc = {.once = PTHREAD_ONCE_INIT};

static _Thread_local uint32_t my_shard = UINT32_MAX;

uint64_t ats_ctx_timer_precision_ns(void)
{
	return 1ull << TICK_SHIFT;
}

static void cancel_direct(ats_ctx *c, uint32_t reason, ats_err *err);

static void kick(void)
{
	atomic_fetch_add_explicit(&svc.seq, 1, memory_order_seq_cst);
	if (atomic_load_explicit(&svc.sleeping, memory_order_seq_cst))
		futex_wake(&svc.seq, 1);
}

/* The timer thread: advance every shard to now, fire what is due, sleep until the next due tick.
 *
 * No lost wake-up: the thread publishes planned = UINT64_MAX before scanning, so an armer that
 * files a timer after its shard was scanned sees either UINT64_MAX or the tick the thread will
 * sleep until; it kicks (bumps seq, which the futex wait compares against the value read before
 * the scan) when its timer is earlier. */
static void *timer_main(void *arg)
{
	(void)arg;
	/* Wake at the tick, not up to 50 us after it (the default timer slack). */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	for (;;) {
		atomic_store_explicit(&svc.planned, UINT64_MAX, memory_order_seq_cst);
		uint32_t seq = atomic_load_explicit(&svc.seq, memory_order_seq_cst);
		if (atomic_load_explicit(&svc.stop, memory_order_acquire))
			break;
		uint64_t now_tick = ats_now_ns() >> TICK_SHIFT, next = UINT64_MAX;
		struct ats__tw_node *fire = NULL;
		for (unsigned i = 0; i < svc.nshards; i++) {
			struct shard *s = &svc.shards[i];
			lock_acquire(&s->lock);
			struct ats__tw_node *n = ats__tw_advance(&s->wheel, now_tick);
			while (n) {
				struct ats__tw_node *following = n->next;
				ats_ctx *c = (ats_ctx *)(void *)((char *)n - offsetof(ats_ctx, tnode));
				if (try_ref(c)) {
					n->next = fire;
					fire = n;
				}
				/* Last touch of a dying context: its release waits for armed == 0 or the lock. */
				atomic_store_explicit(&c->armed, 0, memory_order_release);
				n = following;
			}
			uint64_t t = ats__tw_next(&s->wheel);
			if (t < next)
				next = t;
			lock_release(&s->lock);
		}
		while (fire) {
			struct ats__tw_node *n = fire;
			fire = n->next;
			ats_ctx *c = (ats_ctx *)(void *)((char *)n - offsetof(ats_ctx, tnode));
			cancel_direct(c, ATS__CTX_DEADLINE, sentinel_err(ATS__CTX_DEADLINE));
			ats_ctx_release(c);
		}
		atomic_store_explicit(&svc.planned, next, memory_order_seq_cst);
		atomic_store_explicit(&svc.sleeping, 1, memory_order_seq_cst);
		futex_wait(&svc.seq, seq, next == UINT64_MAX ? ATS_CTX_NO_DEADLINE : next << TICK_SHIFT);
		atomic_store_explicit(&svc.sleeping, 0, memory_order_relaxed);
	}
	return NULL;
}

/* At exit: stop and join the timer thread so it is not cancelling contexts (and running their
 * after-funcs) while the process tears down. Contexts alive at exit are fine: nothing is freed. */
static void timer_stop(void)
{
	if (!svc.ok || svc.joined)
		return;
	atomic_store_explicit(&svc.stop, 1, memory_order_release);
	kick();
	if (!pthread_equal(pthread_self(), svc.thread))
		pthread_join(svc.thread, NULL);
	svc.joined = true;
}

static void timer_start(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = 1;
	while (n < (unsigned)(cpus > 0 ? cpus : 1) && n < MAX_SHARDS)
		n <<= 1;
	struct shard *shards = aligned_alloc(64, n * sizeof *shards);
	if (!shards)
		return;
	uint64_t now_tick = ats_now_ns() >> TICK_SHIFT;
	for (unsigned i = 0; i < n; i++) {
		atomic_init(&shards[i].lock.v, 0);
		ats__tw_init(&shards[i].wheel, now_tick);
	}
	svc.shards = shards;
	svc.nshards = n;
	atomic_store(&svc.planned, UINT64_MAX);
	/* The timer thread blocks every signal: they belong to the application's threads. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&svc.thread, NULL, timer_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		svc.shards = NULL;
		free(shards);
		errno = rc;
		return;
	}
	svc.ok = true;
	atexit(timer_stop);
}

enum { ARM_OK, ARM_EXPIRED, ARM_FAILED };

/* Files c's timer for its deadline. c is not yet visible to other threads. */
static int timer_arm(ats_ctx *c)
{
	pthread_once(&svc.once, timer_start);
	if (unlikely(!svc.ok))
		return ARM_FAILED;
	uint32_t idx = my_shard;
	if (unlikely(idx == UINT32_MAX))
		idx = my_shard = atomic_fetch_add_explicit(&svc.next_shard, 1, memory_order_relaxed);
	idx &= svc.nshards - 1;
	uint64_t d = c->h.deadline_ns;
	/* Rounded up: a timer never fires before its deadline. */
	uint64_t tick = (d >> TICK_SHIFT) + ((d & ((1ull << TICK_SHIFT) - 1)) != 0);
	struct shard *s = &svc.shards[idx];
	lock_acquire(&s->lock);
	bool filed = ats__tw_add(&s->wheel, &c->tnode, tick);
	if (filed) {
		c->shard = idx;
		atomic_store_explicit(&c->armed, 1, memory_order_release);
	}
	lock_release(&s->lock);
	if (!filed)
		return ARM_EXPIRED;
	if (tick < atomic_load_explicit(&svc.planned, memory_order_seq_cst))
		kick();
	return ARM_OK;
}

/* Takes c's timer off its wheel, if it is on one. No lock when it is not (the common path of a
 * context cancelled by its parent, or released after its timer fired). */
static void timer_disarm(ats_ctx *c)
{
	if (!atomic_load_explicit(&c->armed, memory_order_acquire))
		return;
	struct shard *s = &svc.shards[c->shard];
	lock_acquire(&s->lock);
	ats__tw_del(&s->wheel, &c->tnode);
	atomic_store_explicit(&c->armed, 0, memory_order_relaxed);
	lock_release(&s->lock);
}

/* ---- Cancelling ---- */

/* The after-func currently running on this thread, so that a callback stopping its own
 * registration neither deadlocks nor has its (possibly freed) handle touched afterwards. */
static _Thread_local struct {
	ats_ctx_after *running;
	bool self_stopped;
} tls_after;

enum {
	A_IDLE = 0,
	A_ARMED,   /* on ctx's list */
	A_CLAIMED, /* taken by a canceller: will run */
	A_DONE,    /* ran */
	A_STOPPED, /* stopped before it ran */
	A_NEVER,   /* registered on a context that can never be done */
	A_WAITER = 0x100,
};

static void run_afters(ats_ctx *c, ats_ctx_after *a)
{
	while (a) {
		ats_ctx_after *next = a->next_;
		void (*fn)(void *) = a->fn_;
		void *arg = a->arg_;
		ats_ctx_after *prev_running = tls_after.running;
		bool prev_self = tls_after.self_stopped;
		tls_after.running = a;
		tls_after.self_stopped = false;
		fn(arg);
		bool self_stopped = tls_after.self_stopped;
		tls_after.running = prev_running;
		tls_after.self_stopped = prev_self;
		if (!self_stopped) {
			uint32_t old = atomic_exchange_explicit(&a->state_, A_DONE, memory_order_acq_rel);
			if (old & A_WAITER)
				futex_wake(&a->state_, INT_MAX);
		}
		ats_ctx_release(c); /* the registration's reference */
		a = next;
	}
}

/* Marks one context done and detaches its children onto *stack (each with a reference taken);
 * then runs its after-funcs and wakes its waiters. The caller holds a reference to c. Returns
 * whether this call made c done. */
static bool cancel_one(ats_ctx *c, uint32_t reason, ats_err *err, ats_ctx **stack)
{
	if (!(c->h.flags & F_CANCELLABLE))
		return false;
	lock_acquire(&c->lock);
	uint32_t st = atomic_load_explicit(&c->h.state, memory_order_relaxed);
	if (st & ATS__CTX_DONE_MASK) {
		lock_release(&c->lock);
		return false;
	}
	c->err = err_ref(err);
	uint32_t old = atomic_exchange_explicit(&c->h.state, reason, memory_order_acq_rel);
	for (ats_ctx *ch = c->children; ch;) {
		ats_ctx *next = ch->sib_next;
		ch->sib_pprev = NULL;
		ch->sib_next = NULL;
		if (try_ref(ch)) {
			ch->walk_next = *stack;
			*stack = ch;
		}
		/* Last touch: a dying child frees itself once it sees linked == 0. */
		atomic_store_explicit(&ch->linked, 0, memory_order_release);
		ch = next;
	}
	c->children = NULL;
	ats_ctx_after *afters = c->afters;
	c->afters = NULL;
	for (ats_ctx_after *a = afters; a; a = a->next_)
		atomic_store_explicit(&a->state_, A_CLAIMED, memory_order_relaxed);
	int efd = c->efd;
	lock_release(&c->lock);

	timer_disarm(c);
	run_afters(c, afters);
	if (old & ATS__CTX_WAITERS)
		futex_wake(&c->h.state, INT_MAX);
	if (efd >= 0) {
		uint64_t one = 1;
		ssize_t rc = write(efd, &one, sizeof one);
		(void)rc; /* cannot fail: the counter is far from overflow */
	}
	return true;
}

/* Cancels c and its subtree, iteratively. The caller holds a reference to c; err is borrowed
 * (each context takes its own reference). */
static bool cancel_tree(ats_ctx *c, uint32_t reason, ats_err *err)
{
	ats_ctx *stack = NULL;
	bool did = cancel_one(c, reason, err, &stack);
	while (stack) {
		ats_ctx *ch = stack;
		stack = ch->walk_next;
		cancel_one(ch, reason, err, &stack);
		ats_ctx_release(ch);
	}
	return did;
}

static void unlink_from_parent(ats_ctx *c)
{
	if (!atomic_load_explicit(&c->linked, memory_order_acquire))
		return;
	ats_ctx *p = c->parent;
	lock_acquire(&p->lock);
	if (atomic_load_explicit(&c->linked, memory_order_relaxed)) {
		*c->sib_pprev = c->sib_next;
		if (c->sib_next)
			c->sib_next->sib_pprev = c->sib_pprev;
		c->sib_next = NULL;
		c->sib_pprev = NULL;
		atomic_store_explicit(&c->linked, 0, memory_order_relaxed);
	}
	lock_release(&p->lock);
}

/* Cancels c (a reference held) as the root of a cancel: the subtree, then leaves the parent's list
 * (a done context needs no link: nothing more can reach it through its parent). err borrowed. */
static void cancel_direct(ats_ctx *c, uint32_t reason, ats_err *err)
{
	if (cancel_tree(c, reason, err))
		unlink_from_parent(c);
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
		err = ats_err_wrapc(cause, ATS_ERR_CANCELLED, "context cancelled");
		if (err == ats_err_oom)
			err = sentinel_err(ATS__CTX_CANCELLED); /* the cause is lost, the cancel is not */
	}
	bool did = cancel_tree(ctx, ATS__CTX_CANCELLED, err);
	if (did)
		unlink_from_parent(ctx);
	err_unref(err);
	return did;
}

/* ---- Release ---- */

/* Frees c (count zero) and returns its parent, whose reference the caller drops. */
static ats_ctx *destroy(ats_ctx *c)
{
	for (uint32_t i = 0; i < c->nmerge; i++)
		ats_ctx_after_stop(&c->merge[i].a);
	timer_disarm(c);
	unlink_from_parent(c);
	err_unref(c->err);
	if (c->efd >= 0)
		close(c->efd);
	ats_ctx *p = c->parent;
	free(c);
	return p;
}

void ats_ctx_release(ats_ctx *ctx)
{
	while (ctx && !(ctx->h.flags & F_STATIC)) {
		if (atomic_fetch_sub_explicit(&ctx->refs, 1, memory_order_acq_rel) != 1)
			return;
		ctx = destroy(ctx);
	}
}

/* ---- Making contexts ---- */

static ats_ctx *ctx_new(ats_ctx *parent, size_t extra, uint32_t flags)
{
	ats_ctx *c = ctx_malloc(sizeof *c + extra);
	if (!c)
		return NULL;
	atomic_init(&c->h.state, 0);
	c->h.flags = flags;
	c->h.deadline_ns = parent ? parent->h.deadline_ns : ATS_CTX_NO_DEADLINE;
	c->h.vals = parent ? parent->h.vals : NULL;
	atomic_init(&c->refs, 1);
	atomic_init(&c->lock.v, 0);
	atomic_init(&c->linked, 0);
	atomic_init(&c->armed, 0);
	c->efd = -1;
	c->shard = 0;
	c->nmerge = 0;
	c->parent = ats_ctx_ref(parent);
	c->sib_next = NULL;
	c->sib_pprev = NULL;
	c->children = NULL;
	c->afters = NULL;
	c->err = NULL;
	c->walk_next = NULL;
	c->tnode.next = NULL;
	c->tnode.pprev = NULL;
	return c;
}

/* Links c under link (a cancellable parent), or makes it born done when link already is. */
static void link_child(ats_ctx *link, ats_ctx *c)
{
	lock_acquire(&link->lock);
	uint32_t ps = atomic_load_explicit(&link->h.state, memory_order_relaxed) & ATS__CTX_DONE_MASK;
	if (ps) {
		c->err = err_ref(link->err);
		atomic_store_explicit(&c->h.state, ps, memory_order_relaxed);
	} else {
		c->sib_next = link->children;
		if (link->children)
			link->children->sib_pprev = &c->sib_next;
		link->children = c;
		c->sib_pprev = &link->children;
		atomic_store_explicit(&c->linked, 1, memory_order_relaxed);
	}
	lock_release(&link->lock);
}

/* The common body of with_cancel/with_deadline/with_value: c is fully built but for its deadline
 * and linking. A timer is armed only when the child's own deadline is earlier than its parent's:
 * otherwise the parent's timer cancels the child through the link. */
static ats_err *finish_child(ats_ctx *parent, ats_ctx *c, uint64_t deadline_ns, ats_ctx **out)
{
	bool own_deadline = deadline_ns < c->h.deadline_ns;
	if (own_deadline)
		c->h.deadline_ns = deadline_ns;
	if (parent->h.flags & F_CANCELLABLE)
		link_child(parent, c);
	if (own_deadline && !ats_ctx_done(c)) {
		int rc = deadline_ns <= ats_now_ns() ? ARM_EXPIRED : timer_arm(c);
		if (rc == ARM_EXPIRED) {
			cancel_direct(c, ATS__CTX_DEADLINE, sentinel_err(ATS__CTX_DEADLINE));
		} else if (rc == ARM_FAILED) {
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
	return finish_child(parent, c, ATS_CTX_NO_DEADLINE, out);
}

ats_err *ats_ctx_with_deadline(ats_ctx *parent, uint64_t deadline_ns, ats_ctx **out)
{
	ats_ctx *c = ctx_new(parent, 0, F_CANCELLABLE);
	if (!c) {
		*out = NULL;
		return ats_err_oom;
	}
	return finish_child(parent, c, deadline_ns, out);
}

ats_err *ats_ctx_with_timeout_at(ats_ctx *parent, uint64_t timeout_ns, uint64_t now_ns, ats_ctx **out)
{
	uint64_t d = now_ns + timeout_ns;
	if (d < now_ns || timeout_ns == ATS_CTX_NO_DEADLINE)
		d = ATS_CTX_NO_DEADLINE;
	return ats_ctx_with_deadline(parent, d, out);
}

ats_err *ats_ctx_with_timeout(ats_ctx *parent, uint64_t timeout_ns, ats_ctx **out)
{
	return ats_ctx_with_timeout_at(parent, timeout_ns, ats_now_ns(), out);
}

/* Slot assignment for value keys: the first ATS_CTX_VALUE_SLOTS keys used get a slot each. */
static _Atomic uint32_t next_key_slot;

static uint32_t key_slot(ats_ctx_key *key)
{
	uint32_t s = atomic_load_explicit(&key->slot_, memory_order_acquire);
	if (likely(s != ATS__CTX_KEY_UNASSIGNED))
		return s;
	uint32_t mine = atomic_load_explicit(&next_key_slot, memory_order_relaxed);
	do {
		if (mine >= ATS_CTX_VALUE_SLOTS) {
			mine = ATS_CTX_VALUE_SLOTS; /* overflow: linear lookup */
			break;
		}
	} while (!atomic_compare_exchange_weak_explicit(&next_key_slot, &mine, mine + 1, memory_order_relaxed,
	                                                memory_order_relaxed));
	uint32_t expected = ATS__CTX_KEY_UNASSIGNED;
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
	size_t extra = sizeof(struct ats__ctx_vals) + (s >= ATS_CTX_VALUE_SLOTS ? sizeof(struct ats__ctx_xval) : 0);
	ats_ctx *c = ctx_new(parent, extra, F_CANCELLABLE | F_OWN_VALS);
	if (!c) {
		*out = NULL;
		return ats_err_oom;
	}
	/* The table lives right after the context (the flexible merge[] array is empty here). */
	struct ats__ctx_vals *v = (struct ats__ctx_vals *)(void *)c->merge;
	if (parent->h.vals)
		*v = *parent->h.vals;
	else
		memset(v, 0, sizeof *v);
	if (s < ATS_CTX_VALUE_SLOTS) {
		v->mask |= 1u << s;
		v->slot[s] = value;
	} else {
		struct ats__ctx_xval *x = (struct ats__ctx_xval *)(v + 1);
		x->key = key;
		x->value = value;
		x->next = v->overflow;
		v->overflow = x;
	}
	c->h.vals = v;
	return finish_child(parent, c, ATS_CTX_NO_DEADLINE, out);
}

ats_err *ats_ctx_without_cancel(ats_ctx *parent, ats_ctx **out)
{
	ats_ctx *c = ctx_new(parent, 0, 0);
	if (!c) {
		*out = NULL;
		return ats_err_oom;
	}
	c->h.deadline_ns = ATS_CTX_NO_DEADLINE;
	*out = c;
	return NULL;
}

/* A merge's after-func on one of its other parents: cancel the merge with that parent's error.
 * try_ref: the merge may be in its last release, which stops (and waits for) this callback. */
static void merge_fire(void *arg)
{
	struct merge_reg *r = arg;
	ats_ctx *merged = r->merged, *parent = r->a.ctx_;
	if (!try_ref(merged))
		return;
	uint32_t reason = atomic_load_explicit(&parent->h.state, memory_order_acquire) & ATS__CTX_DONE_MASK;
	cancel_direct(merged, reason, parent->err);
	ats_ctx_release(merged);
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
	for (size_t i = 1; i < n; i++)
		if (parents[i]->h.deadline_ns < c->h.deadline_ns)
			c->h.deadline_ns = parents[i]->h.deadline_ns;
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
	cancel_direct(c, ATS__CTX_DEADLINE, sentinel_err(ATS__CTX_DEADLINE));
	return true;
}

ats_err *ats_ctx_err(ats_ctx *ctx)
{
	if (!ats_ctx_done(ctx)) {
		if (ctx->h.deadline_ns == ATS_CTX_NO_DEADLINE || !expire_if_due(ctx, ats_now_ns()))
			return NULL;
	}
	return err_ref(ctx->err);
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
		uint32_t st = atomic_load_explicit(&ctx->h.state, memory_order_acquire);
		if (st & ATS__CTX_DONE_MASK)
			return true;
		uint64_t now = ats_now_ns();
		if (expire_if_due(ctx, now))
			return true;
		if (now >= deadline_ns)
			return false;
		/* Announce the waiter in the word itself: a cancel exchanges the word and wakes only when
		 * it saw the bit, and the futex compares the word with what was announced, so a cancel
		 * between the check and the sleep makes the sleep return at once. */
		if (!(st & ATS__CTX_WAITERS)) {
			if (!atomic_compare_exchange_weak_explicit(&ctx->h.state, &st, st | ATS__CTX_WAITERS,
			                                           memory_order_acq_rel, memory_order_acquire))
				continue;
			st |= ATS__CTX_WAITERS;
		}
		futex_wait(&ctx->h.state, st, until);
	}
}

ats_err *ats_ctx_fd(ats_ctx *ctx, int *fd)
{
	lock_acquire(&ctx->lock);
	if (ctx->efd < 0) {
		bool done = ats_ctx_done(ctx);
		int e = eventfd(done ? 1 : 0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (e < 0) {
			int saved = errno;
			lock_release(&ctx->lock);
			*fd = -1;
			return ats_err_wrapc(ats_err_errno(saved, "eventfd"), ATS_ERR_UNAVAILABLE,
			                     "cannot make the context's file descriptor");
		}
		ctx->efd = e;
	}
	*fd = ctx->efd;
	lock_release(&ctx->lock);
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
		atomic_store_explicit(&a->state_, A_NEVER, memory_order_relaxed);
		return;
	}
	lock_acquire(&ctx->lock);
	if (!(atomic_load_explicit(&ctx->h.state, memory_order_relaxed) & ATS__CTX_DONE_MASK)) {
		ats_ctx_ref(ctx);
		atomic_store_explicit(&a->state_, A_ARMED, memory_order_relaxed);
		a->next_ = ctx->afters;
		if (ctx->afters)
			ctx->afters->pprev_ = &a->next_;
		ctx->afters = a;
		a->pprev_ = &ctx->afters;
		lock_release(&ctx->lock);
		return;
	}
	lock_release(&ctx->lock);
	/* Already done: run it now, on this thread. */
	atomic_store_explicit(&a->state_, A_CLAIMED, memory_order_relaxed);
	ats_ctx_ref(ctx); /* run_afters drops the registration's reference */
	run_afters(ctx, a);
}

bool ats_ctx_after_stop(ats_ctx_after *a)
{
	uint32_t st = atomic_load_explicit(&a->state_, memory_order_acquire);
	if (st == A_NEVER || st == A_STOPPED || st == A_IDLE) {
		atomic_store_explicit(&a->state_, A_STOPPED, memory_order_relaxed);
		return true;
	}
	ats_ctx *ctx = a->ctx_;
	if (st == A_ARMED) {
		lock_acquire(&ctx->lock);
		if (atomic_load_explicit(&a->state_, memory_order_relaxed) == A_ARMED) {
			*a->pprev_ = a->next_;
			if (a->next_)
				a->next_->pprev_ = a->pprev_;
			atomic_store_explicit(&a->state_, A_STOPPED, memory_order_relaxed);
			lock_release(&ctx->lock);
			ats_ctx_release(ctx); /* the registration's reference */
			return true;
		}
		lock_release(&ctx->lock);
	}
	if (tls_after.running == a) {
		tls_after.self_stopped = true; /* the canceller will not touch a again */
		return false;
	}
	/* Claimed or running: wait for it to finish. */
	for (;;) {
		st = atomic_load_explicit(&a->state_, memory_order_acquire);
		if ((st & ~(uint32_t)A_WAITER) == A_DONE)
			return false;
		if (!(st & A_WAITER)) {
			if (!atomic_compare_exchange_weak_explicit(&a->state_, &st, st | A_WAITER, memory_order_acq_rel,
			                                           memory_order_acquire))
				continue;
			st |= A_WAITER;
		}
		futex_wait(&a->state_, st, ATS_CTX_NO_DEADLINE);
	}
}
