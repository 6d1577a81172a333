/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale channels: bounded queues of pointer-sized values (void *) after Go's channels, on
 * Concurrency Kit's ring buffer (ck_ring), parking on its eventcounts (ck_ec).
 *
 * Variants, fixed at creation, say who may call what at the same time:
 *   ATS_CHAN_MPMC  any number of senders and receivers (the default: a zeroed config);
 *   ATS_CHAN_MPSC  many senders, one receiving thread at a time;
 *   ATS_CHAN_SPMC  one sending thread at a time, many receivers;
 *   ATS_CHAN_SPSC  one sender and one receiver.
 * "One thread at a time" means calls on that side must not overlap (hand the role over with any
 * synchronization that orders them). Close and select may be called from any thread.
 *
 * Capacity: any value from 1 to ATS_CHAN_MAX_CAPACITY, honoured exactly: the capacity+1'th value
 * is refused (full) whatever the variant. The ring underneath is rounded up to a power of two
 * (ck_ring holds size-1), so the count is kept apart from it:
 *   - single-producer variants (SPSC, SPMC): the one sender compares the ring's occupancy with
 *     the capacity before each send; only it ever raises the occupancy, so the check is exact
 *     with no extra shared write (skipped when the capacity is 2^k-1, where the ring is exact);
 *   - multi-producer variants (MPSC, MPMC): a credit counter (one word holding the free credits
 *     and the closed bit): a sender takes a credit with one CAS before its ring enqueue, a
 *     receiver gives it back after its dequeue. That CAS also decides, exactly, whether a send
 *     comes before or after close (see close).
 * Capacity 0 (Go's unbuffered rendezvous) is rejected with ATS_ERR_INVALID_ARGUMENT: a send here
 * completes when its value is buffered, never when a receiver takes it, so capacity 1 is the
 * nearest thing and is not the same (a sender does not wait for the receiver).
 *
 * Blocking: send and recv spin (config.spin_ns; the spin yields the CPU every 256 tries, so it
 * does not hold back a peer queued on the same CPU) and then park on the channel's eventcount
 * ("not empty" for receivers, "not full" for senders): no system call while nobody waits, one
 * futex wake per operation that finds a parked waiter (a receiver that finds a send between its
 * start and its enqueue waits for that value rather than park). A busy-poll channel never parks.
 * Every blocking call takes an ats_ctx * as its LAST argument (as ats_limiter_wait does) and
 * returns its error (cancelled or deadline exceeded) as soon as it is done; see chan.c for how a
 * cancel wakes a parked thread without a lost wake-up.
 *
 * Close (as in Go): wakes every blocked sender and receiver; receivers drain what is buffered and
 * then get ATS_ERR_CLOSED; a send after close gets ATS_ERR_CLOSED (ATS_CHAN_CLOSED from try_send),
 * never a crash; a second close gets ATS_ERR_CLOSED. Every send that reported success is received
 * exactly once (or handed to the drop callback at destroy); no send that reported failure is.
 *
 * Ordering: a value's send happens before its receive (release/acquire through the ring): what
 * the sender wrote before sending is visible to the receiver. MPSC/SPSC deliver in send order;
 * with several receivers each takes values in ring order.
 *
 * Costs (atscale-bench --filter chan): a single-producer channel pays two locked instructions per
 * message on top of the ring: the producer's in-send exchange (its guard against a racing close,
 * which also orders its look at the receivers' waiter flag) and the receive's eventcount bump,
 * which is what lets a waiting sender park with no lost wake-up. A multi-producer channel pays
 * its credit word's CAS and add, and ck_ring's CASes; the eventcounts only when someone waits.
 * Light channels (config.light) pay none. Across threads the cost is the cache lines the two sides
 * share: the slots, and a single-ended side reads the other side's ring index only when the copy
 * it keeps says full (a single producer) or empty (a single consumer), so a channel that is
 * neither moves no index line per message. Plus a futex wake whenever the other side had parked
 * (blocking round trips pay two: compare chan.pingpong with chan.spsc).
 */
#ifndef ATSCALE_CHAN_H
#define ATSCALE_CHAN_H

#include "atscale/common.h"
#include "atscale/ctx.h"
#include "atscale/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ats_chan_kind {
	ATS_CHAN_MPMC = 0,
	ATS_CHAN_MPSC = 1,
	ATS_CHAN_SPMC = 2,
	ATS_CHAN_SPSC = 3,
} ats_chan_kind;

