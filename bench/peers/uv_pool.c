/* SPDX-License-Identifier: BSD-2-Clause */
/* uv-pool: libuv's thread pool (uv_queue_work) as a peer of atscale's worker pool.
 *   peer.uv.queue_work_run  queue one work item and run the loop until its completion callback
 *                           has run: libuv's submit-to-completion round trip. The pool has one
 *                           thread (UV_THREADPOOL_SIZE=1), as pool.submit_run's pool has one worker.
 * libuv reports completion on the loop thread (its after-work callback, signalled through the
 * loop's async handle), so the round trip includes that hand-back: it is the only completion
 * libuv offers a caller.
 *
 *   uv-pool [--quick] [--threads N] [--filter PATTERN]
 */
#include "peer.h"

#include <uv.h>

#define NAME "peer.uv.queue_work_run"

struct uv_row {
	uv_loop_t loop;
	uv_work_t req;
	uint64_t ran, completed;
};

static void work(uv_work_t *req)
{
	struct uv_row *x = req->data;
	x->ran++; /* read by the loop thread after the completion, which libuv orders */
}

static void after_work(uv_work_t *req, int status)
{
	struct uv_row *x = req->data;
	if (status != 0)
		abort();
	x->completed++;
}

static uint64_t run(void *state, uint64_t iters)
{
	struct uv_row *x = state;
	uint64_t t0 = peer_mono_ns();
	for (uint64_t i = 0; i < iters; i++) {
		x->req.data = x;
		if (uv_queue_work(&x->loop, &x->req, work, after_work) != 0)
			abort();
		uv_run(&x->loop, UV_RUN_DEFAULT); /* returns once the request completed */
	}
	uint64_t t = peer_mono_ns() - t0;
	if (x->completed != x->ran)
		abort();
	return t;
}

int main(int argc, char **argv)
{
	struct peer_opts o = peer_parse(argc, argv);
	if (!peer_selects(&o, NAME))
		return 0;
	/* Read when the pool first starts, which is the first uv_queue_work. */
	setenv("UV_THREADPOOL_SIZE", "1", 1);
	static struct uv_row x;
	if (uv_loop_init(&x.loop) != 0) {
		fprintf(stderr, "uv-pool: uv_loop_init failed; no %s row\n", NAME);
		return 0;
	}
	peer_measure(&o, NAME, 1, run, &x);
	uv_loop_close(&x.loop);
	return 0;
}
