/* SPDX-License-Identifier: BSD-2-Clause */
/* The CPU limit of this process's cgroup (internal/cgroup_cpu.h).
 *
 * Where the limit lives. /proc/self/cgroup names the process's cgroup in each hierarchy: "0::PATH"
 * for cgroup v2, "ID:CONTROLLERS:PATH" for each v1 hierarchy. The cpu controller is in a v1
 * hierarchy when one lists it (hybrid systems put it there), else in v2. /proc/self/mountinfo
 * says where that hierarchy is mounted (fields 4 and 5: the directory of the hierarchy shown at the
 * mount, and the mount point; after the "-": the filesystem type and, for v1, the controllers in
 * its options). A container usually sees its own cgroup as "/" and at the mount's root. The
 * process's directory is the mount point plus PATH less the mount's root.
 *
 * Which limit counts. The kernel throttles a cgroup when it or any ancestor has used its quota,
 * so the limit is the tightest along the path, from the process's directory up to the mount
 * point (the highest one visible). cgroup v2: cpu.max holds "QUOTA PERIOD" or "max PERIOD"; v1:
 * cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. A level whose file is missing or does not
 * parse sets no limit. */
#include "internal/cgroup_cpu.h"

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A path buffer: room for a mount point and a cgroup path, each at most PATH_MAX. */
#define PATH_ROOM (2 * PATH_MAX)

/* The n-th (0-based) space-separated field of line, copied into out (mountinfo's octal escapes,
 * such as \040 for a space, decoded). False when the line is shorter or the field does not fit. */
static bool field(const char *line, int n, char *out, size_t room)
{
	const char *p = line;
	for (int i = 0; i < n; i++) {
		p = strchr(p, ' ');
		if (!p)
			return false;
		p++;
	}
	size_t len = 0;
	while (*p && *p != ' ' && *p != '\n') {
		char c = *p++;
		if (c == '\\' && p[0] >= '0' && p[0] <= '3' && p[1] >= '0' && p[1] <= '7' && p[2] >= '0' &&
		    p[2] <= '7') {
			c = (char)((p[0] - '0') * 64 + (p[1] - '0') * 8 + (p[2] - '0'));
			p += 3;
		}
		if (len + 1 >= room)
			return false;
		out[len++] = c;
	}
	out[len] = '\0';
	return true;
}

/* Whether the comma-separated list holds item. */
static bool list_has(const char *list, const char *item)
{
	size_t n = strlen(item);
	for (const char *p = list; p;) {
		if (strncmp(p, item, n) == 0 && (p[n] == ',' || p[n] == '\0' || p[n] == '\n'))
			return true;
		p = strchr(p, ',');
		if (p)
			p++;
	}
	return false;
}

/* From /proc/self/cgroup: the cpu controller's cgroup path into path; *v1 tells its hierarchy. */
static bool cpu_cgroup(const char *cgroup_file, char *path, size_t room, bool *v1)
{
	FILE *f = fopen(cgroup_file, "re");
	if (!f)
		return false;
	char line[PATH_MAX + 256];
	bool found_v1 = false, found_v2 = false;
	char v2path[PATH_MAX];
	while (fgets(line, sizeof line, f)) {
		char *c1 = strchr(line, ':');
		char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		char *p = c2 + 1;
		p[strcspn(p, "\n")] = '\0';
		if (strlen(p) >= room)
			continue;
		*c2 = '\0';
		if (c2 == c1 + 1 && strncmp(line, "0", (size_t)(c1 - line)) == 0) {
			strcpy(v2path, p);
			found_v2 = true;
		} else if (list_has(c1 + 1, "cpu")) {
			strcpy(path, p);
			found_v1 = true;
		}
	}
	fclose(f);
	if (!found_v1 && found_v2)
		strcpy(path, v2path);
	*v1 = found_v1;
	return found_v1 || found_v2;
}

