/* SPDX-License-Identifier: BSD-2-Clause */
/* The calling thread's CPU, as cheaply as the platform gives it: what the sharded limiter picks
 * its shard by and the worker pool its queue by (not API). */
#ifndef ATS_INTERNAL_CPU_H
#define ATS_INTERNAL_CPU_H

#include <stdint.h>
#include <sched.h>
#ifndef _GNU_SOURCE
extern int sched_getcpu(void); /* glibc declares it only with _GNU_SOURCE */
#endif

#if defined(__has_include)
#if __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#if defined(RSEQ_SIG)
#define ATS_HAVE_RSEQ 1
#endif
#endif
#endif

/* The calling thread's current CPU: the kernel-maintained rseq area when glibc registered one
 * (glibc >= 2.35: one TLS load), else sched_getcpu() (a call; compare the floor.* benchmark rows).
 * Only a hint: the thread may migrate right after, which the shards tolerate. */
static inline unsigned ats__current_cpu(void)
{
#if defined(__x86_64__) && defined(ATS_HAVE_RSEQ)
	if (__builtin_expect(__rseq_size >= 8, 1)) {
		char *tp;
		__asm__("mov %%fs:0, %0" : "=r"(tp));
		int32_t cpu = *(volatile int32_t *)(tp + __rseq_offset + 4); /* struct rseq.cpu_id */
		if (cpu >= 0)
			return (unsigned)cpu;
	}
#endif
	int cpu = sched_getcpu();
	return cpu < 0 ? 0u : (unsigned)cpu;
}

#endif
