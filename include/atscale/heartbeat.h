/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale heartbeats: a worker says "still alive, still making progress" for the cost of a store,
 * and a watcher tells a stalled worker from an idle one (after the Go seed's heartbeats).
 *
 * Beating. Two kinds, as in the seed: a beat at the start of each unit of work
 * (ats_heartbeat_beat, or work_begin/work_end around the work), and beats on an interval
 * (ats_heartbeat_tick, called from the worker's loop with the time it has). A beat is a store to
 * the heartbeat's own cache line by its one beater thread: no system call, no lock, no locked
 * instruction, never blocks; about a nanosecond (row hb.beat). It cannot afford a clock read, so
 * the time of the last beat is what a watcher saw (see the watch below). One thread beats a given
 * heartbeat; any thread may watch or wait on it.
 *
 * Pulses. With config.pulse (a channel, typically of capacity 1), ats_heartbeat_beat_with_pulse
 * also sends a pulse without blocking, dropped when the channel is full, as the seed's
 * `select { case pulse <- struct{}{}: default: }` does: for consumers that select on it.
 *
 * Waiting. ats_heartbeat_wait sleeps until the beat count reaches a target or its ctx is done, so
 * a test waits for work to start instead of sleeping. A beat wakes waiters with no locked
 * instruction of its own: it stores the count, then reads a waiter count on another cache line,
 * and makes a futex wake only when a waiter is there. That store-then-load is a Dekker pair with
 * the waiter's (announce, then read the count), made safe by an asymmetric fence: the waiter
 * issues membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which runs a full barrier on every thread
 * of the process, so the beat path needs only a compiler barrier (liburcu's memb flavour, the
 * same idea). A waiter sleeps on one word that every wake changes (a beat that finds a waiter,
 * the cancel of a waiter's ctx), so it sleeps until it is woken, with or without futex_waitv.
 * Where the kernel lacks that membarrier command, a waiter instead sleeps at most
 * ATS_HEARTBEAT_POLL_NS at a time and re-reads the count: a wake-up may then come up to that late,
 * never lost. ats_heartbeat_wake_path() says which one this process uses.
 *
 * Watching. An ats_heartbeat_watch is one watcher's view of one heartbeat (a supervisor's
 * monitor keeps one per ward). ats_heartbeat_check samples the count: a change is progress, and
 * its time is the last beat's time as this watcher knows it (so within one check period). A
 * heartbeat with work pending (work_begin without work_end) and no change for the threshold is
 * STALLED; one with nothing pending is IDLE, which is healthy. The threshold is fixed
 * (timeout_ns), or adaptive (phi accrual, Hayashibara et al. 2004): the watch keeps the last
 * ATS_HEARTBEAT_WINDOW intervals between observed changes, and phi(t) = -log10(P(interval > t))
 * under a normal distribution fitted to them (standard deviation at least a quarter of the mean,
 * so a metronome-regular worker is not declared dead one jitter late); STALLED when phi passes
 * phi_threshold and the silence is at least timeout_ns (a floor). Until ATS_HEARTBEAT_MIN_SAMPLES
 * intervals are known, the fixed timeout decides.
 */
#ifndef ATSCALE_HEARTBEAT_H
#define ATSCALE_HEARTBEAT_H

#include "atscale/chan.h"
#include "atscale/common.h"
#include "atscale/ctx.h"
#include "atscale/error.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How long a waiter sleeps at a time where membarrier is missing. */
#define ATS_HEARTBEAT_POLL_NS 1000000u
/* Intervals a watch keeps for phi accrual, and how many it needs before phi decides. */
#define ATS_HEARTBEAT_WINDOW 64
#define ATS_HEARTBEAT_MIN_SAMPLES 8
/* phi's ceiling (P(interval > t) below 1e-300, near the double's limit): a threshold must be under it. */
#define ATS_HEARTBEAT_PHI_MAX 300.0

typedef struct ats_heartbeat_config {
	uint64_t interval_ns; /* for ats_heartbeat_tick; 0: tick never beats */
	ats_chan *pulse;      /* optional: beat_with_pulse sends to it without blocking */
} ats_heartbeat_config;

/* A heartbeat, in caller memory (the layout is in heartbeat_inl.h; fields are private). */
typedef struct ats_heartbeat ats_heartbeat;

/* Makes a heartbeat: count 0, nothing pending. cfg may be NULL (no interval, no pulse). Errors,
 * nothing changed: NULL h (ATS_ERR_INVALID_ARGUMENT). Wait-free; no allocation. */
ATS_API ATS_NODISCARD ats_err *ats_heartbeat_init(ats_heartbeat *h, const ats_heartbeat_config *cfg);
/* Nothing to free (the pulse channel is the caller's); no thread may use h after. NULL-safe. */
ATS_API void ats_heartbeat_destroy(ats_heartbeat *h);

/* ---- Beating (the one beater thread) ---- */

/* A unit-of-work beat. Wait-free, inline: a load and a store of the beater's own line, a load of
 * the waiter count, and a futex wake only when someone waits. Release: a watcher that sees the
 * new count sees what the beater did before. */
static inline void ats_heartbeat_beat(ats_heartbeat *h);
/* Work is pending from now on (counts as a beat): a watcher may call a long silence a stall. */
static inline void ats_heartbeat_work_begin(ats_heartbeat *h);
/* Nothing is pending (counts as a beat): silence from now on is idleness, not a stall. */
static inline void ats_heartbeat_work_end(ats_heartbeat *h);
/* A beat plus a non-blocking pulse on config.pulse (dropped when full; none without a pulse
 * channel). Lock-free (the channel's try_send). */
ATS_API void ats_heartbeat_beat_with_pulse(ats_heartbeat *h);
/* The interval kind: beats (and returns true) when config.interval_ns has passed since the last
 * tick that beat (the first tick always beats), with now_ns from the caller's clock. Wait-free. */
ATS_API bool ats_heartbeat_tick(ats_heartbeat *h, uint64_t now_ns);

/* ---- Reading and waiting (any thread) ---- */

/* Beats so far (work_begin and work_end count). Wait-free; acquire. */
static inline uint64_t ats_heartbeat_count(const ats_heartbeat *h);
/* Whether work is pending. Wait-free; acquire. */
static inline bool ats_heartbeat_pending(const ats_heartbeat *h);
/* Sleeps until ats_heartbeat_count(h) >= count (NULL) or ctx is done (its error; the count may
 * have been reached meanwhile). ATS_ERR_INVALID_ARGUMENT for NULL h or ctx. Blocking: one
 * membarrier system call to announce itself, then futex sleeps (see the file comment); no
 * allocation unless it returns an error. */
ATS_API ATS_NODISCARD ats_err *ats_heartbeat_wait(ats_heartbeat *h, uint64_t count, ats_ctx *ctx);
/* How waiters are woken in this process: "membarrier" or "bounded poll". Wait-free after the first
 * call. */
ATS_API const char *ats_heartbeat_wake_path(void);

/* ---- Watching (one watcher thread per watch) ---- */

typedef enum ats_heartbeat_health {
	ATS_HB_HEALTHY = 0, /* beating, or silent for less than the threshold */
	ATS_HB_IDLE,        /* nothing pending: silence is fine */
	ATS_HB_STALLED,     /* work pending and silent past the threshold */
} ats_heartbeat_health;

typedef struct ats_heartbeat_watch_config {
	uint64_t timeout_ns;  /* the fixed threshold; with phi, the least silence called a stall */
	double phi_threshold; /* > 0: adaptive (phi accrual); e.g. 8 (Cassandra's default) */
} ats_heartbeat_watch_config;

/* One watcher's view of one heartbeat, in caller memory (layout in heartbeat_inl.h). */
typedef struct ats_heartbeat_watch ats_heartbeat_watch;

/* Starts watching h at now_ns (the watcher's clock): the current count counts as just seen.
 * Errors, nothing changed: NULL w, h or cfg, a zero timeout, a phi threshold that is negative,
 * not a number or not below ATS_HEARTBEAT_PHI_MAX (phi never passes it: nothing would ever be
 * called stalled) (ATS_ERR_INVALID_ARGUMENT). Wait-free; no allocation. */
ATS_API ATS_NODISCARD ats_err *ats_heartbeat_watch_init(ats_heartbeat_watch *w, const ats_heartbeat *h,
                                                        const ats_heartbeat_watch_config *cfg, uint64_t now_ns);
/* Samples the heartbeat at now_ns (non-decreasing across calls) and says how it is. O(1) (O(window)
 * for phi), no system call, no allocation. */
ATS_API ats_heartbeat_health ats_heartbeat_check(ats_heartbeat_watch *w, uint64_t now_ns);
/* When this watcher last saw the count change (the init time if never). Wait-free. */
ATS_API uint64_t ats_heartbeat_last_beat_ns(const ats_heartbeat_watch *w);
/* The earliest time at which a check would call the heartbeat stalled if it stays silent: the last
 * change seen plus the timeout while work was pending at the last check, UINT64_MAX while idle. A
 * watcher that checks again then (and not only on its period) acts on a stall as soon as it is
 * one. (With phi, a stall may come later than this, never earlier.) Wait-free. */
ATS_API uint64_t ats_heartbeat_stall_at(const ats_heartbeat_watch *w);
/* phi at now_ns from the intervals seen so far (0 with fewer than ATS_HEARTBEAT_MIN_SAMPLES);
 * capped at ATS_HEARTBEAT_PHI_MAX. O(window). */
ATS_API double ats_heartbeat_phi(const ats_heartbeat_watch *w, uint64_t now_ns);

#ifdef __cplusplus
}
#endif

#include "atscale/heartbeat_inl.h"

#endif
