/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale contexts: cancellation, deadlines, causes and values, after Go's `context`, with what
 * libdill, folly's CancellationToken and Trio add to it.
 *
 * THE RULE, for every module that blocks on a context (limiter wait, channels, pool, heartbeats,
 * hedging): every call that can block takes the `ats_ctx *` it follows as its LAST argument
 * (ats_limiter_wait(l, n, ctx)), returns as soon as that context is done (cancelled or past its
 * deadline) with the context's error (ats_ctx_err: ATS_ERR_CANCELLED or ATS_ERR_DEADLINE_EXCEEDED
 * wrapping the cause), and never blocks past the context's deadline. Pass ats_ctx_background() only
 * where blocking forever is what the caller wants. This module's own calls take the context they
 * act on as their first argument (ats_ctx_wait(ctx, deadline_ns)). Progress words (wait-free,
 * lock-free, blocking) are defined in atscale.h.
 *
 * Model. Contexts form trees. ats_ctx_background() is the root that is never cancelled. A child
 * (with_cancel, with_deadline, with_timeout, with_value) is done when it is cancelled, when its
 * deadline passes, or when its parent is done; its deadline is the earlier of its own and its
 * parent's. Cancelling a parent cancels its whole subtree; cancelling a child never touches the
 * parent. without_cancel keeps the values and drops the cancellation; merge is done when any of
 * several parents is.
 *
 * Cancellation is pushed down eagerly (as Trio does): cancelling a context sets the state word of
 * every context under it, walking the subtree iteratively (any depth, any width), so "am I done?"
 * is one atomic load of the context's own word, never a walk up the tree. Order of a cancel, per
 * context: mark done (state word, release), run the after-funcs, wake the waiters (futex on the
 * state word) and signal the eventfd if one was made.
 *
 * Deadlines. One timer service, a thread started on first use (and joined at exit) running a
 * hierarchical timing wheel sharded per core, cancels contexts whose deadline passes, so waiters
 * blocked anywhere wake on time. Arm and disarm are O(1), take one per-shard lock and make no
 * system call in the common case. Precision: deadlines fire at most one wheel tick
 * (ats_ctx_timer_precision_ns(), 65.5 us) plus the scheduler's wake-up latency late, never early.
 * ats_ctx_wait() and ats_ctx_err() do not depend on the timer: they check the deadline against
 * the clock themselves and cancel a context whose deadline has passed. A deadline already past
 * when a context is made cancels it at once. Far deadlines cost nothing until they near.
 *
 * Lifetime. Contexts are reference counted: every constructor returns a new reference in *out,
 * which the caller gives back with ats_ctx_release(). A child holds a reference to its parent, so
 * a tree stays valid while any of its leaves is held; releasing the last reference to a child
 * unlinks it from its parent and disarms its timer. There is no global lock: each context has its
 * own small lock (its child and after-func lists), the timer wheel has one lock per shard.
 *
 * Errors and ownership. ats_ctx_cancel() consumes the cause it is given. ats_ctx_err() returns a
 * new reference (NULL while not done). ats_ctx_cause() returns a borrowed pointer valid while the
 * context is. A cancel without a cause shares one process-wide "context cancelled" error (and
 * expiry one "context deadline exceeded" error), so cancelling and expiring allocate nothing.
 * These are shared records (ats_err_is_shared): they have no place, thread or time, and print
 * "shared record: no place or time" instead of a place that would only be their first user's.
 * Wrap one where you check it (ats_err_wrap) to record your place and time. A cancel with a
 * cause makes one shared record, wrapping the cause (which has the place and time it was made
 * at), for the whole subtree. A deadline with a cause (with_deadline_cause) makes its shared
 * "context deadline exceeded" record, wrapping the cause and carrying a "deadline_ns"
 * attachment, when the context is made, so that expiry stays allocation-free.
 *
 * Constructors return NULL on success or an error (ats_err_oom when memory ran out, in which case
 * nothing changed and *out is NULL).
 */
#ifndef ATSCALE_CTX_H
#define ATSCALE_CTX_H

#include "atscale/common.h"
#include "atscale/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ats_ctx ats_ctx;