/* The largest capacity (the ring, rounded up, stays within ck_ring's unsigned counters). */
#define ATS_CHAN_MAX_CAPACITY ((size_t)1 << 30)
/* How long a blocking call keeps trying before it parks, unless the config says otherwise (a try
 * is one pass over the cases and a CPU pause): 10 us, the order of a futex sleep and wake-up
 * (floor.futex_pingpong), so spinning never costs much more than parking would. A time, not a
 * number of tries: a CPU pause lasts from a few cycles to 140 depending on the CPU, so a count
 * would spin tens of times longer on one machine than on another. On the development VM a spin
 * of about 2 us let a blocking round trip whose other end was briefly descheduled park
 * (chan.pingpong 2.0-2.2 us); at 9 us it takes 0.8 us (floor.spin_roundtrip 0.45-0.58 us). */
#define ATS_CHAN_DEFAULT_SPIN_NS 10000u
/* A light channel's blocking calls spin this many times config.spin_ns before they park: its
 * park costs a membarrier, tens of microseconds on a VM, so it pays to wait longer for the other
 * end first (on the development VM, chan.pingpong_light went from 4.6-11 us to 0.9 us). */
#define ATS_CHAN_LIGHT_SPIN_FACTOR 16u

typedef struct ats_chan_config {
	ats_chan_kind kind;
	size_t capacity;  /* 1 .. ATS_CHAN_MAX_CAPACITY */
	uint32_t spin_ns; /* how long to keep trying (CLOCK_MONOTONIC ns, a CPU pause between tries)
	                     before parking, plus 256 to 512 tries (the clock is first read at the
	                     256th, then every 256); 0: park at once; light channels: times
	                     ATS_CHAN_LIGHT_SPIN_FACTOR */
	bool busy_poll;   /* never park: spin until the operation, the ctx or close lets go */
	/* No locked instruction per message on single-producer sends and on receives (rows
	 * chan.*_light): for streams whose ends rarely wait (pipelines, poll loops). The price is paid
	 * when an end does wait: each sleep of a blocked send, receive or select, and each close, makes
	 * a membarrier system call, which interrupts every CPU running a thread of the process (tens
	 * of microseconds on a VM, row chan.pingpong_light). Where the kernel lacks membarrier the
	 * channel works as without it. src/chan.c says why no wake-up is lost either way. */
	bool light;
} ats_chan_config;

/* A config with the default spin, parking when the spin runs out. A function, not a compound
 * literal, so that it compiles as C++ too. */
static inline ats_chan_config ats_chan_config_of(ats_chan_kind kind, size_t capacity)
{
	ats_chan_config c;
	c.kind = kind;
	c.capacity = capacity;
	c.spin_ns = ATS_CHAN_DEFAULT_SPIN_NS;
	c.busy_poll = false;
	c.light = false;
	return c;
}
#define ATS_CHAN_CONFIG(kind_, capacity_) ats_chan_config_of((kind_), (capacity_))

/* A channel. Opaque: the size is fixed so it can live in caller memory (ats_chan_init); its
 * fields are private (chan.c). */
#define ATS_CHAN_SIZE 512
typedef struct ats_chan {
	ATS__ALIGNAS(64) unsigned char opaque_[ATS_CHAN_SIZE];
} ats_chan;

/* What a non-blocking operation did. */
typedef enum ats_chan_status {
	ATS_CHAN_OK = 0,      /* done */
	ATS_CHAN_WOULD_BLOCK, /* full (send) or empty (recv); retry later */
	ATS_CHAN_CLOSED,      /* send: closed; recv: closed and drained */
	ATS_CHAN_INVALID,     /* NULL channel or value pointer; nothing changed */
} ats_chan_status;

/* ---- Making and freeing ---- */

/* Makes a channel in caller memory (64-byte aligned, as the type is). Allocates the ring
 * (capacity rounded up to a power of two, pointer slots). Errors, nothing made: NULL c or cfg,
 * capacity 0 or above ATS_CHAN_MAX_CAPACITY, an unknown kind (ATS_ERR_INVALID_ARGUMENT); no
 * memory (ats_err_oom). Blocking (allocation); O(1) but the allocation. */
ATS_API ATS_NODISCARD ats_err *ats_chan_init(ats_chan *c, const ats_chan_config *cfg);
/* Frees what init allocated, handing every value still buffered to drop(value, arg) in ring
 * order (drop may be NULL). No other thread may use the channel any more. NULL-safe. Blocking;
 * O(values buffered). */
