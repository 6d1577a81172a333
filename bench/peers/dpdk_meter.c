/* SPDX-License-Identifier: BSD-2-Clause */
/* dpdk-meter: DPDK's rte_meter srTCM as a peer of atscale's limiters. Times
 * rte_meter_srtcm_color_blind_check on one thread with the TSC time passed in, as rte_meter
 * expects (its state is 24 bytes and not thread-safe). Prints the runner's JSON line.
 *
 *   dpdk-meter [--quick] [--threads N] [--filter PATTERN]
 */
#include "peer.h"

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_log.h>
#include <rte_meter.h>

#define NAME "peer.dpdk.rte_meter_srtcm"

static volatile uint64_t sink;

struct meter {
	struct rte_meter_srtcm m;
	struct rte_meter_srtcm_profile prof;
};

/* One timed run of `iters` checks, TSC read once per 16 packets (a poll loop's batch). */
static uint64_t run(void *state, uint64_t iters)
{
	struct meter *mt = state;
	uint64_t t0 = peer_mono_ns(), green = 0, tsc = 0;
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			tsc = rte_rdtsc();
		green += rte_meter_srtcm_color_blind_check(&mt->m, &mt->prof, tsc, 64) == RTE_COLOR_GREEN;
	}
	sink = green;
	return peer_mono_ns() - t0;
}

int main(int argc, char **argv)
{
	struct peer_opts o = peer_parse(argc, argv);
	if (!peer_selects(&o, NAME))
		return 0;
	/* No hugepages, devices or telemetry: rte_meter only needs the TSC frequency EAL measures. */
	char *eal[] = {"dpdk-meter", "--no-huge", "--no-telemetry", "--no-pci",    "-l", "0",
	               "-m",         "64",        "--log-level=1",  "--no-shconf", NULL};
	int eal_argc = (int)(sizeof eal / sizeof *eal) - 1;
	rte_log_set_global_level(0);
	if (rte_eal_init(eal_argc, eal) < 0) {
		fprintf(stderr, "dpdk-meter: rte_eal_init failed; no %s row\n", NAME);
		return 0;
	}
	/* Committed rate 10^10 bytes/s with 2^32-byte buckets: every 64-byte packet is green, the same
	 * always-granted setup as limiter.allow_at. */
	struct rte_meter_srtcm_params params = {.cir = 10000000000ull, .cbs = 1u << 31, .ebs = 1u << 31};
	static struct meter mt;
	if (rte_meter_srtcm_profile_config(&mt.prof, &params) || rte_meter_srtcm_config(&mt.m, &mt.prof)) {
		fprintf(stderr, "dpdk-meter: profile config failed; no %s row\n", NAME);
		rte_eal_cleanup();
		return 0;
	}
	peer_measure(&o, NAME, 1, run, &mt);
	rte_eal_cleanup();
	return 0;
}
