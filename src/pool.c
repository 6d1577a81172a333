/* SPDX-License-Identifier: BSD-2-Clause */
/* The worker pool (pool.h): per-worker ck_ring queues whose slots hold the task descriptors, a
 * ticket word per queue for the exact capacity and the closed bit, ck_ec eventcounts for parking.
 *
 * Why by hand and not a general work-stealing deque (Chase-Lev): submits come from any thread
 * (the server's I/O threads), not only from the owner, so every queue is multi-producer anyway;
 * ck_ring's MPMC ring takes producers and thieves alike, with the descriptor copied into the slot
 * (no allocation, no free list).
 *
 * The ticket word: (closed bit << 63) | tickets taken. A submit takes the next ticket with one
 * CAS, which fails on the closed bit and when the queue is full: ticket - c_head >= capacity
 * (c_head, ck_ring's consumer index, counts the tasks dequeued). The ticket is the task's ring
 * index, so the CAS is also the ring reservation (ck_ring's p_head is not used), and the enqueue
 * that follows cannot fail: fewer than capacity tickets are ahead of c_head and the ring holds
 * at least capacity slots. Shutdown sets the closed bit on every queue: a submit whose CAS came
 * first is accepted and lands (its enqueue is a bounded number of steps), one that came after is
 * refused. A queue whose c_head has reached its tickets holds nothing and has nothing landing:
 * that is "drained".
 *
 * Who writes what, per task: a submit writes the ticket word, its slot and p_tail; a dequeue
 * writes only c_head. Submitters read c_head only when their copy of it (`head_seen`, on the
 * ticket word's line) says full, so while a queue is neither full nor empty the worker and the
 * submitters each write lines the other reads once per task at most (the slot and p_tail), and
 * no line is written by both. (A free-slot counter taken by submits and given back by dequeues,
 * as this pool had, moves its line between the cores twice per task; ck_ring's own reservation
 * reads c_head on every call.)
 * Reusing a slot: a dequeue copies the slot out before its CAS on c_head, and a submitter that
 * writes ticket t's slot has read (acquire) a c_head, itself or through `head_seen` (release
 * store, acquire load), above t - capacity, so the last reader of that slot is done with it.
 *
 * Wake-ups. Each queue has two eventcounts: `work` (its worker parks on it; bumped by a submit
 * that finds the worker going to sleep, and by shutdown) and `room` (bumped after each dequeue and by shutdown; a
 * blocking submit parks on it). ck_ec32_inc is one locked add that makes a system call only when
 * the waiter flag is set, and a parker arms the flag (ats__ec_arm) and then re-checks its
 * condition before it sleeps, so no wake-up is lost (the argument in chan.c's header).
 * A submit bumps `work` only for a worker that armed it, where its ticket CAS is a locked
 * instruction anyway (as chan.c's fenced sends): right after the CAS (seq_cst) it loads the flag
 * (seq_cst), and bumps after its enqueue when it saw the flag. The parker arms the flag, fences
 * (seq_cst) and re-checks the tickets, not the ring: so either the parker sees the ticket taken
 * (it does not sleep, and waits for the task to land if the submit has not published it yet) or
 * the submit sees the flag (and bumps). A task submitted to a worker that is not going to sleep
 * costs no eventcount add.
 *
 * Shutdown's wait for the drain sleeps on `drain_kick`, which an idle worker bumps in the
 * draining state and the ctx's after-func bumps on cancel; shutdown re-checks the queues after
 * reading it, so neither wake is lost.
 */
#include "atscale/pool.h"
#include "atscale/clock.h"
#include "internal/cgroup_cpu.h"
#include "internal/compiler.h"
#include "internal/cpu.h"
#include "internal/ec.h"
#include "internal/futex.h"
#include "internal/ring_burst.h"
#include "internal/spin.h"
#include "internal/tsan.h"
#ifdef ATS_TESTING
#include "internal/pool_hooks.h"
#endif

#include <ck_pr.h>
#include <ck_ring.h>
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <urcu/urcu-memb.h>

#define CLOSED_BIT (UINT64_C(1) << 63)
#define TICKETS(w) ((w) & ~CLOSED_BIT)

enum { RUNNING = 0, DRAINING = 1, STOPPING = 2 };

struct task_slot {
	ats_task_fn run;
	ats_task_cancel_fn cancel;
	void *arg;
	ats_ctx *ctx;
};
CK_RING_PROTOTYPE(task, task_slot)

struct worker {
	/* Shared by submitters and thieves. */
	_Alignas(64) struct ck_ring ring; /* c_head, p_tail and size/mask on lines of their own */
	struct task_slot *slots;
	/* Submitters' line: the ticket word and their copy of c_head (file comment). */
	_Alignas(64) _Atomic uint64_t tickets;
	_Atomic uint32_t head_seen;
	_Alignas(64) struct ck_ec32 work;
	_Alignas(64) struct ck_ec32 room;
	/* Written by the worker (and by shutdown after the join), read by anyone. */
	_Alignas(64) _Atomic uint64_t progress;
	_Atomic uint64_t run;
	_Atomic uint64_t stolen;
	_Atomic uint64_t cancelled;
	_Atomic uint32_t parked;   /* 1 while the worker sleeps on `work` */
	_Atomic uint64_t replaced; /* threads of this worker replaced while stuck (ats_pool_replace_stuck) */
	_Atomic uint64_t returned; /* of those, threads whose stuck task has returned since */
	/* The worker's own. */
	uint32_t rng;
	unsigned index;
	int cpu; /* pinned to it; -1: not pinned */
	struct ats_pool *pool;
	/* The current thread; written at start and by a replacement, both under the pool's watch
	 * lock (or before any other thread runs). */
	pthread_t thread;
	bool started;
	/* ats_pool_replace_stuck's view, under the watch lock: the odd progress value last seen, and
	 * since when. */
	uint64_t seen_progress;
	uint64_t seen_since_ns;
};

/* A replaced worker thread, still running its stuck task: joined by shutdown. */
struct quarantined {
	pthread_t thread;
	struct quarantined *next;
};

