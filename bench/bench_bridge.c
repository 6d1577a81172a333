/* SPDX-License-Identifier: BSD-2-Clause */
/* Bridge channel rows: bridge.try_pair, a send into the current segment and a receive through
 * the bridge on one thread; compare chan.try_pair, the same on a plain channel: the difference is
 * the reference on the current segment a bridge receive takes under the bridge's mutex. */
#include "bench.h"
#include "atscale/bridge.h"

#include <stdlib.h>

struct bridge_pair {
	ats_bridge *b;
	ats_chan *seg;
};

static void *pair_setup(unsigned threads)
{
	(void)threads;
	struct bridge_pair *p = calloc(1, sizeof *p);
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, 1024);
	if (!p || ats_bridge_new(&p->b, &cfg) || ats_bridge_open(p->b, &p->seg)) {
		if (p)
			ats_bridge_free(p->b, NULL, NULL);
		free(p);
		return NULL;
	}
	return p;
}

static void pair_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct bridge_pair *p = state;
	for (uint64_t i = 0; i < iters; i++) {
		void *v;
		if (ats_chan_try_send(p->seg, (void *)(uintptr_t)(i + 1)) != ATS_CHAN_OK ||
		    ats_bridge_try_recv(p->b, &v) != ATS_CHAN_OK)
			abort();
		ats_bench_sink(v);
	}
}

static void pair_teardown(void *state)
{
	struct bridge_pair *p = state;
	ats_bridge_leave(p->seg);
	ats_bridge_free(p->b, NULL, NULL);
	free(p);
}

static const ats_bench bridge_try_pair = {"bridge.try_pair", ATS_BENCH_1T, pair_setup, pair_run,
                                          pair_teardown,     NULL,         NULL};
ATS_BENCH(bridge_try_pair)
