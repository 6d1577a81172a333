/* SPDX-License-Identifier: BSD-2-Clause */
/* Heartbeats: the unit-of-work beat (a store to the beater's own line) and the beat with a pulse
 * on a 1-slot channel, kept full as a pulse nobody reads would be (the send is tried and dropped,
 * the seed's select-with-default). Go peer: bench/peers/go/heartbeat.go. */
#include "bench.h"
#include "atscale/heartbeat.h"

#include <stdlib.h>

struct hb {
	ats_heartbeat h;
	ats_chan *pulse;
};

static void *hb_setup(unsigned threads)
{
	(void)threads;
	struct hb *b = aligned_alloc(64, sizeof *b);
	if (!b)
		return NULL;
	ats_chan_config cc = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, 1);
	ats_err *err = ats_chan_new(&b->pulse, &cc);
	ats_heartbeat_config cfg = {.pulse = b->pulse};
	if (!err)
		err = ats_heartbeat_init(&b->h, &cfg);
	if (err) {
		ats_err_unref(err);
		free(b);
		return NULL;
	}
	return b;
}

static void hb_teardown(void *state)
{
	struct hb *b = state;
	ats_chan_free(b->pulse, NULL, NULL);
	free(b);
}

static void beat_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct hb *b = state;
	for (uint64_t i = 0; i < iters; i++)
		ats_heartbeat_beat(&b->h);
	ats_bench_sink(ats_heartbeat_count(&b->h));
}

static void pulse_run(void *state, unsigned tid, uint64_t iters)
{
	(void)tid;
	struct hb *b = state;
	for (uint64_t i = 0; i < iters; i++)
		ats_heartbeat_beat_with_pulse(&b->h);
}

static const ats_bench hb_beat = {"hb.beat", ATS_BENCH_1T, hb_setup, beat_run, hb_teardown, NULL, NULL};
static const ats_bench hb_pulse = {"hb.beat_with_pulse", ATS_BENCH_1T, hb_setup, pulse_run, hb_teardown, NULL, NULL};
ATS_BENCH(hb_beat)
ATS_BENCH(hb_pulse)