struct ats_pool {
	struct worker *w;
	unsigned n;
	/* The worker a caller on CPU c submits to, for c < cpu_map_len (map_cpus). */
	uint16_t *cpu_map;
	unsigned cpu_map_len;
	size_t capacity;
	ats_pool_idle idle;
	uint32_t spin_ns;
	ats_ctx *ctx; /* the ctx of tasks submitted without one */
	/* Read on every worker round: apart from the words that change while the pool runs. */
	_Alignas(64) _Atomic uint32_t state;
	_Atomic uint32_t shut; /* 1 once a shutdown began */
	_Alignas(64) _Atomic uint32_t nparked;
	_Atomic uint32_t drain_kick;
	/* Replacement of stuck workers: serializes ats_pool_replace_stuck and shutdown's joins. */
	pthread_mutex_t watch_lock;
	bool watch_closed; /* set by shutdown: no more replacements */
	struct quarantined *quarantined;
	void (*on_replace)(unsigned worker, const ats_err *why, void *arg);
	void *replace_arg;
};

#ifdef ATS_TESTING
_Atomic uint32_t ats__pool_first_ticket;
_Atomic uint64_t ats__pool_steal_period_ns;
void (*_Atomic ats__pool_before_publish)(void);
void (*_Atomic ats__pool_park_between)(void);

unsigned ats__pool_parked(struct ats_pool *p)
{
	return atomic_load(&p->nparked);
}
#endif

/* The worker the calling thread is (NULL when it is none). */
static _Thread_local struct worker *self;
static _Thread_local uint32_t rng_state;

static uint32_t rng_next(uint32_t *state)
{
	uint32_t x = *state;
	if (ats__unlikely(!x))
		x = (uint32_t)(uintptr_t)state ^ (uint32_t)ats_now_ns() ^ 0x9e3779b9u;
	x ^= x << 13, x ^= x >> 17, x ^= x << 5;
	*state = x ? x : 1;
	return x;
}

static size_t depth(const struct worker *w)
{
	/* relaxed: a snapshot for load balancing and stats. c_head first: the tickets read after it
	 * are at least as many, short of a wrap of the 32-bit index mid-read (hence the clamp). */
	uint32_t head = ck_pr_load_uint(&((struct worker *)w)->ring.c_head);
	uint32_t t = (uint32_t)TICKETS(atomic_load_explicit(&((struct worker *)w)->tickets, memory_order_relaxed));
	uint32_t d = t - head;
	return d > ATS_POOL_MAX_CAPACITY ? 0 : d;
}

/* Tasks accepted on w that no dequeue has taken yet (w's queue closed: the count only falls). */
static uint32_t outstanding(struct worker *w)
{
	/* acquire, both: a caller that sees 0 sees what the dequeues and submits did before. */
	uint32_t t = (uint32_t)TICKETS(atomic_load_explicit(&w->tickets, memory_order_acquire));
	uint32_t head = ck_pr_load_uint(&w->ring.c_head);
	ck_pr_fence_load();
	return t - head;
}

/* ---- Queues ---- */

/* The room below the capacity, with tickets word c and c_head (or a copy of it) head. The
 * tickets are never more than capacity ahead of a head read after them (take_tickets); a head
 * that were would read as full, never as room. */
static inline size_t free_slots(const ats_pool *p, uint64_t c, uint32_t head)
{
	uint32_t used = (uint32_t)c - head;
	return used < p->capacity ? p->capacity - used : 0;
}

/* Takes up to n tickets on w (as many as the capacity leaves room for) with one CAS; returns how
 * many, with *first the first. 0 when closed (*st CLOSED) or full (*st FULL). */
static inline unsigned take_tickets(ats_pool *p, struct worker *w, size_t n, unsigned *first, ats_pool_status *st)
{
	/* acquire, here and on the CAS (acq_rel): whoever took the tickets this value counts had seen
	 * a c_head at most capacity behind them and, where it read c_head itself, moved head_seen to
	 * it first, so head_seen read after this is at most capacity behind too. The closed bit's
	 * ordering is the word's modification order, which the CAS is part of. */
	uint64_t c = atomic_load_explicit(&w->tickets, memory_order_acquire);
	unsigned k;
	do {
		if (ats__unlikely(c & CLOSED_BIT)) {
			*st = ATS_POOL_CLOSED;
			return 0;
		}
		/* acquire: pairs with the release below (file comment, reusing a slot). */
		uint32_t head = atomic_load_explicit(&w->head_seen, memory_order_acquire);
		size_t room = free_slots(p, c, head);
		if (ats__unlikely(room < n)) {
			head = ck_pr_load_uint(&w->ring.c_head);
			/* The c_head read before the slot stores it allows (the dequeue copied the slot
			 * out before its CAS on c_head), as ck_ring's own reservation does. */
			ck_pr_fence_load_store();
			/* Moves the copy forward only (a racing submitter may hold an older c_head).
			 * release: a submitter that reads the copy sees what this one saw. */
			uint32_t seen = atomic_load_explicit(&w->head_seen, memory_order_relaxed);
			while ((int32_t)(head - seen) > 0 &&
			       !atomic_compare_exchange_weak_explicit(&w->head_seen, &seen, head, memory_order_release,
			                                              memory_order_relaxed))
				;
			room = free_slots(p, c, head);
			if (room == 0) {
				*st = ATS_POOL_FULL;
				return 0;
			}
		}
		k = (unsigned)(n < room ? n : room);
		/* seq_cst: also orders the ticket before the load of the worker's waiter flag that follows
		 * (file comment, wake-ups). */
	} while (
	    !atomic_compare_exchange_weak_explicit(&w->tickets, &c, c + k, memory_order_seq_cst, memory_order_acquire));
	*first = (unsigned)c;
	*st = k == n ? ATS_POOL_OK : ATS_POOL_FULL;
	return k;
}

/* Whether some worker is parked. relaxed: a hint, read before anything costlier (the word
 * changes only when a worker parks or wakes). */
static bool any_parked(ats_pool *p)
{
	return atomic_load_explicit(&p->nparked, memory_order_relaxed) != 0;
}

/* Wakes one parked worker other than w, if there is one, to look for work to steal: tasks are
 * queued behind w, which is busy and may be blocked in a long task. relaxed: hints; a missed
 * wake is covered by the parked workers' steal period. Wait-free; a futex wake when it finds one. */
