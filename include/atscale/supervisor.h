/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale supervision: the seed's steward and wards ("healing unhealthy goroutines"), with the
 * restart semantics Erlang/OTP users know.
 *
 * A ward is a unit of work on a thread of its own, started by its supervisor with a ctx (a child
 * of the supervisor's) and a heartbeat of its own (heartbeat.h) that it beats: work_begin/work_end
 * around each unit of work (so idleness is healthy), or ats_heartbeat_tick on an interval. It runs
 * until it returns: NULL is a normal exit, an error an abnormal one.
 *
 * The supervisor (the steward) watches every ward's heartbeat from ONE monitor thread (no thread
 * per ward): every check period it samples each heartbeat (ats_heartbeat_check: a load and a
 * compare, tens of ns per ward; row hb.monitor_1000) and reaps wards that returned (a ward's exit
 * wakes it at once). On a stall or an exit it acts by the ward's restart type:
 *   ATS_WARD_PERMANENT   restarted after any exit or stall;
 *   ATS_WARD_TRANSIENT   restarted after an abnormal exit or a stall, not after a normal exit;
 *   ATS_WARD_TEMPORARY   never restarted;
 * and by the supervisor's strategy:
 *   ATS_SUP_ONE_FOR_ONE  only that ward restarts;
 *   ATS_SUP_ONE_FOR_ALL  every ward is stopped (last started first) and all restart in order;
 *   ATS_SUP_REST_FOR_ONE that ward and those started after it.
 * Stopping a ward cancels its ctx and waits up to its shutdown timeout for it to return. A ward
 * that does not return in time (it ignores its ctx, or is stuck) is quarantined: its thread is
 * left to finish on its own (it then frees what was its own; it never touches the supervisor
 * again), and its replacement starts at once. Its heartbeat goes with it: each start of a ward
 * gets a fresh one.
 *
 * A ward that cannot be started again (no thread, no memory) counts as a restart that failed at
 * once: an EXIT event with the error, the restart intensity, and its strategy again; the wards
 * left down are started at the next check (not at once: a machine out of threads is not spun on).
 * A sibling that had already returned when a strategy takes it down is reaped first and comes
 * back only as its own restart type says (a transient ward that exited normally stays down).
 *
 * Restart intensity: more than max_restarts restarts within period_ns and the supervisor gives
 * up: it stops all its wards, reports ATS_SUP_EVENT_GIVE_UP, and ats_supervisor_wait returns the
 * error (ATS_ERR_UNAVAILABLE, with the last failure as its cause). A supervisor is itself a ward
 * (ats_supervisor_ward), so a parent sees a child's give-up as an abnormal exit and applies its
 * own policy: supervisors nest.
 *
 * Events (a stall, an exit, a restart, a quarantine, a give-up) reach the application through a
 * callback, called on the monitor thread, with the ward's id and name and a well-formed error
 * (attachments "ward" and "supervisor"); counters read at any time (ats_supervisor_stats).
 *
 * Cost and scale: the monitor's work per check is O(wards) loads and compares; the check period
 * is config.check_ns, by default a quarter of the smallest ward timeout (at most 100 ms). A beat
 * is seen at the first check after it (up to check_ns late: a beat is a store, with no clock read),
 * and the monitor also wakes when a silent ward's timeout runs out, so a stall is acted on within
 * timeout + check_ns + a wake-up (row hb.detect_late_p99). One supervisor watches up to
 * ATS_SUP_MAX_WARDS wards (each a thread); the monitor is one thread per supervisor, not per ward,
 * and not the library's timer thread, because acting on a stall blocks (stopping a ward waits up
 * to its shutdown timeout, and starting one starts a thread), which would hold up every timer.
 */
#ifndef ATSCALE_SUPERVISOR_H
#define ATSCALE_SUPERVISOR_H

#include "atscale/common.h"
#include "atscale/ctx.h"
#include "atscale/error.h"
#include "atscale/heartbeat.h"
#include "atscale/pool.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ATS_SUP_MAX_WARDS 4096u
/* A ward's shutdown timeout when its spec gives none. */
#define ATS_SUP_DEFAULT_SHUTDOWN_NS UINT64_C(1000000000)

