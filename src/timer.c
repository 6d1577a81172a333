/* SPDX-License-Identifier: BSD-2-Clause */
/* The timer service (internal/timer.h): one thread, a timing wheel per shard.
 *
 * Shards: a thread files its timers on one shard (picked round-robin at its first arm), so
 * armers on different cores rarely share a lock; the timer thread advances every shard in turn.
 * The shard count is the CPU count rounded up to a power of two (at most 64).
 */
#include "internal/timer.h"

#include "atscale/clock.h"
#include "internal/compiler.h"
#ifdef ATS_TESTING
#include "internal/ctx_hooks.h"
#endif
#include "internal/futex.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

#define TICK_SHIFT 16 /* 65.536 us: p99 lateness well under the 1 ms target, 64 slots per 4 ms */
#define MAX_SHARDS 64

/* A shard: its wheel and the lock that guards it. A test-and-set lock with a plain-store unlock
 * (one atomic write per arm or disarm instead of two): held for a few instructions by armers and
 * for one advance by the timer thread; waiters spin, then yield. */
struct shard {
	_Alignas(ATS__CACHE_LINE) _Atomic uint32_t lock;
	struct ats__tw wheel;
};

static inline void shard_lock(struct shard *s)
{
	ats__spin_lock(&s->lock);
}

static inline void shard_unlock(struct shard *s)
{
	ats__spin_unlock(&s->lock);
}

static struct {
	bool joined;
	pthread_t thread;
	unsigned nshards;
	struct shard *shards; /* never freed: other threads may arm after exit() began */
	_Atomic uint32_t next_shard;
	_Alignas(ATS__CACHE_LINE) _Atomic uint32_t seq; /* the thread sleeps on it; armers bump it to kick */
	_Atomic uint32_t sleeping;
	_Atomic uint32_t stop;
	_Atomic uint64_t planned; /* tick the thread will wake at; UINT64_MAX while it scans */
} svc;

/* Starting the thread: on the first arm, again after a start that failed (a thread limit may be
 * momentary), and in the child of a fork (which has none of its parent's threads). `running` says
 * whether this process has the thread; the rest is written under start_lock. */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic bool running;
static int start_errno; /* why the last start failed */
static bool atexit_done, atfork_done;

/* Held by the timer thread for each round (the scan and the firing), and by a fork: the child of
 * a fork never inherits a timer claimed but not yet fired (its context half cancelled). */
static pthread_mutex_t round_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local bool on_timer_thread __attribute__((tls_model("initial-exec")));
/* In the child of a fork from an after-func: this thread was the timer thread's copy, inside a
 * round. fork_child gave round_lock back (the child's own timer thread starts on its next arm and
 * must not wait for this round); this copy ends its round without it and then stops. */
static _Thread_local bool forked_in_round __attribute__((tls_model("initial-exec")));

#ifdef ATS_TESTING
_Atomic uint64_t ats__timer_rounds;
_Atomic uint32_t ats__timer_refuse_starts;

/* A start the test asks to fail (ctx_hooks.h). */
static bool refuse_start(void)
{
	uint32_t n = atomic_load_explicit(&ats__timer_refuse_starts, memory_order_relaxed);
	while (n && !atomic_compare_exchange_weak_explicit(&ats__timer_refuse_starts, &n, n - 1, memory_order_relaxed,
	                                                   memory_order_relaxed))
		;
	return n != 0;
}
#else
static bool refuse_start(void)
{
	return false;
}
#endif

/* The library's own thread-locals are initial-exec (one %fs-relative access; the default model
 * in PIC code calls __tls_get_addr), as in error.c and limiter.c: a few bytes of static TLS. */
static _Thread_local uint32_t my_shard __attribute__((tls_model("initial-exec"))) = UINT32_MAX;

uint64_t ats__timer_precision_ns(void)
{
	return 1ull << TICK_SHIFT;
}

