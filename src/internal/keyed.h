/* SPDX-License-Identifier: BSD-2-Clause */
/* Private hooks of the keyed module, for its tests. They exist only in
 * the test variant of the library (atscale_testing, built with -DATS_TESTING), never in the
 * installed one. */
#ifndef ATSCALE_INTERNAL_KEYED_H
#define ATSCALE_INTERNAL_KEYED_H

#include <stdatomic.h>

/* While non-zero, every table allocation fails as if malloc had returned NULL (tests prove that
 * out-of-memory changes nothing). */
extern _Atomic int ats__keyed_fail_alloc;

#endif