typedef enum ats_sup_strategy {
	ATS_SUP_ONE_FOR_ONE = 0,
	ATS_SUP_ONE_FOR_ALL,
	ATS_SUP_REST_FOR_ONE,
} ats_sup_strategy;

typedef enum ats_ward_restart {
	ATS_WARD_PERMANENT = 0,
	ATS_WARD_TRANSIENT,
	ATS_WARD_TEMPORARY,
} ats_ward_restart;

/* A ward's body: beat hb while working; return when ctx is done (or earlier). NULL: a normal
 * exit; an error (consumed by the supervisor): an abnormal one. */
typedef ats_err *(*ats_ward_fn)(void *arg, ats_heartbeat *hb, ats_ctx *ctx);

typedef struct ats_ward_spec {
	const char *name; /* copied; NULL: "ward <id>" */
	ats_ward_fn run;  /* required */
	void *arg;
	ats_ward_restart restart;
	ats_heartbeat_watch_config watch; /* timeout_ns 0: no stall detection for this ward */
	uint64_t shutdown_timeout_ns;     /* 0: ATS_SUP_DEFAULT_SHUTDOWN_NS; UINT64_MAX: however long */
} ats_ward_spec;

typedef enum ats_sup_event_kind {
	ATS_SUP_EVENT_STALL = 0,  /* a ward's heartbeat stalled (it is then stopped) */
	ATS_SUP_EVENT_EXIT,       /* a ward returned (err: its error, NULL for a normal exit) */
	ATS_SUP_EVENT_RESTART,    /* a ward was started again */
	ATS_SUP_EVENT_QUARANTINE, /* a stopped ward did not return within its shutdown timeout */
	ATS_SUP_EVENT_GIVE_UP,    /* restart intensity exceeded: every ward stopped */
} ats_sup_event_kind;

typedef struct ats_supervisor_event {
	ats_sup_event_kind kind;
	unsigned ward;      /* the ward's id (0 for GIVE_UP) */
	const char *name;   /* the ward's name (the supervisor's for GIVE_UP) */
	const ats_err *err; /* borrowed for the call: what happened, with "ward" and "supervisor" attached */
} ats_supervisor_event;

typedef struct ats_supervisor_config {
	const char *name; /* copied; NULL: "supervisor" */
	ats_sup_strategy strategy;
	unsigned max_restarts; /* restart intensity: at most this many restarts ... */
	uint64_t period_ns;    /* ... within this window (0 with max_restarts 0: never give up) */
	uint64_t check_ns;     /* the monitor's check period; 0: the default (see above) */
	void (*on_event)(const ats_supervisor_event *ev, void *arg); /* optional; on the monitor thread */
	void *event_arg;
} ats_supervisor_config;

/* Counters over the supervisor's life, each matching its events: starts, every ward thread started;
 * restarts, those the monitor started after a stall or an exit (RESTART events; a supervisor started
 * again after a stop starts its wards afresh, which are starts only); stalls (STALL); exits (EXIT: a
 * ward that returned, or a restart that could not start its thread); quarantined (QUARANTINE);
 * give_ups (GIVE_UP). */
typedef struct ats_supervisor_stats {
	uint64_t starts, restarts, stalls, exits, quarantined, give_ups;
} ats_supervisor_stats;

typedef struct ats_supervisor ats_supervisor;

/* Makes a supervisor with no wards. Errors: NULL out or cfg, an unknown strategy, a period with
 * max_restarts 0 or UINT_MAX (ATS_ERR_INVALID_ARGUMENT); no memory. Blocking (allocation). */
ATS_API ATS_NODISCARD ats_err *ats_supervisor_new(ats_supervisor **out, const ats_supervisor_config *cfg);
/* Adds a ward (before start; wards start in the order added). *id gets its id (0, 1, ...).
 * Errors, nothing added: NULL s, spec or run, an unknown restart type, a watch config that
 * ats_heartbeat_watch_init refuses, ATS_SUP_MAX_WARDS reached, a call after start
 * (ATS_ERR_INVALID_ARGUMENT); no memory. */
