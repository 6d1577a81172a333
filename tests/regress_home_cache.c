/* SPDX-License-Identifier: BSD-2-Clause */
/* Regression tests of the per-thread block cache (src/internal/home_cache.h): each fences a bug that was found and
 * fixed (the spec tests are in test_home_cache.c). The comment above each test says what the bug was. */
#include "internal/home_cache.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>

static void *take_huge(void *arg)
{
	(void)arg;
	return ats__home_get(SIZE_MAX - 16);
}

/* Bug: a size near SIZE_MAX wrapped when the header and the alignment slack were added to it, and came back as a
 * block of about 70 bytes rather than NULL (out of memory). */
Test(home_cache, an_impossible_size_is_null)
{
	pthread_t t; /* a fresh thread: its first call sets its home's block size */
	void *b;
	cr_assert_eq(pthread_create(&t, NULL, take_huge, NULL), 0);
	pthread_join(t, &b);
	cr_expect_null(b, "a block of SIZE_MAX - 16 bytes at %p", b);
	ats__home_put(b);
	b = ats__home_get(SIZE_MAX - 16);
	cr_expect_null(b, "a block of SIZE_MAX - 16 bytes at %p", b);
	ats__home_put(b);
}
