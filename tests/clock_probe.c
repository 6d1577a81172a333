/* SPDX-License-Identifier: BSD-2-Clause */
/* Prints the default clock's source and precision as this process got them (ATS_CLOCK applies):
 * scripts/test.sh uses it to tell which sources this machine can give. */
#include <atscale/clock.h>

#include <stdio.h>

int main(void)
{
	printf("%s (precision %llu ns)\n", ats_fast_source(), (unsigned long long)ats_fast_precision_ns());
	return 0;
}
