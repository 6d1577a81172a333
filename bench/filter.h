/* SPDX-License-Identifier: BSD-2-Clause */
/* The row filter of atscale-bench and of the C peers (the Go peer has the same rule in Go): a
 * comma-separated list of patterns, each a substring, or an fnmatch glob when it holds '*', '?'
 * or '['; a row runs when any pattern selects it, and every row runs without a filter. */
#ifndef ATS_BENCH_FILTER_H
#define ATS_BENCH_FILTER_H

#include <fnmatch.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static inline bool ats_bench_filter_selects(const char *filter, const char *name)
{
	if (!filter)
		return true;
	for (const char *p = filter;; p++) {
		size_t len = strcspn(p, ",");
		char one[256];
		snprintf(one, sizeof one, "%.*s", (int)len, p);
		if (strpbrk(one, "*?[") ? fnmatch(one, name, 0) == 0 : strstr(name, one) != NULL)
			return true;
		p += len;
		if (!*p)
			return false;
	}
}

#endif
