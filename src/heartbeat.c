/* SPDX-License-Identifier: BSD-2-Clause */
/* Heartbeats (heartbeat.h): the out-of-line beat paths, waiting, and the watch with phi accrual.
 *
 * Why waiting is correct with no fence on the beat path. A beat stores the word, then (compiler
 * barrier only) loads waiters_; a waiter increments waiters_, issues
 * membarrier(PRIVATE_EXPEDITED), then loads the word. membarrier returns only after every other
 * running thread of the process has run a full barrier, so for any beat either its store came
 * before that barrier (the waiter's load, after membarrier, sees it: no sleep) or its load of
 * waiters_ came after it (it sees the waiter and wakes it). Once announced, a waiter needs no
 * second membarrier: every later beat's load of waiters_ comes after that barrier.
 *
 * Why no wake-up is lost. Waiters sleep on wake_, a word of their own that every wake bumps
 * before its futex wake: a beat that saw a waiter, and the after-func of a waiter's ctx when it
 * is cancelled. A waiter reads wake_ (acquire) before it reads the word and its ctx, and sleeps
 * only while wake_ still holds what it read. A wake whose bump that read did not see bumps
 * later, so the sleep returns at once or is woken; one whose bump it saw (release) came after
 * the beat's store or the cancel, which the waiter's later reads see. One word, so this holds on
 * every kernel, futex_waitv or not; a waiter's cancel also wakes the heartbeat's other waiters,
 * which look and sleep again. */
#include "atscale/heartbeat.h"
#include "atscale/clock.h"
#include "internal/compiler.h"
#include "internal/futex.h"
#include "internal/membarrier.h"
#ifdef ATS_TESTING
#include "internal/heartbeat_hooks.h"
#endif

#include <math.h>

#ifdef ATS_TESTING
uint32_t ats__heartbeat_waiters(const ats_heartbeat *h)
{
	return atomic_load((_Atomic uint32_t *)&h->waiters_);
}
#endif

/* ---- Making ---- */

ats_err *ats_heartbeat_init(ats_heartbeat *h, const ats_heartbeat_config *cfg)
{
	if (!h)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "heartbeat: NULL heartbeat");
	atomic_init(&h->word_, 0);
	atomic_init(&h->waiters_, 0);
	atomic_init(&h->wake_, 0);
	h->interval_ns_ = cfg ? cfg->interval_ns : 0;
	h->next_tick_ns_ = 0;
	h->pulse_ = cfg ? cfg->pulse : NULL;
	return NULL;
}

void ats_heartbeat_destroy(ats_heartbeat *h)
{
	(void)h;
}

/* ---- Beating ---- */

void ats__heartbeat_wake(ats_heartbeat *h)
{
	/* release: a waiter that reads the new value sees the beat or the cancel before it. */
	atomic_fetch_add_explicit(&h->wake_, 1, memory_order_release);
	ats__futex_wake(&h->wake_, INT32_MAX);
}

/* The after-func of a waiter's ctx: wakes every waiter (the cancelled one re-checks its ctx). */
static void wake_on_cancel(void *h)
{
	ats__heartbeat_wake(h);
}

void ats_heartbeat_beat_with_pulse(ats_heartbeat *h)
{
	ats_heartbeat_beat(h);
	if (h->pulse_)
		(void)ats_chan_try_send(h->pulse_, h); /* full: dropped, as the seed's select default */
}

bool ats_heartbeat_tick(ats_heartbeat *h, uint64_t now_ns)
{
	if (!h->interval_ns_ || now_ns < h->next_tick_ns_)
		return false;
	ats_heartbeat_beat(h);
	h->next_tick_ns_ = ats__add_sat(now_ns, h->interval_ns_); /* an interval near UINT64_MAX: once */
	return true;
}

/* ---- Waiting ---- */

const char *ats_heartbeat_wake_path(void)
{
	return ats__membarrier_ready() ? "membarrier" : "bounded poll";
}

ats_err *ats_heartbeat_wait(ats_heartbeat *h, uint64_t count, ats_ctx *ctx)
{
	if (!h || !ctx)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "heartbeat: NULL %s", h ? "ctx" : "heartbeat");
	if (ats_heartbeat_count(h) >= count)
		return NULL;
	ats_ctx_after after;
	ats_ctx_after_func(ctx, &after, wake_on_cancel, h);
	/* seq_cst: announced before the membarrier below (the waiter's half of the Dekker pair). */
	atomic_fetch_add_explicit(&h->waiters_, 1, memory_order_seq_cst);
	bool mb = ats__membarrier_ready();
	if (mb && !ats__membarrier())
		mb = false; /* cannot happen once registered; if it does, poll rather than risk a loss */
	uint64_t deadline = ats_ctx_deadline(ctx);
	ats_err *err = NULL;
	for (;;) {
		/* acquire: pairs with ats__heartbeat_wake's release (file comment). */
		uint32_t v = atomic_load_explicit(&h->wake_, memory_order_acquire);
		/* acquire: pairs with the beat's release store. */
		uint64_t w = atomic_load_explicit(&h->word_, memory_order_acquire);
		if ((w >> 1) >= count)
			break;
		if (ats_ctx_done(ctx) || (deadline != ATS_CTX_NO_DEADLINE && ats_now_ns() >= deadline)) {
			if ((err = ats_ctx_err(ctx)))
				break;
		}
		uint64_t until = deadline;
		if (!mb) {
			uint64_t poll = ats_now_ns() + ATS_HEARTBEAT_POLL_NS;
			until = poll < deadline ? poll : deadline;
		}
		ats__futex_wait(&h->wake_, v, until);
	}
	atomic_fetch_sub_explicit(&h->waiters_, 1, memory_order_relaxed);
	ats_ctx_after_stop(&after);
	return err;
}