static void wake_a_parked(ats_pool *p, struct worker *w)
{
	unsigned start = rng_next(&rng_state) % p->n;
	for (unsigned i = 0; i < p->n; i++) {
		struct worker *o = &p->w[(start + i) % p->n];
		if (o != w && atomic_load_explicit(&o->parked, memory_order_relaxed)) {
			ck_ec32_inc(&o->work, &ats__ec_mode_mp);
			return;
		}
	}
}

/* Queues the first of t[0..n) that fit on w (all tasks valid, n >= 1); returns how many, *st OK
 * when all did. One ticket CAS, one publication and one look at the waiter flag for all of them
 * (an eventcount add only when the worker is going to sleep). */
static inline size_t enqueue_n(ats_pool *p, struct worker *w, const ats_task *t, size_t n, ats_pool_status *st)
{
	unsigned ticket;
	unsigned k = take_tickets(p, w, n, &ticket, st);
	if (ats__unlikely(k == 0))
		return 0;
	/* Whether the worker is going to sleep: seq_cst, after the ticket's seq_cst CAS (file comment,
	 * wake-ups). */
	bool worker_sleeps = __atomic_load_n(&w->work.counter, __ATOMIC_SEQ_CST) & ATS__EC_FLAG;
#ifdef ATS_TESTING
	void (*hook)(void) = atomic_load(&ats__pool_before_publish);
	if (hook)
		hook(); /* widens the window between the flag's load and the publication */
#endif
	/* Cannot fail: the tickets are ours and fewer than capacity are ahead of c_head.
	 * ThreadSanitizer cannot see ck_ring's inline-assembly ordering; one sync object per queue
	 * (as chan.c keeps one per channel) stands for it: the slot's last reader (its dequeue)
	 * happens before this reservation reuses it, and what the submitter writes happens before
	 * the task runs (the publication's store fence, the dequeue's load fence). */
	TSAN_ACQUIRE(&w->ring);
	for (unsigned i = 0; i < k; i++) {
		if (t[i].ctx)
			ats_ctx_ref(t[i].ctx);
		w->slots[(ticket + i) & w->ring.mask] = (struct task_slot){t[i].run, t[i].cancel, t[i].arg, t[i].ctx};
	}
	TSAN_RELEASE(&w->ring);
	ats__ring_publish_mp(&w->ring, ticket, k);
	if (worker_sleeps)
		ck_ec32_inc(&w->work, &ats__ec_mode_mp);
	/* A busy worker (odd progress) may be blocked in a long task: wake a parked one to steal.
	 * (The worker's own line is read only when some worker is parked.) */
	if (any_parked(p) && (atomic_load_explicit(&w->progress, memory_order_relaxed) & 1))
		wake_a_parked(p, w);
	return k;
}

static ats_pool_status enqueue(ats_pool *p, struct worker *w, const ats_task *t)
{
	ats_pool_status st;
	enqueue_n(p, w, t, 1, &st);
	return st;
}

static bool dequeue(ats_pool *p, struct worker *w, struct task_slot *s)
{
	(void)p;
	if (!ck_ring_dequeue_mpmc_task(&w->ring, w->slots, s))
		return false;
	TSAN_ACQUIRE(&w->ring); /* the submit happens before (enqueue's TSAN_RELEASE) */
	TSAN_RELEASE(&w->ring); /* and this copy before the slot's reuse (enqueue's TSAN_ACQUIRE) */
	/* The dequeue's CAS on c_head is what a blocked submit and shutdown's drain check wait for
	 * (both re-check after arming their wake-up). */
	ck_ec32_inc(&w->room, &ats__ec_mode_mp);
	return true;
}

/* ---- Running ---- */

/* A task starts: the progress word goes odd. A plain store: only the worker's current thread
 * writes an even word (a replacement acts only on an odd one). Release: a watcher that sees the
 * new value sees the worker's work before. Returns the odd value. */
static uint64_t begin_task(struct worker *w)
{
	uint64_t v = atomic_load_explicit(&w->progress, memory_order_relaxed) + 1;
	atomic_store_explicit(&w->progress, v, memory_order_release);
	return v;
}

/* The task that began at odd value v ended: the word goes even. A CAS, because a replacement
 * (ats_pool_replace_stuck) may have ended it first from outside, taking the worker over: then
 * this thread is quarantined and must leave (false). Release, as begin_task. */
static bool end_task(struct worker *w, uint64_t v)
{
	return atomic_compare_exchange_strong_explicit(&w->progress, &v, v + 1, memory_order_release,
	                                               memory_order_relaxed);
}

