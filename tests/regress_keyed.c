/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the keyed limiter maps: each fences a bug that was found and fixed, in the state that showed it
 * (the spec tests are in test_keyed.c). The comment above each test says what the bug was. */
#include <atscale/keyed.h>

#include <criterion/criterion.h>

#define T0 UINT64_C(1000000000000) /* an arbitrary start, in ns */
#define MS UINT64_C(1000000)
#define US UINT64_C(1000)

/* Bug: evicting a key on a clock that never moves (an infinite rate, or rate 0) raised the map's floor for new keys
 * to the evictor's time, as if the key had just become full. From then on a new key made by a caller a microsecond
 * behind started in debt: with burst 1 it was refused outright. */
Test(evict, a_key_on_a_still_clock_leaves_new_keys_full)
{
	ats_keyed_config cfg = {.rate = ats_rate_per_sec(10), .burst = 1, .max_keys = 1};
	ats_keyed_limit limits[] = {{ATS_RATE_INF, 1}, {{0, ATS_NS_PER_SEC}, 1}};
	for (int i = 0; i < 2; i++) {
		ats_keyed *m = NULL;
		cr_assert_null(ats_keyed_new(&m, &cfg));
		cr_assert_null(ats_keyed_set_limit(m, "vip", 3, &limits[i], T0));
		cr_assert(ats_keyed_allow_at(m, "new", 3, T0 + MS)); /* the map is at its cap: "vip" goes */
		ats_keyed_stats st;
		ats_keyed_stats_get(m, &st);
		cr_assert_eq(st.keys, 1);
		cr_expect_eq(ats_keyed_tokens_at(m, "other", 5, T0 + MS - US), 1, "limit %d: a new key is not full", i);
		cr_expect(ats_keyed_allow_at(m, "other", 5, T0 + MS - US), "limit %d: a new key refused", i);
		ats_keyed_free(m);
	}
}