ATS_API ATS_NODISCARD ats_err *ats_supervisor_add(ats_supervisor *s, const ats_ward_spec *spec, unsigned *id);
/* Starts every ward and the monitor, under a child of ctx. When ctx is done (cancelled, or its
 * deadline), the monitor stops every ward as ats_supervisor_stop does and restarts none: the
 * supervisor has ended (ats_supervisor_wait: NULL); call ats_supervisor_stop all the same.
 * Errors: NULL s or ctx, already running (ATS_ERR_INVALID_ARGUMENT); a thread that could not
 * start (ATS_ERR_SYSTEM, everything stopped). A stopped supervisor may be started again.
 * Blocking (threads). */
ATS_API ATS_NODISCARD ats_err *ats_supervisor_start(ats_supervisor *s, ats_ctx *ctx);
/* Waits until the supervisor ends: NULL once every ward has ended for good (temporary or
 * transient wards that exited normally) or it was stopped; its give-up error; ctx's error when
 * ctx is done first (the supervisor keeps running). Blocking. */
ATS_API ATS_NODISCARD ats_err *ats_supervisor_wait(ats_supervisor *s, ats_ctx *ctx);
/* Stops every ward (last started first, each within its shutdown timeout, else quarantined) and
 * the monitor. NULL-safe; idempotent. Blocking. */
ATS_API void ats_supervisor_stop(ats_supervisor *s);
/* Stops and frees. NULL-safe; the last call on s. */
ATS_API void ats_supervisor_free(ats_supervisor *s);
/* The counters. Wait-free (relaxed loads). */
ATS_API void ats_supervisor_stats_get(const ats_supervisor *s, ats_supervisor_stats *out);
/* How many times ward id has been started (0 for an unknown id). Wait-free. */
ATS_API uint64_t ats_supervisor_ward_starts(const ats_supervisor *s, unsigned id);
/* A ward spec that runs `child` as a ward of another supervisor: it starts child under the ward's
 * ctx, returns child's give-up error (an abnormal exit) or NULL when its ctx is done (child
 * stopped). The child's heartbeat is idle between its own checks, so only its exit matters. Its
 * shutdown timeout is UINT64_MAX: the parent waits for the child's stop, which is bounded by the
 * child's own wards' timeouts (keep it so: a child left stopping in quarantine while the parent
 * starts it again would find it still running). */
ATS_API ats_ward_spec ats_supervisor_ward(ats_supervisor *child, const char *name, ats_ward_restart restart);

/* ---- A pool's workers under supervision ---- */

/* What a pool steward watches: the pool, and how long a task may run before its worker counts as
 * stuck. Caller memory; it must outlive the supervisor's use of the ward. */
typedef struct ats_pool_steward {
	ats_pool *pool;
	uint64_t stuck_ns; /* > 0 */
} ats_pool_steward;

/* A permanent ward that keeps st->pool's workers healthy: every stuck_ns / 4 it replaces each
 * worker stuck in one task for stuck_ns (ats_pool_replace_stuck: a fresh thread takes over the
 * worker and its queue, the stuck thread is quarantined and rejoins when its task returns; no task
 * is lost or run twice), and config.on_replace of the pool hears of each. It beats around each pass
 * (work_begin/work_end; the spec watches it with a timeout of stuck_ns, at least 100 ms), so a
 * steward itself stuck in a pass is a stall its supervisor restarts; it holds no state, so a
 * restart loses nothing. It returns NULL when its ctx is done, and ATS_ERR_INVALID_ARGUMENT (an
 * abnormal exit) for a NULL pool or a zero stuck_ns. Cost: one supervisor ward (a thread, asleep
 * between passes) and O(workers) loads per pass. */
ATS_API ats_ward_spec ats_pool_steward_ward(ats_pool_steward *st, const char *name);

#ifdef __cplusplus
}
#endif
#endif
