/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale: the whole public API.
 *
 * ---- Progress words ----
 * Every call's comment says how it makes progress, in one of three words, used in this sense only:
 *  - wait-free: the call finishes in a bounded number of its own steps whatever other threads do.
 *    It takes no lock, never retries because of another thread (beyond a bound the comment
 *    states), makes no system call that can sleep and does not allocate.
 *  - lock-free: the call may retry (a CAS that lost to another thread's write, a seqlock read
 *    that met a writer), but each retry means another thread made progress, and it never waits for
 *    another thread to act: a thread stalled anywhere (preempted, stopped in a debugger) cannot
 *    stop it. No lock, no sleeping system call, no allocation.
 *  - blocking: anything else: the call may wait for another thread (a mutex, a spin lock, an RCU
 *    grace period, a condition), sleep in the kernel, or allocate memory (malloc may take locks).
 * A qualifier narrows the word to a path ("lock-free when the key is present; blocking when it is
 * new"). Set-up done once per process on first use (the clock's calibration, a thread's
 * registration with liburcu, the timer thread's start) is blocking and is not counted after it.
 * Costs are not quoted in comments: `atscale-bench` measures them, and comments name its rows
 * (limiter.allow_at, ctx.done, floor.load_cas, ...).
 *
 * ---- Contexts ----
 * Every call of a module that can block on something other than its own short locks (waiting for
 * tokens, for a channel, for a pool) takes the `ats_ctx *` it follows as its LAST argument
 * (ats_limiter_wait(l, n, ctx)), returns as soon as that context is done with the context's error,
 * and never blocks past the context's deadline. The ctx module's own calls take the context they
 * act on first (ats_ctx_wait(ctx, deadline_ns)). See ctx.h.
 *
 * ---- Names ----
 * ats_ and ATS_ names are the API. ats__ and ATS__ names are private: they appear in headers only
 * because inline code or macros need them, and may change in any release. The *_inl.h headers
 * (clock_inl.h, ctx_inl.h, gcra_inl.h, limiter_inl.h, heartbeat_inl.h) hold only such private layouts and inline
 * bodies; each public header includes its own. In the transparent structs that callers allocate
 * (ats_limiter, ats_sharded, ats_keyed, ats_reservation, ats_ctx_key, ats_ctx_after, ats_chan) a
 * field whose name ends in an underscore is private: read and write only the fields without one.
 *
 * ---- Modules, in dependency order ----
 * common.h/export.h (shared macros), error.h, clock.h, gcra.h, ctx.h, limiter.h, keyed.h, fleet.h,
 * chan.h, bridge.h, pool.h, heartbeat.h, supervisor.h, hedge.h.
 * docs/ARCHITECTURE.md describes them, the time base and the threading model.
 */
#ifndef ATSCALE_H
#define ATSCALE_H

#include "atscale/common.h"
#include "atscale/error.h"
#include "atscale/clock.h"
#include "atscale/gcra.h"
#include "atscale/ctx.h"
#include "atscale/limiter.h"
#include "atscale/keyed.h"
#include "atscale/fleet.h"
#include "atscale/fleet_keyed.h"
#include "atscale/chan.h"
#include "atscale/bridge.h"
#include "atscale/pool.h"
#include "atscale/heartbeat.h"
#include "atscale/supervisor.h"
#include "atscale/histogram.h"
#include "atscale/hedge.h"

#endif
