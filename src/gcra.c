/* SPDX-License-Identifier: BSD-2-Clause */
/* Token clocks for the GCRA core (include/atscale/gcra.h). */
#include "atscale/gcra.h"

ats_err *ats_token_clock_make(ats_token_clock *clock, ats_rate rate, uint64_t burst, uint64_t epoch_ns)
{
	return ats_token_clock_make_max_shift(clock, rate, burst, epoch_ns, 30);
}

ats_err *ats_token_clock_make_max_shift(ats_token_clock *clock, ats_rate rate, uint64_t burst, uint64_t epoch_ns,
                                        uint32_t max_shift)
{
	if (max_shift > 30)
		max_shift = 30;
	if (burst > ATS_GCRA_MAX_N)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "burst %llu exceeds the maximum of 2^32",
		                   (unsigned long long)burst);
	ats_token_clock c = {.epoch_ns = epoch_ns};
	if (ats_rate_is_inf(rate)) {
		c.inf = 1;
		c.shift = 0;
		c.burst_units = burst;
		*clock = c;
		return NULL;
	}
	/* rate <= 10^12/s  <=>  events * 10^9 <= 10^12 * period_ns */
	if ((unsigned __int128)rate.events * ATS_NS_PER_SEC > (unsigned __int128)ATS_RATE_MAX_PER_SEC * rate.period_ns)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "rate %llu per %llu ns exceeds 10^12 per second",
		                   (unsigned long long)rate.events, (unsigned long long)rate.period_ns);
	/* The finest unit that keeps the clock at <= 1 unit per ns (see the header). */
	uint32_t shift = 0;
	while (shift < max_shift && ((unsigned __int128)rate.events << (shift + 1)) <= rate.period_ns)
		shift++;
	unsigned __int128 per_ns = (unsigned __int128)rate.events << shift; /* units per period */
	c.shift = shift;
	c.mul_int = (uint64_t)(per_ns / rate.period_ns);
	/* frac = ceil(rem * 2^128 / period) by long division, 64 bits at a time. */
	unsigned __int128 rem = per_ns % rate.period_ns;
	c.frac_hi = (uint64_t)((rem << 64) / rate.period_ns);
	rem = (rem << 64) % rate.period_ns;
	c.frac_lo = (uint64_t)((rem << 64) / rate.period_ns);
	if ((rem << 64) % rate.period_ns && ++c.frac_lo == 0)
		c.frac_hi++;
	c.burst_units = burst << shift;
	*clock = c;
	return NULL;
}