static void count(_Atomic uint64_t *c)
{
	/* Single writer (the worker; shutdown only after the join): no locked add needed. relaxed:
	 * a statistic. */
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

/* Whether a task with ctx must not run; *why gets the reason (a new reference). */
static bool done(ats_ctx *ctx, ats_err **why)
{
	if (ats_ctx_done(ctx) ||
	    (ats_ctx_deadline(ctx) != ATS_CTX_NO_DEADLINE && ats_fast_now_ns() >= ats_ctx_deadline(ctx))) {
		*why = ats_ctx_err(ctx);
		return *why != NULL;
	}
	return false;
}

static void give_back(struct task_slot *s, const ats_err *why)
{
	if (s->cancel)
		s->cancel(s->arg, why);
	if (s->ctx)
		ats_ctx_release(s->ctx);
}

/* Runs (or gives back) one task. False when this thread was replaced while it ran: it must
 * leave without touching the worker's single-writer counters, which are its replacement's now. */
static bool execute(ats_pool *p, struct worker *w, struct task_slot *s, bool stolen)
{
	ats_ctx *ctx = s->ctx ? s->ctx : p->ctx;
	ats_err *why = NULL;
	uint64_t v = begin_task(w);
	bool ran = !done(ctx, &why);
	if (ats__likely(ran)) {
		s->run(s->arg, ctx);
		if (s->ctx)
			ats_ctx_release(s->ctx);
	} else {
		give_back(s, why);
		ats_err_unref(why);
	}
	if (ats__unlikely(!end_task(w, v))) {
		/* relaxed: a statistic (several quarantined threads of one worker may return at once). */
		atomic_fetch_add_explicit(&w->returned, 1, memory_order_relaxed);
		return false;
	}
	count(ran ? &w->run : &w->cancelled);
	if (ran && stolen)
		count(&w->stolen);
	return true;
}

/* One pass over the other workers from a random start; the worker *s was taken from, or NULL. */
static struct worker *steal(ats_pool *p, struct worker *w, struct task_slot *s)
{
	if (p->n < 2)
		return NULL;
	unsigned start = rng_next(&w->rng) % p->n;
	for (unsigned i = 0; i < p->n; i++) {
		struct worker *v = &p->w[(start + i) % p->n];
		if (v != w && dequeue(p, v, s))
			return v;
	}
	return NULL;
}

/* w took a task from q's queue: when more wait there and some worker is parked, wakes one to
 * share them (the task just taken may be long: the rest must not wait for it). As Go's scheduler
 * wakes an idle P when it finds work. Cost per task: one load while no worker is parked; else
 * q's indexes (just read by the dequeue) and, when tasks remain, one futex wake. */
static void share(ats_pool *p, struct worker *w, struct worker *q)
{
	if (any_parked(p) && ck_ring_size(&q->ring))
		wake_a_parked(p, w);
}

static bool has_work(ats_pool *p, struct worker *w)
{
	for (unsigned i = 0; i < p->n; i++)
		if (ck_ring_size(&p->w[(w->index + i) % p->n].ring))
			return true;
	return false;
}

static void notify_drain(ats_pool *p)
{
	/* release: shutdown reads the queues after it sees the new value. */
	atomic_fetch_add_explicit(&p->drain_kick, 1, memory_order_release);
	ats__futex_wake(&p->drain_kick, 1);
}

/* Sleeps on w's `work` until a submit, a shutdown step or `period_ns` (the steal period); returns
 * at once when a task is queued or landing on w. */
static void park(ats_pool *p, struct worker *w, uint64_t period_ns)
{
	uint32_t val = ats__ec_arm(&w->work);
	atomic_store_explicit(&w->parked, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&p->nparked, 1, memory_order_relaxed);
	/* seq_cst: orders the flag set by ats__ec_arm's CAS before the re-checks (chan.c's step 3),
	 * and pairs with a submit's ticket CAS and flag load (file comment, wake-ups). */
	atomic_thread_fence(memory_order_seq_cst);
	/* c_head first: the tickets read after it are at least as many (a head read after the tickets
	 * may have passed them, a submit and a steal in between, and then the wait below never ends). */
	uint32_t head = ck_pr_load_uint(&w->ring.c_head);
	ck_pr_fence_load();
#ifdef ATS_TESTING
	void (*between)(void) = atomic_load(&ats__pool_park_between);
	if (between)
		between();
#endif
	uint32_t tickets = (uint32_t)TICKETS(atomic_load_explicit(&w->tickets, memory_order_seq_cst));
	if (tickets != head) {
		/* A ticket is taken: the task is queued, or its submit (which may have read the flag
		 * before it was set, and then does not bump) is a few instructions from publishing it.
		 * Wait for it to land, or for a thief to take it. */
		for (uint32_t i = 0; !ck_ring_size(&w->ring) && ck_pr_load_uint(&w->ring.c_head) == head; i++) {
			ats__cpu_relax();
			ats__spin_yield(i); /* the submitter may be queued behind this thread */
		}
	} else if (atomic_load_explicit(&p->state, memory_order_acquire) != STOPPING) {
		ats__futex_wait((const _Atomic uint32_t *)(void *)&w->work.counter, val, ats_now_ns() + period_ns);
	}
	atomic_fetch_sub_explicit(&p->nparked, 1, memory_order_relaxed);
	atomic_store_explicit(&w->parked, 0, memory_order_relaxed);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	ats_pool *p = w->pool;
	self = w;
	urcu_memb_register_thread();
	struct task_slot s;
	/* Whether the worker ran a task since it last parked: only then does it spin before parking.
	 * A worker that wakes for its steal period and finds nothing parks again at once, with the
	 * period doubled (up to ATS_POOL_STEAL_PERIOD_MAX_NS), so an idle pool costs each worker a
	 * wake-up and a look at the queues every few milliseconds, not a spin every millisecond. */
	bool ran = false;
	uint64_t first_period = ATS_POOL_STEAL_PERIOD_NS, max_period = ATS_POOL_STEAL_PERIOD_MAX_NS;
#ifdef ATS_TESTING
	if (atomic_load(&ats__pool_steal_period_ns))
		first_period = max_period = atomic_load(&ats__pool_steal_period_ns);
#endif
	uint64_t period = first_period;
	for (;;) {
		/* acquire: pairs with shutdown's release stores of the state. Checked before taking a
		 * task: once stopping, what is queued is shutdown's to cancel, not a worker's to run. */
		uint32_t st = atomic_load_explicit(&p->state, memory_order_acquire);
		if (st == STOPPING)
			break;
		if (dequeue(p, w, &s)) {
			share(p, w, w);
			if (!execute(p, w, &s, false))
				break; /* replaced while stuck: the worker has another thread */
			ran = true;
			continue;
		}
		struct worker *victim = steal(p, w, &s);
		if (victim) {
			share(p, w, victim);
			if (!execute(p, w, &s, true))
				break;
			ran = true;
			continue;
		}
		if (st == DRAINING)
			notify_drain(p);
		if (p->idle == ATS_POOL_POLL) {
			ats__cpu_relax();
			continue;
		}
		bool found = false;
		if (p->idle == ATS_POOL_SPIN_PARK && st == RUNNING && ran) {
			ats__spin spin = ats__spin_start(p->spin_ns); /* internal/spin.h */
			for (uint32_t i = 0; !found; i++) {
				ats__cpu_relax();
				found = ck_ring_size(&w->ring) != 0 || (i % 64 == 63 && has_work(p, w));
				if (!found && ats__spin_over(&spin, i))
					break;
			}
		}
		if (!found) {
			if (ran)
				period = first_period;
			park(p, w, period);
			ran = false;
			period = 2 * period < max_period ? 2 * period : max_period; /* unless a task runs first */
		}
	}
	urcu_memb_unregister_thread();
	self = NULL;
	return NULL;
}

/* ---- Making and stopping ---- */

static void free_pool(ats_pool *p)
{
	pthread_mutex_destroy(&p->watch_lock);
	for (unsigned i = 0; i < p->n; i++)
		free(p->w[i].slots);
	free(p->w);
	free(p->cpu_map);
	ats_ctx_release(p->ctx);
	free(p);
}

static unsigned allowed_cpus(cpu_set_t *set)
{
	CPU_ZERO(set);
	if (sched_getaffinity(0, sizeof *set, set) != 0 || CPU_COUNT(set) == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		CPU_ZERO(set);
		for (long i = 0; i < (n > 0 ? n : 1) && i < CPU_SETSIZE; i++)
			CPU_SET((int)i, set);
	}
	return (unsigned)CPU_COUNT(set);
}

/* Fills map[0..len) with the worker that a caller on each CPU submits to: the k-th CPU of mask
 * feeds worker k modulo the count. Worker i is pinned to the i-th CPU of the mask (nth_cpu), so a
 * caller on a pinned worker's CPU feeds that worker, and callers spread evenly over the workers
 * however the CPUs are numbered: with a cpuset of 2-5 and four workers, CPU 2 feeds worker 0, not
 * worker 2 (pinned to CPU 4) as its number modulo four would say. A CPU outside the mask (a caller
 * with another affinity) goes by its number modulo the count. */
static void map_cpus(const cpu_set_t *mask, unsigned workers, uint16_t *map, unsigned len)
{
	unsigned k = 0;
	for (unsigned c = 0; c < len; c++)
		map[c] = (uint16_t)(CPU_ISSET(c, mask) ? k++ % workers : c % workers);
}

#ifdef ATS_TESTING
void ats__pool_map_cpus(const cpu_set_t *mask, unsigned workers, uint16_t *map, unsigned len)
{
	map_cpus(mask, workers, map, len);
}
#endif

/* The i-th CPU of set, modulo their number. */
static int nth_cpu(const cpu_set_t *set, unsigned i)
{
	unsigned k = i % (unsigned)CPU_COUNT(set);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, set) && k-- == 0)
			return c;
	return 0;
}