/* "No deadline": the largest time. Also the deadline_ns to pass to ats_ctx_wait to wait forever. */
#define ATS_CTX_NO_DEADLINE UINT64_MAX

/* ---- Values: keys are static objects; up to ATS_CTX_VALUE_SLOTS keys in a process get a slot,
 * looked up in O(1) (two dependent loads); further keys work, with a linear lookup. ---- */
#define ATS_CTX_VALUE_SLOTS 8

typedef struct ats_ctx_key {
	const char *name;
	ATS_ATOMIC(uint32_t) slot_; /* private: assigned on first use */
} ats_ctx_key;

#define ATS__CTX_KEY_UNASSIGNED UINT32_MAX
#define ATS_CTX_KEY_INIT(name_)                                                                                        \
	{                                                                                                              \
		(name_), ATS__CTX_KEY_UNASSIGNED                                                                       \
	}
/* Defines a key: `static ATS_CTX_KEY(request_id);` */
#define ATS_CTX_KEY(var) ats_ctx_key var = ATS_CTX_KEY_INIT(#var)

/* ---- Making contexts ---- */

/* The root: never cancelled, no deadline, no values. Static; ref/release are no-ops on it.
 * Wait-free. */
ATS_API ats_ctx *ats_ctx_background(void);

/* A child that is done when cancelled or when its parent is. Blocking: an allocation (from a
 * per-thread cache in the common case) and the parent's lock for a few instructions to link the
 * child, one atomic write. Create + cancel + release is three atomic writes in all (benchmark row
 * ctx.with_cancel_cancel). Born done if the parent is. */
ATS_API ATS_NODISCARD ats_err *ats_ctx_with_cancel(ats_ctx *parent, ats_ctx **out);

/* A child that is also done at deadline_ns (CLOCK_MONOTONIC ns): its deadline is the earlier of
 * deadline_ns and its parent's. Arms a timer only when it is earlier than the parent's (O(1),
 * one shard lock, no system call in the common case). A deadline already past gives a child born
 * done with ATS_ERR_DEADLINE_EXCEEDED. Blocking, like with_cancel (with a timer: row
 * ctx.with_timeout_cancel). Fails only for lack of memory, or when the timer thread cannot start
 * (a system error, such as a thread limit; the next call tries again). The timer thread starts
 * on the first deadline armed, and again in the child of a fork() at the first deadline armed
 * there: deadlines a child inherits fire from then on (ats_ctx_wait and ats_ctx_err see them
 * passed in any case). That holds for a fork from an after-func too, which runs on the timer
 * thread: in the child, the thread that forked fires the rest of the round it was in once the
 * after-func returns, and then ends (so a child that returns from it exits with status 0). */
ATS_API ATS_NODISCARD ats_err *ats_ctx_with_deadline(ats_ctx *parent, uint64_t deadline_ns, ats_ctx **out);
/* with_deadline(parent, now + timeout_ns), with now = ats_now_ns() or the caller's now_ns. */
ATS_API ATS_NODISCARD ats_err *ats_ctx_with_timeout(ats_ctx *parent, uint64_t timeout_ns, ats_ctx **out);
ATS_API ATS_NODISCARD ats_err *ats_ctx_with_timeout_at(ats_ctx *parent, uint64_t timeout_ns, uint64_t now_ns,
                                                       ats_ctx **out);

/* with_deadline / with_timeout whose expiry reports `cause` (Go's WithDeadlineCause and
 * WithTimeoutCause): ats_ctx_err stays an ATS_ERR_DEADLINE_EXCEEDED error, now wrapping cause,
 * and ats_ctx_cause returns cause, for this context and every one under it that it expires.
 * Takes ownership of cause, on success and on failure alike (like ats_ctx_cancel); NULL gives
 * plain with_deadline / with_timeout. When the deadline is not earlier than the parent's (or is
 * ATS_CTX_NO_DEADLINE), the child keeps the parent's deadline and the parent's cause, and this
 * cause is dropped. Blocking, like
 * with_deadline, plus one error record (one malloc and an attachment) made here so that expiry
 * allocates nothing. Fails with ats_err_oom (cause dropped, nothing made, *out NULL) when memory
 * runs out. */
