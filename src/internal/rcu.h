/* SPDX-License-Identifier: BSD-2-Clause */
/* liburcu (memb flavour) thread registration, shared by everything that reads under RCU (the keyed
 * maps, the keyed fleet limiter): a thread is registered on its first call and unregistered when
 * it exits (a pthread key destructor); a thread the application registered itself is used as it
 * is, and stays the application's to unregister. */
#ifndef ATS_INTERNAL_RCU_H
#define ATS_INTERNAL_RCU_H

/* liburcu's inline read side (rcu_read_lock without a call), which it offers under _LGPL_SOURCE. */
#ifndef _LGPL_SOURCE
#define _LGPL_SOURCE
#endif
#include <urcu/urcu-memb.h>

/* Registers the calling thread and arranges its unregistration at exit. Blocking (liburcu's
 * registry mutex); once per thread. */
void ats__rcu_register_slow(void);

/* A thread-local test on the hot path; registers the thread on its first call. */
static inline void ats__rcu_register(void)
{
	if (caa_unlikely(!URCU_TLS(urcu_memb_reader).registered))
		ats__rcu_register_slow();
}

#endif