/* Starts w's (next) thread, pinned as configured, with every signal blocked (signals belong to
 * the application's threads). */
static int start_thread(struct worker *w)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	if (w->cpu >= 0) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(w->cpu, &one);
		pthread_attr_setaffinity_np(&attr, sizeof one, &one);
	}
	int rc = pthread_create(&w->thread, &attr, worker_main, w);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	w->started = rc == 0;
	return rc;
}

/* Joins every worker thread, then every quarantined one (a replaced thread still in its stuck
 * task: the pool's ctx, cancelled first, may end it; else this waits for it, however long). */
static void stop_workers(ats_pool *p)
{
	/* release: a worker that sees STOPPING sees everything shutdown did before. */
	atomic_store_explicit(&p->state, STOPPING, memory_order_release);
	pthread_mutex_lock(&p->watch_lock);
	p->watch_closed = true; /* no replacement from here: the threads below are the last */
	struct quarantined *q = p->quarantined;
	p->quarantined = NULL;
	pthread_mutex_unlock(&p->watch_lock);
	for (unsigned i = 0; i < p->n; i++)
		ck_ec32_inc(&p->w[i].work, &ats__ec_mode_mp);
	for (unsigned i = 0; i < p->n; i++)
		if (p->w[i].started)
			pthread_join(p->w[i].thread, NULL);
	if (q)
		ats_ctx_cancel(p->ctx, NULL);
	while (q) {
		struct quarantined *next = q->next;
		pthread_join(q->thread, NULL);
		free(q);
		q = next;
	}
}

ats_err *ats_pool_new(ats_pool **out, const ats_pool_config *cfg)
{
	if (!out)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: NULL out");
	*out = NULL;
	ats_pool_config c = cfg ? *cfg : (ats_pool_config){0};
	if (c.workers > ATS_POOL_MAX_WORKERS)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: %u workers, above %u", c.workers,
		                   ATS_POOL_MAX_WORKERS);
	if (c.queue_capacity > ATS_POOL_MAX_CAPACITY)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: queue capacity %zu, above %zu", c.queue_capacity,
		                   ATS_POOL_MAX_CAPACITY);
	if ((unsigned)c.idle > ATS_POOL_POLL)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: unknown idle policy %d", (int)c.idle);
	cpu_set_t cpus;
	unsigned ncpu = allowed_cpus(&cpus);
	if (c.workers == 0) {
		unsigned limit = ats__cgroup_cpu_limit("/proc/self/cgroup", "/proc/self/mountinfo");
		c.workers = limit && limit < ncpu ? limit : ncpu;
	}
	if (c.workers > ATS_POOL_MAX_WORKERS)
		c.workers = ATS_POOL_MAX_WORKERS;
	if (c.queue_capacity == 0)
		c.queue_capacity = ATS_POOL_DEFAULT_CAPACITY;
	if (c.spin_ns == 0)
		c.spin_ns = ATS_POOL_DEFAULT_SPIN_NS;

	ats_pool *p = aligned_alloc(64, (sizeof *p + 63) & ~(size_t)63);
	if (!p)
		return ats_err_oom;
	memset(p, 0, sizeof *p);
	p->n = c.workers;
	p->capacity = c.queue_capacity;
	p->idle = c.idle;
	p->spin_ns = c.spin_ns;
	p->on_replace = c.on_replace;
	p->replace_arg = c.replace_arg;
	pthread_mutex_init(&p->watch_lock, NULL);
	ats_err *err = ats_ctx_with_cancel(ats_ctx_background(), &p->ctx);
	if (err) {
		pthread_mutex_destroy(&p->watch_lock);
		free(p);
		return err;
	}
	p->w = aligned_alloc(64, sizeof(struct worker) * p->n);
	if (!p->w) {
		pthread_mutex_destroy(&p->watch_lock);
		ats_ctx_release(p->ctx);
		free(p);
		return ats_err_oom;
	}
	memset(p->w, 0, sizeof(struct worker) * p->n);
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &cpus))
			p->cpu_map_len = (unsigned)cpu + 1;
	p->cpu_map = malloc(sizeof *p->cpu_map * p->cpu_map_len);
	if (!p->cpu_map) {
		free_pool(p);
		return ats_err_oom;
	}
	map_cpus(&cpus, p->n, p->cpu_map, p->cpu_map_len);
	/* The ring holds size-1: the smallest power of two above the capacity. */
	unsigned ring_size = 2;
	while (ring_size - 1 < c.queue_capacity)
		ring_size <<= 1;
	for (unsigned i = 0; i < p->n; i++) {
		struct worker *w = &p->w[i];
		w->slots = malloc(sizeof(struct task_slot) * ring_size);
		if (!w->slots) {
			free_pool(p);
			return ats_err_oom;
		}
		ck_ring_init(&w->ring, ring_size);
		uint32_t first = 0;
#ifdef ATS_TESTING
		first = atomic_load(&ats__pool_first_ticket);
		w->ring.c_head = w->ring.p_tail = w->ring.p_head = first;
#endif
		atomic_init(&w->tickets, first);
		atomic_init(&w->head_seen, first);
		ck_ec32_init(&w->work, 0);
		ck_ec32_init(&w->room, 0);
		w->index = i;
		w->pool = p;
		w->rng = 0x9e3779b9u * (i + 1);
		w->cpu = c.pin ? nth_cpu(&cpus, i) : -1;
	}

	int rc = 0;
	for (unsigned i = 0; i < p->n && rc == 0; i++)
		rc = start_thread(&p->w[i]);
	if (rc != 0) {
		stop_workers(p);
		free_pool(p);
		return ats_err_with_kv(ats_err_errno(rc, "pool: cannot start a worker thread"), "workers", "%u",
		                       c.workers);
	}
	*out = p;
	return NULL;
}

