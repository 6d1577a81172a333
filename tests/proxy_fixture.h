/* SPDX-License-Identifier: BSD-2-Clause */
/* Criterion fixtures for the tests that run against a real redis-server behind the fault proxy
 * (tests/fault_proxy.h): `.init = start_both, .fini = stop_both` starts the server and the proxy
 * in front of it, and stops both after, even when the test fails (stopping the proxy closes every
 * connection, so a thread blocked on one returns). Clients connect to `proxy.port`. */
#ifndef ATS_TEST_PROXY_FIXTURE_H
#define ATS_TEST_PROXY_FIXTURE_H

#include "fault_proxy.h"
#include "redis_fixture.h"

static struct ats_test_proxy proxy;

static inline void start_both(void)
{
	start_redis();
	const char *why = ats_test_proxy_start(&proxy, srv.port);
	cr_assert_null(why, "%s", why);
}

static inline void stop_both(void)
{
	ats_test_proxy_stop(&proxy);
	stop_redis();
}

#endif
