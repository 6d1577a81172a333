/* SPDX-License-Identifier: BSD-2-Clause */
/* The home cache (src/internal/home_cache.h): blocks come back to the thread that took them, from
 * that thread or any other, and a thread that exits with blocks still out frees its cache when the
 * last of them comes back. */
#include <criterion/criterion.h>

#include "internal/home_cache.h"
#include "internal/home_cache_hooks.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define SIZE 192

static void *put_it(void *block)
{
	ats__home_put(block);
	return NULL;
}

Test(home_cache, a_block_is_aligned_whole_and_reused_by_its_thread)
{
	unsigned char *a = ats__home_get(SIZE);
	cr_assert_not_null(a);
	cr_expect_eq((uintptr_t)a % 64, 0);
	memset(a, 0xab, SIZE); /* all of it is the caller's (ASan checks the bounds) */
	ats__home_put(a);
	cr_expect_eq(ats__home_get(SIZE), a, "the block came back from the thread's own cache");
	ats__home_put(a);
	ats__home_put(NULL); /* NULL-safe */
}

Test(home_cache, a_block_given_back_by_another_thread_returns_to_its_owner)
{
	void *a = ats__home_get(SIZE), *b = ats__home_get(SIZE);
	cr_assert(a && b && a != b);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, put_it, a), 0);
	pthread_join(t, NULL);
	/* The thread's own list is empty: the next block is the one given back. */
	cr_expect_eq(ats__home_get(SIZE), a);
	ats__home_put(a);
	ats__home_put(b);
}

Test(home_cache, a_block_of_another_size_comes_from_malloc_and_goes_back_to_free)
{
	void *a = ats__home_get(SIZE);
	unsigned char *big = ats__home_get(4 * SIZE);
	cr_assert(a && big);
	cr_expect_eq((uintptr_t)big % 64, 0);
	memset(big, 1, 4 * SIZE);
	ats__home_put(a);
	ats__home_put(big); /* freed, not cached: were it cached, it would now top the list */
	cr_expect_eq(ats__home_get(SIZE), a, "the block of another size went to free, not to the cache");
	ats__home_put(a);
}

struct held {
	void *blocks[3];
	unsigned n;
};

static void *take_and_exit(void *arg)
{
	struct held *h = arg;
	for (unsigned i = 0; i < h->n; i++)
		h->blocks[i] = ats__home_get(SIZE);
	ats__home_put(h->blocks[0]); /* one given back before the thread exits */
	return NULL;
}

Test(home_cache, a_thread_that_exits_with_blocks_out_leaves_its_cache_to_the_last_one_given_back)
{
	long base = atomic_load(&ats__homes_alive);
	struct held h = {.n = 3};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, take_and_exit, &h), 0);
	pthread_join(t, NULL); /* its key's destructor has run */
	cr_assert(h.blocks[1] && h.blocks[2]);
	cr_expect_eq(atomic_load(&ats__homes_alive), base + 1, "two blocks are out: the home stays");
	ats__home_put(h.blocks[1]);
	cr_expect_eq(atomic_load(&ats__homes_alive), base + 1, "one block is out: the home stays");
	ats__home_put(h.blocks[2]);
	cr_expect_eq(atomic_load(&ats__homes_alive), base, "the last block given back freed the home");
}

static void *take_give_back_and_exit(void *arg)
{
	(void)arg;
	void *b = ats__home_get(SIZE);
	ats__home_put(b);
	return NULL;
}

Test(home_cache, a_thread_that_exits_with_no_block_out_frees_its_cache_itself)
{
	long base = atomic_load(&ats__homes_alive);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, take_give_back_and_exit, NULL), 0);
	pthread_join(t, NULL);
	cr_expect_eq(atomic_load(&ats__homes_alive), base);
}
