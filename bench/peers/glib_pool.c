/* SPDX-License-Identifier: BSD-2-Clause */
/* glib-pool: GLib's GThreadPool as a peer of atscale's worker pool.
 *   peer.glib.pool_submit_run  push one task to a pool of one exclusive thread and wait until it
 *                              has run: the round trip of pool.submit_run, set up the same way
 *                              (one worker, the caller spinning on the task's completion count).
 *
 *   glib-pool [--quick] [--threads N] [--filter PATTERN]
 */
#include "peer.h"

#include <glib.h>
#include <stdatomic.h>

#define NAME "peer.glib.pool_submit_run"

struct pool_row {
	GThreadPool *pool;
	_Atomic uint64_t done;
};

static void task(gpointer data, gpointer user_data)
{
	(void)data;
	struct pool_row *x = user_data;
	atomic_fetch_add_explicit(&x->done, 1, memory_order_release);
}

static uint64_t run(void *state, uint64_t iters)
{
	struct pool_row *x = state;
	uint64_t base = atomic_load(&x->done), t0 = peer_mono_ns();
	for (uint64_t i = 0; i < iters; i++) {
		GError *err = NULL;
		/* The data must not be NULL; the task ignores it. */
		if (!g_thread_pool_push(x->pool, x, &err)) {
			fprintf(stderr, "glib-pool: push failed: %s\n", err ? err->message : "?");
			abort();
		}
		while (atomic_load_explicit(&x->done, memory_order_acquire) < base + i + 1)
			peer_pause();
	}
	return peer_mono_ns() - t0;
}

int main(int argc, char **argv)
{
	struct peer_opts o = peer_parse(argc, argv);
	if (!peer_selects(&o, NAME))
		return 0;
	static struct pool_row x;
	GError *err = NULL;
	x.pool = g_thread_pool_new(task, &x, 1, TRUE, &err);
	if (!x.pool) {
		fprintf(stderr, "glib-pool: g_thread_pool_new failed: %s; no %s row\n", err ? err->message : "?", NAME);
		return 0;
	}
	peer_measure(&o, NAME, 1, run, &x);
	g_thread_pool_free(x.pool, FALSE, TRUE);
	return 0;
}
