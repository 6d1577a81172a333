/* SPDX-License-Identifier: BSD-2-Clause */
/* The CPU limit a cgroup puts on this process (src/cgroup_cpu.c), for the pool's default number of
 * workers: in a container given two CPUs' worth of time on a 64-CPU machine, 64 workers would
 * take turns being throttled. */
#ifndef ATS_INTERNAL_CGROUP_CPU_H
#define ATS_INTERNAL_CGROUP_CPU_H

/* How many CPUs' worth of time the process may use, rounded up: the tightest CPU bandwidth limit
 * on its cgroup and on each ancestor it can see, from cgroup v2's cpu.max or v1's
 * cpu.cfs_quota_us over cpu.cfs_period_us (whichever hierarchy holds the cpu controller).
 * 0: no limit, or none can be read (no cgroup filesystem, a sandbox that hides it, a file that
 * does not parse). cgroup_file and mountinfo_file are /proc/self/cgroup and /proc/self/mountinfo;
 * tests pass files of their own that describe a tree of their own. Blocking: reads a few small
 * files; allocates only inside stdio. */
unsigned ats__cgroup_cpu_limit(const char *cgroup_file, const char *mountinfo_file);

#endif
