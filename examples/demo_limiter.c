/* SPDX-License-Identifier: BSD-2-Clause */
/* The rate limiters, shown once with real output: a burst then refusals with retry-after,
 * reserve and cancel, and a sharded limiter shared by two threads. */
#include <atscale/atscale.h>

#include <pthread.h>
#include <stdio.h>

void demo_limiter(void);

struct shard_worker {
	ats_sharded *s;
	uint64_t now, granted;
};

static void *shard_work(void *p)
{
	struct shard_worker *w = p;
	for (int i = 0; i < 1000; i++)
		w->granted += ats_sharded_allow_at(w->s, 1, w->now);
	return NULL;
}

void demo_limiter(void)
{
	printf("== rate limiting ==\n");
	const uint64_t ms = 1000000, t0 = ats_now_ns();
	ats_limiter lim;
	ats_err *err = ats_limiter_init_at(&lim, ats_rate_per_sec(10), 5, t0);
	if (err) {
		ats_err_print(err, stdout);
		ats_err_unref(err);
		return;
	}
	printf("10 per second, burst 5 (redis-cell style answers, time passed in):\n");
	for (int i = 1; i <= 7; i++) {
		ats_limiter_result r;
		ats_limiter_throttle_at(&lim, 1, t0, &r);
		printf("  request %d: %-7s remaining %llu  retry after %5.1f ms  full again in %5.1f ms\n", i,
		       r.allowed ? "allowed" : "LIMITED", (unsigned long long)r.remaining,
		       r.retry_after_ns < 0 ? -1.0 : (double)r.retry_after_ns / ms, (double)r.reset_after_ns / ms);
	}
	printf("  150 ms later: %lld tokens\n", (long long)ats_limiter_tokens_at(&lim, t0 + 150 * ms));

	ats_reservation a, b;
	ats_limiter_reserve_at(&lim, 3, t0 + 150 * ms, &a);
	ats_limiter_reserve_at(&lim, 2, t0 + 150 * ms, &b);
	printf("reserve 3 then 2 at 150 ms: act after %.0f ms and %.0f ms\n", (double)a.delay_ns / ms,
	       (double)b.delay_ns / ms);
	uint64_t back = ats_limiter_cancel_at(&a, t0 + 160 * ms);
	printf("cancel the first at 160 ms: %llu of 3 tokens back (the 2 reserved after it stay taken)\n",
	       (unsigned long long)back);

	err = ats_limiter_set_rate_at(&lim, ats_rate_per_sec(1000), t0 + 160 * ms);
	if (err) {
		ats_err_print(err, stdout);
		ats_err_unref(err);
		return;
	}
	printf("rate set to 1000/s at 160 ms: %lld tokens then, %lld at 165 ms\n",
	       (long long)ats_limiter_tokens_at(&lim, t0 + 160 * ms),
	       (long long)ats_limiter_tokens_at(&lim, t0 + 165 * ms));

	ats_sharded *s = NULL;
	ats_sharded_config cfg = {.rate = ats_rate_per_sec(1000), .burst = 200, .batch = 16, .shards = 2};
	err = ats_sharded_new(&s, &cfg);
	if (err) {
		ats_err_print(err, stdout);
		ats_err_unref(err);
		return;
	}
	struct shard_worker w[2] = {{s, ats_now_ns(), 0}, {s, 0, 0}};
	w[1].now = w[0].now;
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, shard_work, &w[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	printf("sharded, 2 shards leasing 16 at a time from a bucket of 200: threads got %llu + %llu = %llu "
	       "(bound: 200 + 2 x 16)\n",
	       (unsigned long long)w[0].granted, (unsigned long long)w[1].granted,
	       (unsigned long long)(w[0].granted + w[1].granted));
	ats_sharded_free(s);
}
