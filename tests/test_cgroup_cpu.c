/* SPDX-License-Identifier: BSD-2-Clause */
/* The pool's default worker count under a cgroup CPU limit. The limit's reader runs on trees built
 * here, each a pair of /proc files and a cgroup directory tree under a temporary directory whose
 * name holds a space (mountinfo escapes it): cgroup v2 with the tightest limit above the
 * process, in a cgroup namespace, with only a subtree mounted (a limit above the mount is out of
 * sight), v1 holding the cpu controller on a hybrid system, and every way of having no limit.
 * Then the real thing where this machine lets the test make a cgroup: the test process, moved
 * into a cgroup of its own limited to half a CPU, gets a pool of one worker. */
#include <atscale/pool.h>
#include "internal/cgroup_cpu.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[64];

static void setup(void)
{
	snprintf(tmp, sizeof tmp, "/tmp/atscale cgroup XXXXXX");
	cr_assert_not_null(mkdtemp(tmp), "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
	char cmd[sizeof tmp + 16];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
	cr_expect_eq(system(cmd), 0);
}

TestSuite(cgroup_cpu, .init = setup, .fini = teardown);

/* Writes tmp/rel (its directories made as needed) with the formatted text. */
static void put(const char *rel, const char *fmt, ...)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", tmp, rel);
	for (char *s = path + strlen(tmp) + 1; (s = strchr(s, '/')); s++) {
		*s = '\0';
		cr_assert(mkdir(path, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", path, strerror(errno));
		*s = '/';
	}
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fclose(f);
}

/* A mount point under tmp as mountinfo writes it: a space is \040. Four buffers in turn, so one
 * call of put() may take several. */
static const char *escaped(const char *rel)
{
	static char bufs[4][2 * PATH_MAX];
	static unsigned next;
	char *out = bufs[next++ % 4];
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", tmp, rel);
	size_t n = 0;
	for (const char *p = path; *p && n + 5 < sizeof bufs[0]; p++) {
		if (*p == ' ') {
			memcpy(out + n, "\\040", 4);
			n += 4;
		} else {
			out[n++] = *p;
		}
	}
	out[n] = '\0';
	return out;
}

static unsigned limit(void)
{
	char cg[PATH_MAX], mi[PATH_MAX];
	snprintf(cg, sizeof cg, "%s/proc/cgroup", tmp);
	snprintf(mi, sizeof mi, "%s/proc/mountinfo", tmp);
	return ats__cgroup_cpu_limit(cg, mi);
}

#define V2_MOUNT "30 22 0:27 / %s rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"

Test(cgroup_cpu, v2_takes_the_tightest_limit_on_the_path)
{
	put("proc/cgroup", "0::/kubepods/pod1/ctr\n");
	put("proc/mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" V2_MOUNT, escaped("fs"));
	put("fs/kubepods/cpu.max", "max 100000\n");
	put("fs/kubepods/pod1/cpu.max", "250000 100000\n");
	put("fs/kubepods/pod1/ctr/cpu.max", "400000 100000\n");
	cr_expect_eq(limit(), 3, "the pod's 2.5 CPUs, rounded up, over the container's 4");
	put("fs/kubepods/pod1/ctr/cpu.max", "150000 100000\n");
	cr_expect_eq(limit(), 2, "the container's own 1.5 CPUs");
	put("fs/kubepods/pod1/ctr/cpu.max", "50000 100000\n");
	cr_expect_eq(limit(), 1, "half a CPU is one worker");
}

Test(cgroup_cpu, v2_in_a_cgroup_namespace)
{
	put("proc/cgroup", "0::/\n");
	put("proc/mountinfo", V2_MOUNT, escaped("fs"));
	put("fs/cpu.max", "300000 100000\n");
	cr_expect_eq(limit(), 3);
}

Test(cgroup_cpu, v2_sees_no_limit_above_its_mount)
{
	put("proc/cgroup", "0::/kubepods/pod1/ctr\n");
	put("proc/mountinfo", "30 22 0:27 /kubepods/pod1 %s rw - cgroup2 cgroup2 rw\n", escaped("fs"));
	put("cpu.max", "100000 100000\n"); /* the directory above the mount point: not ours */
	put("fs/cpu.max", "500000 100000\n");
	put("fs/ctr/cpu.max", "700000 100000\n");
	cr_expect_eq(limit(), 5);
}

Test(cgroup_cpu, v1_holds_the_cpu_controller_on_a_hybrid_system)
{
	put("proc/cgroup", "12:cpuacct:/\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n0::/docker/abc\n");
	put("proc/mountinfo",
	    V2_MOUNT "31 30 0:28 / %s rw - cgroup cgroup rw,cpuacct\n"
	             "32 30 0:29 / %s rw - cgroup cgroup rw,cpu,cpuacct\n",
	    escaped("unified"), escaped("acct"), escaped("cpu"));
	put("unified/docker/abc/cpu.max", "800000 100000\n"); /* no cpu controller here: ignored */
	put("cpu/docker/cpu.cfs_quota_us", "-1\n");
	put("cpu/docker/cpu.cfs_period_us", "100000\n");
	put("cpu/docker/abc/cpu.cfs_quota_us", "150000\n");
	put("cpu/docker/abc/cpu.cfs_period_us", "100000\n");
	cr_expect_eq(limit(), 2);
	put("cpu/docker/abc/cpu.cfs_quota_us", "-1\n");
	cr_expect_eq(limit(), 0, "-1: no quota");
}

Test(cgroup_cpu, no_limit_or_nothing_to_read)
{
	cr_expect_eq(limit(), 0, "no /proc files");
	put("proc/cgroup", "0::/a\n");
	cr_expect_eq(limit(), 0, "no mountinfo");
	put("proc/mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n");
	cr_expect_eq(limit(), 0, "no cgroup filesystem mounted");
	put("proc/mountinfo", V2_MOUNT, escaped("fs"));
	cr_expect_eq(limit(), 0, "no cpu.max files");
	put("fs/a/cpu.max", "max 100000\n");
	cr_expect_eq(limit(), 0, "max");
	put("fs/a/cpu.max", "lots\n");
	cr_expect_eq(limit(), 0, "a file that does not parse");
	put("fs/a/cpu.max", "0 100000\n");
	cr_expect_eq(limit(), 0, "a zero quota sets no limit");
	put("proc/mountinfo", "30 22 0:27 /b %s rw - cgroup2 cgroup2 rw\n", escaped("fs"));
	cr_expect_eq(limit(), 0, "a mount of another subtree does not hold the process's cgroup");
	put("proc/mountinfo", "30 22 0:27 /a %s rw - cgroup2 cgroup2 rw\n", escaped("fs"));
	put("fs/cpu.max", "200000 100000\n");
	cr_expect_eq(limit(), 2, "mounted at its own cgroup");
}

/* The pool's default: the CPUs the process may run on, within its cgroup's limit. */
static unsigned expected_workers(void)
{
	cpu_set_t set;
	cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
	unsigned ncpu = (unsigned)CPU_COUNT(&set);
	unsigned lim = ats__cgroup_cpu_limit("/proc/self/cgroup", "/proc/self/mountinfo");
	return lim && lim < ncpu ? lim : ncpu;
}

static unsigned default_workers(void)
{
	ats_pool *p;
	cr_assert_null(ats_pool_new(&p, NULL));
	unsigned n = ats_pool_size(p);
	ats_pool_free(p);
	return n;
}

Test(cgroup_cpu, the_pool_default_follows_this_process_limit)
{
	cr_expect_eq(default_workers(), expected_workers());
}

/* The directory of a new cgroup for the cpu controller, v1 or v2, where this process may make
 * one (root, a writable cgroup filesystem); false otherwise. *v1 tells which. */
static bool make_cgroup(char dir[128], size_t room, bool *v1)
{
	snprintf(dir, room, "/sys/fs/cgroup/cpu/atscale-test-%d", (int)getpid());
	*v1 = true;
	if (mkdir(dir, 0755) == 0)
		return true;
	snprintf(dir, room, "/sys/fs/cgroup/atscale-test-%d", (int)getpid());
	*v1 = false;
	if (access("/sys/fs/cgroup/cgroup.subtree_control", W_OK) == 0 && mkdir(dir, 0755) == 0) {
		char f[256];
		snprintf(f, sizeof f, "%s/cpu.max", dir);
		if (access(f, W_OK) == 0)
			return true;
		rmdir(dir);
	}
	return false;
}

static bool write_file(const char *dir, const char *name, const char *text)
{
	char f[2 * PATH_MAX];
	snprintf(f, sizeof f, "%s/%s", dir, name);
	FILE *fp = fopen(f, "w");
	if (!fp)
		return false;
	bool ok = fputs(text, fp) >= 0;
	return fclose(fp) == 0 && ok;
}

/* The cpu controller's directory for cgroup path `rel` (as /proc/self/cgroup names it). */
static void cgroup_dir(char out[256], bool v1, const char *rel)
{
	snprintf(out, 256, "%s%s", v1 ? "/sys/fs/cgroup/cpu" : "/sys/fs/cgroup", strcmp(rel, "/") == 0 ? "" : rel);
}

/* This process's cgroup path for the cpu controller (v1) or in v2, from /proc/self/cgroup. */
static bool own_cgroup(bool v1, char out[128])
{
	FILE *f = fopen("/proc/self/cgroup", "r");
	if (!f)
		return false;
	char line[512];
	bool found = false;
	while (!found && fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = '\0';
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2 || strlen(c2 + 1) >= 128)
			continue;
		*c2 = '\0';
		char controllers[160];
		snprintf(controllers, sizeof controllers, ",%s,", c1 + 1); /* ",cpu,cpuacct," */
		found = v1 ? strstr(controllers, ",cpu,") != NULL : strcmp(line, "0") == 0 && c1[1] == '\0';
		if (found)
			strcpy(out, c2 + 1);
	}
	fclose(f);
	return found;
}

/* The test process itself joins a new cgroup limited to half a CPU (no fork: qemu-user, which runs
 * the arm64 tests, does not carry a forked child through reliably), makes a pool with the default
 * worker count there, and goes back to its own cgroup. */
Test(cgroup_cpu, a_process_in_a_cgroup_with_half_a_cpu_gets_one_worker)
{
	char dir[128];
	bool v1;
	if (!make_cgroup(dir, sizeof dir, &v1))
		cr_skip_test("cannot make a cgroup here (not root, or a read-only cgroup filesystem)");
	char home_rel[128], home[256], pid[32];
	snprintf(pid, sizeof pid, "%d", (int)getpid());
	bool known = own_cgroup(v1, home_rel);
	if (known)
		cgroup_dir(home, v1, home_rel);
	bool limited = known && (v1 ? write_file(dir, "cpu.cfs_period_us", "100000") &&
	                                  write_file(dir, "cpu.cfs_quota_us", "50000")
	                            : write_file(dir, "cpu.max", "50000 100000"));
	bool joined = limited && write_file(dir, "cgroup.procs", pid);
	unsigned n = joined ? default_workers() : 0;
	bool back = joined && write_file(home, "cgroup.procs", pid);
	rmdir(dir);
	cr_assert(known, "this process's cgroup is not in /proc/self/cgroup");
	cr_assert(limited, "cannot set the limit in %s", dir);
	cr_assert(joined, "cannot join %s", dir);
	cr_expect(back, "cannot go back to %s", home);
	cr_expect_eq(n, 1, "a pool under half a CPU has %u workers", n);
}

/* The whole hierarchy is mounted (root "/") and, besides, a subtree holding the process's cgroup
 * is bind-mounted elsewhere (root "/kubepods/pod1"): the pod's 1-CPU limit above that subtree is
 * visible through the first mount, and the kernel throttles by it. */
Test(cgroup_cpu, v2_an_ancestor_limit_seen_through_another_mount_counts)
{
	put("proc/cgroup", "0::/kubepods/pod1/ctr\n");
	put("proc/mountinfo",
	    "30 22 0:27 / %s rw - cgroup2 cgroup2 rw\n"
	    "31 22 0:27 /kubepods/pod1 %s rw - cgroup2 cgroup2 rw\n",
	    escaped("fs"), escaped("sub"));
	put("fs/kubepods/cpu.max", "100000 100000\n");
	put("fs/kubepods/pod1/cpu.max", "800000 100000\n");
	put("fs/kubepods/pod1/ctr/cpu.max", "800000 100000\n");
	put("sub/cpu.max", "800000 100000\n");
	put("sub/ctr/cpu.max", "800000 100000\n");
	cr_expect_eq(limit(), 1, "the 1-CPU limit on /kubepods, visible through %s, was missed", escaped("fs"));
}
