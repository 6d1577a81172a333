/* SPDX-License-Identifier: BSD-2-Clause */
/* Latency histograms (histogram.h): per-core shards of log-linear bucket counters.
 *
 * Why by hand: HdrHistogram_c is not packaged for Debian, and its recording is not per-core (one
 * set of counters, one shared line per bucket under concurrent recording). The bucket math is the
 * same idea: a value's bucket is its power of two (the position of its top bit) and its next
 * ATS_HISTOGRAM_SUB_BITS bits.
 *
 * Layout: a header line, then one shard per line-aligned block: count, sum and clamped on the
 * shard's first line, the buckets after. A shard is written only by recorders on its CPU (and by
 * reset/merge), so recorders on different cores never share a line.
 */
#include "atscale/histogram.h"

#include "internal/compiler.h"
#include "internal/cpu.h"

#include <float.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SUB (1u << ATS_HISTOGRAM_SUB_BITS)
#define TOP_VALUE ((UINT64_C(1) << ATS_HISTOGRAM_TOP_BITS) - 1)

/* No count: it is the sum of the buckets, which every reader adds up anyway, and one atomic add
 * fewer per record. */
struct shard {
	_Alignas(ATS__CACHE_LINE) _Atomic uint64_t sum;
	_Atomic uint64_t clamped;
	_Alignas(ATS__CACHE_LINE) _Atomic uint64_t buckets[ATS_HISTOGRAM_BUCKETS];
};

struct ats_histogram {
	_Alignas(ATS__CACHE_LINE) unsigned nshards; /* a power of two */
	bool heap;
	struct shard shards[];
};

unsigned ats_histogram_bucket_of(uint64_t v)
{
	if (v > TOP_VALUE)
		return ATS_HISTOGRAM_BUCKETS - 1;
	if (v < SUB)
		return (unsigned)v;
	unsigned top = 63u - (unsigned)__builtin_clzll(v); /* >= SUB_BITS */
	unsigned shift = top - ATS_HISTOGRAM_SUB_BITS;
	return (shift + 1) * SUB + (unsigned)((v >> shift) - SUB);
}

uint64_t ats_histogram_bucket_low(unsigned i)
{
	if (i >= ATS_HISTOGRAM_BUCKETS)
		return 0;
	if (i < SUB)
		return i;
	unsigned shift = i / SUB - 1;
	return (uint64_t)(SUB + i % SUB) << shift;
}

uint64_t ats_histogram_bucket_high(unsigned i)
{
	if (i >= ATS_HISTOGRAM_BUCKETS)
		return 0;
	if (i < SUB)
		return i;
	unsigned shift = i / SUB - 1;
	return ats_histogram_bucket_low(i) + (UINT64_C(1) << shift) - 1;
}

static unsigned default_shards(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = 1;
	while (n < (unsigned)(cpus > 0 ? cpus : 1) && n < ATS_HISTOGRAM_MAX_SHARDS)
		n <<= 1;
	return n;
}

/* The shard count a request gets: rounded up to a power of two (so a CPU maps with a mask). */
static unsigned shards_for(unsigned shards)
{
	if (shards == 0)
		return default_shards();
	unsigned n = 1;
	while (n < shards)
		n <<= 1;
	return n;
}

size_t ats_histogram_footprint(unsigned shards)
{
	if (shards > ATS_HISTOGRAM_MAX_SHARDS)
		return 0;
	return sizeof(struct ats_histogram) + (size_t)shards_for(shards) * sizeof(struct shard);
}

ats_err *ats_histogram_init(ats_histogram *h, size_t bytes, unsigned shards)
{
	if (!h)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "histogram: NULL histogram");
	if (shards > ATS_HISTOGRAM_MAX_SHARDS)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "histogram: %u shards, above %u", shards,
		                   ATS_HISTOGRAM_MAX_SHARDS);
	if ((uintptr_t)h % ATS__CACHE_LINE)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "histogram: memory not %d-byte aligned", ATS__CACHE_LINE);
	size_t need = ats_histogram_footprint(shards);
	if (bytes < need)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "histogram: %zu bytes given, %zu needed", bytes, need);
	memset(h, 0, need); /* all-zero atomics are valid zero counters (C11 lock-free atomics) */
	h->nshards = shards_for(shards);
	h->heap = false;
	return NULL;
}

