/* SPDX-License-Identifier: BSD-2-Clause */
/* The asymmetric fence (internal/membarrier.h). */
#include "internal/membarrier.h"

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

bool ats__membarrier_ready(void)
{
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