/* Every queue empty with nothing landing, and no task running. */
static bool drained(ats_pool *p)
{
	for (unsigned i = 0; i < p->n; i++) {
		/* The queue is closed: no ticket is taken any more. */
		if (outstanding(&p->w[i]))
			return false;
		if (atomic_load_explicit(&p->w[i].progress, memory_order_acquire) & 1)
			return false;
	}
	return true;
}

/* Hands every task still queued on w (after waiting for accepted submits to land) to its cancel
 * callback. Runs after the join: nothing else dequeues. */
static void cancel_queued(struct worker *w, const ats_err *why)
{
	struct task_slot s;
	for (unsigned spins = 0;;) {
		while (ck_ring_dequeue_mpmc_task(&w->ring, w->slots, &s)) {
			TSAN_ACQUIRE(&w->ring); /* pairs with enqueue's TSAN_RELEASE */
			give_back(&s, why);
			count(&w->cancelled);
		}
		/* Closed: no new ticket is taken. A ticket c_head has not reached, with the ring empty,
		 * is a submit landing (a bounded number of steps away). */
		if (!outstanding(w))
			return;
		ats__spin_pause(++spins);
	}
}

static ats_err *shutdown(ats_pool *p, ats_ctx *ctx, bool drain)
{
	uint32_t zero = 0;
	if (!atomic_compare_exchange_strong(&p->shut, &zero, 1))
		return ats_err_new(ATS_ERR_CLOSED, "pool: already shut down");
	/* 1. Stop accepting: from here every submit's CAS sees the bit. */
	for (unsigned i = 0; i < p->n; i++)
		atomic_fetch_or_explicit(&p->w[i].tickets, CLOSED_BIT, memory_order_seq_cst);
	/* Wake blocked submits (wait_room): they re-check after arming `room`, so they see the bit
	 * now; a shutdown that does not drain empties the queues without a dequeue's bump. */
	for (unsigned i = 0; i < p->n; i++)
		ck_ec32_inc(&p->w[i].room, &ats__ec_mode_mp);
	/* 2. Drain. */
	ats_err *err = NULL;
	if (drain) {
		ats_ctx_after after;
		ats_ctx_after_func(ctx, &after, ats__ec_kick, &p->drain_kick);
		/* release: workers that see DRAINING report when idle. */
		atomic_store_explicit(&p->state, DRAINING, memory_order_release);
		for (unsigned i = 0; i < p->n; i++)
			ck_ec32_inc(&p->w[i].work, &ats__ec_mode_mp);
		for (;;) {
			/* acquire: pairs with notify_drain's and the kick's release. */
			uint32_t v = atomic_load_explicit(&p->drain_kick, memory_order_acquire);
			if (drained(p))
				break;
			if (ats_ctx_done(ctx) || ats_fast_now_ns() >= ats_ctx_deadline(ctx)) {
				err = ats_ctx_err(ctx);
				if (err)
					break;
			}
			ats__futex_wait(&p->drain_kick, v, ats_ctx_deadline(ctx));
		}
		ats_ctx_after_stop(&after);
	}
	/* 3. Stop the workers taking tasks first (else one leaving a task the cancel below ends
	 * would take and run the next), then cancel the pool's ctx so running tasks see it, then
	 * join. */
	atomic_store_explicit(&p->state, STOPPING, memory_order_release);
	if (!drain || err)
		ats_ctx_cancel(p->ctx, NULL);
	stop_workers(p);
	ats_err *why = err ? ats_err_ref(err) : ats_err_new(ATS_ERR_CANCELLED, "pool: shut down before the task ran");
	for (unsigned i = 0; i < p->n; i++)
		cancel_queued(&p->w[i], why);
	ats_err_unref(why);
	return err;
}

ats_err *ats_pool_shutdown(ats_pool *p, ats_ctx *ctx)
{
	if (!p || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: NULL %s", p ? "ctx" : "pool");
	if (self && self->pool == p)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: shutdown called from the pool's own worker %u",
		                   self->index);
	return shutdown(p, ctx, true);
}

void ats_pool_free(ats_pool *p)
{
	if (!p)
		return;
	if (!atomic_load(&p->shut))
		ats_err_unref(shutdown(p, NULL, false));
	free_pool(p);
}

/* ---- Submitting ---- */

static struct worker *caller_worker(ats_pool *p)
{
	if (self && self->pool == p)
		return self;
	unsigned cpu = ats__current_cpu();
	return &p->w[cpu < p->cpu_map_len ? p->cpu_map[cpu] : cpu % p->n];
}

