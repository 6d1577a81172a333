/* SPDX-License-Identifier: BSD-2-Clause */
/* urcu-wfcq: liburcu's wait-free concurrent queue (cds_wfcq) as a peer of atscale's MPMC channel.
 *   peer.urcu.wfcq_mpmc_2x2  two producers, two consumers, each moving half, per message.
 * Enqueue is wait-free; dequeue by several consumers goes through the queue's own head lock
 * (cds_wfcq_dequeue_blocking), which is how the queue is meant to be shared by consumers. The
 * queue is unbounded and intrusive: each message is a node the producer owns until a consumer takes
 * it, so the nodes of a run are allocated before it is timed. An empty queue makes a consumer spin
 * (and yield after a run of misses, peer.h). Consumers sum what they took; the run aborts when the
 * sums say a value was lost or doubled.
 *
 *   urcu-wfcq [--quick] [--threads N] [--filter PATTERN]
 */
#include "peer.h"

#include <stdatomic.h>
#include <urcu/compiler.h>
#include <urcu/wfcqueue.h>

#define NAME "peer.urcu.wfcq_mpmc_2x2"

struct msg {
	struct cds_wfcq_node node;
	uint64_t value;
};

struct wfcq_row {
	struct cds_wfcq_head head;
	struct cds_wfcq_tail tail;
	struct msg *msgs[2]; /* each producer's nodes for this run */
	_Atomic uint64_t sum;
};

static void part(void *arg, unsigned idx, uint64_t half)
{
	struct wfcq_row *x = arg;
	if (idx < 2) {
		struct msg *m = x->msgs[idx];
		for (uint64_t i = 0; i < half; i++)
			cds_wfcq_enqueue(&x->head, &x->tail, &m[i].node);
		return;
	}
	uint64_t sum = 0;
	unsigned misses = 0;
	for (uint64_t i = 0; i < half;) {
		struct cds_wfcq_node *n = cds_wfcq_dequeue_blocking(&x->head, &x->tail);
		if (!n) {
			peer_backoff(&misses);
			continue;
		}
		misses = 0;
		sum += caa_container_of(n, struct msg, node)->value;
		i++;
	}
	atomic_fetch_add(&x->sum, sum);
}

static uint64_t run(void *state, uint64_t iters)
{
	struct wfcq_row *x = state;
	uint64_t half = (iters + 1) / 2;
	for (int p = 0; p < 2; p++) {
		x->msgs[p] = malloc(half * sizeof(struct msg));
		if (!x->msgs[p]) {
			fprintf(stderr, "urcu-wfcq: no memory for %llu nodes\n", (unsigned long long)half);
			abort();
		}
		for (uint64_t i = 0; i < half; i++) {
			cds_wfcq_node_init(&x->msgs[p][i].node);
			x->msgs[p][i].value = i + 1;
		}
	}
	atomic_store(&x->sum, 0);
	uint64_t t = peer_run_threads(4, part, x, half);
	if (atomic_load(&x->sum) != half * (half + 1)) {
		fprintf(stderr, "urcu-wfcq: lost or doubled values\n");
		abort();
	}
	free(x->msgs[0]);
	free(x->msgs[1]);
	return (uint64_t)((double)t * (double)iters / (double)(2 * half));
}

int main(int argc, char **argv)
{
	struct peer_opts o = peer_parse(argc, argv);
	if (!peer_selects(&o, NAME))
		return 0;
	static struct wfcq_row x;
	cds_wfcq_init(&x.head, &x.tail);
	peer_measure(&o, NAME, 4, run, &x);
	cds_wfcq_destroy(&x.head, &x.tail);
	return 0;
}