ATS_API void ats_chan_destroy(ats_chan *c, void (*drop)(void *value, void *arg), void *arg);
/* The same on the heap: *out gets the channel (NULL on error). */
ATS_API ATS_NODISCARD ats_err *ats_chan_new(ats_chan **out, const ats_chan_config *cfg);
ATS_API void ats_chan_free(ats_chan *c, void (*drop)(void *value, void *arg), void *arg);

/* ---- Non-blocking ---- */

/* Sends v if there is room. OK, WOULD_BLOCK (full), CLOSED or INVALID (c NULL). Never blocks, no
 * system call unless a receiver is parked (then one futex wake). Progress: lock-free for SPSC
 * and SPMC; for MPSC and MPMC one CAS on the credit word plus ck_ring's multi-producer enqueue,
 * whose commit waits for earlier producers to commit (a producer preempted inside that window
 * holds back later ones: blocking in theory, a few instructions in practice). Release: what the
 * caller wrote before is visible to the receiver of v. */
ATS_API ats_chan_status ats_chan_try_send(ats_chan *c, void *v);
/* Receives into *out if a value is there. OK, WOULD_BLOCK (empty, or closed while a send that
 * began before close is still landing), CLOSED (closed and drained) or INVALID (c or out NULL;
 * *out untouched). Never blocks; lock-free (ck_ring's multi-consumer dequeue retries a CAS).
 * Acquire: see try_send. */
ATS_API ats_chan_status ats_chan_try_recv(ats_chan *c, void **out);

/* Bursts (rte_ring burst semantics): send as many of items[0..n) as fit, in order; returns how
 * many. *status (optional) says why it stopped short: WOULD_BLOCK (full), CLOSED or INVALID; OK
 * when all n went. One credit CAS (multi-producer) or one occupancy check (single producer), one
 * publication of the ring's index (the store the receiving core has to fetch) and one wake check
 * for the whole burst, so a burst of 32 costs little more than one send. Progress as try_send. */
ATS_API size_t ats_chan_try_send_n(ats_chan *c, void *const *items, size_t n, ats_chan_status *status);
/* Receives up to n values into out[0..n); returns how many. *status: when some came, OK or (fewer
 * than n) WOULD_BLOCK, since a burst that finds values does not look at close: on a closed
 * channel the call that finds it drained says CLOSED; when none came, as try_recv. One
 * publication of the ring's index, one credit return and one wake check for the whole burst. */
ATS_API size_t ats_chan_try_recv_n(ats_chan *c, void **out, size_t n, ats_chan_status *status);

/* ---- Blocking (ctx LAST) ---- */

/* Sends v, waiting while the channel is full. NULL on success; ATS_ERR_CLOSED when closed before
 * (or while waiting); ctx's error (ats_ctx_err) when ctx is done first, v not sent;
 * ATS_ERR_INVALID_ARGUMENT for NULL c or ctx. Blocking: spins config.spin_ns, then parks on
 * the "not full" eventcount (futex) until a receiver, close or ctx wakes it; busy-poll channels
 * spin instead. Never past ctx's deadline. No allocation unless it returns an error. */
ATS_API ATS_NODISCARD ats_err *ats_chan_send(ats_chan *c, void *v, ats_ctx *ctx);
/* Receives into *out, waiting while the channel is empty. NULL on success; ATS_ERR_CLOSED when
 * closed and drained; ctx's error; ATS_ERR_INVALID_ARGUMENT for NULL c, out or ctx. Blocking, as
 * send. */
ATS_API ATS_NODISCARD ats_err *ats_chan_recv(ats_chan *c, void **out, ats_ctx *ctx);
/* Sends items[0..n) as a burst: waits until at least one fits, then sends as many as fit;
 * *sent gets how many (0 with an error). n == 0 returns at once. Costs one try_send_n when
 * anything fits at once. Blocking, as send. */
ATS_API ATS_NODISCARD ats_err *ats_chan_send_n(ats_chan *c, void *const *items, size_t n, size_t *sent, ats_ctx *ctx);
/* Receives up to n values: waits until at least one is there, then takes what is there (up to
 * n); *received gets how many. Costs one try_recv_n when anything is there at once. Blocking, as
 * recv. */
ATS_API ATS_NODISCARD ats_err *ats_chan_recv_n(ats_chan *c, void **out, size_t n, size_t *received, ats_ctx *ctx);

/* ---- Close ---- */

