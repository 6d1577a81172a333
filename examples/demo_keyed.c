/* SPDX-License-Identifier: BSD-2-Clause */
/* Keyed limiters, shown once: per-IP limits, an override for one client, eviction of idle keys,
 * and the map's key count and memory. Synthetic time, so the output is the same on every run. */
#include <atscale/atscale.h>

#include <stdio.h>

void demo_keyed(void);

static int admitted(ats_keyed *m, const char *ip, int requests, uint64_t now)
{
	int ok = 0;
	for (int i = 0; i < requests; i++)
		ok += ats_keyed_allow_at(m, ip, 4, now);
	return ok;
}

void demo_keyed(void)
{
	printf("== keyed rate limits ==\n");
	ats_keyed *m;
	ats_keyed_config cfg = {.rate = ats_rate_per_sec(10), .burst = 5, .max_keys = 100000, .capacity_hint = 1024};
	ats_err *err = ats_keyed_new(&m, &cfg);
	if (err) {
		printf("ats_keyed_new: %s\n", ats_err_message(err));
		ats_err_unref(err);
		return;
	}
	const uint64_t t0 = UINT64_C(1) << 40, sec = ATS_NS_PER_SEC;
	const char a[4] = {10, 0, 0, 1}, b[4] = {10, 0, 0, 2}, vip[4] = {10, 0, 0, 9};
	printf("10.0.0.1 sends 8 at once: %d admitted (burst 5)\n", admitted(m, a, 8, t0));
	printf("10.0.0.2 sends 8 at once: %d admitted (its own bucket)\n", admitted(m, b, 8, t0));
	printf("10.0.0.1 sends 8 at +300 ms: %d admitted (10/s refill)\n", admitted(m, a, 8, t0 + 3 * sec / 10));
	ats_keyed_limit gold = {ats_rate_per_sec(100), 50};
	err = ats_keyed_set_limit(m, vip, 4, &gold, t0);
	if (err) {
		printf("override: %s\n", ats_err_message(err));
		ats_err_unref(err);
	}
	printf("10.0.0.9 (override 100/s, burst 50) sends 60: %d admitted\n", admitted(m, vip, 60, t0));
	for (uint32_t i = 0; i < 1000; i++) {
		char ip[4] = {(char)192, (char)168, (char)(i >> 8), (char)i};
		(void)ats_keyed_allow_at(m, ip, 4, t0);
	}
	ats_keyed_stats st;
	ats_keyed_stats_get(m, &st);
	printf("after 1000 more clients: %zu keys, %zu bytes (%zu slots)\n", st.keys, st.bytes, st.slots);
	size_t evicted = ats_keyed_evict_idle_at(m, t0 + 10 * sec, 0);
	ats_keyed_stats_get(m, &st);
	printf("10 s later, idle keys evicted losslessly: %zu; %zu keys left (the override stays)\n", evicted, st.keys);
	printf("10.0.0.1 comes back: %d of 8 admitted, as a new client would be\n", admitted(m, a, 8, t0 + 10 * sec));
	ats_keyed_free(m);
}
