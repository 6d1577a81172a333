/* SPDX-License-Identifier: BSD-2-Clause */
/* Blocks that go home (internal/home_cache.h).
 *
 * Each thread that takes a block gets a home: a free list only it touches, and a return stack that
 * other threads push onto. The stack has many pushers and one taker, who takes the whole stack
 * with one exchange, never one entry: so it has no ABA problem and needs no tags or hazard
 * pointers. A block carries a small header just before it: its home, a link, and what malloc
 * returned.
 *
 * Thread exit (a pthread key's destructor): the owner swaps the return stack for GONE, frees
 * everything it holds, and counts the blocks still out (taken from its home, neither back in its
 * list nor freed: blocks other threads still hold). A thread that gives a block back to a GONE home
 * frees the block itself and counts it down. `gone_out` meets both: the owner adds the count it
 * found, every late giver subtracts one, so the value reaches zero exactly once after the owner's
 * add (before it, givers only take it below zero), and whoever brings it there frees the home. */
#include "internal/home_cache.h"
#include "internal/compiler.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef ATS__ASAN
#include <sanitizer/asan_interface.h>
/* A cached block is poisoned, so ASan still reports a use after it was given back. */
#define POISON(b, n) ASAN_POISON_MEMORY_REGION((b), (n))
#define UNPOISON(b, n) ASAN_UNPOISON_MEMORY_REGION((b), (n))
#else
#define POISON(b, n) ((void)0)
#define UNPOISON(b, n) ((void)0)
#endif

#define CACHE_MAX 32

#ifdef ATS_TESTING
#include "internal/home_cache_hooks.h"
_Atomic long ats__homes_alive;
#define COUNT_HOMES(d) atomic_fetch_add_explicit(&ats__homes_alive, (d), memory_order_relaxed)
#else
#define COUNT_HOMES(d) ((void)0)
#endif

struct header {
	struct home *home; /* NULL: a plain malloc'ed block (no home, or another size) */
	struct header *next;
	void *raw; /* what malloc returned */
};

#define GONE ((struct header *)1)

struct home {
	/* What other threads write. */
	_Alignas(64) _Atomic(struct header *) returned; /* the return stack, GONE after the owner exited */
	_Atomic int64_t gone_out;                       /* after exit: blocks still out (above) */
	/* The owner's. */
	_Alignas(64) struct header *free_list;
	unsigned nfree;
	int64_t out; /* blocks taken from this home, not on free_list and not freed */
	size_t size;
};

static _Thread_local struct home *my_home __attribute__((tls_model("initial-exec")));
static pthread_key_t home_key;
static bool home_key_ok; /* pthread_key_create succeeded (else every block comes from malloc) */
static pthread_once_t home_once = PTHREAD_ONCE_INIT;

static struct header *header_of(void *block)
{
	return (struct header *)block - 1;
}

static void block_free(struct header *h)
{
	free(h->raw);
}

static void home_free(struct home *home)
{
	free(home);
	COUNT_HOMES(-1);
}

static void home_exit(void *arg)
{
	struct home *home = arg;
	my_home = NULL;
	/* acquire: the givers' pushes, with their writes before them. */
	struct header *h = atomic_exchange_explicit(&home->returned, GONE, memory_order_acquire);
	while (h) {
		struct header *next = h->next;
		block_free(h);
		home->out--;
		h = next;
	}
	for (h = home->free_list; h;) {
		struct header *next = h->next;
		block_free(h);
		h = next;
	}
	int64_t out = home->out;
	/* acq_rel: publishes the home's last writes to a giver that frees it; sees every late giver's
	 * frees before it, when this add is the one that frees it. */
	if (out == 0 || atomic_fetch_add_explicit(&home->gone_out, out, memory_order_acq_rel) + out == 0)
		home_free(home);
}

static void home_key_make(void)
{
	home_key_ok = pthread_key_create(&home_key, home_exit) == 0;
}

static struct home *home_make(size_t size)
{
	pthread_once(&home_once, home_key_make);
	if (!home_key_ok)
		return NULL;
	struct home *home = aligned_alloc(64, sizeof *home);
	if (!home)
		return NULL;
	atomic_init(&home->returned, NULL);
	atomic_init(&home->gone_out, 0);
	home->free_list = NULL;
	home->nfree = 0;
	home->out = 0;
	home->size = size;
	if (pthread_setspecific(home_key, home) != 0) {
		free(home);
		return NULL;
	}
	my_home = home;
	COUNT_HOMES(1);
	return home;
}

/* Takes back what other threads gave back: one exchange for the whole stack. */
static void take_returned(struct home *home)
{
	/* acquire: the givers' release pushes, so the blocks are whole. */
	struct header *h = atomic_exchange_explicit(&home->returned, NULL, memory_order_acquire);
	while (h) {
		struct header *next = h->next;
		home->out--;
		if (home->nfree < CACHE_MAX) {
			h->next = home->free_list;
			home->free_list = h;
			home->nfree++;
		} else {
			block_free(h);
		}
		h = next;
	}
}

static void *block_new(struct home *home, size_t size)
{
	if (size > SIZE_MAX - sizeof(struct header) - 63)
		return NULL; /* the header and the alignment would wrap the size */
	void *raw = malloc(sizeof(struct header) + 63 + size);
	if (!raw)
		return NULL;
	void *block = (void *)(((uintptr_t)raw + sizeof(struct header) + 63) & ~(uintptr_t)63);
	struct header *h = header_of(block);
	h->home = home;
	h->raw = raw;
	return block;
}

void *ats__home_get(size_t size)
{
	struct home *home = my_home;
	if (ats__unlikely(!home))
		home = home_make(size);
	if (ats__unlikely(!home || home->size != size))
		return block_new(NULL, size);
	if (!home->free_list)
		take_returned(home);
	struct header *h = home->free_list;
	void *block;
	if (h) {
		home->free_list = h->next;
		home->nfree--;
		block = h + 1;
		UNPOISON(block, size);
	} else if (!(block = block_new(home, size))) {
		return NULL;
	}
	home->out++;
	return block;
}

void ats__home_put(void *block)
{
	if (!block)
		return;
	struct header *h = header_of(block);
	struct home *home = h->home;
	if (!home) {
		block_free(h);
		return;
	}
	if (home == my_home) {
		home->out--;
		if (home->nfree >= CACHE_MAX) {
			block_free(h);
			return;
		}
		POISON(block, home->size);
		h->next = home->free_list;
		home->free_list = h;
		home->nfree++;
		return;
	}
	/* The home lives at least until this block is counted back (file comment). */
	POISON(block, home->size);
	/* relaxed: the CAS below publishes; a failed one reloads. */
	struct header *top = atomic_load_explicit(&home->returned, memory_order_relaxed);
	do {
		if (top == GONE) {
			block_free(h);
			/* acq_rel: see home_exit. */
			if (atomic_fetch_sub_explicit(&home->gone_out, 1, memory_order_acq_rel) == 1)
				home_free(home);
			return;
		}
		h->next = top;
		/* release: the block's contents and its link reach the owner whole. */
	} while (!atomic_compare_exchange_weak_explicit(&home->returned, &top, h, memory_order_release,
	                                                memory_order_relaxed));
}