ATS_API ATS_NODISCARD ats_err *ats_ctx_with_deadline_cause(ats_ctx *parent, uint64_t deadline_ns, ats_err *cause,
                                                           ats_ctx **out);
ATS_API ATS_NODISCARD ats_err *ats_ctx_with_timeout_cause(ats_ctx *parent, uint64_t timeout_ns, ats_err *cause,
                                                          ats_ctx **out);

/* A child (cancellable, like with_cancel) carrying `value` under `key`, shadowing any value the
 * parent has for it. One allocation holds the child and its value table (copy of the parent's
 * table, O(ATS_CTX_VALUE_SLOTS)). Blocking, like with_cancel. */
ATS_API ATS_NODISCARD ats_err *ats_ctx_with_value(ats_ctx *parent, ats_ctx_key *key, void *value, ats_ctx **out);

/* A context with the parent's values that is never cancelled and has no deadline (Go's
 * WithoutCancel; Trio's shield): for cleanup that must finish after its request is cancelled.
 * Its children can be cancelled as usual. Blocking (allocation only). */
ATS_API ATS_NODISCARD ats_err *ats_ctx_without_cancel(ats_ctx *parent, ats_ctx **out);

/* A context done as soon as any of parents[0..n-1] is (with that parent's error), with the values
 * of parents[0] and the earliest of their deadlines (folly's merged tokens). It is linked as a
 * child of the first cancellable parent and registers an after-func on each other one; releasing
 * it stops them. n >= 1. Blocking; one allocation; O(n). */
ATS_API ATS_NODISCARD ats_err *ats_ctx_merge(ats_ctx *const *parents, size_t n, ats_ctx **out);

/* ---- Lifetime ---- */

/* Adds a reference; wait-free (one atomic add). Returns ctx. A child does not count here: its link
 * keeps its parent alive (a parent released before its children stays linked and cancellable
 * until the last of them goes). */
ATS_API ats_ctx *ats_ctx_ref(ats_ctx *ctx);
/* Drops a reference. The last one disarms the timer, unlinks the context from its parent (its
 * lock, briefly), stops a merge's after-funcs and frees it, then drops its reference to the
 * parent (iteratively: chains of any length). NULL-safe. Blocking (locks, free). */
ATS_API void ats_ctx_release(ats_ctx *ctx);

/* ---- Cancelling ---- */

/* Cancels ctx and its whole subtree with `cause` (consumed; NULL for none). Returns true when this
 * call did it, false when ctx was already done or can never be cancelled (background,
 * without_cancel); the cause is then dropped. Runs the after-funcs of every context it cancels on
 * the calling thread. Blocking: takes each context's lock in turn; O(subtree), iterative, no
 * allocation when cause is NULL. */
ATS_API bool ats_ctx_cancel(ats_ctx *ctx, ats_err *cause);

/* ---- Asking ---- */

/* Whether ctx is done. Wait-free: one acquire load of ctx's own word (row ctx.done), so poll it as
 * often as you like; a true result makes everything written before the cancel visible. It turns
 * true when the timer fires, not at the deadline's exact nanosecond: use ats_ctx_done_at to also
 * compare the deadline with a time you already have. */
static inline bool ats_ctx_done(const ats_ctx *ctx);

/* Done, or its deadline is at or before now_ns (caller's CLOCK_MONOTONIC time). Wait-free; no
 * timer thread involved. */
static inline bool ats_ctx_done_at(const ats_ctx *ctx, uint64_t now_ns);

/* The deadline (CLOCK_MONOTONIC ns), ATS_CTX_NO_DEADLINE when none. Wait-free. */
static inline uint64_t ats_ctx_deadline(const ats_ctx *ctx);

/* Why ctx is done: a new reference to an ATS_ERR_CANCELLED ("context cancelled") or
 * ATS_ERR_DEADLINE_EXCEEDED ("context deadline exceeded") error whose cause is the cancel's
 * cause, if one was given; NULL while not done. When the deadline has passed but the timer has
 * not fired yet, cancels ctx first (so err and done agree from then on). Wait-free when done (one
 * atomic add) and while the deadline is ahead (one clock read); blocking when it cancels an
 * expired context (as ats_ctx_cancel). */
