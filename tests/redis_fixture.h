/* SPDX-License-Identifier: BSD-2-Clause */
/* Criterion fixtures for the tests that run against a real redis-server (tests/redis_server.h):
 * `.init = start_redis, .fini = stop_redis` starts one on a free loopback port before a test and
 * stops it after, even when the test fails; `srv.port` is where it listens. pace() is the sleep
 * that paces a demand loop (never a synchronization). */
#ifndef ATS_TEST_REDIS_FIXTURE_H
#define ATS_TEST_REDIS_FIXTURE_H

#include <criterion/criterion.h>
#include <time.h>

#include "redis_server.h"

static struct ats_test_redis srv;

static inline void start_redis(void)
{
	const char *why = ats_test_redis_start(&srv, 0);
	cr_assert_null(why, "%s", why);
}

static inline void stop_redis(void)
{
	ats_test_redis_stop(&srv);
}

static inline void pace(uint64_t ns)
{
	struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
	nanosleep(&ts, NULL); /* pacing a demand loop, not synchronization */
}

#endif
