/* atscale: the whole public API. */
#ifndef ATSCALE_H
#define ATSCALE_H

#include "atscale/chan.h"
#include "atscale/clock.h"
#include "atscale/error.h"
#include "atscale/ctx.h"
#include "atscale/gcra.h"
#include "atscale/keyed.h"
#include "atscale/limiter.h"

#endif
