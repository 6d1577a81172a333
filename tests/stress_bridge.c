/* SPDX-License-Identifier: BSD-2-Clause */
/* Bridge channels under contention (run under TSan and ASan): producer incarnations that overlap
 * (each next one opens while the one before is still sending, as a replacement started while a
 * frozen producer wakes up) and consumers on every core. Each incarnation sends its own range of
 * values until its segment is superseded; every value whose send succeeded must be received
 * exactly once and none whose send failed. Nothing sleeps to synchronize. */
#include <criterion/criterion.h>

#include "atscale/bridge.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "slow.h"
#ifdef SLOW
#define INCARNATIONS 200u
#else
#define INCARNATIONS 2000u
#endif
#define RANGE 1024u /* values each incarnation may send: (incarnation, k) -> incarnation * RANGE + k + 1 */
#define CONSUMERS 3

static ats_bridge *bridge;
static _Atomic uint8_t sent[INCARNATIONS * RANGE + 1];
static _Atomic uint8_t got[INCARNATIONS * RANGE + 1];
static _Atomic uint64_t n_sent, n_got;

struct incarnation {
	unsigned id;
	ats_chan *seg;
	_Atomic int started;
};

/* Sends this incarnation's range until its segment is superseded (CLOSED) or the range ends. */
static void *producer(void *arg)
{
	struct incarnation *in = arg;
	atomic_store(&in->started, 1);
	for (unsigned k = 0; k < RANGE; k++) {
		uint64_t v = (uint64_t)in->id * RANGE + k + 1;
		ats_chan_status st;
		while ((st = ats_chan_try_send(in->seg, (void *)(uintptr_t)v)) == ATS_CHAN_WOULD_BLOCK)
			sched_yield();
		if (st == ATS_CHAN_CLOSED)
			break;
		cr_assert_eq(st, ATS_CHAN_OK);
		atomic_store(&sent[v], 1);
		atomic_fetch_add(&n_sent, 1);
	}
	ats_bridge_leave(in->seg);
	return NULL;
}

static void *consumer(void *arg)
{
	(void)arg;
	for (;;) {
		void *v = NULL;
		ats_err *err = ats_bridge_recv(bridge, &v, ats_ctx_background());
		if (err) {
			cr_assert_eq(ats_err_code(err), ATS_ERR_CLOSED);
			ats_err_unref(err);
			return NULL;
		}
		uintptr_t i = (uintptr_t)v;
		cr_assert(i >= 1 && i <= INCARNATIONS * RANGE);
		cr_assert_eq(atomic_fetch_add(&got[i], 1), 0, "value %zu received twice", (size_t)i);
		atomic_fetch_add(&n_got, 1);
	}
}

Test(bridge, overlapping_incarnations_and_many_consumers_lose_and_duplicate_nothing, .timeout = 120)
{
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_MPMC, 64);
	cr_assert_null(ats_bridge_new(&bridge, &cfg));
	pthread_t cons[CONSUMERS];
	for (int i = 0; i < CONSUMERS; i++)
		cr_assert_eq(pthread_create(&cons[i], NULL, consumer, NULL), 0);
	static struct incarnation in[INCARNATIONS];
	static pthread_t t[INCARNATIONS];
	for (unsigned i = 0; i < INCARNATIONS; i++) {
		in[i].id = i;
		cr_assert_null(ats_bridge_open(bridge, &in[i].seg)); /* supersedes incarnation i - 1 */
		cr_assert_eq(pthread_create(&t[i], NULL, producer, &in[i]), 0);
		if (i > 0)
			cr_assert_eq(pthread_join(t[i - 1], NULL), 0);
		/* Let the new one start before superseding it (an incarnation that never sent is a
		 * case too, but not every time). */
		while (i % 7 != 0 && !atomic_load(&in[i].started))
			sched_yield();
	}
	cr_assert_eq(pthread_join(t[INCARNATIONS - 1], NULL), 0);
	cr_assert_null(ats_bridge_close(bridge));
	for (int i = 0; i < CONSUMERS; i++)
		cr_assert_eq(pthread_join(cons[i], NULL), 0);
	cr_expect_eq(atomic_load(&n_got), atomic_load(&n_sent));
	for (uint64_t v = 1; v <= INCARNATIONS * RANGE; v++)
		cr_assert_eq(atomic_load(&got[v]), atomic_load(&sent[v]), "value %zu", (size_t)v);
	cr_expect_gt(atomic_load(&n_sent), 0);
	ats_bridge_free(bridge, NULL, NULL);
}