/* Closes the channel: later sends fail, receivers drain then get closed, every parked sender and
 * receiver (and select) wakes. NULL, or ATS_ERR_CLOSED when already closed (nothing changes);
 * ATS_ERR_INVALID_ARGUMENT for NULL or a bridge's segment (its bridge closes it: bridge.h). Blocking for the futex
 * wakes and, where the channel uses it, one membarrier system call (the fence its senders skip: src/chan.c); lock-free
 * otherwise. */
ATS_API ATS_NODISCARD ats_err *ats_chan_close(ats_chan *c);
/* Whether close was called. Wait-free (one acquire load). */
ATS_API bool ats_chan_closed(const ats_chan *c);
/* Values buffered now (a snapshot: may be stale at once under concurrency). Wait-free. */
ATS_API size_t ats_chan_len(const ats_chan *c);
/* The capacity given at init. Wait-free. */
ATS_API size_t ats_chan_cap(const ats_chan *c);

/* ---- Select ---- */

/* One case of a select: a send of `value` to chan, or a receive from chan into `value`. A case
 * with a NULL chan is never ready (Go's nil channel). `status` is set on the case that fired:
 * OK, or CLOSED (a receive from a closed and drained channel, value NULL, as Go's `v, ok := <-c`
 * with ok false; or a send to a closed channel, where Go would panic). */
typedef struct ats_chan_case {
	ats_chan *chan;
	bool send;
	void *value;
	ats_chan_status status;
} ats_chan_case;

/* The most cases one select may have. */
#define ATS_CHAN_SELECT_MAX 64
/* *fired when the non-blocking default was taken. */
#define ATS_CHAN_SELECT_DEFAULT SIZE_MAX

/* Waits until one of cases[0..n) can proceed, performs it and sets *fired to its index. Each round
 * tries the cases in a random order (as Go's select), so among cases ready at once each is equally
 * likely to fire, wherever it sits; a case whose channel is NULL is never ready (a select of only
 * such cases parks until ctx is done, as one over Go's nil channels). With has_default, returns
 * at once with *fired = ATS_CHAN_SELECT_DEFAULT when none is ready (never blocks). NULL on success
 * (a case that fired with CLOSED is a success: read its status); ctx's error when ctx is done
 * first (nothing performed); ATS_ERR_INVALID_ARGUMENT for NULL fired or ctx, NULL cases with
 * n > 0, or n > ATS_CHAN_SELECT_MAX. A case's variant rules still hold (an SPSC channel's sender
 * role is the selecting thread's while the select runs). Blocking: tries every case, spins (the
 * largest spin among the cases' channels; never parks if all are busy-poll), then parks on every
 * channel's eventcount at once (futex_waitv) plus a word the ctx bumps; see chan.c for why no
 * wake-up is lost. Where futex_waitv is missing (Linux < 5.16, or a seccomp filter refuses it) a
 * select over several channels registers with their eventcounts in a process-wide table (a mutex
 * at the start and the end of its sleep), and a send or receive that finds it waiting wakes it
 * through that table. O(n) per round; no allocation unless it returns an error. */
ATS_API ATS_NODISCARD ats_err *ats_chan_select(ats_chan_case *cases, size_t n, bool has_default, size_t *fired,
                                               ats_ctx *ctx);

/* ---- Combinators (the seed's patterns; or-channel over many ctxs is ats_ctx_merge) ---- */

/* or-done: forwards every value from in to out, on the calling thread, until in is closed and
 * drained (NULL) or ctx is done (its error) or out is closed (ATS_ERR_CLOSED). *forwarded
 * (optional) gets how many went through; *undelivered (optional) the value taken from in but not
 * delivered when it stopped with an error (the caller's to dispose of), else NULL. out is not
 * closed: the caller closes it when it wants its readers to stop. Blocking, as recv and send. */
ATS_API ATS_NODISCARD ats_err *ats_chan_forward(ats_chan *in, ats_chan *out, size_t *forwarded, void **undelivered,
                                                ats_ctx *ctx);
/* tee: every value from in to both out1 and out2 (each value to whichever is ready first, then to
 * the other), until in is closed and drained (NULL), ctx is done or an output is closed (error).
 * *teed (optional): values delivered to both; *undelivered (optional): the value in hand when it
 * stopped with an error (it may have reached one output), else NULL. Blocking. */
ATS_API ATS_NODISCARD ats_err *ats_chan_tee(ats_chan *in, ats_chan *out1, ats_chan *out2, size_t *teed,
                                            void **undelivered, ats_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
