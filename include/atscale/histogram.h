/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale latency histograms: lock-free, per-core, log-linear buckets with nanosecond resolution
 * (after HdrHistogram), with percentiles and merge. The hedger's adaptive delay reads one; servers
 * can keep their own metrics in them.
 *
 * Buckets. Values below 2^ATS_HISTOGRAM_SUB_BITS (64) ns each have a bucket of their own (exact);
 * above, every power of two [2^k, 2^(k+1)) is split into 64 equal buckets of width 2^(k-6). A
 * value's bucket therefore holds values within 1/64 (1.6%) of it: every figure read back (a
 * percentile, min, max) is the upper bound of a bucket, at most 1/64 of the true value above it,
 * never below. Values from 2^40 ns (about 18 minutes) up are counted in the top bucket (and in
 * `clamped`), whose figures read as 2^40 - 1. ATS_HISTOGRAM_BUCKETS buckets in all.
 *
 * Per-core. Each shard is a full set of counters on its own cache lines; a record adds to the
 * shard of the caller's CPU (rseq's cpu_id, else sched_getcpu; see the pool), so recorders on
 * different cores share no line. Reads add the shards up while recorders go on.
 *
 * Ordering: counters are relaxed atomics. A read sees each record either whole or not at all in
 * each counter, but a read racing records may count a value in `count` and not yet in its bucket
 * (reads are snapshots, not a consistent cut); what has been recorded before a read started (in
 * the happens-before sense) is always seen.
 */
#ifndef ATSCALE_HISTOGRAM_H
#define ATSCALE_HISTOGRAM_H

#include "atscale/common.h"
#include "atscale/error.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ATS_HISTOGRAM_SUB_BITS 6
#define ATS_HISTOGRAM_TOP_BITS 40 /* values up to 2^40 - 1 ns get their own bucket */
#define ATS_HISTOGRAM_BUCKETS ((ATS_HISTOGRAM_TOP_BITS - ATS_HISTOGRAM_SUB_BITS + 1) << ATS_HISTOGRAM_SUB_BITS)
/* The most shards a histogram may have. */
#define ATS_HISTOGRAM_MAX_SHARDS 256u

typedef struct ats_histogram ats_histogram;

/* A copy of a histogram's counters at one time (ats_histogram_snapshot): plain numbers, to read,
 * keep or plot. About 18 KB. */
typedef struct ats_histogram_snapshot {
	uint64_t count;   /* values recorded (the sum of the buckets) */
	uint64_t sum;     /* their sum, ns (wraps after 2^64) */
	uint64_t clamped; /* values at or above 2^40 ns, counted in the top bucket */
	uint64_t buckets[ATS_HISTOGRAM_BUCKETS];
} ats_histogram_snapshot;

/* ---- Making and freeing ---- */

/* Bytes a histogram of `shards` shards takes (0: one per online CPU, rounded up to a power of two,
 * as ats_histogram_new does), for ats_histogram_init in caller memory. 0 above the maximum. */
ATS_API size_t ats_histogram_footprint(unsigned shards);
/* Makes an empty histogram in caller memory h (64-byte aligned, `bytes` long: at least
 * ats_histogram_footprint(shards)). Errors, nothing made: NULL h, bytes too small, shards above
 * ATS_HISTOGRAM_MAX_SHARDS, h not 64-byte aligned (ATS_ERR_INVALID_ARGUMENT). No allocation. */
ATS_API ATS_NODISCARD ats_err *ats_histogram_init(ats_histogram *h, size_t bytes, unsigned shards);
/* The same on the heap. *out NULL on error; the same errors, plus no memory. Blocking
 * (allocation). */
ATS_API ATS_NODISCARD ats_err *ats_histogram_new(ats_histogram **out, unsigned shards);
/* Frees what ats_histogram_new made. NULL-safe. (A histogram in caller memory needs no destroy.) */
ATS_API void ats_histogram_free(ats_histogram *h);

/* ---- Recording ---- */

/* Counts one value (ns) in the caller's CPU's shard. Wait-free: two relaxed atomic adds (the
 * bucket, the sum) on the shard's own lines; no lock, no system call, no allocation (row
 * histogram.record). NULL h: nothing. */
ATS_API void ats_histogram_record(ats_histogram *h, uint64_t value_ns);
/* Counts n values equal to value_ns (a run of equal samples, or a weight). Wait-free. */
ATS_API void ats_histogram_record_n(ats_histogram *h, uint64_t value_ns, uint64_t n);

/* ---- Reading (while recorders go on) ---- */

/* Values recorded so far (the buckets added up). Wait-free; O(shards * buckets). 0 for NULL h. */
ATS_API uint64_t ats_histogram_count(const ats_histogram *h);
/* The q-quantile, q in [0, 1]: the upper bound of the bucket holding the value of rank
 * ceil(q * count) (rank 1 for q = 0: the minimum's bucket), so the exact quantile is at most
 * 1/64 below it. 0 when empty, for NULL h, or q outside [0, 1] (or NaN). Wait-free;
 * O(shards * buckets) loads (row histogram.percentile). */
ATS_API uint64_t ats_histogram_percentile(const ats_histogram *h, double q);
/* The sum of the shards, in *out (see the ordering note above). Wait-free; O(shards * buckets). */
ATS_API void ats_histogram_snapshot_get(const ats_histogram *h, ats_histogram_snapshot *out);
/* The q-quantile of a snapshot, as ats_histogram_percentile. Pure; O(buckets). */
ATS_API uint64_t ats_histogram_snapshot_percentile(const ats_histogram_snapshot *s, double q);
/* The upper bound of the smallest and largest non-empty buckets; 0 when empty. Pure. */
ATS_API uint64_t ats_histogram_snapshot_min(const ats_histogram_snapshot *s);
ATS_API uint64_t ats_histogram_snapshot_max(const ats_histogram_snapshot *s);

/* ---- Combining ---- */

/* Adds src's counts into dst (src unchanged): a merge of per-thread or per-process histograms.
 * src and dst may have different shard counts (the layout of buckets is the same for all).
 * Errors: NULL dst or src, dst == src (ATS_ERR_INVALID_ARGUMENT). Wait-free for dst's recorders
 * and readers (relaxed adds); O(shards * buckets). */
ATS_API ATS_NODISCARD ats_err *ats_histogram_merge(ats_histogram *dst, const ats_histogram *src);
/* Zeroes every counter. Values recorded while it runs may be kept or lost; nothing else breaks.
 * Wait-free; O(shards * buckets) stores. NULL-safe. */
ATS_API void ats_histogram_reset(ats_histogram *h);

/* ---- Buckets ---- */

/* The bucket index of a value (the top one for values from 2^40), and the lowest and highest value
 * of bucket i (0 for i not below ATS_HISTOGRAM_BUCKETS). Pure; a few instructions. */
ATS_API unsigned ats_histogram_bucket_of(uint64_t value_ns);
ATS_API uint64_t ats_histogram_bucket_low(unsigned i);
ATS_API uint64_t ats_histogram_bucket_high(unsigned i);

#ifdef __cplusplus
}
#endif
#endif
