/* SPDX-License-Identifier: BSD-2-Clause */
#include "internal/ec.h"
#include "internal/futex.h"
#ifdef ATS_TESTING
#include "internal/ec_hooks.h"

#include <stdlib.h>
#include <string.h>
#endif

#include "atscale/clock.h"

#include <ck_pr.h>
#include <errno.h>
#include <stdatomic.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ec_gettime(const struct ck_ec_ops *ops, struct timespec *out)
{
	(void)ops;
	return clock_gettime(CLOCK_MONOTONIC, out);
}

static uint64_t ec_deadline_ns(const struct timespec *deadline)
{
	if (!deadline)
		return ATS__FUTEX_FOREVER;
	return (uint64_t)deadline->tv_sec * ATS_NS_PER_SEC + (uint64_t)deadline->tv_nsec;
}

static void ec_wait32(const struct ck_ec_wait_state *state, const uint32_t *addr, uint32_t expected,
                      const struct timespec *deadline)
{
	(void)state;
	ats__futex_wait((const _Atomic uint32_t *)addr, expected, ec_deadline_ns(deadline));
}

/* ck_ec64 keeps its waiter flag and low counter bits in the low half (little-endian here, as
 * every target atscale builds for), so a futex on that half sees every change that matters. */
static void ec_wait64(const struct ck_ec_wait_state *state, const uint64_t *addr, uint64_t expected,
                      const struct timespec *deadline)
{
	(void)state;
	ats__futex_wait((const _Atomic uint32_t *)addr, (uint32_t)expected, ec_deadline_ns(deadline));
}

static void wake_watchers(const uint32_t *addr);

static void ec_wake32(const struct ck_ec_ops *ops, const uint32_t *addr)
{
	(void)ops;
	ats__futex_wake((const _Atomic uint32_t *)addr, INT32_MAX);
	wake_watchers(addr);
}

static void ec_wake64(const struct ck_ec_ops *ops, const uint64_t *addr)
{
	(void)ops;
	ats__futex_wake((const _Atomic uint32_t *)addr, INT32_MAX);
}

/* Spin and back-off parameters stay at ck_ec's defaults; every wait passes the caller's own
 * deadline, which ck_ec honours on top of its back-off. */
const struct ck_ec_ops ats__ec_ops = {
    .gettime = ec_gettime,
    .wait32 = ec_wait32,
    .wait64 = ec_wait64,
    .wake32 = ec_wake32,
    .wake64 = ec_wake64,
};

const struct ck_ec_mode ats__ec_mode_mp = {.ops = &ats__ec_ops, .single_producer = false};
const struct ck_ec_mode ats__ec_mode_sp = {.ops = &ats__ec_ops, .single_producer = true};

uint32_t ats__ec_arm(struct ck_ec32 *ec)
{
	uint32_t cur = ck_pr_load_32(&ec->counter);
	for (;;) {
		if (cur & ATS__EC_FLAG)
			return cur;
		if (ck_pr_cas_32_value(&ec->counter, cur, cur | ATS__EC_FLAG, &cur))
			return cur | ATS__EC_FLAG;
	}
}

#ifdef ATS_TESTING
_Thread_local unsigned long ats__futex_sleeps;
_Atomic int ats__ec_force_no_waitv;
_Atomic unsigned long ats__ec_fallback_sleeps;

/* Whole suites can run as on a kernel without futex_waitv (scripts/test.sh). */
__attribute__((constructor)) static void read_force_env(void)
{
	const char *v = getenv("ATS_TEST_NO_FUTEX_WAITV");
	if (v && strcmp(v, "1") == 0)
		atomic_store(&ats__ec_force_no_waitv, 1);
}
#endif

/* futex_waitv: not known yet, refused (remembered at the first refusal: later parks go straight
 * to the fallback), or there. */
enum { WAITV_UNKNOWN, WAITV_REFUSED, WAITV_THERE };
static _Atomic int waitv_state;

/* Whether futex_waitv failed as a call the kernel refuses, not as a wait that ended: ENOSYS
 * before Linux 5.16, and whatever errno a seccomp filter written before the call existed gives
 * it (a container runtime's or a service manager's: EPERM, most often). Waking (0 or more),
 * EAGAIN (a word no longer held its value), ETIMEDOUT and EINTR are a wait that ended. Anything
 * else cannot come from a kernel that runs the call on these arguments, so it is a refusal too:
 * treated as a wait that ended, it would return at once every time, and a parked thread would
 * spin on the system call. */
static bool refused(int err)
{
	return err != EAGAIN && err != ETIMEDOUT && err != EINTR;
}

static bool waitv(struct futex_waitv *w, unsigned nw, const struct timespec *ts)
{
#ifdef ATS_TESTING
	if (atomic_load_explicit(&ats__ec_force_no_waitv, memory_order_relaxed))
		return false;
#endif
	if (atomic_load_explicit(&waitv_state, memory_order_relaxed) == WAITV_REFUSED)
		return false;
#ifdef ATS_TESTING
	ats__futex_sleeps++;
#endif
	if (syscall(SYS_futex_waitv, w, nw, 0, ts, CLOCK_MONOTONIC) < 0 && refused(errno)) {
		atomic_store_explicit(&waitv_state, WAITV_REFUSED, memory_order_relaxed);
		return false;
	}
	return true;
}

