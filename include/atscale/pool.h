/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale worker pool: one worker thread per core, each with its own bounded queue, stealing
 * when idle; the runtime that hedged requests and supervision run their work on.
 *
 * Workers. By default one per CPU the process may run on (its affinity mask), but no more than
 * its cgroup's CPU limit, rounded up (cgroup v2 cpu.max or v1's CFS quota, the tightest on its
 * cgroup and the ancestors it can see): a container given two CPUs' worth of time on a 64-CPU
 * machine gets two workers, not 64 that take turns being throttled. Or config.workers.
 * Optionally pinned (worker i to the i-th CPU the process may run on). Every worker blocks all
 * signals (they belong to the application's threads) and is registered with liburcu's memb
 * flavour (urcu/urcu-memb.h), so a task may enter RCU read-side sections (the keyed limiters'
 * maps, or the caller's own).
 *
 * Queues. Each worker has a bounded multi-producer multi-consumer queue on ck_ring whose slots
 * hold the task descriptors themselves (ats_task is copied in): submitting and running allocate
 * nothing. The capacity (config.queue_capacity, default 1024) is honoured exactly: a submit takes
 * a ticket (its slot in the ring) with one CAS that refuses the capacity+1'th task not yet
 * dequeued (ck_ring's power-of-two ring is never the limit). That same word holds the queue's
 * closed bit, so "accepted before shutdown" and "refused after" are decided by one CAS, exactly.
 * A worker's dequeue writes only ck_ring's consumer index, which submitters read only when the
 * queue looks full: no cache line is written by both sides per task.
 *
 * Where a task goes. try_submit/submit put it on the queue of the worker for the caller's CPU
 * (rseq's cpu_id when glibc registered it, else sched_getcpu()): the k-th CPU the process may run
 * on (its affinity mask when the pool was made) feeds worker k modulo the worker count, so a caller
 * on a pinned worker's CPU feeds that worker however the CPUs are numbered (a cpuset of 4-7, every
 * other CPU), and a CPU outside that mask goes by its number modulo the count. When the caller is
 * itself a worker of this pool, the task goes on its own queue. The _to variants take a worker
 * index; ats_pool_pick_less_loaded and ats_pool_pick_other choose one (the power of two choices:
 * the shorter queue of two random workers), which is how replicated requests land on different
 * workers ("different runtime conditions").
 *
 * Idling. A worker whose queue is empty steals one task from another worker (one pass over the
 * others from a random start) before it idles. Then, by config.idle:
 *   ATS_POOL_SPIN_PARK (default) spins config.spin_ns re-checking, then parks (the spin yields
 *   the CPU every 256 tries, so on a machine with more runnable threads than CPUs it does not
 *   hold back the thread that would bring it work); it spins only after running a task, never
 *   after a wake-up that found nothing;
 *   ATS_POOL_PARK parks at once;
 *   ATS_POOL_POLL never sleeps (run-to-completion cores, as DPDK's lcores): it keeps polling.
 * A parked worker sleeps on its queue's eventcount (ck_ec): a submit that finds the worker going
 * to sleep bumps it (one locked add and a futex wake); one that does not only reads it. A task
 * queued behind a worker blocked in a long task is stolen, not stuck: a submit to a worker that
 * is busy running a task wakes one parked worker, so does a worker that takes a task and leaves
 * more queued behind it, and a parked worker also wakes every ATS_POOL_STEAL_PERIOD_NS to look
 * for work to steal (the period doubling, up to ATS_POOL_STEAL_PERIOD_MAX_NS, while it finds
 * none).
 *
 * Tasks and cancellation. A task runs as run(arg, ctx) on some worker (its own queue's or a
 * thief). Its ctx is the one in the descriptor (the pool holds a reference from submit until
 * the task ran or was cancelled) or, when NULL, the pool's own ctx, which is cancelled when a
 * shutdown gives up draining. A task whose ctx is done (or whose deadline has passed) when a
 * worker takes it is not run: it goes to cancel(arg, why) with the ctx's error (borrowed for the
 * call). A task without a cancel callback is then simply not run. Either way it is counted.
 *
 * Shutdown (ats_pool_shutdown, with a ctx): stop accepting (every later submit gets CLOSED),
 * drain (workers run what is queued) until every queue is empty and no task runs, or the ctx is
 * done; then, if the ctx ended it, cancel the pool's ctx (running tasks see it) and hand every
 * task still queued to its cancel callback; wait for running tasks to return and join the
 * workers. Every accepted task either ran or was handed back cancelled,
 * exactly once; nothing accepted is lost, nothing runs twice.
 *
 * Progress words. Each worker has a sequence bumped (release) when a task starts and again when
 * it ends: odd while a task runs. A watcher that sees the same odd value for too long has found
 * a stuck worker.
 *
 * Stuck workers. ats_pool_replace_stuck, called periodically (by a supervisor's ward, a timer, the
 * application's housekeeping loop), replaces a worker whose progress word has stayed at one odd
 * value for stuck_ns: a fresh thread takes over its queue on the same CPU (so its queued tasks
 * are served at once, by the new thread and by stealing), and the stuck thread is quarantined.
 * The takeover is one CAS on the progress word, the same CAS the stuck thread's own end of task
 * does, so exactly one wins: a task that returns at that instant is either counted by its thread
 * (no replacement) or its thread finds itself replaced. A quarantined thread whose task returns
 * at last finishes that task's own bookkeeping (its ctx released, counted as `returned`) and
 * exits: its worker already has a thread. Shutdown joins quarantined threads after cancelling the
 * pool's ctx, so it still waits for a task that never returns. No task is lost or run twice: the
 * queue is the same one, and a task is taken from it once.
 *
 * Threads: every function may be called from any thread, except ats_pool_free (the last call)
 * and ats_pool_shutdown from one of the pool's own workers (refused: it would wait for itself).
 */
#ifndef ATSCALE_POOL_H
#define ATSCALE_POOL_H

#include "atscale/common.h"
#include "atscale/ctx.h"
#include "atscale/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Runs a task: arg is the descriptor's, ctx the task's ctx (never NULL). */
typedef void (*ats_task_fn)(void *arg, ats_ctx *ctx);
/* A task that will not run: why (borrowed for the call) says why: the ctx's error, or
 * ATS_ERR_CANCELLED when the pool shut down with the task still queued. */
typedef void (*ats_task_cancel_fn)(void *arg, const ats_err *why);

/* A task descriptor. Copied into the queue at submit: the caller's copy may go at once. */
typedef struct ats_task {
	ats_task_fn run;           /* required */
	ats_task_cancel_fn cancel; /* optional: called instead of run when the task is not run */
	void *arg;
	ats_ctx *ctx; /* optional: the pool takes a reference while the task is queued */
} ats_task;

typedef enum ats_pool_idle {
	ATS_POOL_SPIN_PARK = 0, /* spin `spin_ns`, then park (the default) */
	ATS_POOL_PARK = 1,      /* park at once */
	ATS_POOL_POLL = 2,      /* never sleep: the worker owns its core */
} ats_pool_idle;

/* The most workers a pool may have, and the largest queue capacity. */
#define ATS_POOL_MAX_WORKERS 1024u
#define ATS_POOL_MAX_CAPACITY ((size_t)1 << 24)
#define ATS_POOL_DEFAULT_CAPACITY 1024u
/* How long an idle worker re-checks before it parks, unless the config says otherwise: what the
 * 2000 rounds the pool first counted took on the development VM (a time, not a count of CPU
 * pauses, whose length differs tens of times between CPUs). */
#define ATS_POOL_DEFAULT_SPIN_NS 40000u
/* How often a parked worker wakes to look for work to steal, at first: one that wakes and finds
 * nothing doubles its period, up to ATS_POOL_STEAL_PERIOD_MAX_NS, until it runs a task again. */
#define ATS_POOL_STEAL_PERIOD_NS 1000000u
#define ATS_POOL_STEAL_PERIOD_MAX_NS 16000000u

typedef struct ats_pool_config {
	unsigned workers;      /* 0: one per CPU the process may run on, within its cgroup's CPU limit */
	size_t queue_capacity; /* per worker; 0: ATS_POOL_DEFAULT_CAPACITY */
	ats_pool_idle idle;
	uint32_t spin_ns; /* SPIN_PARK: CLOCK_MONOTONIC ns of re-checking before parking, plus 256 to
	                     512 rounds (the clock is first read at the 256th, then every 256); 0:
	                     ATS_POOL_DEFAULT_SPIN_NS */
	bool pin;         /* pin worker i to the i-th allowed CPU (modulo their number) */
	/* Optional: told of each replacement (ats_pool_replace_stuck), on the calling thread with the
	 * pool's watch lock held (it must not call ats_pool_replace_stuck or shut the pool down). why
	 * (borrowed) is ATS_ERR_UNAVAILABLE with the worker's index attached ("worker"). */
	void (*on_replace)(unsigned worker, const ats_err *why, void *arg);
	void *replace_arg;
} ats_pool_config;

typedef enum ats_pool_status {
	ATS_POOL_OK = 0, /* queued */
	ATS_POOL_FULL,   /* the queue holds its capacity: nothing queued, try later or elsewhere */
	ATS_POOL_CLOSED, /* the pool is shutting down or shut: nothing queued */
	ATS_POOL_INVALID /* NULL pool, task or run, or a worker index out of range: nothing queued */
} ats_pool_status;

typedef struct ats_pool ats_pool;

/* Per-worker counters, read while the workers run (each a snapshot, not a consistent set). */
typedef struct ats_pool_worker_stats {
	uint64_t run;       /* tasks this worker ran (its own and stolen) */
	uint64_t stolen;    /* of those, taken from another worker's queue */
	uint64_t cancelled; /* tasks this worker took and did not run (ctx done), and tasks shutdown
	                       took from its queue */
	size_t depth;       /* tasks in its queue now (accepted, not yet taken) */
	uint64_t progress;  /* the progress word (see ats_pool_progress) */
	uint64_t replaced;  /* times this worker's thread was replaced while stuck */
	uint64_t returned;  /* of those threads, how many have since returned from their stuck task */
} ats_pool_worker_stats;

/* ---- Making and stopping ---- */

/* Starts a pool. cfg NULL: the defaults. Errors, nothing started: NULL out, workers or capacity
 * above the maximum, an unknown idle policy (ATS_ERR_INVALID_ARGUMENT); no memory (ats_err_oom);
 * a thread that could not start (ATS_ERR_SYSTEM, the others are stopped). Blocking (threads). */
ATS_API ATS_NODISCARD ats_err *ats_pool_new(ats_pool **out, const ats_pool_config *cfg);

/* Shuts the pool down: stop accepting, drain until every queue is empty and no task runs or ctx
 * is done, then cancel the rest, wait for running tasks and join the workers (see the file
 * comment). NULL when everything accepted ran to its end; ctx's error when ctx ended the drain (the remaining tasks
 * went to their cancel callbacks); ATS_ERR_CLOSED when already shut down or shutting down; ATS_ERR_INVALID_ARGUMENT for
 * NULL p or ctx, or a call from one of p's workers. Blocking: it waits for running tasks to return, however long they
 * take (they see the pool's ctx cancelled when ctx ended the drain). */
ATS_API ATS_NODISCARD ats_err *ats_pool_shutdown(ats_pool *p, ats_ctx *ctx);

/* Frees the pool. If it was not shut down, shuts it down without draining (queued tasks go to
 * their cancel callbacks). NULL-safe; the last call on p. Blocking. */
ATS_API void ats_pool_free(ats_pool *p);

/* ---- Submitting ---- */

/* Queues t on the caller's worker (see the file comment). OK, FULL, CLOSED or INVALID; on
 * anything but OK nothing is queued and t->ctx is not referenced. Never waits for room: one CAS
 * on the queue's ticket word, the slot and ck_ring's producer index, a look at the worker's
 * eventcount (an add and a futex wake only when the worker is going to sleep). Lock-free,
 * except that a submit publishes its slot only after every earlier submit to the same queue
 * published its own, as ck_ring's multi-producer enqueue does: one preempted between its CAS
 * and its publication (a few instructions) holds the later ones, which yield the CPU after a
 * short spin. No allocation. Release: what the caller wrote before is visible to the task. */
ATS_API ats_pool_status ats_pool_try_submit(ats_pool *p, const ats_task *t);
/* The same on worker `worker` (0 .. ats_pool_size(p)-1). */
ATS_API ats_pool_status ats_pool_try_submit_to(ats_pool *p, unsigned worker, const ats_task *t);

/* Bursts: queues the first of t[0..n) that fit, in order, on the caller's worker (or on
 * `worker`); returns how many. *status (optional) says why it stopped short: FULL (the rest did
 * not fit), CLOSED (none queued) or INVALID (NULL p, NULL t with n > 0, a task without run, a
 * worker out of range: none queued, none referenced); OK when all n went (n == 0 included).
 * One ticket CAS, one publication of the queue's index and one look at the eventcount for the
 * whole burst, where n try_submits pay n of each (and the worker's core fetches the index n
 * times): a fan-out of many tasks costs little more than its slot copies, plus one pass over t
 * to check it. Progress as try_submit; no allocation. The tasks go to one queue: idle workers steal
 * from it. */
ATS_API size_t ats_pool_try_submit_n(ats_pool *p, const ats_task *t, size_t n, ats_pool_status *status);
ATS_API size_t ats_pool_try_submit_n_to(ats_pool *p, unsigned worker, const ats_task *t, size_t n,
                                        ats_pool_status *status);

/* Queues t on the caller's worker, waiting while its queue is full: it first tries the less
 * loaded of two random workers, then parks on the full queue's eventcount until a slot frees,
 * the pool closes (ATS_ERR_CLOSED) or ctx is done (ctx's error); t is then not queued.
 * ATS_ERR_INVALID_ARGUMENT for NULL p, t, t->run or ctx. Blocking; no allocation unless it
 * returns an error. */
ATS_API ATS_NODISCARD ats_err *ats_pool_submit(ats_pool *p, const ats_task *t, ats_ctx *ctx);
/* The same on worker `worker` only (no fallback to another queue). */
ATS_API ATS_NODISCARD ats_err *ats_pool_submit_to(ats_pool *p, unsigned worker, const ats_task *t, ats_ctx *ctx);
/* Queues all of t[0..n): bursts on the caller's worker while they fit; a task that does not fit
 * waits as ats_pool_submit does (another queue, then room), and the bursts go on after it.
 * *submitted gets how many were queued, in order (all of them when it returns NULL); on an error
 * (ATS_ERR_CLOSED, ctx's error) the rest were not. ATS_ERR_INVALID_ARGUMENT, with nothing queued,
 * for NULL p, ctx or submitted, NULL t with n > 0, or a task without run. Blocking; no allocation
 * unless it returns an error. */
ATS_API ATS_NODISCARD ats_err *ats_pool_submit_n(ats_pool *p, const ats_task *t, size_t n, size_t *submitted,
                                                 ats_ctx *ctx);

/* ---- Choosing a worker ---- */

/* The number of workers. Wait-free. */
ATS_API unsigned ats_pool_size(const ats_pool *p);
/* The index of the calling thread if it is one of p's workers, else -1. Wait-free (a
 * thread-local load). */
ATS_API int ats_pool_current_worker(const ats_pool *p);
/* The less loaded (shorter queue) of two distinct random workers. Wait-free (a thread-local
 * random draw and two relaxed loads). */
ATS_API unsigned ats_pool_pick_less_loaded(ats_pool *p);
/* The same among the workers other than `avoid` (avoid itself only when the pool has one
 * worker). Wait-free. */
ATS_API unsigned ats_pool_pick_other(ats_pool *p, unsigned avoid);

/* ---- Watching ---- */

/* Worker `worker`'s counters into *out. ATS_ERR_INVALID_ARGUMENT for NULL p or out or a worker
 * out of range. Wait-free (relaxed loads; the workers are never stopped). */
ATS_API ATS_NODISCARD ats_err *ats_pool_worker_stats_get(const ats_pool *p, unsigned worker,
                                                         ats_pool_worker_stats *out);
/* Worker `worker`'s progress word: bumped when each task starts and again when it ends, so odd
 * while a task runs. Acquire: a watcher that sees a new value sees what the worker did before.
 * 0 for a worker out of range. Wait-free. */
ATS_API uint64_t ats_pool_progress(const ats_pool *p, unsigned worker);

/* ---- Replacing stuck workers ---- */

/* Replaces every worker whose progress word this function has seen at the same odd value (one
 * task running) for at least stuck_ns, across its calls (see the file comment): call it every
 * stuck_ns / 4 or so, from one thread or several (they serialize). *replaced (optional) gets the
 * number replaced by this call; config.on_replace hears of each. Errors: NULL p, stuck_ns 0, a
 * call from one of p's workers (ATS_ERR_INVALID_ARGUMENT); no memory or a thread that could not
 * start (the worker's queue is then served by stealing, and the next call tries again). After
 * shutdown began it replaces nothing. Blocking (a mutex; a thread start per replacement);
 * O(workers) loads otherwise. */
ATS_API ATS_NODISCARD ats_err *ats_pool_replace_stuck(ats_pool *p, uint64_t stuck_ns, unsigned *replaced);

#ifdef __cplusplus
}
#endif
#endif