ats_err *ats_histogram_new(ats_histogram **out, unsigned shards)
{
	if (!out)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "histogram: NULL out");
	*out = NULL;
	size_t need = ats_histogram_footprint(shards);
	if (need == 0)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "histogram: %u shards, above %u", shards,
		                   ATS_HISTOGRAM_MAX_SHARDS);
	ats_histogram *h =
	    aligned_alloc(ATS__CACHE_LINE, (need + ATS__CACHE_LINE - 1) & ~(size_t)(ATS__CACHE_LINE - 1));
	if (!h)
		return ats_err_oom;
	ats_err *err = ats_histogram_init(h, need, shards);
	if (err) {
		free(h);
		return err;
	}
	h->heap = true;
	*out = h;
	return NULL;
}

void ats_histogram_free(ats_histogram *h)
{
	if (h && h->heap)
		free(h);
}

void ats_histogram_record_n(ats_histogram *h, uint64_t v, uint64_t n)
{
	if (ats__unlikely(!h || n == 0))
		return;
	struct shard *s = &h->shards[ats__current_cpu() & (h->nshards - 1)];
	/* relaxed, all: counters that publish nothing (see the ordering note in histogram.h). */
	atomic_fetch_add_explicit(&s->buckets[ats_histogram_bucket_of(v)], n, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->sum, v * n, memory_order_relaxed);
	if (ats__unlikely(v > TOP_VALUE))
		atomic_fetch_add_explicit(&s->clamped, n, memory_order_relaxed);
}

void ats_histogram_record(ats_histogram *h, uint64_t v)
{
	ats_histogram_record_n(h, v, 1);
}

uint64_t ats_histogram_count(const ats_histogram *h)
{
	if (!h)
		return 0;
	uint64_t n = 0;
	for (unsigned i = 0; i < h->nshards; i++) {
		struct shard *s = (struct shard *)&h->shards[i];
		for (unsigned b = 0; b < ATS_HISTOGRAM_BUCKETS; b++)
			/* relaxed: a statistic. */
			n += atomic_load_explicit(&s->buckets[b], memory_order_relaxed);
	}
	return n;
}

void ats_histogram_snapshot_get(const ats_histogram *h, ats_histogram_snapshot *out)
{
	if (!out)
		return;
	memset(out, 0, sizeof *out);
	if (!h)
		return;
	for (unsigned i = 0; i < h->nshards; i++) {
		struct shard *s = (struct shard *)&h->shards[i];
		/* relaxed, all: see the ordering note in histogram.h. */
		out->sum += atomic_load_explicit(&s->sum, memory_order_relaxed);
		out->clamped += atomic_load_explicit(&s->clamped, memory_order_relaxed);
		for (unsigned b = 0; b < ATS_HISTOGRAM_BUCKETS; b++) {
			uint64_t n = atomic_load_explicit(&s->buckets[b], memory_order_relaxed);
			out->buckets[b] += n;
			out->count += n;
		}
	}
}

/* The bucket's figure: its upper bound, the top bucket's read as 2^40 - 1. */
static uint64_t figure(unsigned b)
{
	return ats_histogram_bucket_high(b);
}

