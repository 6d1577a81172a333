/* SPDX-License-Identifier: BSD-2-Clause */
/* dpdk-ring: DPDK's rte_ring as a peer of atscale's channels. Per message across threads:
 *   peer.dpdk.rte_ring_spsc          one producer, one consumer, one value at a time;
 *   peer.dpdk.rte_ring_spsc_burst32  the same in bursts of up to 32 (rte_ring's burst calls);
 *   peer.dpdk.rte_ring_mpmc_2x2      two producers, two consumers, each moving half.
 * The ring holds 1024 values (RING_F_EXACT_SZ), as the channels of bench_chan.c do. rte_ring
 * never blocks: a full or empty end spins (and yields after a run of misses, peer.h). Each
 * consumer sums what it took and the run aborts when the sums say a value was lost or doubled.
 * The ring lives in malloc'd memory (rte_ring_init), so no EAL or hugepages are needed.
 *
 *   dpdk-ring [--quick] [--threads N] [--filter PATTERN]
 */
#include "peer.h"

#include <rte_ring.h>
#include <stdatomic.h>

#define SLOTS 1024
#define BURST 32

struct ring_row {
	struct rte_ring *r;
	_Atomic uint64_t sum;
};

static uint64_t expected_sum(uint64_t n)
{
	return n * (n + 1) / 2;
}

static void consume(struct ring_row *x, uint64_t n, bool mc)
{
	uint64_t sum = 0;
	unsigned misses = 0;
	for (uint64_t i = 0; i < n;) {
		void *v;
		if ((mc ? rte_ring_mc_dequeue(x->r, &v) : rte_ring_sc_dequeue(x->r, &v)) != 0) {
			peer_backoff(&misses);
			continue;
		}
		misses = 0;
		sum += (uintptr_t)v;
		i++;
	}
	atomic_fetch_add(&x->sum, sum);
}

static void spsc_part(void *arg, unsigned idx, uint64_t iters)
{
	struct ring_row *x = arg;
	if (idx == 1) {
		consume(x, iters, false);
		return;
	}
	unsigned misses = 0;
	for (uint64_t i = 1; i <= iters;) {
		if (rte_ring_sp_enqueue(x->r, (void *)(uintptr_t)i) != 0) {
			peer_backoff(&misses);
			continue;
		}
		misses = 0;
		i++;
	}
}

static void burst_part(void *arg, unsigned idx, uint64_t iters)
{
	struct ring_row *x = arg;
	void *items[BURST];
	unsigned misses = 0;
	if (idx == 1) {
		uint64_t sum = 0;
		for (uint64_t i = 0; i < iters;) {
			unsigned k = rte_ring_sc_dequeue_burst(x->r, items, BURST, NULL);
			if (k == 0) {
				peer_backoff(&misses);
				continue;
			}
			misses = 0;
			for (unsigned j = 0; j < k; j++)
				sum += (uintptr_t)items[j];
			i += k;
		}
		atomic_fetch_add(&x->sum, sum);
		return;
	}
	for (uint64_t i = 0; i < iters;) {
		unsigned want = iters - i < BURST ? (unsigned)(iters - i) : BURST;
		for (unsigned j = 0; j < want; j++)
			items[j] = (void *)(uintptr_t)(i + j + 1);
		unsigned k = rte_ring_sp_enqueue_burst(x->r, items, want, NULL);
		if (k == 0) {
			peer_backoff(&misses);
			continue;
		}
		misses = 0;
		i += k;
	}
}

/* Producers 0 and 1 send 1..half each; consumers 2 and 3 take half each. */
static void mpmc_part(void *arg, unsigned idx, uint64_t iters)
{
	struct ring_row *x = arg;
	uint64_t half = (iters + 1) / 2;
	if (idx >= 2) {
		consume(x, half, true);
		return;
	}
	unsigned misses = 0;
	for (uint64_t i = 1; i <= half;) {
		if (rte_ring_mp_enqueue(x->r, (void *)(uintptr_t)i) != 0) {
			peer_backoff(&misses);
			continue;
		}
		misses = 0;
		i++;
	}
}

static struct ring_row row;

static void check(uint64_t got, uint64_t want, const char *name)
{
	if (got != want) {
		fprintf(stderr, "dpdk-ring: %s lost or doubled values (sum %llu, expected %llu)\n", name,
		        (unsigned long long)got, (unsigned long long)want);
		abort();
	}
}

static uint64_t run_spsc(void *state, uint64_t iters)
{
	(void)state;
	atomic_store(&row.sum, 0);
	uint64_t t = peer_run_threads(2, spsc_part, &row, iters);
	check(atomic_load(&row.sum), expected_sum(iters), "spsc");
	return t;
}

static uint64_t run_burst(void *state, uint64_t iters)
{
	(void)state;
	atomic_store(&row.sum, 0);
	uint64_t t = peer_run_threads(2, burst_part, &row, iters);
	check(atomic_load(&row.sum), expected_sum(iters), "spsc_burst32");
	return t;
}

static uint64_t run_mpmc(void *state, uint64_t iters)
{
	(void)state;
	atomic_store(&row.sum, 0);
	uint64_t t = peer_run_threads(4, mpmc_part, &row, iters);
	check(atomic_load(&row.sum), 2 * expected_sum((iters + 1) / 2), "mpmc_2x2");
	/* Per message: 2 * half values moved. */
	return (uint64_t)((double)t * (double)iters / (double)(2 * ((iters + 1) / 2)));
}

int main(int argc, char **argv)
{
	struct peer_opts o = peer_parse(argc, argv);
	/* RING_F_EXACT_SZ keeps SLOTS + 1 rounded up to a power of two slots: 2 * SLOTS. */
	ssize_t size = rte_ring_get_memsize(2 * SLOTS);
	if (size < 0 || !(row.r = aligned_alloc(128, ((size_t)size + 127) & ~(size_t)127))) {
		fprintf(stderr, "dpdk-ring: no memory for the ring; no rows\n");
		return 0;
	}
	struct {
		const char *name;
		unsigned flags, threads;
		peer_run_fn run;
	} rows[] = {
	    {"peer.dpdk.rte_ring_spsc", RING_F_SP_ENQ | RING_F_SC_DEQ, 2, run_spsc},
	    {"peer.dpdk.rte_ring_spsc_burst32", RING_F_SP_ENQ | RING_F_SC_DEQ, 2, run_burst},
	    {"peer.dpdk.rte_ring_mpmc_2x2", 0, 4, run_mpmc},
	};
	for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
		if (!peer_selects(&o, rows[i].name))
			continue;
		if (rte_ring_init(row.r, "atscale_peer", SLOTS, rows[i].flags | RING_F_EXACT_SZ) != 0) {
			fprintf(stderr, "dpdk-ring: rte_ring_init failed; no %s row\n", rows[i].name);
			continue;
		}
		peer_measure(&o, rows[i].name, rows[i].threads, rows[i].run, NULL);
	}
	free(row.r);
	return 0;
}
