/* SPDX-License-Identifier: BSD-2-Clause */
/* The asymmetric fence (internal/membarrier.h). */
#include "internal/membarrier.h"
#ifdef ATS_TESTING
#include "internal/membarrier_hooks.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#endif

#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool ready;

static void init(void)
{
	ready = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

#ifdef ATS_TESTING
_Atomic int ats__membarrier_force_off;

/* Whole suites can run as on a kernel without membarrier (scripts/test.sh). */
__attribute__((constructor)) static void read_force_env(void)
{
	const char *v = getenv("ATS_TEST_NO_MEMBARRIER");
	if (v && strcmp(v, "1") == 0)
		atomic_store(&ats__membarrier_force_off, 1);
}
#endif

bool ats__membarrier_ready(void)
{
#ifdef ATS_TESTING
	if (atomic_load(&ats__membarrier_force_off))
		return false;
#endif
	pthread_once(&once, init);
	return ready;
}

bool ats__membarrier(void)
{
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
		return true;
	/* Not registered in this process (a child forked from one that was, on a kernel that does not
	 * carry the registration over): register and try once more. */
	return errno == EPERM && syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 &&
	       syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
}
