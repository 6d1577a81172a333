/* SPDX-License-Identifier: BSD-2-Clause */
/* libFuzzer target for the worker pool: submit, cancel and shutdown orderings checked against a
 * model. Every worker is first held by a gate task, so nothing runs while the operations play
 * and the model can say exactly what each submit answers (OK, FULL, CLOSED, INVALID, or a
 * blocking submit's ctx error) and what each queue holds. The shutdown (an operation, or the end
 * of the input) either releases the gates and drains (a task runs iff its ctx was not cancelled)
 * or is given a cancelled ctx while the gates still hold (every queued task is handed back). At
 * the end every accepted task ran or was handed back exactly once, as the model says, and no
 * refused task was ever seen.
 *
 * Input: byte 0 the workers (1..3), byte 1 the queue capacity (1..8); then one operation per
 * byte (low 3 bits the op, the rest its argument): submits one at a time and in bursts, blocking
 * submits, ctx cancels, bad input, queue checks, shutdowns. */
#include "atscale/clock.h"
#include "atscale/pool.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAXTASKS 512

#define CHECK(cond)                                                                                                    \
	do {                                                                                                           \
		if (!(cond)) {                                                                                         \
			fprintf(stderr, "fuzz_pool: %s:%d: %s\n", __FILE__, __LINE__, #cond);                          \
			abort();                                                                                       \
		}                                                                                                      \
	} while (0)

static _Atomic uint8_t ran[MAXTASKS], handed_back[MAXTASKS];
static uint8_t accepted[MAXTASKS], task_ctx[MAXTASKS];

static void on_run(void *arg, ats_ctx *ctx)
{
	(void)ctx;
	atomic_fetch_add(&ran[(uintptr_t)arg], 1);
}

static void on_cancel(void *arg, const ats_err *why)
{
	CHECK(why != NULL);
	atomic_fetch_add(&handed_back[(uintptr_t)arg], 1);
}

struct gate {
	ats_ctx *open;
	_Atomic int entered;
};

/* Holds its worker until the gate opens or the pool's ctx is cancelled (a cancelling shutdown). */
static void gate_run(void *arg, ats_ctx *ctx)
{
	struct gate *g = arg;
	atomic_fetch_add(&g->entered, 1);
	while (!ats_ctx_done(ctx) && !ats_ctx_done(g->open))
		ats_ctx_wait(g->open, ats_now_ns() + 1000000u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	unsigned n = 1 + data[0] % 3;
	size_t cap = 1 + data[1] % 8;
	ats_pool *p;
	ats_pool_config cfg = {.workers = n, .queue_capacity = cap, .idle = ATS_POOL_PARK};
	CHECK(ats_pool_new(&p, &cfg) == NULL);

	struct gate g = {0};
	CHECK(ats_ctx_with_cancel(ats_ctx_background(), &g.open) == NULL);
	for (unsigned i = 0; i < n; i++) {
		ats_task t = {.run = gate_run, .arg = &g};
		CHECK(ats_pool_try_submit_to(p, i, &t) == ATS_POOL_OK);
		while (atomic_load(&g.entered) != (int)i + 1) /* each gate holds a worker of its own */
			sched_yield();
	}

	/* ctxs[0] is NULL (the pool's); 1 and 2 cancelled by ops; 3 cancelled from the start. */
	ats_ctx *ctxs[4] = {NULL};
	bool cancelled[4] = {false, false, false, true};
	for (int i = 1; i < 4; i++)
		CHECK(ats_ctx_with_cancel(ats_ctx_background(), &ctxs[i]) == NULL);
	ats_ctx_cancel(ctxs[3], NULL);

	size_t depth[3] = {0};
	unsigned tasks = 0;
	bool shut = false, drained = false;
	for (size_t i = 2; i < size && tasks < MAXTASKS; i++) {
		unsigned op = data[i] & 7, arg = data[i] >> 3;
		unsigned w = arg % n, c = (arg / 3) % 4;
		uintptr_t id = tasks;
		ats_task t = {.run = on_run, .cancel = on_cancel, .arg = (void *)id, .ctx = ctxs[c]};
		switch (op) {
		case 0: { /* try_submit_to */
			ats_pool_status want = shut ? ATS_POOL_CLOSED : depth[w] == cap ? ATS_POOL_FULL : ATS_POOL_OK;
			CHECK(ats_pool_try_submit_to(p, w, &t) == want);
			accepted[id] = want == ATS_POOL_OK, task_ctx[id] = (uint8_t)c;
			depth[w] += want == ATS_POOL_OK;
			tasks++;
			break;
		}
		case 1: { /* a burst of 1..8 on worker w (try_submit_n_to): the first that fit go */
			size_t k = 1 + (arg >> 2) % 8;
			if (tasks + k > MAXTASKS)
				k = MAXTASKS - tasks;
			ats_task burst[8];
			for (size_t j = 0; j < k; j++)
				burst[j] = (ats_task){
				    .run = on_run, .cancel = on_cancel, .arg = (void *)(id + j), .ctx = ctxs[c]};
			size_t fit = shut ? 0 : cap - depth[w] < k ? cap - depth[w] : k;
			ats_pool_status want = shut ? ATS_POOL_CLOSED : fit == k ? ATS_POOL_OK : ATS_POOL_FULL, st;
			CHECK(ats_pool_try_submit_n_to(p, w, burst, k, &st) == fit);
			CHECK(st == want);
			for (size_t j = 0; j < k; j++)
				accepted[id + j] = j < fit, task_ctx[id + j] = (uint8_t)c;
			depth[w] += fit;
			tasks += (unsigned)k;
			break;
		}
		case 2: { /* blocking submit_to with an already-cancelled ctx: never waits */
			ats_err *err = ats_pool_submit_to(p, w, &t, ctxs[3]);
			ats_code want = shut ? ATS_ERR_CLOSED : depth[w] == cap ? ATS_ERR_CANCELLED : 0;
			CHECK(want ? err && ats_err_code(err) == want : !err);
			ats_err_unref(err);
			accepted[id] = !want, task_ctx[id] = (uint8_t)c;
			depth[w] += !want;
			tasks++;
			break;
		}
		case 3:                                    /* cancel a task ctx */
			if ((c == 1 || c == 2) && !shut) { /* after a shutdown nothing is left to cancel */
				ats_ctx_cancel(ctxs[c], NULL);
				cancelled[c] = true;
			}
			break;
		case 4: { /* bad input changes nothing */
			ats_task none = {.arg = (void *)id};
			CHECK(ats_pool_try_submit_to(p, n + w, &t) == ATS_POOL_INVALID);
			CHECK(ats_pool_try_submit_to(p, w, &none) == ATS_POOL_INVALID);
			CHECK(ats_pool_try_submit(p, NULL) == ATS_POOL_INVALID);
			ats_task two[2] = {t, none}; /* one bad task refuses the whole burst */
			ats_pool_status st;
			CHECK(ats_pool_try_submit_n_to(p, w, two, 2, &st) == 0 && st == ATS_POOL_INVALID);
			CHECK(ats_pool_try_submit_n_to(p, n + w, &t, 1, &st) == 0 && st == ATS_POOL_INVALID);
			CHECK(ats_pool_try_submit_n(p, NULL, 1, &st) == 0 && st == ATS_POOL_INVALID);
			CHECK(ats_pool_try_submit_n_to(p, w, NULL, 0, &st) == 0 && st == ATS_POOL_OK);
			break;
		}
		case 5: { /* the queues hold what the model says */
			for (unsigned k = 0; k < n; k++) {
				ats_pool_worker_stats st;
				CHECK(ats_pool_worker_stats_get(p, k, &st) == NULL);
				CHECK(st.depth == (shut ? 0 : depth[k]));
				CHECK(shut || st.progress % 2 == 1); /* each worker is in its gate */
			}
			break;
		}
		default: /* shutdown: drain (release the gates first) or cancel (gates still holding) */
			if (shut) {
				ats_err *err = ats_pool_shutdown(p, ats_ctx_background());
				CHECK(err && ats_err_code(err) == ATS_ERR_CLOSED);
				ats_err_unref(err);
				break;
			}
			shut = true;
			drained = arg & 1;
			if (drained) {
				ats_ctx_cancel(g.open, NULL);
				CHECK(ats_pool_shutdown(p, ats_ctx_background()) == NULL);
			} else {
				ats_err *err = ats_pool_shutdown(p, ctxs[3]);
				CHECK(err && ats_err_code(err) == ATS_ERR_CANCELLED);
				ats_err_unref(err);
			}
			break;
		}
	}
	if (!shut) {
		ats_ctx_cancel(g.open, NULL);
		drained = true;
		CHECK(ats_pool_shutdown(p, ats_ctx_background()) == NULL);
	}
	for (unsigned id = 0; id < tasks; id++) {
		unsigned r = atomic_load(&ran[id]), h = atomic_load(&handed_back[id]);
		if (!accepted[id]) {
			CHECK(r + h == 0);
			continue;
		}
		/* The model: a task runs iff the shutdown drained and its ctx was never cancelled (ctxs
		 * are cancelled only while the gates hold, so before any task could start). */
		bool runs = drained && !cancelled[task_ctx[id]];
		CHECK(r == (unsigned)runs && h == (unsigned)!runs);
	}
	ats_pool_free(p);
	for (int i = 1; i < 4; i++)
		ats_ctx_release(ctxs[i]);
	ats_ctx_release(g.open);
	for (unsigned id = 0; id < tasks; id++)
		atomic_store(&ran[id], 0), atomic_store(&handed_back[id], 0), accepted[id] = 0;
	return 0;
}
