/* SPDX-License-Identifier: BSD-2-Clause */
/* Blocks that go home: a per-thread cache of equal-size, cache-line-aligned blocks that any thread
 * may free, each block going back to the cache of the thread that allocated it (not API).
 *
 * For objects that one thread allocates and another frees, such as a hedged call's record, which
 * the caller allocates and the worker that ends last often frees. glibc's per-thread cache cannot
 * hold such a one-way flow: the freeing thread's fills up, the allocating thread's stays empty,
 * and from then on every free and every malloc takes the arena's lock, where both threads meet. */
#ifndef ATS_INTERNAL_HOME_CACHE_H
#define ATS_INTERNAL_HOME_CACHE_H

#include <stddef.h>

/* A block of `size` bytes aligned to the cache line, not zeroed; NULL when out of memory. From the
 * calling thread's cache (no atomic operation), else from what other threads gave back to it (one
 * atomic exchange takes all of it), else from malloc. A thread's cache holds one size, the size of
 * its first call; a block of another size comes from malloc and goes back to free. Lock-free. */
void *ats__home_get(size_t size);

/* Gives a block back from any thread. The thread that took it keeps it in its cache (no atomic
 * operation); any other pushes it onto that thread's return stack (one CAS, retried only when
 * another thread pushed at the same moment), or frees it when that thread has exited (then the
 * last block given back frees what was its cache). The cache keeps at most 32 blocks; more go back
 * to free. Lock-free; NULL-safe. */
void ats__home_put(void *block);

#endif
