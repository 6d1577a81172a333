/* SPDX-License-Identifier: BSD-2-Clause */
/* liburcu thread registration (internal/rcu.h). */
#include "internal/rcu.h"

#include <pthread.h>

static pthread_key_t reg_key;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

static void reg_exit(void *arg)
{
	(void)arg;
	urcu_memb_unregister_thread();
}

static void reg_key_make(void)
{
	(void)pthread_key_create(&reg_key, reg_exit);
}

__attribute__((noinline)) void ats__rcu_register_slow(void)
{
	pthread_once(&reg_once, reg_key_make);
	urcu_memb_register_thread();
	(void)pthread_setspecific(reg_key, (void *)1);
}
