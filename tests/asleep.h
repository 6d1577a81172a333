/* SPDX-License-Identifier: BSD-2-Clause */
/* Waiting until another thread sleeps in the kernel: its state in /proc/self/task/TID/stat is S
 * (an interruptible sleep, as in a futex wait). Tests that must wake a thread that is asleep, and
 * not one that is about to sleep, wait on this: what the test observes, not a time. */
#ifndef ATS_TESTS_ASLEEP_H
#define ATS_TESTS_ASLEEP_H

#include <sched.h>
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

#endif