uint64_t ats_histogram_snapshot_percentile(const ats_histogram_snapshot *s, double q)
{
	if (!s || !(q >= 0.0 && q <= 1.0))
		return 0;
	uint64_t total = 0;
	for (unsigned b = 0; b < ATS_HISTOGRAM_BUCKETS; b++)
		total += s->buckets[b]; /* not s->count: a caller may have added buckets up itself */
	if (total == 0)
		return 0;
	/* ceil(q * total), forgiving the few ulps by which q and the product may be off (0.99 * 100
	 * is 99.00000000000001), and no more: a tolerance relative to x (it was 1e-9 * x) grows past
	 * a whole rank once q * total passes 1e9, and the rank then rounds down, a bucket below the
	 * quantile. Capped at half a rank where an ulp is that large (x near 2^51 and above). */
	double x = q * (double)total;
	uint64_t rank = total; /* x at or past (double)total, which may be 2^64: no conversion */
	if (x < (double)total) {
		rank = (uint64_t)x;
		double tolerance = 4 * DBL_EPSILON * x;
		if (x - (double)rank > (tolerance < 0.5 ? tolerance : 0.5))
			rank++;
	}
	if (rank == 0)
		rank = 1;
	if (rank > total)
		rank = total;
	uint64_t seen = 0;
	for (unsigned b = 0; b < ATS_HISTOGRAM_BUCKETS; b++) {
		seen += s->buckets[b];
		if (seen >= rank)
			return figure(b);
	}
	return figure(ATS_HISTOGRAM_BUCKETS - 1);
}

uint64_t ats_histogram_snapshot_min(const ats_histogram_snapshot *s)
{
	for (unsigned b = 0; s && b < ATS_HISTOGRAM_BUCKETS; b++)
		if (s->buckets[b])
			return figure(b);
	return 0;
}

uint64_t ats_histogram_snapshot_max(const ats_histogram_snapshot *s)
{
	for (unsigned b = ATS_HISTOGRAM_BUCKETS; s && b-- > 0;)
		if (s->buckets[b])
			return figure(b);
	return 0;
}

uint64_t ats_histogram_percentile(const ats_histogram *h, double q)
{
	if (!h)
		return 0;
	/* On the heap, not the stack: a snapshot is ~18 KB. */
	ats_histogram_snapshot *s = malloc(sizeof *s);
	if (!s)
		return 0;
	ats_histogram_snapshot_get(h, s);
	uint64_t v = ats_histogram_snapshot_percentile(s, q);
	free(s);
	return v;
}

ats_err *ats_histogram_merge(ats_histogram *dst, const ats_histogram *src)
{
	if (!dst || !src || dst == src)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "histogram: merge %s",
		                   dst == src && dst ? "into itself" : "with a NULL histogram");
	struct shard *d = &dst->shards[ats__current_cpu() & (dst->nshards - 1)];
	for (unsigned i = 0; i < src->nshards; i++) {
		struct shard *s = (struct shard *)&src->shards[i];
		/* relaxed, all: counters (see the ordering note in histogram.h). */
		atomic_fetch_add_explicit(&d->sum, atomic_load_explicit(&s->sum, memory_order_relaxed),
		                          memory_order_relaxed);
		atomic_fetch_add_explicit(&d->clamped, atomic_load_explicit(&s->clamped, memory_order_relaxed),
		                          memory_order_relaxed);
		for (unsigned b = 0; b < ATS_HISTOGRAM_BUCKETS; b++) {
			uint64_t n = atomic_load_explicit(&s->buckets[b], memory_order_relaxed);
			if (n)
				atomic_fetch_add_explicit(&d->buckets[b], n, memory_order_relaxed);
		}
	}
	return NULL;
}

void ats_histogram_reset(ats_histogram *h)
{
	if (!h)
		return;
	for (unsigned i = 0; i < h->nshards; i++) {
		struct shard *s = &h->shards[i];
		/* relaxed, all: see the note on reset in histogram.h. */
		atomic_store_explicit(&s->sum, 0, memory_order_relaxed);
		atomic_store_explicit(&s->clamped, 0, memory_order_relaxed);
		for (unsigned b = 0; b < ATS_HISTOGRAM_BUCKETS; b++)
			atomic_store_explicit(&s->buckets[b], 0, memory_order_relaxed);
	}
}
