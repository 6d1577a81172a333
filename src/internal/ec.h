/* SPDX-License-Identifier: BSD-2-Clause */
/* The operations atscale gives Concurrency Kit's eventcounts (ck_ec): futex waits on the
 * CLOCK_MONOTONIC scale, so a ck_ec deadline is an atscale deadline.
 *
 * Every parking path built on ck_ec (channels, pool workers) uses these ops and these modes, so
 * one eventcount can be shared between modules without a mismatch in clocks or wake-ups. */
#ifndef ATS_INTERNAL_EC_H
#define ATS_INTERNAL_EC_H

#include "internal/compiler.h"

#include <ck_ec.h>
#include <stdint.h>

extern const struct ck_ec_ops ats__ec_ops;
/* Many threads may increment the eventcount. */
extern const struct ck_ec_mode ats__ec_mode_mp;
/* Exactly one thread ever increments it (ck_ec's cheaper single-producer increment). */
extern const struct ck_ec_mode ats__ec_mode_sp;

/* ns on the CLOCK_MONOTONIC scale <-> the timespec ck_ec takes. ATS__FUTEX_FOREVER has no
 * timespec: pass NULL to ck_ec instead. */
static inline struct timespec ats__ec_timespec(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / ATS_NS_PER_SEC), .tv_nsec = (long)(ns % ATS_NS_PER_SEC)};
	return ts;
}

#endif