bool ats__ec_parks_alone(void)
{
#ifdef ATS_TESTING
	if (atomic_load_explicit(&ats__ec_force_no_waitv, memory_order_relaxed))
		return true;
#endif
	int s = atomic_load_explicit(&waitv_state, memory_order_relaxed);
	if (s == WAITV_UNKNOWN) {
		/* No futexes at all: a kernel that runs the call refuses the arguments (EINVAL). */
		long r = syscall(SYS_futex_waitv, NULL, 0, 0, NULL, CLOCK_MONOTONIC);
		s = r < 0 && errno != EINVAL ? WAITV_REFUSED : WAITV_THERE;
		atomic_store_explicit(&waitv_state, s, memory_order_relaxed);
	}
	return s == WAITV_REFUSED;
}

void ats__ec_park(struct futex_waitv *w, unsigned nw, uint64_t deadline_ns, bool kick_bumps_first)
{
	struct timespec ts, *tsp = NULL;
	if (deadline_ns != ATS__FUTEX_FOREVER) {
		ts = ats__ec_timespec(deadline_ns);
		tsp = &ts;
	}
	if (waitv(w, nw, tsp))
		return;
#ifdef ATS_TESTING
	atomic_fetch_add_explicit(&ats__ec_fallback_sleeps, 1, memory_order_relaxed);
#endif
	/* One word at a time (ec.h): w[0] alone is enough when every other word's waker also changes
	 * it; otherwise bounded, and the caller's re-check looks at the others. */
	uint64_t until = deadline_ns;
	if (nw > 2 || (nw == 2 && !kick_bumps_first)) {
		uint64_t soon = ats_now_ns() + 1000000u;
		until = soon < deadline_ns ? soon : deadline_ns;
	}
	ats__futex_wait((const _Atomic uint32_t *)(uintptr_t)w[0].uaddr, (uint32_t)w[0].val, until);
}

void ats__ec_kick(void *kick_word)
{
	_Atomic uint32_t *kick = kick_word;
	/* release: the parked thread re-checks its ctx after it sees the new value. */
	atomic_fetch_add_explicit(kick, 1, memory_order_release);
	ats__futex_wake(kick, 1);
}

void ats__ec_kick_bump(void *kicker)
{
	ats__ec_kicker *k = kicker;
	ats__ec_kick(&k->word);
	if (k->ec)
		ck_ec32_inc(k->ec, &ats__ec_mode_mp);
}

/* ---- Watches (ec.h) ----
 * Why no wake-up is lost. A watcher adds its entries and counts them in `watching`, then fences
 * (seq_cst), and only then, in each round, reads its word and arms the flags (a CAS, or a load
 * that finds the flag set). A bump whose increment of an eventcount comes after the watcher's
 * arm of it (in the word's modification order) finds the flag set, so it calls ec_wake32, which
 * fences (seq_cst) and then reads `watching`. The arm read the word before that increment and
 * comes after the watcher's fence; the increment comes before the bumper's fence: so the
 * bumper's read sees the count (the store-buffering case that two seq_cst fences forbid), and
 * under the mutex it finds the entry and bumps the watcher's word. The watcher read that word
 * before it armed, so before this bump (had it read the bump, the increment before it would have
 * been visible to the arm): its sleep returns at once or is woken. A bump whose increment came
 * before the arm is the usual case of every parker: its value is visible to the re-check after
 * the watcher's own fence. */
#define WATCH_BUCKETS 64

static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static ats__ec_watch *watch_bucket[WATCH_BUCKETS];
static _Atomic unsigned watching; /* entries in the buckets */

static unsigned bucket_of(const void *ec)
{
	return (unsigned)(((uintptr_t)ec >> 6) * UINT64_C(0x9e3779b97f4a7c15) >> 58);
}

void ats__ec_watch_start(ats__ec_watch *w, unsigned n)
{
	pthread_mutex_lock(&watch_lock);
	for (unsigned i = 0; i < n; i++) {
		ats__ec_watch **head = &watch_bucket[bucket_of(&w[i].ec->counter)];
		w[i].next = *head;
		*head = &w[i];
	}
	/* relaxed: read by bumpers after their fence (above); the fence below publishes it. */
	atomic_fetch_add_explicit(&watching, n, memory_order_relaxed);
	pthread_mutex_unlock(&watch_lock);
	atomic_thread_fence(memory_order_seq_cst);
}

void ats__ec_watch_stop(ats__ec_watch *w, unsigned n)
{
	pthread_mutex_lock(&watch_lock);
	for (unsigned i = 0; i < n; i++) {
		ats__ec_watch **p = &watch_bucket[bucket_of(&w[i].ec->counter)];
		while (*p != &w[i])
			p = &(*p)->next;
		*p = w[i].next;
	}
	atomic_fetch_sub_explicit(&watching, n, memory_order_relaxed);
	pthread_mutex_unlock(&watch_lock);
}

void ats__ec_park_watched(_Atomic uint32_t *word, uint32_t val, uint64_t deadline_ns)
{
#ifdef ATS_TESTING
	atomic_fetch_add_explicit(&ats__ec_fallback_sleeps, 1, memory_order_relaxed);
#endif
	ats__futex_wait(word, val, deadline_ns);
}

/* A flagged bump of the eventcount at addr: bumps and wakes its watchers (file part above). */
static void wake_watchers(const uint32_t *addr)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&watching, memory_order_relaxed) == 0)
		return;
	pthread_mutex_lock(&watch_lock);
	for (ats__ec_watch *w = watch_bucket[bucket_of(addr)]; w; w = w->next) {
		if ((const void *)&w->ec->counter != (const void *)addr)
			continue;
		/* release: the watcher that reads the new value sees what the bumper published. */
		atomic_fetch_add_explicit(w->word, 1, memory_order_release);
		ats__futex_wake(w->word, 1);
	}
	pthread_mutex_unlock(&watch_lock);
}