ATS_API ATS_NODISCARD ats_err *ats_ctx_err(ats_ctx *ctx);

/* The cause given to the cancel that made ctx done, or to with_deadline_cause / with_timeout_cause
 * when its deadline did, or, when there was none, the error ats_ctx_err returns (Go's
 * context.Cause). Borrowed: valid while ctx is. NULL while not done. Wait-free. */
ATS_API const ats_err *ats_ctx_cause(const ats_ctx *ctx);

/* ---- Waiting ---- */

/* Blocks until ctx is done or deadline_ns (absolute CLOCK_MONOTONIC ns; ATS_CTX_NO_DEADLINE for
 * none) passes; returns whether ctx is done. Sleeps on the state word with a futex
 * (FUTEX_WAIT_BITSET, absolute monotonic timeout): no busy loop, no lost wake-up, no timer
 * thread needed: when ctx's own deadline passes first, the waiter cancels ctx itself (deadline
 * exceeded) and returns true. Blocking; no allocation. */
ATS_API bool ats_ctx_wait(ats_ctx *ctx, uint64_t deadline_ns);

/* A file descriptor that becomes readable (EPOLLIN) when ctx is done, for epoll/poll loops. Made on
 * first call (an eventfd, EFD_CLOEXEC | EFD_NONBLOCK), owned by ctx and closed when it is freed:
 * do not close it or read from it. The same fd on every call. Blocking (ctx's lock; eventfd(2)
 * the first time). Fails with a system error when the process is out of descriptors. */
ATS_API ATS_NODISCARD ats_err *ats_ctx_fd(ats_ctx *ctx, int *fd);

/* ---- After-funcs ---- */

/* An after-func registration, in memory the caller provides (on the stack, inside a request).
 * Private fields. It must stay valid until ats_ctx_after_stop() returns or the callback has run
 * (a callback may stop its own registration and then free it). */
typedef struct ats_ctx_after {
	struct ats_ctx_after *next_, **pprev_;
	ats_ctx *ctx_;
	void (*fn_)(void *);
	void *arg_;
	ATS_ATOMIC(uint32_t) state_;
} ats_ctx_after;

/* Runs fn(arg) once when ctx is done, on the thread that cancels it (the timer thread for
 * deadlines). Registered on a context already done, it runs at once on the calling thread (folly
 * semantics). Never runs for a context that can never be cancelled. The registration holds a
 * reference to ctx until it runs or is stopped. Blocking (ctx's lock, a few instructions); O(1);
 * no allocation, cannot fail. */
ATS_API void ats_ctx_after_func(ats_ctx *ctx, ats_ctx_after *a, void (*fn)(void *), void *arg);

/* Stops a registration: true when fn had not run and now never will; false when it ran, or is
 * running, in which case stop waits for it to return (except from within fn itself; once fn has
 * stopped its own registration, which it may then free, a stop elsewhere returns false at once).
 * Calling it again returns the same answer. Blocking; O(1). */
ATS_API bool ats_ctx_after_stop(ats_ctx_after *a);

/* ---- Values ---- */

/* The value ctx carries for key (the nearest ancestor's that set it): true and *out, or false.
 * Wait-free; O(1) for the first ATS_CTX_VALUE_SLOTS keys of the process (row ctx.value_lookup),
 * O(values with overflow keys) after that. */
static inline bool ats_ctx_lookup(const ats_ctx *ctx, ats_ctx_key *key, void **out);

/* The value for key, or NULL when there is none. Wait-free; as ats_ctx_lookup. */
static inline void *ats_ctx_value(const ats_ctx *ctx, ats_ctx_key *key);

/* ---- The timer service ---- */

/* The timer wheel's tick: how late (at most, plus the scheduler's wake-up latency) a deadline
 * fires. */
ATS_API uint64_t ats_ctx_timer_precision_ns(void);

#ifdef __cplusplus
}
#endif

#include "atscale/ctx_inl.h" /* the inline bodies (not API) */
#endif