static void kick(void)
{
	atomic_fetch_add_explicit(&svc.seq, 1, memory_order_seq_cst);
	if (atomic_load_explicit(&svc.sleeping, memory_order_seq_cst))
		ats__futex_wake(&svc.seq, 1);
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
	on_timer_thread = true;
	for (;;) {
		pthread_mutex_lock(&round_lock);
		atomic_store_explicit(&svc.planned, UINT64_MAX, memory_order_seq_cst);
		uint32_t seq = atomic_load_explicit(&svc.seq, memory_order_seq_cst);
		/* acquire: pairs with timer_stop's release; the flag carries no data (more than needed). */
		if (atomic_load_explicit(&svc.stop, memory_order_acquire)) {
			pthread_mutex_unlock(&round_lock);
			break;
		}
		/* CLOCK_MONOTONIC itself, not the default clock: the thread sleeps on futex deadlines of
		 * that clock, and a clock behind it (the coarse one) would make it spin until it caught
		 * up. A timer still fires within the default clock's precision of its deadline. */
		uint64_t now_tick = ats_now_ns() >> TICK_SHIFT, next = UINT64_MAX;
		struct ats__tw_node *fire = NULL;
		for (unsigned i = 0; i < svc.nshards; i++) {
			struct shard *s = &svc.shards[i];
			shard_lock(s);
			struct ats__tw_node *n = ats__tw_advance(&s->wheel, now_tick);
			while (n) {
				struct ats__tw_node *following = n->next;
				struct ats__timer *t = ats__container_of(n, struct ats__timer, node);
				if (t->ops->claim(t)) {
					n->next = fire;
					fire = n;
				}
				/* Last touch of a timer not claimed: its owner may free it once it reads 0
				 * (or takes this shard's lock). Release: pairs with ats__timer_disarm's
				 * acquire load (and the owner's own), so this thread's wheel unlinking and
				 * the claim's effects are seen. */
				atomic_store_explicit(&t->armed, 0, memory_order_release);
				n = following;
			}
			uint64_t t = ats__tw_next(&s->wheel);
			if (t < next)
				next = t;
			shard_unlock(s);
		}
		while (fire) {
			struct ats__tw_node *n = fire;
			fire = n->next; /* read first: fire() may free the timer */
			struct ats__timer *t = ats__container_of(n, struct ats__timer, node);
			t->ops->fire(t);
		}
		if (forked_in_round)
			return NULL; /* a fork's child: no longer the timer thread (fork_child) */
		pthread_mutex_unlock(&round_lock);
		atomic_store_explicit(&svc.planned, next, memory_order_seq_cst);
		atomic_store_explicit(&svc.sleeping, 1, memory_order_seq_cst);
		/* A tick of 2^48 or more is past 2^64 ns (a deadline in the last tick of the range rounds
		 * up to it): never. Shifted, it would wrap to a past time and the thread would spin. */
		uint64_t wake_ns = next >= UINT64_C(1) << (64 - TICK_SHIFT) ? ATS__FUTEX_FOREVER : next << TICK_SHIFT;
		ats__futex_wait(&svc.seq, seq, wake_ns);
#ifdef ATS_TESTING
		atomic_fetch_add_explicit(&ats__timer_rounds, 1, memory_order_relaxed);
#endif
		/* relaxed: only spares kickers a futex wake; a stale 1 costs one spurious wake. */
		atomic_store_explicit(&svc.sleeping, 0, memory_order_relaxed);
	}
	return NULL;
}

/* At exit: stop and join the timer thread so it is not firing timers (cancelling contexts and
 * running their after-funcs) while the process tears down. Timers armed at exit are fine:
 * nothing is freed. */
static void timer_stop(void)
{
	pthread_mutex_lock(&start_lock);
	if (atomic_load_explicit(&running, memory_order_relaxed) && !svc.joined) {
		/* release: pairs with timer_main's acquire load; the kick's seq_cst bump wakes it. */
		atomic_store_explicit(&svc.stop, 1, memory_order_release);
		kick();
		if (!pthread_equal(pthread_self(), svc.thread))
			pthread_join(svc.thread, NULL);
		svc.joined = true;
	}
	pthread_mutex_unlock(&start_lock);
}

/* fork(): the child gets the wheels in a consistent state (every shard lock taken around the
 * fork, and no round of the timer thread in flight) and no timer thread; its next arm starts one,
 * which then fires the timers the child inherited too. */
static void fork_prepare(void)
{
	pthread_mutex_lock(&start_lock);
	if (!on_timer_thread) /* a fork from an after-func runs inside a round */
		pthread_mutex_lock(&round_lock);
	for (unsigned i = 0; i < svc.nshards; i++)
		shard_lock(&svc.shards[i]);
}

static void fork_parent(void)
{
	for (unsigned i = 0; i < svc.nshards; i++)
		shard_unlock(&svc.shards[i]);
	if (!on_timer_thread)
		pthread_mutex_unlock(&round_lock);
	pthread_mutex_unlock(&start_lock);
}

