/* SPDX-License-Identifier: BSD-2-Clause */
/* dpdk-meter: DPDK's rte_meter srTCM as a peer of atscale's limiters. Times
 * rte_meter_srtcm_color_blind_check on one thread with the TSC time passed in, as rte_meter
 * expects (its state is 24 bytes and not thread-safe). Prints the runner's JSON line.
 *
 *   dpdk-meter [--quick] [--threads N] [--filter PATTERN]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../filter.h"

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_log.h>
#include <rte_meter.h>

#define NAME "peer.dpdk.rte_meter_srtcm"

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static volatile uint64_t sink;

/* One timed run of `iters` checks, TSC read once per 16 packets (a poll loop's batch). */
static uint64_t run(struct rte_meter_srtcm *m, struct rte_meter_srtcm_profile *p, uint64_t iters)
{
	uint64_t t0 = mono_ns(), green = 0, tsc = 0;
	for (uint64_t i = 0; i < iters; i++) {
		if ((i & 15) == 0)
			tsc = rte_rdtsc();
		green += rte_meter_srtcm_color_blind_check(m, p, tsc, 64) == RTE_COLOR_GREEN;
	}
	sink = green;
	return mono_ns() - t0;
}

int main(int argc, char **argv)
{
	bool quick = false;
	const char *filter = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = true;
		else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
			filter = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			i++;
	}
	if (!ats_bench_filter_selects(filter, NAME))
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
	struct rte_meter_srtcm_profile prof;
	struct rte_meter_srtcm m;
	if (rte_meter_srtcm_profile_config(&prof, &params) || rte_meter_srtcm_config(&m, &prof)) {
		fprintf(stderr, "dpdk-meter: profile config failed; no %s row\n", NAME);
		rte_eal_cleanup();
		return 0;
	}
	uint64_t target = quick ? 2000000u : 20000000u, iters = 64, t = 0;
	for (;;) {
		t = run(&m, &prof, iters);
		if (t >= target / 4 || iters > (1ull << 40))
			break;
		iters *= 4;
	}
	if (t < target && t > 0)
		iters = (uint64_t)((double)iters * (double)target / (double)t) + 1;
	run(&m, &prof, iters);
	int reps = quick ? 3 : 11;
	double s[11];
	for (int i = 0; i < reps; i++)
		s[i] = (double)run(&m, &prof, iters) / (double)iters;
	qsort(s, (size_t)reps, sizeof *s, cmp_double);
	printf(
	    "{\"name\": \"%s\", \"ns_per_op\": %.3f, \"min\": %.3f, \"max\": %.3f, \"threads\": 1, \"peer\": true}\n",
	    NAME, s[reps / 2], s[0], s[reps - 1]);
	rte_eal_cleanup();
	return 0;
}
