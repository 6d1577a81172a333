/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale bridge channels: one stream of values that outlives its producers (the seed's bridge,
 * a channel of channels read as one, made for producers a supervisor restarts).
 *
 * Each incarnation of a producer opens a segment, a channel of its own (ats_bridge_open), sends
 * into it with the ordinary channel calls, and leaves it when it ends (ats_bridge_leave).
 * Consumers receive from the bridge (ats_bridge_recv), which reads the segments in the order they
 * were opened. Opening a segment closes the one before it: the consumers drain what the previous
 * incarnation sent and move on, and a late send of that incarnation (a frozen producer waking up
 * after its replacement started) gets ATS_ERR_CLOSED instead of slipping into the stream. So
 * across any number of restarts:
 *   - every value whose send reported success is received exactly once (or handed to drop when
 *     the bridge is freed), in send order within an incarnation and incarnation after
 *     incarnation;
 *   - no value whose send failed is received: the producer still holds it (a restarted producer
 *     resends what it could not send, from its own record of progress);
 *   - consumers never see a restart: a receive waits in the current segment until a value comes,
 *     the segment is superseded (then it goes on in the next) or the bridge is closed.
 * Leaving does not close a segment (a crashed incarnation's values stay readable and the
 * consumers wait in it for the next one); only the next open or ats_bridge_close does. A producer
 * cannot close its segment: ats_chan_close on it returns ATS_ERR_INVALID_ARGUMENT and changes
 * nothing (it would end the stream for every consumer while the bridge is open).
 *
 * Threads: any number of consumers and producers at once, within the segments' channel kind
 * (the config given to init: e.g. ATS_CHAN_SPMC for one producer thread per incarnation and many
 * consumers). A segment outlives the bridge while an incarnation still holds it, so a quarantined
 * producer that returns after the bridge was freed may still send (ATS_ERR_CLOSED) and leave.
 *
 * Cost: a send is the channel's send. A receive is the channel's receive plus a reference on the
 * current segment taken under the bridge's mutex (row bridge.try_pair beside chan.try_pair
 * in atscale-bench). Opening a segment allocates it (its ring included); a superseded segment is
 * freed when the consumers have drained it and its producer has left.
 */
#ifndef ATSCALE_BRIDGE_H
#define ATSCALE_BRIDGE_H

#include "atscale/chan.h"
#include "atscale/common.h"
#include "atscale/ctx.h"
#include "atscale/error.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ats_bridge ats_bridge;

/* Makes a bridge whose segments are channels of `segment` config (validated as ats_chan_init
 * does), with one empty segment open so that consumers can wait before any producer starts.
 * Errors, nothing made: NULL out or segment, a config ats_chan_init refuses
 * (ATS_ERR_INVALID_ARGUMENT); no memory. Blocking (allocation). */
ATS_API ATS_NODISCARD ats_err *ats_bridge_new(ats_bridge **out, const ats_chan_config *segment);

/* Producer side: opens the next segment and closes the current one (its values stay readable).
 * *segment gets the channel to send into; the caller holds it until ats_bridge_leave. Errors,
 * nothing changed: NULL b or segment (ATS_ERR_INVALID_ARGUMENT); the bridge closed
 * (ATS_ERR_CLOSED); no memory. Blocking (allocation, the bridge's mutex). */
ATS_API ATS_NODISCARD ats_err *ats_bridge_open(ats_bridge *b, ats_chan **segment);
/* Producer side: gives back a segment ats_bridge_open returned (it stays open until superseded;
 * the values in it are not affected). Touches only the segment, never the bridge, so it may run
 * after the bridge was freed (the values left in it then go to the drop given to
 * ats_bridge_free). NULL-safe. Wait-free (one atomic decrement), blocking when it drops the last
 * reference (it frees the segment). */
ATS_API void ats_bridge_leave(ats_chan *segment);

/* Receives the next value into *out: NULL on success; ATS_ERR_CLOSED once the bridge is closed
 * and every segment drained; ctx's error when ctx is done first (nothing taken). NULL b, out or
 * ctx: ATS_ERR_INVALID_ARGUMENT. Blocking, as ats_chan_recv (it parks in the current segment). */
ATS_API ATS_NODISCARD ats_err *ats_bridge_recv(ats_bridge *b, void **out, ats_ctx *ctx);
/* The same without blocking: OK, WOULD_BLOCK (nothing buffered now), CLOSED (closed and
 * drained), INVALID (NULL b or out). Never blocks; takes the bridge's mutex briefly. */
ATS_API ats_chan_status ats_bridge_try_recv(ats_bridge *b, void **out);

/* No more segments: closes the current one, so consumers drain it and then get ATS_ERR_CLOSED;
 * later opens get ATS_ERR_CLOSED. Errors: NULL b (ATS_ERR_INVALID_ARGUMENT); already closed
 * (ATS_ERR_CLOSED). Blocking (the bridge's mutex). */
ATS_API ATS_NODISCARD ats_err *ats_bridge_close(ats_bridge *b);

/* Segments opened so far (the initial one not counted): the producer incarnations. Wait-free. */
ATS_API uint64_t ats_bridge_opened(const ats_bridge *b);

/* Closes and frees the bridge, handing every value still buffered in any segment to
 * drop(value, arg) (drop may be NULL): at once, or for a segment a producer still holds, when it
 * leaves. No consumer may use the bridge any more; producers may still hold segments (their sends
 * fail with ATS_ERR_CLOSED) and must still leave them. NULL-safe. Blocking; O(segments + values). */
ATS_API void ats_bridge_free(ats_bridge *b, void (*drop)(void *value, void *arg), void *arg);

#ifdef __cplusplus
}
#endif
#endif