static void fork_child(void)
{
	for (unsigned i = 0; i < svc.nshards; i++)
		shard_unlock(&svc.shards[i]);
	/* Held by this thread either way: taken by fork_prepare, or by the round this copy of the
	 * timer thread is in (then the copy stops at the end of that round). */
	if (on_timer_thread) {
		on_timer_thread = false;
		forked_in_round = true;
	}
	pthread_mutex_unlock(&round_lock);
	atomic_store_explicit(&running, false, memory_order_relaxed);
	atomic_store_explicit(&svc.sleeping, 0, memory_order_relaxed);
	atomic_store_explicit(&svc.stop, 0, memory_order_relaxed);
	atomic_store_explicit(&svc.planned, UINT64_MAX, memory_order_relaxed);
	svc.joined = false;
	pthread_mutex_unlock(&start_lock);
}

/* Makes the shards (once) and starts the thread; false with start_errno set when it cannot.
 * Under start_lock. */
static bool timer_start_locked(void)
{
	if (!svc.shards) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);
		unsigned n = 1;
		while (n < (unsigned)(cpus > 0 ? cpus : 1) && n < MAX_SHARDS)
			n <<= 1;
		struct shard *shards = aligned_alloc(ATS__CACHE_LINE, n * sizeof *shards);
		if (!shards) {
			start_errno = ENOMEM;
			return false;
		}
		uint64_t now_tick = ats_now_ns() >> TICK_SHIFT;
		for (unsigned i = 0; i < n; i++) {
			atomic_init(&shards[i].lock, 0);
			ats__tw_init(&shards[i].wheel, now_tick);
		}
		svc.shards = shards;
		svc.nshards = n;
		atomic_store(&svc.planned, UINT64_MAX);
	}
	if (!atfork_done) {
		int rc = pthread_atfork(fork_prepare, fork_parent, fork_child);
		if (rc != 0) {
			start_errno = rc;
			return false;
		}
		atfork_done = true;
	}
	/* The timer thread blocks every signal: they belong to the application's threads. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = refuse_start() ? EAGAIN : pthread_create(&svc.thread, NULL, timer_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		start_errno = rc;
		return false;
	}
	if (!atexit_done)
		atexit_done = atexit(timer_stop) == 0;
	/* release: the shards are seen by whoever sees `running` (ats__timer_arm's acquire). */
	atomic_store_explicit(&running, true, memory_order_release);
	return true;
}

/* The slow path of an arm: the thread is not running in this process. */
static bool timer_start(void)
{
	pthread_mutex_lock(&start_lock);
	bool ok = atomic_load_explicit(&running, memory_order_relaxed) || timer_start_locked();
	int why = start_errno;
	pthread_mutex_unlock(&start_lock);
	if (!ok)
		errno = why;
	return ok;
}

int ats__timer_arm(struct ats__timer *t, uint64_t deadline_ns)
{
	/* acquire: pairs with timer_start_locked's release (the shards are seen). */
	if (ats__unlikely(!atomic_load_explicit(&running, memory_order_acquire)) && !timer_start())
		return ATS__TIMER_FAILED;
	uint32_t idx = my_shard;
	if (ats__unlikely(idx == UINT32_MAX))
		/* relaxed: a round-robin counter, ordered by nobody. */
		idx = my_shard = atomic_fetch_add_explicit(&svc.next_shard, 1, memory_order_relaxed);
	idx &= svc.nshards - 1;
	uint64_t d = deadline_ns;
	/* Rounded up: a timer never fires before its deadline. */
	uint64_t tick = (d >> TICK_SHIFT) + ((d & ((1ull << TICK_SHIFT) - 1)) != 0);
	struct shard *s = &svc.shards[idx];
	shard_lock(s);
	bool filed = ats__tw_add(&s->wheel, &t->node, tick);
	if (filed) {
		t->shard = idx;
		/* release: pairs with ats__timer_disarm's acquire load, so t->shard is seen. */
		atomic_store_explicit(&t->armed, 1, memory_order_release);
	}
	shard_unlock(s);
	if (!filed)
		return ATS__TIMER_EXPIRED;
	if (tick < atomic_load_explicit(&svc.planned, memory_order_seq_cst))
		kick();
	return ATS__TIMER_OK;
}

void ats__timer_disarm(struct ats__timer *t)
{
	/* acquire: pairs with ats__timer_arm's release (t->shard is seen) and with the timer
	 * thread's release of 0 (its last touch of t->node is done). */
	if (!atomic_load_explicit(&t->armed, memory_order_acquire))
		return;
	struct shard *s = &svc.shards[t->shard];
	shard_lock(s);
	ats__tw_del(&s->wheel, &t->node);
	/* relaxed: under the shard lock. A lock-free reader of this 0 is ordered after us otherwise:
	 * the owner orders its own disarm before it frees the timer. */
	atomic_store_explicit(&t->armed, 0, memory_order_relaxed);
	shard_unlock(s);
}
