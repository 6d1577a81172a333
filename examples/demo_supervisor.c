/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale-demo, heartbeats and supervision: a producer ward that freezes mid-stream, the
 * supervisor noticing from its heartbeat and restarting it, and a consumer reading the stream
 * through a bridge channel that never notices. */
#include <atscale/atscale.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

void demo_supervisor(void);

#define VALUES 100u
#define FREEZE_AT 40u
#define MS UINT64_C(1000000)

struct producer {
	ats_bridge *stream;
	_Atomic uint64_t next; /* its record of progress: the first value not yet sent */
	_Atomic int frozen_once;
	uint64_t froze_at_ns;
};

/* The ward: one unit of work per value, beating around each; once, at FREEZE_AT, it stops
 * beating with work pending (a hung call, as far as anyone can tell) until it is cancelled. */
static ats_err *produce(void *arg, ats_heartbeat *hb, ats_ctx *ctx)
{
	struct producer *p = arg;
	ats_chan *out = NULL;
	ats_err *err = ats_bridge_open(p->stream, &out);
	if (err)
		return err;
	uint64_t i;
	while ((i = atomic_load(&p->next)) < VALUES) {
		ats_heartbeat_work_begin(hb);
		if (i == FREEZE_AT && !atomic_exchange(&p->frozen_once, 1)) {
			p->froze_at_ns = ats_now_ns();
			printf("  producer: frozen at value %llu (no more beats)\n", (unsigned long long)i);
			ats_ctx_wait(ctx, ATS_CTX_NO_DEADLINE); /* only the supervisor's cancel ends it */
			break;
		}
		ats_heartbeat_work_end(hb);
		err = ats_chan_send(out, (void *)(uintptr_t)(i + 1), ctx);
		if (err)
			break; /* not sent: the next incarnation sends it */
		atomic_store(&p->next, i + 1);
	}
	ats_bridge_leave(out);
	ats_err_unref(err);
	return NULL;
}

static void on_event(const ats_supervisor_event *ev, void *arg)
{
	struct producer *p = arg;
	static const char *kind[] = {"stall", "exit", "restart", "quarantine", "give-up"};
	if (ev->kind == ATS_SUP_EVENT_STALL)
		printf("  supervisor: %s of %s, %.1f ms after it froze: %s\n", kind[ev->kind], ev->name,
		       (double)(ats_now_ns() - p->froze_at_ns) / 1e6, ats_err_message(ev->err));
	else if (ev->kind != ATS_SUP_EVENT_EXIT)
		printf("  supervisor: %s of %s\n", kind[ev->kind], ev->name);
}

void demo_supervisor(void)
{
	printf("== heartbeats and supervision ==\n");
	struct producer p = {0};
	ats_chan_config seg = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, 8);
	ats_supervisor *sup = NULL;
	ats_supervisor_config cfg = {.name = "demo", .on_event = on_event, .event_arg = &p};
	ats_ward_spec ward = {.name = "producer", .run = produce, .arg = &p, .restart = ATS_WARD_TRANSIENT};
	ward.watch.timeout_ns = 20 * MS; /* work pending and silent for 20 ms: stalled */
	ats_err *err = ats_bridge_new(&p.stream, &seg);
	if (!err)
		err = ats_supervisor_new(&sup, &cfg);
	if (!err)
		err = ats_supervisor_add(sup, &ward, NULL);
	if (!err)
		err = ats_supervisor_start(sup, ats_ctx_background());
	/* The consumer: reads VALUES values and checks each is the next one. */
	uint64_t in_order = 0;
	while (!err && in_order < VALUES) {
		void *v = NULL;
		err = ats_bridge_recv(p.stream, &v, ats_ctx_background());
		if (!err && (uintptr_t)v == in_order + 1)
			in_order++;
		else if (!err)
			break;
	}
	if (!err)
		err = ats_supervisor_wait(sup, ats_ctx_background());
	ats_supervisor_stats st = {0};
	if (sup)
		ats_supervisor_stats_get(sup, &st);
	printf("  consumer: %llu of %u values, in order, none lost or duplicated, across %llu restart(s) and %llu "
	       "producer incarnations\n",
	       (unsigned long long)in_order, VALUES, (unsigned long long)st.restarts,
	       (unsigned long long)ats_bridge_opened(p.stream));
	if (err) {
		ats_err_print(err, stdout);
		ats_err_unref(err);
	}
	ats_supervisor_free(sup);
	ats_bridge_free(p.stream, NULL, NULL);
}
