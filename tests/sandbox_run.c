/* SPDX-License-Identifier: BSD-2-Clause */
/* Not a test: runs a command in a sandbox whose seccomp filter refuses futex_waitv and membarrier
 * with EPERM, as the profiles of container runtimes and service managers written before those
 * calls do. scripts/test.sh runs the parking suites in it, so that the library finds out about the
 * refusals by itself (not through the test hooks) and takes the paths of kernels without them.
 * Exits 77 where no filter can be installed here.
 *
 *   sandbox_run COMMAND [ARGS...] */
#include "seccomp_refuse.h"

#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: sandbox_run COMMAND [ARGS...]\n");
		return 2;
	}
	const long refused[] = {SYS_futex_waitv, SYS_membarrier};
	if (seccomp_refuse_n(refused, 2, EPERM) != 0) {
		fprintf(stderr, "sandbox_run: no seccomp filter here: %s\n", strerror(errno));
		return 77;
	}
	execvp(argv[1], argv + 1);
	fprintf(stderr, "sandbox_run: %s: %s\n", argv[1], strerror(errno));
	return 127;
}
