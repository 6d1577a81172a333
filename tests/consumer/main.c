/* SPDX-License-Identifier: BSD-2-Clause */
/* Built outside the tree against the installed atscale, with pkg-config and with CMake. */
#include <atscale/atscale.h>

#include <stdio.h>

int main(void)
{
	ats_err *err = ats_err_new(ATS_ERR_LIMITED, "consumer %d", 42);
	int ok = ats_err_is(err, ATS_ERR_LIMITED) && ats_now_ns() > 0;
	ats_err_unref(err);
	printf("consumer: %s\n", ok ? "ok" : "FAILED");
	return ok ? 0 : 1;
}
