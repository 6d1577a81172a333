/* SPDX-License-Identifier: BSD-2-Clause */
/* The sharded limiter (include/atscale/limiter.h): per-core shards and per-thread slots leasing
 * batches from one exact limiter (limiter.c), and the process-wide thread indices that own the
 * slots. The hit paths are inline in limiter_inl.h; this file holds life cycle, leasing and the
 * fallbacks. */
#include "atscale/limiter.h"
#include "internal/compiler.h"
#include "internal/limiter.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- Sharded limiter ---- */

ats_err *ats_sharded_init_at(ats_sharded *s, const ats_sharded_config *cfg, uint64_t now_ns)
{
	if (!s || !cfg)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "sharded limiter or config is NULL");
	uint32_t shards = cfg->shards;
	if (shards == 0) {
		long n = sysconf(_SC_NPROCESSORS_CONF);
		shards = n > 0 ? (uint32_t)n : 1;
	}
	uint64_t batch = cfg->batch;
	if (batch == 0) {
		batch = cfg->burst / (2 * (uint64_t)shards);
		if (batch == 0)
			batch = 1;
		if (batch > ATS_SHARDED_MAX_BATCH)
			batch = ATS_SHARDED_MAX_BATCH;
	} else if (batch > ATS_SHARDED_MAX_BATCH || (batch > cfg->burst && !ats_rate_is_inf(cfg->rate))) {
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "batch %llu exceeds the burst (%llu) or 2^24 - 2",
		                   (unsigned long long)batch, (unsigned long long)cfg->burst);
	}
	uint64_t lease_ns = cfg->lease_ns ? cfg->lease_ns : 1000000;
	if (lease_ns > ATS_SHARDED_MAX_LEASE_NS)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "lease %llu ns exceeds 2^38 ns",
		                   (unsigned long long)lease_ns);
	ats_err *err = ats_limiter_init_at(&s->exact_, cfg->rate, cfg->burst, now_ns);
	if (err)
		return ats_err_wrap(err, "initializing a sharded limiter");
	s->shards_ = aligned_alloc(ATS__CACHE_LINE, sizeof *s->shards_ * 2 * (size_t)shards);
	if (!s->shards_)
		return ats_err_oom;
	/* Empty, last used at now_ns: a word of 0 would read as used at time 0 mod 2^40, which is "in
	 * the future" (a stale now_ns) for half of all times, and such a cache would never lease. */
	for (uint32_t i = 0; i < 2 * shards; i++)
		atomic_init(&s->shards_[i].word, now_ns << 24);
	s->slots_ = s->shards_ + shards;
	s->nshards_ = shards;
	s->batch_ = batch;
	s->lease_ns_ = lease_ns;
	return NULL;
}

ats_err *ats_sharded_init(ats_sharded *s, const ats_sharded_config *cfg)
{
	return ats_sharded_init_at(s, cfg, ats_fast_now_ns());
}

void ats_sharded_destroy(ats_sharded *s)
{
	if (s) {
		free(s->shards_);
		s->shards_ = NULL;
		s->slots_ = NULL;
	}
}

ats_err *ats_sharded_new(ats_sharded **out, const ats_sharded_config *cfg)
{
	if (!out)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "out is NULL");
	*out = NULL;
	ats_sharded *s = aligned_alloc(ATS__CACHE_LINE, sizeof *s);
	if (!s)
		return ats_err_oom;
	ats_err *err = ats_sharded_init(s, cfg);
	if (err) {
		free(s);
		return err;
	}
	*out = s;
	return NULL;
}

void ats_sharded_free(ats_sharded *s)
{
	ats_sharded_destroy(s);
	free(s);
}

/* A lease word keeps 40 bits of its last use's time, so the age it gives is modulo 2^40. Behind
 * the last use by up to 2^38 ns (a caller's older timestamp): stale. Further behind, the time
 * wrapped: the last use was more than 2^39 ns ago, so the lease has expired (lease_ns <= 2^38); it
 * is leased again, where treating it as stale sent every call to the exact bucket for the next
 * 2^39 ns. */
static bool stale(int64_t age)
{
	return age < 0 && age >= -(INT64_C(1) << 38);
}

