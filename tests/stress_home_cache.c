/* SPDX-License-Identifier: BSD-2-Clause */
/* The home cache under concurrency (run under TSan and ASan): owner threads take blocks, give a
 * quarter back themselves and hand the rest through a channel to giver threads, which check each
 * block and give it back, while the owners exit and new ones start. Every block handed over is
 * seen exactly once, and when all is given back no home is left. */
#include <criterion/criterion.h>

#include "atscale/chan.h"
#include "internal/home_cache.h"
#include "internal/home_cache_hooks.h"

#include <pthread.h>
#include <stdint.h>

#include "slow.h"
#ifdef SLOW
#define ROUNDS 20
#else
#define ROUNDS 200
#endif
#define OWNERS 3
#define GIVERS 2
#define PER_OWNER 500
#define SIZE 192

struct block {
	uint32_t owner, seq, check;
	unsigned char pad[SIZE - 12];
};

static ats_chan ch;
static _Atomic uint8_t seen[ROUNDS * OWNERS][PER_OWNER];
static _Atomic uint64_t handed, given_back, twice;

static uint32_t check_of(uint32_t owner, uint32_t seq)
{
	return owner * 2654435761u ^ seq * 40503u;
}

static void *owner(void *arg)
{
	uint32_t id = (uint32_t)(uintptr_t)arg;
	for (uint32_t i = 0; i < PER_OWNER; i++) {
		struct block *b = ats__home_get(sizeof *b);
		cr_assert_not_null(b);
		*b = (struct block){.owner = id, .seq = i, .check = check_of(id, i)};
		if (i % 4 == 0) {
			ats__home_put(b);
			continue;
		}
		atomic_fetch_add(&handed, 1);
		cr_assert_null(ats_chan_send(&ch, b, ats_ctx_background()));
	}
	return NULL; /* exits with blocks still out, in the channel or with a giver */
}

static void *giver(void *arg)
{
	(void)arg;
	for (;;) {
		void *v;
		ats_err *err = ats_chan_recv(&ch, &v, ats_ctx_background());
		if (err) {
			cr_assert_eq(ats_err_code(err), ATS_ERR_CLOSED);
			ats_err_unref(err);
			return NULL;
		}
		struct block *b = v;
		cr_assert_eq(b->check, check_of(b->owner, b->seq), "a block changed while handed over");
		if (atomic_fetch_add(&seen[b->owner][b->seq], 1) != 0)
			atomic_fetch_add(&twice, 1);
		ats__home_put(b);
		atomic_fetch_add(&given_back, 1);
	}
}

Test(home_cache_stress, blocks_come_home_exactly_once_while_their_owners_exit, .timeout = 300)
{
	long base = atomic_load(&ats__homes_alive);
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_MPMC, 256);
	cr_assert_null(ats_chan_init(&ch, &cfg));
	pthread_t g[GIVERS];
	for (int i = 0; i < GIVERS; i++)
		cr_assert_eq(pthread_create(&g[i], NULL, giver, NULL), 0);
	for (uint32_t r = 0; r < ROUNDS; r++) {
		pthread_t o[OWNERS];
		for (uint32_t i = 0; i < OWNERS; i++)
			cr_assert_eq(pthread_create(&o[i], NULL, owner, (void *)(uintptr_t)(r * OWNERS + i)), 0);
		for (uint32_t i = 0; i < OWNERS; i++)
			pthread_join(o[i], NULL);
	}
	cr_assert_null(ats_chan_close(&ch));
	for (int i = 0; i < GIVERS; i++)
		pthread_join(g[i], NULL);
	ats_chan_destroy(&ch, NULL, NULL);
	cr_expect_eq(atomic_load(&twice), 0);
	cr_expect_eq(atomic_load(&given_back), atomic_load(&handed));
	cr_expect_eq(atomic_load(&handed), (uint64_t)ROUNDS * OWNERS * (PER_OWNER - PER_OWNER / 4));
	cr_expect_eq(atomic_load(&ats__homes_alive), base, "every exited owner's home was freed");
}