/* ---- Watching ---- */

ats_err *ats_heartbeat_watch_init(ats_heartbeat_watch *w, const ats_heartbeat *h, const ats_heartbeat_watch_config *cfg,
                                  uint64_t now_ns)
{
	if (!w || !h || !cfg)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "heartbeat watch: NULL %s",
		                   !w   ? "watch"
		                   : !h ? "heartbeat"
		                        : "config");
	if (cfg->timeout_ns == 0)
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "heartbeat watch: timeout 0");
	if (!(cfg->phi_threshold >= 0 && cfg->phi_threshold < ATS_HEARTBEAT_PHI_MAX))
		return ats_err_new(ATS_ERR_INVALID_ARGUMENT, "heartbeat watch: phi threshold %g", cfg->phi_threshold);
	w->h_ = h;
	w->timeout_ns_ = cfg->timeout_ns;
	w->phi_threshold_ = cfg->phi_threshold;
	uint64_t word = atomic_load_explicit((_Atomic uint64_t *)&h->word_, memory_order_acquire);
	w->last_count_ = word >> 1;
	w->last_pending_ = word & 1;
	w->last_change_ns_ = now_ns;
	w->n_ = w->next_ = 0;
	return NULL;
}

double ats_heartbeat_phi(const ats_heartbeat_watch *w, uint64_t now_ns)
{
	if (w->n_ < ATS_HEARTBEAT_MIN_SAMPLES)
		return 0;
	double sum = 0, sq = 0;
	for (uint32_t i = 0; i < w->n_; i++) {
		double x = (double)w->intervals_[i];
		sum += x, sq += x * x;
	}
	double mean = sum / w->n_;
	double var = sq / w->n_ - mean * mean;
	double sd = var > 0 ? sqrt(var) : 0;
	if (sd < mean / 4)
		sd = mean / 4;
	if (sd <= 0)
		sd = 1;
	double t = now_ns > w->last_change_ns_ ? (double)(now_ns - w->last_change_ns_) : 0;
	double p = 0.5 * erfc((t - mean) / (sd * M_SQRT2)); /* P(interval > t) */
	if (p <= 1e-300)
		return ATS_HEARTBEAT_PHI_MAX;
	double phi = -log10(p);
	return phi < ATS_HEARTBEAT_PHI_MAX ? phi : ATS_HEARTBEAT_PHI_MAX;
}

ats_heartbeat_health ats_heartbeat_check(ats_heartbeat_watch *w, uint64_t now_ns)
{
	/* acquire: pairs with the beat's release store. */
	uint64_t word = atomic_load_explicit((_Atomic uint64_t *)&w->h_->word_, memory_order_acquire);
	uint64_t count = word >> 1;
	bool pending = word & 1;
	if (count != w->last_count_) {
		/* Only intervals of a busy worker teach phi what silence is normal: an idle spell is no
		 * measure of how often work beats. */
		if (w->last_pending_ && now_ns > w->last_change_ns_) {
			w->intervals_[w->next_] = now_ns - w->last_change_ns_;
			w->next_ = (w->next_ + 1) % ATS_HEARTBEAT_WINDOW;
			if (w->n_ < ATS_HEARTBEAT_WINDOW)
				w->n_++;
		}
		w->last_count_ = count;
		w->last_change_ns_ = now_ns;
		w->last_pending_ = pending;
		return pending ? ATS_HB_HEALTHY : ATS_HB_IDLE;
	}
	w->last_pending_ = pending;
	if (!pending)
		return ATS_HB_IDLE;
	uint64_t silent = now_ns > w->last_change_ns_ ? now_ns - w->last_change_ns_ : 0;
	if (silent < w->timeout_ns_)
		return ATS_HB_HEALTHY;
	if (w->phi_threshold_ > 0 && w->n_ >= ATS_HEARTBEAT_MIN_SAMPLES)
		return ats_heartbeat_phi(w, now_ns) > w->phi_threshold_ ? ATS_HB_STALLED : ATS_HB_HEALTHY;
	return ATS_HB_STALLED;
}

uint64_t ats_heartbeat_last_beat_ns(const ats_heartbeat_watch *w)
{
	return w->last_change_ns_;
}

uint64_t ats_heartbeat_stall_at(const ats_heartbeat_watch *w)
{
	if (!w->last_pending_)
		return UINT64_MAX;
	return ats__add_sat(w->last_change_ns_, w->timeout_ns_);
}
