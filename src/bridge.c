/* SPDX-License-Identifier: BSD-2-Clause */
/* Bridge channels: a list of segments (channels) read in order; see bridge.h for the guarantees.
 *
 * Why a mutex: it guards only the list (which segment is current) and is taken once per receive
 * to take a reference on the current segment, never while a thread waits; the values themselves
 * go through the segments' lock-free channels. A segment is freed by its last reference: the
 * list's (dropped by the consumer that moves past it, or by free), its producer's (leave) and the
 * consumers' in flight. A segment is only ever closed with the list's lock held and after its
 * successor is linked, so a consumer that finds it closed and drained finds the successor (or,
 * with none, the bridge closed). */
#include "atscale/bridge.h"

#include "internal/chan_segment.h"
#include "internal/compiler.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct segment {
	ats_chan chan; /* first: a producer's ats_chan * is the segment's address */
	_Atomic uint32_t refs;
	struct segment *next; /* under the bridge's lock */
	/* Where values still buffered go when the last reference is dropped: set by ats_bridge_free
	 * (before it drops the list's reference, which orders it for whoever drops the last); NULL
	 * before, when a segment is only ever freed drained. */
	void (*drop)(void *value, void *arg);
	void *drop_arg;
};

struct ats_bridge {
	pthread_mutex_t lock;
	struct segment *head; /* the consumers' current segment; never NULL */
	struct segment *tail; /* the producers' current segment (the only one not closed) */
	bool closed;
	ats_chan_config cfg;
	_Atomic uint64_t opened;
};

static ats_err *segment_new(const ats_chan_config *cfg, uint32_t refs, struct segment **out)
{
	struct segment *s = aligned_alloc(ATS__CACHE_LINE, sizeof *s);
	if (!s)
		return ats_err_oom;
	ats_err *err = ats_chan_init(&s->chan, cfg);
	if (err) {
		free(s);
		return err;
	}
	ats__chan_mark_segment(&s->chan);
	atomic_init(&s->refs, refs);
	s->next = NULL;
	s->drop = NULL;
	s->drop_arg = NULL;
	*out = s;
	return NULL;
}

static void segment_unref(struct segment *s)
{
	/* acq_rel: the last dropper sees every other holder's use of the segment (and drop). */
	if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
		ats_chan_destroy(&s->chan, s->drop, s->drop_arg);
		free(s);
	}
}

ats_err *ats_bridge_new(ats_bridge **out, const ats_chan_config *segment)
{
	if (out)
		*out = NULL;
	if (!out || !segment)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "bridge: NULL %s", !out ? "out" : "segment config");
	ats_bridge *b = calloc(1, sizeof *b);
	if (!b)
		return ats_err_oom;
	b->cfg = *segment;
	ats_err *err = segment_new(&b->cfg, 1, &b->head);
	if (err) {
		free(b);
		return err;
	}
	b->tail = b->head;
	pthread_mutex_init(&b->lock, NULL);
	*out = b;
	return NULL;
}

ats_err *ats_bridge_open(ats_bridge *b, ats_chan **segment)
{
	if (segment)
		*segment = NULL;
	if (!b || !segment)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "bridge: NULL %s", !b ? "bridge" : "segment");
	struct segment *s = NULL;
	ats_err *err = segment_new(&b->cfg, 2, &s); /* the list's and the producer's */
	if (err)
		return err;
	pthread_mutex_lock(&b->lock);
	if (b->closed) {
		pthread_mutex_unlock(&b->lock);
		segment_unref(s);
		segment_unref(s);
		return ats_err_new(ATS_ERR_CLOSED, "bridge: open after close");
	}
	struct segment *prev = b->tail;
	prev->next = s;
	b->tail = s;
	ats_err_unref(ats__chan_close_segment(&prev->chan)); /* linked first: see the top of this file */
	pthread_mutex_unlock(&b->lock);
	/* relaxed: a statistic. */
	atomic_fetch_add_explicit(&b->opened, 1, memory_order_relaxed);
	*segment = &s->chan;
	return NULL;
}

void ats_bridge_leave(ats_chan *segment)
{
	if (segment)
		segment_unref(ats__container_of(segment, struct segment, chan));
}

/* The current segment, with a reference for the caller. */
static struct segment *current(ats_bridge *b)
{
	pthread_mutex_lock(&b->lock);
	struct segment *s = b->head;
	/* relaxed: under the lock, which the list's reference (held while s is head) keeps valid. */
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&b->lock);
	return s;
}

/* s was found closed and drained: moves the list past it (once, whoever sees it first). False
 * when s is the last segment: the bridge is closed and drained. */
static bool advance(ats_bridge *b, struct segment *s)
{
	pthread_mutex_lock(&b->lock);
	if (b->head != s) {
		pthread_mutex_unlock(&b->lock);
		return true;
	}
	if (!s->next) {
		pthread_mutex_unlock(&b->lock);
		return false;
	}
	b->head = s->next;
	pthread_mutex_unlock(&b->lock);
	segment_unref(s); /* the list's; drained, so nothing to drop */
	return true;
}

ats_err *ats_bridge_recv(ats_bridge *b, void **out, ats_ctx *ctx)
{
	if (!b || !out || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "bridge: NULL %s", !b ? "bridge" : !out ? "out" : "ctx");
	for (;;) {
		struct segment *s = current(b);
		ats_err *err = ats_chan_recv(&s->chan, out, ctx);
		if (!err || ats_err_code(err) != ATS_ERR_CLOSED) {
			segment_unref(s);
			return err;
		}
		bool more = advance(b, s);
		segment_unref(s);
		if (!more)
			return ats_err_wrap(err, "bridge closed");
		ats_err_unref(err);
	}
}

ats_chan_status ats_bridge_try_recv(ats_bridge *b, void **out)
{
	if (!b || !out)
		return ATS_CHAN_INVALID;
	for (;;) {
		struct segment *s = current(b);
		ats_chan_status st = ats_chan_try_recv(&s->chan, out);
		bool more = st == ATS_CHAN_CLOSED && advance(b, s);
		segment_unref(s);
		if (!more)
			return st;
	}
}

ats_err *ats_bridge_close(ats_bridge *b)
{
	if (!b)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "bridge: NULL bridge");
	pthread_mutex_lock(&b->lock);
	bool was = b->closed;
	b->closed = true;
	if (!was)
		ats_err_unref(ats__chan_close_segment(&b->tail->chan));
	pthread_mutex_unlock(&b->lock);
	return was ? ats_err_new(ATS_ERR_CLOSED, "bridge: close of a closed bridge") : NULL;
}

uint64_t ats_bridge_opened(const ats_bridge *b)
{
	/* relaxed: a statistic. */
	return b ? atomic_load_explicit(&b->opened, memory_order_relaxed) : 0;
}

void ats_bridge_free(ats_bridge *b, void (*drop)(void *value, void *arg), void *arg)
{
	if (!b)
		return;
	struct segment *s = b->head;
	while (s) {
		struct segment *next = s->next;
		ats_err_unref(ats__chan_close_segment(&s->chan)); /* a producer still holding it sends no more */
		/* Its values go to drop when the last reference goes: now, or when a producer still
		 * holding it leaves (a send it had under way when the close came still lands). */
		s->drop = drop;
		s->drop_arg = arg;
		segment_unref(s); /* the list's */
		s = next;
	}
	pthread_mutex_destroy(&b->lock);
	free(b);
}
