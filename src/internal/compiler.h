/* SPDX-License-Identifier: BSD-2-Clause */
/* Machine and compiler facts every source file shares (not API): the cache line, branch hints,
 * container_of, time units, the spin-wait hint and the one spin lock the library's hand-written
 * locks use. */
#ifndef ATS_INTERNAL_COMPILER_H
#define ATS_INTERNAL_COMPILER_H

#include "atscale/common.h" /* ATS_NS_PER_SEC, ATS__CACHE_LINE */

#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Built with AddressSanitizer (gcc defines __SANITIZE_ADDRESS__, clang answers __has_feature):
 * caches of freed objects step aside then, so that ASan sees every use after free. */
#if defined(__SANITIZE_ADDRESS__)
#define ATS__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATS__ASAN 1
#endif
#endif

#define ats__likely(x) __builtin_expect(!!(x), 1)
#define ats__unlikely(x) __builtin_expect(!!(x), 0)

/* The struct of type `type` whose member `member` is at ptr. */
#define ats__container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* t + d, saturating at UINT64_MAX: a deadline or next time that runs past the range is "never",
 * not a wrapped time in the past. */
static inline uint64_t ats__add_sat(uint64_t t, uint64_t d)
{
	return t > UINT64_MAX - d ? UINT64_MAX : t + d;
}

/* The spin-wait hint (PAUSE on x86, YIELD on arm64): lets the sibling hyperthread run and saves
 * power while a thread spins on a word another thread will change. */
static inline void ats__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

/* How long a spinning waiter stays on the CPU before it starts yielding it. */
#define ATS__SPIN_RELAX_ROUNDS 256u

/* Round `spins` (counted by the caller from 0) of waiting for a word another thread holds: the
 * spin hint for the first ATS__SPIN_RELAX_ROUNDS rounds (the holder is running and about to let
 * go), sched_yield() after that (the holder was preempted). */
static inline void ats__spin_pause(unsigned spins)
{
	if (spins < ATS__SPIN_RELAX_ROUNDS)
		ats__cpu_relax();
	else
		sched_yield();
}

/* The spin lock: test-and-test-and-set on a 32-bit word (0 free, 1 held), acquire on lock and a
 * plain release store on unlock (one atomic write per lock/unlock pair besides the CAS). For
 * critical sections of a few instructions (the timer wheel's shards, a limiter's setters); the
 * ctx lock is a bit of the context's state word and shares only ats__spin_pause. Blocking. */
static inline void ats__spin_lock(_Atomic uint32_t *lock)
{
	for (unsigned spins = 0;; spins++) {
		uint32_t z = 0;
		/* acquire: pairs with ats__spin_unlock's release, so the last holder's critical section is
		 * seen; relaxed on failure: nothing was taken, the loop tries again. */
		if (ats__likely(
		        atomic_compare_exchange_weak_explicit(lock, &z, 1, memory_order_acquire, memory_order_relaxed)))
			return;
		/* relaxed: a hint for when to retry; the CAS above is what acquires. */
		while (atomic_load_explicit(lock, memory_order_relaxed))
			ats__spin_pause(++spins);
	}
}

static inline void ats__spin_unlock(_Atomic uint32_t *lock)
{
	/* release: the critical section happens before the next holder's acquiring CAS. */
	atomic_store_explicit(lock, 0, memory_order_release);
}

#endif
