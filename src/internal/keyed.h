/* SPDX-License-Identifier: BSD-2-Clause */
/* Private hooks of the keyed module, for its tests. They exist only in
 * the test variant of the library (atscale_testing, built with -DATS_TESTING), never in the
 * installed one. */
#ifndef ATSCALE_INTERNAL_KEYED_H
#define ATSCALE_INTERNAL_KEYED_H

#include <stdatomic.h>
#include <stdint.h>

/* While non-zero, every table allocation fails as if malloc had returned NULL (tests prove that
 * out-of-memory changes nothing). */
extern _Atomic int ats__keyed_fail_alloc;

/* When set, called where a test may hold a thread to force an interleaving: a reader that found a
 * key's slot, before it takes from it (ATS__KEYED_PAUSE_FOUND); a resize that published a key's
 * copy in the new table, before it marks the old slot (ATS__KEYED_PAUSE_COPIED); a take (or a
 * tokens_at that met a slot being killed) that goes to the slow path, before it locks the writer
 * mutex (ATS__KEYED_PAUSE_SLOW). aux: the slot's aux word (its override id above bit 0); 0 for SLOW. */
/* Also: a writer that swapped a LIVE slot's TAT for the gone mark, before it stores DEAD (slot_evict and
 * set_limit: ATS__KEYED_PAUSE_KILLED, aux the slot's aux); the CLOCK hand that just cleared a key's
 * reference bit (ATS__KEYED_PAUSE_HAND). */
enum {
	ATS__KEYED_PAUSE_FOUND = 1,
	ATS__KEYED_PAUSE_COPIED = 2,
	ATS__KEYED_PAUSE_SLOW = 3,
	ATS__KEYED_PAUSE_KILLED = 4,
	ATS__KEYED_PAUSE_HAND = 5,
};
extern void (*_Atomic ats__keyed_pause)(int point, uint32_t aux);
/* Iterations of ats_keyed_tokens_at's lookup loop (tables and slots visited), all threads. */
extern _Atomic unsigned long ats__keyed_tokens_loops;

#endif
