/* SPDX-License-Identifier: BSD-2-Clause */
/* The multi-limit (include/atscale/limiter.h): all-or-nothing across exact limiters, on their
 * check, reserve and cancel calls (limiter.c). */
#include "atscale/limiter.h"

#include <stdbool.h>
#include <stddef.h>

/* ---- Multi-limit ---- */

bool ats_multi_allow_at(ats_limiter *const *ls, size_t count, uint64_t n, uint64_t now_ns)
{
	if (!ls || count == 0 || count > ATS_MULTI_MAX)
		return false;
	for (size_t i = 0; i < count; i++)
		if (!ls[i] || !ats_limiter_check_at(ls[i], n, now_ns))
			return false;
	ats_reservation rs[ATS_MULTI_MAX];
	for (size_t i = 0; i < count; i++) {
		if (!ats_limiter_reserve_within_at(ls[i], n, 0, now_ns, &rs[i])) {
			while (i-- > 0)
				ats_limiter_cancel_at(&rs[i], now_ns);
			return false;
		}
	}
	return true;
}

bool ats_multi_allow(ats_limiter *const *ls, size_t count, uint64_t n)
{
	return ats_multi_allow_at(ls, count, n, ats_fast_now_ns());
}
