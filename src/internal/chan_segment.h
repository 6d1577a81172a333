/* SPDX-License-Identifier: BSD-2-Clause */
/* Channels a bridge owns as its segments (bridge.c; not API). The bridge alone decides when a
 * segment ends (the next open, or the bridge's close): a producer's ats_chan_close on its segment
 * would end the stream for every consumer while the bridge is open, so it is refused. */
#ifndef ATS_INTERNAL_CHAN_SEGMENT_H
#define ATS_INTERNAL_CHAN_SEGMENT_H

#include "atscale/chan.h"

/* Marks c, just initialized, as a bridge's segment: ats_chan_close refuses it from then on. */
void ats__chan_mark_segment(ats_chan *c);

/* ats_chan_close for the bridge itself (same results, segment or not). */
ATS_NODISCARD ats_err *ats__chan_close_segment(ats_chan *c);

#endif
