/* SPDX-License-Identifier: BSD-2-Clause */
/* What every atscale header shares: the export macro, time units, and the few spellings that
 * differ between C11 and C++ (so each public header compiles as strict ISO C11 with -Wpedantic and
 * as C++17, with gcc and clang alike).
 *
 * C and C++. A field shared with inline code is declared ATS_ATOMIC(T): `_Atomic(T)` in C,
 * `std::atomic<T>` in C++ (as DPDK's RTE_ATOMIC() does; both have T's size and alignment on every
 * target atscale builds for). Inline code reaches such fields only through the ats__atomic_*
 * macros below, which are the <stdatomic.h> generic functions in C (the very same calls, so the
 * same code) and their std:: namesakes in C++. ATS__THREAD_LOCAL is _Thread_local or thread_local;
 * ATS__ALIGNAS(n) is _Alignas or alignas; ats__u128/ats__i128 are the compiler's 128-bit integers
 * under a name that -Wpedantic accepts. All ats__/ATS__ names are private. */
#ifndef ATSCALE_COMMON_H
#define ATSCALE_COMMON_H

#include "atscale/export.h"

#include <stdint.h>

/* Nanoseconds per second: every time in atscale is in ns. */
#define ATS_NS_PER_SEC UINT64_C(1000000000)

#ifdef __cplusplus
#include <atomic>
#define ATS_ATOMIC(T) std::atomic<T>
#define ATS__THREAD_LOCAL thread_local
#define ATS__ALIGNAS(n) alignas(n)
#define ats__mo_relaxed std::memory_order_relaxed
#define ats__mo_acquire std::memory_order_acquire
#define ats__mo_release std::memory_order_release
#define ats__mo_acq_rel std::memory_order_acq_rel
#define ats__atomic_load(p, mo) std::atomic_load_explicit((p), mo)
#define ats__atomic_store(p, v, mo) std::atomic_store_explicit((p), (v), mo)
#define ats__atomic_cas_strong(p, e, d, s, f) std::atomic_compare_exchange_strong_explicit((p), (e), (d), s, f)
#define ats__atomic_cas_weak(p, e, d, s, f) std::atomic_compare_exchange_weak_explicit((p), (e), (d), s, f)
#define ats__atomic_fence(mo) std::atomic_thread_fence(mo)
#else
#include <stdatomic.h>
#define ATS_ATOMIC(T) _Atomic(T)
#define ATS__THREAD_LOCAL _Thread_local
#define ATS__ALIGNAS(n) _Alignas(n)
#define ats__mo_relaxed memory_order_relaxed
#define ats__mo_acquire memory_order_acquire
#define ats__mo_release memory_order_release
#define ats__mo_acq_rel memory_order_acq_rel
#define ats__atomic_load(p, mo) atomic_load_explicit((p), mo)
#define ats__atomic_store(p, v, mo) atomic_store_explicit((p), (v), mo)
#define ats__atomic_cas_strong(p, e, d, s, f) atomic_compare_exchange_strong_explicit((p), (e), (d), s, f)
#define ats__atomic_cas_weak(p, e, d, s, f) atomic_compare_exchange_weak_explicit((p), (e), (d), s, f)
#define ats__atomic_fence(mo) atomic_thread_fence(mo)
#endif

/* The cache line the transparent structs align their hot words to. */
#define ATS__CACHE_LINE 64

__extension__ typedef unsigned __int128 ats__u128;
__extension__ typedef __int128 ats__i128;

#endif