/* t[0..n) are tasks (each has run). */
static bool tasks_ok(const ats_task *t, size_t n)
{
	if (!t)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!t[i].run)
			return false;
	return true;
}

ats_pool_status ats_pool_try_submit(ats_pool *p, const ats_task *t)
{
	if (ats__unlikely(!p || !tasks_ok(t, 1)))
		return ATS_POOL_INVALID;
	return enqueue(p, caller_worker(p), t);
}

ats_pool_status ats_pool_try_submit_to(ats_pool *p, unsigned worker, const ats_task *t)
{
	if (ats__unlikely(!p || !tasks_ok(t, 1) || worker >= p->n))
		return ATS_POOL_INVALID;
	return enqueue(p, &p->w[worker], t);
}

static size_t submit_n(ats_pool *p, struct worker *w, const ats_task *t, size_t n, ats_pool_status *status)
{
	ats_pool_status st = ATS_POOL_OK;
	size_t k = n ? enqueue_n(p, w, t, n, &st) : 0;
	if (status)
		*status = st;
	return k;
}

size_t ats_pool_try_submit_n(ats_pool *p, const ats_task *t, size_t n, ats_pool_status *status)
{
	if (ats__unlikely(!p || (n && !tasks_ok(t, n)))) {
		if (status)
			*status = ATS_POOL_INVALID;
		return 0;
	}
	return submit_n(p, caller_worker(p), t, n, status);
}

size_t ats_pool_try_submit_n_to(ats_pool *p, unsigned worker, const ats_task *t, size_t n, ats_pool_status *status)
{
	if (ats__unlikely(!p || (n && !tasks_ok(t, n)) || worker >= p->n)) {
		if (status)
			*status = ATS_POOL_INVALID;
		return 0;
	}
	return submit_n(p, &p->w[worker], t, n, status);
}

static ats_err *status_err(ats_pool_status st)
{
	return st == ATS_POOL_CLOSED ? ats_err_new(ATS_ERR_CLOSED, "pool: shut down, task not queued")
	                             : ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: NULL pool, task or run");
}

/* Waits for room on w (the first try found it full). */
static ats_err *wait_room(ats_pool *p, struct worker *w, const ats_task *t, ats_ctx *ctx)
{
	/* A cancel also bumps `room`, so it wakes this thread even where it sleeps on one word only
	 * (ats__ec_park). */
	ats__ec_kicker kick = {.ec = &w->room};
	atomic_init(&kick.word, 0);
	ats_ctx_after after;
	ats_ctx_after_func(ctx, &after, ats__ec_kick_bump, &kick);
	uint64_t deadline = ats_ctx_deadline(ctx);
	ats_err *err = NULL;
	for (;;) {
		/* acquire: pairs with ats__ec_kick's release (the ctx check below then sees done). */
		uint32_t k = atomic_load_explicit(&kick.word, memory_order_acquire);
		uint32_t val = ats__ec_arm(&w->room);
		/* seq_cst: the flag set before the re-check, as chan.c's step 3. */
		atomic_thread_fence(memory_order_seq_cst);
		ats_pool_status st = enqueue(p, w, t);
		if (st == ATS_POOL_OK)
			break;
		if (st != ATS_POOL_FULL) {
			err = status_err(st);
			break;
		}
		if (ats_ctx_done(ctx) || (deadline != ATS_CTX_NO_DEADLINE && ats_now_ns() >= deadline)) {
			if ((err = ats_ctx_err(ctx)))
				break;
		}
		struct futex_waitv wv[2] = {
		    {.val = val, .uaddr = (uintptr_t)&w->room.counter, .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG},
		    {.val = k, .uaddr = (uintptr_t)&kick.word, .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG},
		};
		ats__ec_park(wv, 2, deadline, true);
	}
	ats_ctx_after_stop(&after);
	return err;
}

ats_err *ats_pool_submit(ats_pool *p, const ats_task *t, ats_ctx *ctx)
{
	if (!p || !tasks_ok(t, 1) || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: NULL %s",
		                   !p     ? "pool"
		                   : !ctx ? "ctx"
		                          : "task or run");
	struct worker *w = caller_worker(p);
	ats_pool_status st = enqueue(p, w, t);
	if (ats__likely(st == ATS_POOL_OK))
		return NULL;
	if (st != ATS_POOL_FULL)
		return status_err(st);
	if (p->n > 1 && enqueue(p, &p->w[ats_pool_pick_other(p, w->index)], t) == ATS_POOL_OK)
		return NULL;
	return wait_room(p, w, t, ctx);
}

ats_err *ats_pool_submit_to(ats_pool *p, unsigned worker, const ats_task *t, ats_ctx *ctx)
{
	if (!p || !tasks_ok(t, 1) || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: NULL %s",
		                   !p     ? "pool"
		                   : !ctx ? "ctx"
		                          : "task or run");
	if (worker >= p->n)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: worker %u out of range (%u workers)", worker, p->n);
	ats_pool_status st = enqueue(p, &p->w[worker], t);
	if (ats__likely(st == ATS_POOL_OK))
		return NULL;
	if (st != ATS_POOL_FULL)
		return status_err(st);
	return wait_room(p, &p->w[worker], t, ctx);
}

ats_err *ats_pool_submit_n(ats_pool *p, const ats_task *t, size_t n, size_t *submitted, ats_ctx *ctx)
{
	if (submitted)
		*submitted = 0;
	if (!p || !ctx || !submitted || (n && !tasks_ok(t, n)))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: NULL %s",
		                   !p           ? "pool"
		                   : !ctx       ? "ctx"
		                   : !submitted ? "submitted"
		                                : "tasks or run");
	struct worker *w = caller_worker(p);
	size_t k = 0;
	while (k < n) {
		ats_pool_status st;
		k += enqueue_n(p, w, t + k, n - k, &st);
		if (st == ATS_POOL_CLOSED) {
			*submitted = k;
			return status_err(st);
		}
		if (k == n)
			break;
		/* Full: the next one waits as ats_pool_submit does (another queue, then room here). */
		ats_err *err = ats_pool_submit(p, &t[k], ctx);
		if (err) {
			*submitted = k;
			return err;
		}
		k++;
	}
	*submitted = k;
	return NULL;
}

/* ---- Choosing and watching ---- */