bool ats__sharded_slow(ats_sharded *s, _Atomic uint64_t *p, uint64_t n, uint64_t now_ns)
{
	if (n == 0)
		return true;
	if (n > s->batch_)
		return ats_limiter_allow_at(&s->exact_, n, now_ns);
	/* Relaxed, this load and the three CASes below: the shard's word is its whole state (a count,
	 * a time and the leasing marker); no other data is published with it, and its modification
	 * order alone keeps the count exact and the lease single. The load is validated by the CAS. */
	uint64_t w = atomic_load_explicit(p, memory_order_relaxed);
	for (;;) {
		uint64_t tok = w & ATS__SHARD_TOKENS;
		int64_t age = (int64_t)((now_ns - (w >> 24)) << 24) >> 24;
		/* A now_ns older than the shard's last use must not reuse its lease (the shard's operations
		 * stay ordered by time, which the over-admission bound relies on): exact bucket. */
		if (stale(age))
			return ats_limiter_allow_at(&s->exact_, n, now_ns);
		bool fresh = age >= 0 && (uint64_t)age <= s->lease_ns_;
		if (tok != ATS__SHARD_LEASING && fresh && tok >= n) {
			if (atomic_compare_exchange_weak_explicit(p, &w, (now_ns << 24) | (tok - n),
			                                          memory_order_relaxed, memory_order_relaxed))
				return true;
			continue;
		}
		/* Another thread is leasing for this shard: never wait for it. */
		if (tok == ATS__SHARD_LEASING && fresh)
			return ats_limiter_allow_at(&s->exact_, n, now_ns);
		/* Empty, short or expired (its tokens are dropped): lease, holding the shard meanwhile so
		 * that it never has more than one lease outstanding. */
		uint64_t marker = (now_ns << 24) | ATS__SHARD_LEASING;
		if (!atomic_compare_exchange_weak_explicit(p, &w, marker, memory_order_relaxed, memory_order_relaxed))
			continue;
		uint64_t got = ats__limiter_take_upto_at(&s->exact_, n, s->batch_, now_ns);
		uint64_t lease = (now_ns << 24) | (got ? got - n : 0);
		/* Fails only if the marker was taken over after lease_ns: the lease is dropped. */
		atomic_compare_exchange_strong_explicit(p, &marker, lease, memory_order_relaxed, memory_order_relaxed);
		return got != 0;
	}
}

/* ---- Thread indices (the per-thread slots' owners) ----
 * Process-wide, lowest free first, so that the threads alive at once hold the indices below their
 * count. Handed out once per thread under a mutex (not a hot path) and handed back by a pthread key
 * destructor at thread exit; the mutex orders the old owner's last slot writes before the new
 * owner's first reads. A fork()ed child keeps its parent's other threads' indices (leaked: those
 * slots go unused there). */

__thread uint32_t ats__thread_index1 __attribute__((tls_model("initial-exec")));

static pthread_mutex_t index_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t index_once = PTHREAD_ONCE_INIT;
static pthread_key_t index_key;
static bool index_key_ok;
static uint8_t *index_used; /* index_cap flags */
static uint32_t index_cap;

static void index_release(void *p)
{
	uint32_t i = (uint32_t)(uintptr_t)p - 1;
	pthread_mutex_lock(&index_lock);
	if (i < index_cap)
		index_used[i] = 0;
	pthread_mutex_unlock(&index_lock);
	/* Calls after this point (other destructors) take the shared paths. */
	ats__thread_index1 = UINT32_MAX;
}

static void index_init(void)
{
	index_key_ok = pthread_key_create(&index_key, index_release) == 0;
}

/* Gives the calling thread its index; leaves it at 0 (shared paths, retried next call) when out of
 * memory. */
static void index_assign(void)
{
	pthread_once(&index_once, index_init);
	if (!index_key_ok) {
		ats__thread_index1 = UINT32_MAX;
		return;
	}
	pthread_mutex_lock(&index_lock);
	uint32_t i = 0;
	while (i < index_cap && index_used[i])
		i++;
	if (i == index_cap) {
		uint32_t cap = index_cap ? 2 * index_cap : 64;
		uint8_t *used = cap > index_cap && cap < UINT32_MAX / 2 ? realloc(index_used, cap) : NULL;
		if (!used) {
			pthread_mutex_unlock(&index_lock);
			return;
		}
		memset(used + index_cap, 0, cap - index_cap);
		index_used = used;
		index_cap = cap;
	}
	index_used[i] = 1;
	pthread_mutex_unlock(&index_lock);
	if (pthread_setspecific(index_key, (void *)(uintptr_t)(i + 1)) != 0) {
		index_release((void *)(uintptr_t)(i + 1));
		return;
	}
	ats__thread_index1 = i + 1;
}

bool ats__sharded_thread_slow(ats_sharded *s, uint64_t n, uint64_t now_ns)
{
	if (ats__thread_index1 == 0)
		index_assign();
	uint32_t i = ats__thread_index1 - 1;
	if (i >= s->nshards_)
		return ats_sharded_allow_shard_at(s, ats__current_cpu(), n, now_ns);
	if (n == 0)
		return true;
	if (n > s->batch_)
		return ats_limiter_allow_at(&s->exact_, n, now_ns);
	/* The slot is this thread's alone: plain relaxed load and store (both stores below too); the
	 * index lock orders a previous owner's last store before this thread's first load. */
	_Atomic uint64_t *p = &s->slots_[i].word;
	uint64_t w = atomic_load_explicit(p, memory_order_relaxed);
	uint64_t tok = w & ATS__SHARD_TOKENS;
	int64_t age = (int64_t)((now_ns - (w >> 24)) << 24) >> 24;
	/* A now_ns older than the slot's last use must not reuse its lease (the slot's operations stay
	 * ordered by time, which the over-admission bound relies on): exact bucket. */
	if (stale(age))
		return ats_limiter_allow_at(&s->exact_, n, now_ns);
	if (age >= 0 && (uint64_t)age <= s->lease_ns_ && tok >= n) {
		atomic_store_explicit(p, (now_ns << 24) | (tok - n), memory_order_relaxed);
		return true;
	}
	/* Empty, short or expired (its tokens are dropped): lease a new batch. */
	uint64_t got = ats__limiter_take_upto_at(&s->exact_, n, s->batch_, now_ns);
	atomic_store_explicit(p, (now_ns << 24) | (got ? got - n : 0), memory_order_relaxed);
	return got != 0;
}
