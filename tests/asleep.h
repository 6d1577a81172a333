/* SPDX-License-Identifier: BSD-2-Clause */
/* Waiting until another thread sleeps in the kernel: its state in /proc/self/task/TID/stat is S
 * (an interruptible sleep, as in a futex wait). Tests that must wake a thread that is asleep, and
 * not one that is about to sleep, wait on this: what the test observes, not a time. For the test
 * build (its parking hooks). */
#ifndef ATS_TESTS_ASLEEP_H
#define ATS_TESTS_ASLEEP_H

#include "internal/ec_hooks.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static inline pid_t asleep_self_tid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* Whether thread tid of this process is sleeping in the kernel now. */
static inline bool asleep_now(pid_t tid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* "tid (comm) S ...": the name may hold spaces and parentheses, the state follows the last ')'. */
	const char *close = strrchr(buf, ')');
	return close && close[1] == ' ' && close[2] == 'S';
}

/* Yields until thread tid sleeps in the kernel. */
static inline void asleep_wait(pid_t tid)
{
	while (!asleep_now(tid))
		sched_yield();
}

/* Starts thread fn(arg), which stores its tid in *tid before it parks, and waits until it has
 * parked: it sleeps in the kernel and, where futex_waitv is forced off (ec_hooks.h), in the
 * fallback's sleep (whose count moved). pthread_create's result (nothing waited for unless 0). */
static inline int asleep_start_parked(pthread_t *t, void *(*fn)(void *), void *arg, _Atomic pid_t *tid)
{
	unsigned long mark = atomic_load(&ats__ec_fallback_sleeps);
	int rc = pthread_create(t, NULL, fn, arg);
	if (rc != 0)
		return rc;
	while (!atomic_load(tid) ||
	       (atomic_load(&ats__ec_force_no_waitv) && atomic_load(&ats__ec_fallback_sleeps) == mark))
		sched_yield();
	asleep_wait(atomic_load(tid));
	return 0;
}

#endif