unsigned ats_pool_size(const ats_pool *p)
{
	return p ? p->n : 0;
}

int ats_pool_current_worker(const ats_pool *p)
{
	return p && self && self->pool == p ? (int)self->index : -1;
}

/* The shorter queue of two distinct random picks among m candidates; index i maps through map. */
static unsigned two_choices(ats_pool *p, unsigned m, unsigned (*map)(unsigned, unsigned), unsigned arg)
{
	if (m == 1)
		return map(0, arg);
	uint32_t r = rng_next(&rng_state);
	unsigned a = r % m, b = (a + 1 + (r >> 16) % (m - 1)) % m;
	unsigned wa = map(a, arg), wb = map(b, arg);
	return depth(&p->w[wb]) < depth(&p->w[wa]) ? wb : wa;
}

static unsigned map_all(unsigned i, unsigned avoid)
{
	(void)avoid;
	return i;
}

static unsigned map_skip(unsigned i, unsigned avoid)
{
	return i < avoid ? i : i + 1;
}

unsigned ats_pool_pick_less_loaded(ats_pool *p)
{
	return p ? two_choices(p, p->n, map_all, 0) : 0;
}

unsigned ats_pool_pick_other(ats_pool *p, unsigned avoid)
{
	if (!p)
		return 0;
	if (p->n == 1)
		return 0;
	if (avoid >= p->n)
		return two_choices(p, p->n, map_all, 0);
	return two_choices(p, p->n - 1, map_skip, avoid);
}

ats_err *ats_pool_worker_stats_get(const ats_pool *p, unsigned worker, ats_pool_worker_stats *out)
{
	if (!p || !out || worker >= p->n)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: %s",
		                   !p     ? "NULL pool"
		                   : !out ? "NULL out"
		                          : "worker out of range");
	struct worker *w = &p->w[worker];
	/* relaxed: statistics. */
	out->run = atomic_load_explicit(&w->run, memory_order_relaxed);
	out->stolen = atomic_load_explicit(&w->stolen, memory_order_relaxed);
	out->cancelled = atomic_load_explicit(&w->cancelled, memory_order_relaxed);
	out->depth = depth(w);
	out->progress = atomic_load_explicit(&w->progress, memory_order_acquire);
	out->replaced = atomic_load_explicit(&w->replaced, memory_order_relaxed);
	out->returned = atomic_load_explicit(&w->returned, memory_order_relaxed);
	return NULL;
}

uint64_t ats_pool_progress(const ats_pool *p, unsigned worker)
{
	if (!p || worker >= p->n)
		return 0;
	/* acquire: pairs with begin_task's and end_task's release. */
	return atomic_load_explicit(&p->w[worker].progress, memory_order_acquire);
}

/* ---- Replacing stuck workers ---- */

/* Takes w over from its thread, stuck in the task that began at odd progress v: ends that task
 * in the progress word (the CAS the thread's own end_task would do, so exactly one of the two
 * wins), quarantines the thread and starts a fresh one on the same queue and CPU. False when
 * the task ended first. The watch lock is held. */
static ats_err *replace(ats_pool *p, struct worker *w, uint64_t v, bool *done_it)
{
	*done_it = false;
	struct quarantined *q = malloc(sizeof *q);
	if (!q)
		return ats_err_oom;
	/* release: the fresh thread's work is ordered after; relaxed on failure: nothing taken. */
	if (!atomic_compare_exchange_strong_explicit(&w->progress, &v, v + 1, memory_order_acq_rel,
	                                             memory_order_relaxed)) {
		free(q);
		return NULL;
	}
	q->thread = w->thread;
	q->next = p->quarantined;
	p->quarantined = q;
	*done_it = true;
	/* relaxed: a statistic, written under the watch lock. */
	atomic_fetch_add_explicit(&w->replaced, 1, memory_order_relaxed);
	int rc = start_thread(w);
	if (rc != 0)
		/* The queue is served by the other workers' stealing until a later call starts a thread
		 * (the next call sees the word even and this worker without a thread: see below). */
		return ats_err_with_kv(ats_err_errno(rc, "pool: cannot start a replacement worker thread"), "worker",
		                       "%u", w->index);
	return NULL;
}

ats_err *ats_pool_replace_stuck(ats_pool *p, uint64_t stuck_ns, unsigned *replaced)
{
	if (replaced)
		*replaced = 0;
	if (!p || stuck_ns == 0)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: %s", !p ? "NULL pool" : "a stuck time of 0");
	if (self && self->pool == p)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "pool: replace_stuck called from the pool's own worker %u",
		                   self->index);
	ats_err *err = NULL;
	uint64_t now = ats_now_ns();
	pthread_mutex_lock(&p->watch_lock);
	for (unsigned i = 0; i < p->n && !p->watch_closed && !atomic_load(&p->shut); i++) {
		struct worker *w = &p->w[i];
		if (!w->started) {
			/* A replacement thread that could not start: try again. */
			int rc = start_thread(w);
			if (rc != 0 && !err)
				err =
				    ats_err_with_kv(ats_err_errno(rc, "pool: cannot start a replacement worker thread"),
				                    "worker", "%u", i);
			continue;
		}
		/* acquire: pairs with begin_task's release. */
		uint64_t v = atomic_load_explicit(&w->progress, memory_order_acquire);
		if (!(v & 1) || v != w->seen_progress) {
			w->seen_progress = v;
			w->seen_since_ns = now;
			continue;
		}
		if (now - w->seen_since_ns < stuck_ns)
			continue;
		bool done_it;
		ats_err *e = replace(p, w, v, &done_it);
		if (done_it) {
			if (replaced)
				(*replaced)++;
			if (p->on_replace) {
				ats_err *why = ats_err_with_kv(
				    ats_err_new(ATS_ERR_UNAVAILABLE,
				                "pool: worker %u stuck in one task for %llu ns: replaced", i,
				                (unsigned long long)(now - w->seen_since_ns)),
				    "worker", "%u", i);
				p->on_replace(i, why, p->replace_arg);
				ats_err_unref(why);
			}
		}
		if (e && !err)
			err = e;
		else
			ats_err_unref(e);
	}
	pthread_mutex_unlock(&p->watch_lock);
	return err;
}