/* Whether `path` lies at or under `root` (as paths: "/a" holds "/a/b", not "/ab"). */
static bool path_under(const char *path, const char *root)
{
	size_t n = strlen(root);
	if (n == 1 && root[0] == '/')
		return path[0] == '/';
	return strncmp(path, root, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* From mountinfo: the mount point of the hierarchy (v2, or the v1 one with the cpu controller)
 * whose root holds cgpath, into mnt, and the length of that root into *root_len (the part of
 * cgpath the mount point stands for). Among several such mounts, the one with the shortest root:
 * it shows the most ancestors, and any of them may hold the limit that counts. */
static bool mount_of(const char *mountinfo_file, bool v1, const char *cgpath, char *mnt, size_t room, size_t *root_len)
{
	FILE *f = fopen(mountinfo_file, "re");
	if (!f)
		return false;
	char line[3 * PATH_MAX];
	bool found = false;
	size_t best = 0;
	while (fgets(line, sizeof line, f)) {
		const char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		char type[32], opts[512], root[PATH_MAX], point[PATH_MAX];
		if (!field(sep + 3, 0, type, sizeof type) || !field(line, 3, root, sizeof root) ||
		    !field(line, 4, point, sizeof point))
			continue;
		if (v1 ? strcmp(type, "cgroup") != 0 || !field(sep + 3, 2, opts, sizeof opts) || !list_has(opts, "cpu")
		       : strcmp(type, "cgroup2") != 0)
			continue;
		if (!path_under(cgpath, root) || strlen(point) >= room)
			continue;
		size_t rl = strcmp(root, "/") == 0 ? 0 : strlen(root);
		if (!found || rl < best) {
			strcpy(mnt, point);
			best = rl;
			found = true;
		}
	}
	fclose(f);
	*root_len = best;
	return found;
}

/* The first line of dir/name, into buf. */
static bool read_line(const char *dir, const char *name, char *buf, size_t room)
{
	char file[PATH_ROOM + 32];
	if ((size_t)snprintf(file, sizeof file, "%s/%s", dir, name) >= sizeof file)
		return false;
	FILE *f = fopen(file, "re");
	if (!f)
		return false;
	bool ok = fgets(buf, (int)room, f) != NULL;
	fclose(f);
	return ok;
}

/* The limit set in one cgroup directory, in CPUs rounded up; 0 for none. */
static unsigned level_limit(const char *dir, bool v1)
{
	char buf[128];
	long long quota, period;
	if (v1) {
		if (!read_line(dir, "cpu.cfs_quota_us", buf, sizeof buf) || sscanf(buf, "%lld", &quota) != 1)
			return 0;
		if (!read_line(dir, "cpu.cfs_period_us", buf, sizeof buf) || sscanf(buf, "%lld", &period) != 1)
			return 0;
	} else {
		char q[32];
		if (!read_line(dir, "cpu.max", buf, sizeof buf) || sscanf(buf, "%31s %lld", q, &period) != 2)
			return 0;
		if (strcmp(q, "max") == 0 || sscanf(q, "%lld", &quota) != 1)
			return 0;
	}
	if (quota <= 0 || period <= 0)
		return 0;
	long long cpus = (quota + period - 1) / period;
	return cpus > (long long)UINT_MAX ? UINT_MAX : (unsigned)cpus;
}

unsigned ats__cgroup_cpu_limit(const char *cgroup_file, const char *mountinfo_file)
{
	char cgpath[PATH_MAX], dir[PATH_ROOM];
	bool v1;
	size_t root_len;
	if (!cpu_cgroup(cgroup_file, cgpath, sizeof cgpath, &v1) ||
	    !mount_of(mountinfo_file, v1, cgpath, dir, PATH_MAX, &root_len))
		return 0;
	size_t top = strlen(dir); /* the mount point: the highest level this process can see */
	const char *rest = cgpath + root_len;
	if (strcmp(rest, "/") != 0 && (size_t)snprintf(dir + top, sizeof dir - top, "%s", rest) >= sizeof dir - top)
		return 0;
	/* A trailing slash would make the walk below stop one level short. */
	size_t len = strlen(dir);
	while (len > top && dir[len - 1] == '/')
		dir[--len] = '\0';
	unsigned limit = 0;
	for (;;) {
		unsigned l = level_limit(dir, v1);
		if (l && (!limit || l < limit))
			limit = l;
		char *slash = strrchr(dir, '/');
		if (len <= top || !slash || (size_t)(slash - dir) < top)
			break;
		*slash = '\0';
		len = strlen(dir);
	}
	return limit;
}
