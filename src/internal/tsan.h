/* SPDX-License-Identifier: BSD-2-Clause */
/* Telling ThreadSanitizer about orderings it cannot see (liburcu's grace periods and call_rcu
 * queue, ck_ring's inline-assembly atomics): TSAN_RELEASE(p) / TSAN_ACQUIRE(p) on a sync object,
 * which compile to nothing outside a TSan build. Each user says at its call sites which real
 * ordering the pair stands for. */
#ifndef ATS_INTERNAL_TSAN_H
#define ATS_INTERNAL_TSAN_H

#if defined(__SANITIZE_THREAD__)
#define ATS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ATS_TSAN 1
#endif
#endif

#ifdef ATS_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_ACQUIRE(p) __tsan_acquire(p)
#define TSAN_RELEASE(p) __tsan_release(p)
#else
#define TSAN_ACQUIRE(p) ((void)(p))
#define TSAN_RELEASE(p) ((void)(p))
#endif

#endif
