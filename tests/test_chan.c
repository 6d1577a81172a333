/* SPDX-License-Identifier: BSD-2-Clause */
/* Channels, one operation at a time: every op and error on every variant, exact capacity, close
 * and drain, destroy handing values back, bursts, select (fairness, default, closed cases), and
 * the blocking calls woken by a peer thread, close and ctx (cancel and deadline). Waits are on
 * what a thread observes, never on a sleep. */
#include <atscale/chan.h>
#include <atscale/clock.h>
#include "internal/ec_hooks.h"

#include "asleep.h"
#include "internal/futex_hooks.h"
#include "seccomp_refuse.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MS UINT64_C(1000000)
#define V(i) ((void *)(uintptr_t)(i))

static const ats_chan_kind kinds[] = {ATS_CHAN_SPSC, ATS_CHAN_MPSC, ATS_CHAN_SPMC, ATS_CHAN_MPMC};

/* Whether mk makes light channels (config.light). */
static bool light;

static ats_chan *mk(ats_chan_kind k, size_t cap)
{
	ats_chan *c = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(k, cap);
	cfg.light = light;
	cr_assert_null(ats_chan_new(&c, &cfg));
	return c;
}

static void expect_code(ats_err *err, ats_code code)
{
	cr_expect_not_null(err);
	cr_expect_eq(ats_err_code(err), code, "code %s", ats_code_name(ats_err_code(err)));
	ats_err_unref(err);
}

Test(chan, bad_config)
{
	ats_chan c;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_MPMC, 0);
	expect_code(ats_chan_init(&c, &cfg), ATS_ERR_INVALID_ARGUMENT); /* capacity 0: rejected */
	cfg.capacity = ATS_CHAN_MAX_CAPACITY + 1;
	expect_code(ats_chan_init(&c, &cfg), ATS_ERR_INVALID_ARGUMENT);
	cfg.capacity = 4;
	cfg.kind = (ats_chan_kind)9;
	expect_code(ats_chan_init(&c, &cfg), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_init(NULL, &cfg), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_init(&c, NULL), ATS_ERR_INVALID_ARGUMENT);
	ats_chan *p = V(1);
	expect_code(ats_chan_new(&p, NULL), ATS_ERR_INVALID_ARGUMENT);
	cr_expect_null(p);
	expect_code(ats_chan_new(NULL, &cfg), ATS_ERR_INVALID_ARGUMENT);
	ats_chan_destroy(NULL, NULL, NULL);
	ats_chan_free(NULL, NULL, NULL);
}

Test(chan, bad_args_change_nothing)
{
	ats_chan *c = mk(ATS_CHAN_MPMC, 4);
	cr_expect_eq(ats_chan_try_send(c, V(1)), ATS_CHAN_OK);
	void *v = V(77);
	ats_chan_status st = ATS_CHAN_OK;
	cr_expect_eq(ats_chan_try_send(NULL, V(2)), ATS_CHAN_INVALID);
	cr_expect_eq(ats_chan_try_recv(NULL, &v), ATS_CHAN_INVALID);
	cr_expect_eq(ats_chan_try_recv(c, NULL), ATS_CHAN_INVALID);
	cr_expect_eq(ats_chan_try_send_n(NULL, &v, 1, &st), 0);
	cr_expect_eq(st, ATS_CHAN_INVALID);
	cr_expect_eq(ats_chan_try_send_n(c, NULL, 1, &st), 0);
	cr_expect_eq(ats_chan_try_recv_n(c, NULL, 1, &st), 0);
	cr_expect_eq(st, ATS_CHAN_INVALID);
	cr_expect_eq(ats_chan_try_send_n(c, NULL, 0, &st), 0); /* n == 0: nothing to do */
	cr_expect_eq(st, ATS_CHAN_OK);
	expect_code(ats_chan_send(NULL, V(1), ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_send(c, V(1), NULL), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_recv(c, NULL, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_recv(c, &v, NULL), ATS_ERR_INVALID_ARGUMENT);
	size_t k = 5;
	expect_code(ats_chan_send_n(c, NULL, 3, &k, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_recv_n(c, &v, 1, NULL, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_close(NULL), ATS_ERR_INVALID_ARGUMENT);
	size_t fired;
	ats_chan_case cs[ATS_CHAN_SELECT_MAX + 1] = {0};
	expect_code(ats_chan_select(cs, ATS_CHAN_SELECT_MAX + 1, true, &fired, ats_ctx_background()),
	            ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_select(NULL, 1, true, &fired, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_select(cs, 1, true, NULL, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	expect_code(ats_chan_select(cs, 1, true, &fired, NULL), ATS_ERR_INVALID_ARGUMENT);
	/* Nothing changed: one value, open. */
	cr_expect_eq(v, V(77));
	cr_expect_eq(ats_chan_len(c), 1);
	cr_expect(!ats_chan_closed(c));
	cr_expect_eq(ats_chan_try_recv(c, &v), ATS_CHAN_OK);
	cr_expect_eq(v, V(1));
	cr_expect_eq(ats_chan_try_recv(c, &v), ATS_CHAN_WOULD_BLOCK);
	ats_chan_free(c, NULL, NULL);
}

/* Exact capacity, FIFO and wrap-around, for every variant and capacities on and off powers of 2. */
Test(chan, exact_capacity_fifo)
{
	const size_t caps[] = {1, 2, 3, 5, 7, 8, 100, 1023, 1024};
	for (size_t ki = 0; ki < 4; ki++)
		for (size_t ci = 0; ci < sizeof caps / sizeof *caps; ci++) {
			size_t cap = caps[ci];
			ats_chan *c = mk(kinds[ki], cap);
			cr_expect_eq(ats_chan_cap(c), cap);
			uintptr_t next_in = 1, next_out = 1;
			for (int round = 0; round < 3; round++) {
				for (size_t i = 0; i < cap; i++)
					cr_assert_eq(ats_chan_try_send(c, V(next_in++)), ATS_CHAN_OK, "kind %d cap %zu",
					             (int)kinds[ki], cap);
				cr_assert_eq(ats_chan_try_send(c, V(999999)), ATS_CHAN_WOULD_BLOCK, "kind %d cap %zu",
				             (int)kinds[ki], cap);
				cr_expect_eq(ats_chan_len(c), cap);
				for (size_t i = 0; i < cap; i++) {
					void *v = NULL;
					cr_assert_eq(ats_chan_try_recv(c, &v), ATS_CHAN_OK);
					cr_assert_eq(v, V(next_out++));
				}
				void *v = V(5);
				cr_assert_eq(ats_chan_try_recv(c, &v), ATS_CHAN_WOULD_BLOCK);
				cr_expect_eq(v, V(5));
				/* Part-fill so the next round wraps at a different place. */
				cr_assert_eq(ats_chan_try_send(c, V(next_in++)), ATS_CHAN_OK);
				cr_assert_eq(ats_chan_try_recv(c, &v), ATS_CHAN_OK);
				cr_assert_eq(v, V(next_out++));
			}
			ats_chan_free(c, NULL, NULL);
		}
}

static void count_drop(void *v, void *arg)
{
	uintptr_t *sum = arg;
	*sum += (uintptr_t)v;
}

Test(chan, destroy_hands_back_values)
{
	for (size_t ki = 0; ki < 4; ki++) {
		ats_chan c;
		ats_chan_config cfg = ATS_CHAN_CONFIG(kinds[ki], 5);
		cr_assert_null(ats_chan_init(&c, &cfg));
		for (uintptr_t i = 1; i <= 5; i++)
			cr_assert_eq(ats_chan_try_send(&c, V(i)), ATS_CHAN_OK);
		void *v;
		cr_assert_eq(ats_chan_try_recv(&c, &v), ATS_CHAN_OK);
		uintptr_t sum = 0;
		ats_chan_destroy(&c, count_drop, &sum);
		cr_expect_eq(sum, 2 + 3 + 4 + 5);
	}
	ats_chan *h = mk(ATS_CHAN_MPMC, 3);
	cr_assert_eq(ats_chan_try_send(h, V(40)), ATS_CHAN_OK);
	uintptr_t sum = 0;
	ats_chan_free(h, count_drop, &sum);
	cr_expect_eq(sum, 40);
}

static void close_drain_and_errors(void)
{
	for (size_t ki = 0; ki < 4; ki++) {
		ats_chan *c = mk(kinds[ki], 3);
		cr_assert_eq(ats_chan_try_send(c, V(1)), ATS_CHAN_OK);
		cr_assert_eq(ats_chan_try_send(c, V(2)), ATS_CHAN_OK);
		cr_assert_null(ats_chan_close(c));
		cr_expect(ats_chan_closed(c));
		expect_code(ats_chan_close(c), ATS_ERR_CLOSED); /* double close */
		cr_expect_eq(ats_chan_try_send(c, V(3)), ATS_CHAN_CLOSED);
		expect_code(ats_chan_send(c, V(3), ats_ctx_background()), ATS_ERR_CLOSED);
		void *items[2] = {V(3), V(4)};
		size_t k = 9;
		expect_code(ats_chan_send_n(c, items, 2, &k, ats_ctx_background()), ATS_ERR_CLOSED);
		cr_expect_eq(k, 0);
		ats_chan_status st;
		cr_expect_eq(ats_chan_try_send_n(c, items, 2, &st), 0);
		cr_expect_eq(st, ATS_CHAN_CLOSED);
		/* Drain what was buffered, then closed, every time. */
		void *v = NULL;
		cr_expect_eq(ats_chan_try_recv(c, &v), ATS_CHAN_OK);
		cr_expect_eq(v, V(1));
		cr_expect_null(ats_chan_recv(c, &v, ats_ctx_background()));
		cr_expect_eq(v, V(2));
		cr_expect_eq(ats_chan_try_recv(c, &v), ATS_CHAN_CLOSED);
		expect_code(ats_chan_recv(c, &v, ats_ctx_background()), ATS_ERR_CLOSED);
		expect_code(ats_chan_recv_n(c, items, 2, &k, ats_ctx_background()), ATS_ERR_CLOSED);
		cr_expect_eq(ats_chan_try_recv_n(c, items, 2, &st), 0);
		cr_expect_eq(st, ATS_CHAN_CLOSED);
		cr_expect_eq(ats_chan_len(c), 0);
		ats_chan_free(c, NULL, NULL);
	}
}

Test(chan, close_drain_and_errors)
{
	close_drain_and_errors();
}

/* A light channel's close goes CLOSING, then CLOSED after its membarrier: a second close must
 * leave it CLOSED (receivers trust only that) and still be an error. */
Test(chan, close_drain_and_errors_light)
{
	light = true;
	close_drain_and_errors();
}

Test(chan, bursts)
{
	for (size_t ki = 0; ki < 4; ki++) {
		ats_chan *c = mk(kinds[ki], 10);
		void *in[16], *out[16];
		for (uintptr_t i = 0; i < 16; i++)
			in[i] = V(i + 1);
		ats_chan_status st;
		cr_expect_eq(ats_chan_try_send_n(c, in, 4, &st), 4);
		cr_expect_eq(st, ATS_CHAN_OK);
		cr_expect_eq(ats_chan_try_send_n(c, in + 4, 12, &st), 6); /* as many as fit */
		cr_expect_eq(st, ATS_CHAN_WOULD_BLOCK);
		cr_expect_eq(ats_chan_try_send_n(c, in, 1, &st), 0);
		cr_expect_eq(st, ATS_CHAN_WOULD_BLOCK);
		cr_expect_eq(ats_chan_try_recv_n(c, out, 3, &st), 3);
		cr_expect_eq(st, ATS_CHAN_OK);
		cr_expect_eq(ats_chan_try_recv_n(c, out + 3, 16, &st), 7);
		cr_expect_eq(st, ATS_CHAN_WOULD_BLOCK);
		for (uintptr_t i = 0; i < 10; i++)
			cr_expect_eq(out[i], V(i + 1));
		size_t k;
		cr_expect_null(ats_chan_send_n(c, in, 16, &k, ats_ctx_background()));
		cr_expect_eq(k, 10);
		cr_expect_null(ats_chan_recv_n(c, out, 16, &k, ats_ctx_background()));
		cr_expect_eq(k, 10);
		cr_expect_null(ats_chan_send_n(c, in, 0, &k, ats_ctx_background()));
		cr_expect_eq(k, 0);
		/* A huge n is only an upper bound. */
		cr_expect_eq(ats_chan_try_recv_n(c, out, SIZE_MAX, &st), 0);
		cr_expect_eq(st, ATS_CHAN_WOULD_BLOCK);
		ats_chan_free(c, NULL, NULL);
	}
}

/* ---- Blocking calls woken by ctx, close and peers ---- */

Test(chan, ctx_already_done_and_deadline)
{
	ats_chan *c = mk(ATS_CHAN_MPMC, 1);
	ats_ctx *x;
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &x));
	ats_ctx_cancel(x, NULL);
	void *v;
	expect_code(ats_chan_recv(c, &v, x), ATS_ERR_CANCELLED);
	cr_assert_eq(ats_chan_try_send(c, V(1)), ATS_CHAN_OK);
	expect_code(ats_chan_send(c, V(2), x), ATS_ERR_CANCELLED);
	ats_ctx_release(x);
	/* Full channel, 2 ms deadline: the send gives up with deadline exceeded, nothing sent. */
	uint64_t t0 = ats_now_ns();
	cr_assert_null(ats_ctx_with_timeout_at(ats_ctx_background(), 2 * MS, t0, &x));
	expect_code(ats_chan_send(c, V(2), x), ATS_ERR_DEADLINE_EXCEEDED);
	cr_expect_geq(ats_now_ns() - t0, 2 * MS);
	ats_ctx_release(x);
	cr_expect_eq(ats_chan_len(c), 1);
	cr_expect_eq(ats_chan_try_recv(c, &v), ATS_CHAN_OK);
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2 * MS, &x));
	expect_code(ats_chan_recv(c, &v, x), ATS_ERR_DEADLINE_EXCEEDED);
	ats_ctx_release(x);
	ats_chan_free(c, NULL, NULL);
}

struct blocked {
	ats_chan *c;
	ats_ctx *ctx;
	bool send;
	_Atomic int started;
	ats_err *err;
	void *v;
};

static void *blocked_main(void *arg)
{
	struct blocked *b = arg;
	atomic_store(&b->started, 1);
	b->err = b->send ? ats_chan_send(b->c, V(123), b->ctx) : ats_chan_recv(b->c, &b->v, b->ctx);
	return NULL;
}

/* Starts the thread and yields a while so that it most likely polls. Not a synchronization: the
 * outcome checked is the same whether the wake-up comes before or after it starts polling. */
static void start_blocked(struct blocked *b, pthread_t *t)
{
	cr_assert_eq(pthread_create(t, NULL, blocked_main, b), 0);
	while (!atomic_load(&b->started))
		sched_yield();
	for (int i = 0; i < 1000; i++)
		sched_yield();
}

/* ---- Parked calls, woken: with futex_waitv, and as where the kernel lacks it (Linux < 5.16,
 * forced on any kernel) ---- */

struct sleeper {
	ats_chan_case cs[2]; /* one case: a blocking send or receive; two: a select */
	size_t n;
	ats_ctx *ctx;
	_Atomic pid_t tid;
	ats_err *err;
	size_t fired;
	void *v;
};

static void *sleeper_main(void *arg)
{
	struct sleeper *s = arg;
	atomic_store(&s->tid, asleep_self_tid());
	if (s->n == 2)
		s->err = ats_chan_select(s->cs, 2, false, &s->fired, s->ctx);
	else if (s->cs[0].send)
		s->err = ats_chan_send(s->cs[0].chan, V(123), s->ctx);
	else
		s->err = ats_chan_recv(s->cs[0].chan, &s->v, s->ctx);
	return NULL;
}

static ats_chan *mk_parking(ats_chan_kind k, size_t cap)
{
	ats_chan *c = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(k, cap);
	cfg.spin_ns = 0; /* park at once */
	cr_assert_null(ats_chan_new(&c, &cfg));
	return c;
}

/* Woken by a cancel, the peer and close, on every variant, as sender and receiver. Without
 * futex_waitv a blocking send or receive sleeps on its eventcount alone, with no bound, and a
 * cancel bumps that eventcount too: a wake-up that did not reach it would hang the test. */
Test(chan, parked_woken_by_cancel_close_and_peer, .timeout = 60)
{
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		for (size_t ki = 0; ki < 4; ki++) {
			for (int side = 0; side < 2; side++) {
				for (int how = 0; how < 3; how++) { /* cancel, the peer, close */
					ats_chan *c = mk_parking(kinds[ki], 1);
					if (side) /* the sender blocks on a full channel */
						cr_assert_eq(ats_chan_try_send(c, V(1)), ATS_CHAN_OK);
					struct sleeper s = {.n = 1, .ctx = ats_ctx_background()};
					s.cs[0] = (ats_chan_case){.chan = c, .send = side};
					if (how == 0)
						cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &s.ctx));
					pthread_t t;
					cr_assert_eq(asleep_start_parked(&t, sleeper_main, &s, &s.tid), 0);
					void *v = NULL;
					if (how == 0)
						ats_ctx_cancel(s.ctx, NULL);
					else if (how == 1 && side)
						cr_assert_null(ats_chan_recv(c, &v, ats_ctx_background()));
					else if (how == 1)
						cr_assert_null(ats_chan_send(c, V(5), ats_ctx_background()));
					else
						cr_assert_null(ats_chan_close(c));
					pthread_join(t, NULL);
					if (how == 0)
						expect_code(s.err, ATS_ERR_CANCELLED);
					else if (how == 2)
						expect_code(s.err, ATS_ERR_CLOSED);
					else
						cr_expect_null(s.err);
					if (how == 1)
						cr_expect_eq(side ? v : s.v, side ? V(1) : V(5));
					if (how == 0)
						ats_ctx_release(s.ctx);
					ats_chan_free(c, NULL, NULL);
				}
			}
		}
	}
	atomic_store(&ats__ec_force_no_waitv, 0);
}

/* Its deadline ends one sleep: it does not wake every millisecond to look. */
Test(chan, a_deadline_without_futex_waitv_ends_one_sleep)
{
	atomic_store(&ats__ec_force_no_waitv, 1);
	ats_chan *c = mk_parking(ATS_CHAN_MPMC, 1);
	ats_ctx *ctx;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 30 * MS, &ctx));
	unsigned long mark = atomic_load(&ats__ec_fallback_sleeps);
	void *v;
	expect_code(ats_chan_recv(c, &v, ctx), ATS_ERR_DEADLINE_EXCEEDED);
	unsigned long slept = atomic_load(&ats__ec_fallback_sleeps) - mark;
	cr_expect(slept >= 1 && slept <= 3, "slept %lu times in 30 ms", slept);
	ats_ctx_release(ctx);
	ats_chan_free(c, NULL, NULL);
	atomic_store(&ats__ec_force_no_waitv, 0);
}

/* CPU time the calling thread has used, in ns. */
static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * ATS_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* In a sandbox whose seccomp filter refuses futex_waitv with EPERM (one written before the call
 * existed), a parked call takes the path of kernels without it: it sleeps, where treating the
 * refusal as a wake-up would spin on the system call for the whole wait, a select over two
 * channels finds out before its first sleep (and so sleeps once, not every millisecond), and a
 * peer wakes a parked receiver. */
Test(chan, a_sandbox_that_refuses_futex_waitv)
{
	if (seccomp_refuse(SYS_futex_waitv, EPERM) != 0)
		cr_skip_test("no seccomp filter for this process here: %s", strerror(errno));
	cr_assert_eq(syscall(SYS_futex_waitv, NULL, 0, 0, NULL, 0), -1);
	cr_assert_eq(errno, EPERM, "the filter refuses the call");
	ats_chan *c = mk_parking(ATS_CHAN_SPSC, 1), *d = mk_parking(ATS_CHAN_MPMC, 1);
	for (int select = 1; select >= 0; select--) {
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 30 * MS, &ctx));
		unsigned long mark = atomic_load(&ats__ec_fallback_sleeps);
		unsigned long sleeps = ats__futex_sleeps;
		uint64_t cpu = thread_cpu_ns();
		ats_chan_case cs[2] = {{.chan = c}, {.chan = d}};
		size_t fired;
		void *v;
		expect_code(select ? ats_chan_select(cs, 2, false, &fired, ctx) : ats_chan_recv(c, &v, ctx),
		            ATS_ERR_DEADLINE_EXCEEDED);
		cpu = thread_cpu_ns() - cpu;
		sleeps = ats__futex_sleeps - sleeps;
		cr_expect_lt(cpu, 10 * MS, "select %d: a 30 ms wait used %llu us of CPU", select,
		             (unsigned long long)(cpu / 1000));
		cr_expect_leq(sleeps, 3, "select %d: %lu sleeps in a 30 ms wait", select, sleeps);
		cr_expect_gt(atomic_load(&ats__ec_fallback_sleeps), mark, "select %d: the fallback slept", select);
		ats_ctx_release(ctx);
	}
	ats_chan_free(d, NULL, NULL);
	struct sleeper s = {.n = 1, .ctx = ats_ctx_background()};
	s.cs[0] = (ats_chan_case){.chan = c, .send = false};
	pthread_t t;
	cr_assert_eq(asleep_start_parked(&t, sleeper_main, &s, &s.tid), 0);
	cr_assert_null(ats_chan_send(c, V(7), ats_ctx_background()));
	pthread_join(t, NULL);
	cr_expect_null(s.err);
	cr_expect_eq(s.v, V(7));
	ats_chan_free(c, NULL, NULL);
}

Test(chan, busy_poll_honours_ctx_and_close)
{
	ats_chan *c = NULL;
	ats_chan_config cfg = ATS_CHAN_CONFIG(ATS_CHAN_SPSC, 2);
	cfg.busy_poll = true;
	cr_assert_null(ats_chan_new(&c, &cfg));
	ats_ctx *x;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 1 * MS, &x));
	void *v;
	expect_code(ats_chan_recv(c, &v, x), ATS_ERR_DEADLINE_EXCEEDED);
	ats_ctx_release(x);
	struct blocked b = {.c = c, .ctx = ats_ctx_background()};
	pthread_t t;
	start_blocked(&b, &t);
	cr_assert_null(ats_chan_close(c));
	pthread_join(t, NULL);
	expect_code(b.err, ATS_ERR_CLOSED);
	ats_chan_free(c, NULL, NULL);
}

/* ---- Select ---- */

Test(select, default_and_fairness)
{
	ats_chan *a = mk(ATS_CHAN_MPMC, 1000), *b = mk(ATS_CHAN_SPSC, 1000);
	ats_chan_case cs[3] = {{.chan = a}, {.chan = b}, {.chan = NULL}};
	size_t fired = 7;
	cr_assert_null(ats_chan_select(cs, 3, true, &fired, ats_ctx_background()));
	cr_expect_eq(fired, ATS_CHAN_SELECT_DEFAULT);
	for (int i = 0; i < 1000; i++) {
		cr_assert_eq(ats_chan_try_send(a, V(1)), ATS_CHAN_OK);
		cr_assert_eq(ats_chan_try_send(b, V(2)), ATS_CHAN_OK);
	}
	int hits[2] = {0, 0};
	for (int i = 0; i < 1000; i++) {
		cr_assert_null(ats_chan_select(cs, 3, false, &fired, ats_ctx_background()));
		cr_assert_lt(fired, 2);
		cr_assert_eq(cs[fired].status, ATS_CHAN_OK);
		cr_assert_eq(cs[fired].value, V(fired + 1));
		hits[fired]++;
	}
	/* Random order: both ready every time, so each should win about half (binomial, 1000 draws:
	 * outside 350..650 has probability ~1e-21). */
	cr_expect(hits[0] > 350 && hits[1] > 350, "hits %d %d", hits[0], hits[1]);
	ats_chan_free(a, NULL, NULL);
	ats_chan_free(b, NULL, NULL);
}

Test(select, send_cases_closed_cases_and_ctx)
{
	ats_chan *full = mk(ATS_CHAN_MPSC, 1), *room = mk(ATS_CHAN_SPMC, 1);
	cr_assert_eq(ats_chan_try_send(full, V(1)), ATS_CHAN_OK);
	ats_chan_case cs[2] = {{.chan = full, .send = true, .value = V(2)},
	                       {.chan = room, .send = true, .value = V(3)}};
	size_t fired;
	cr_assert_null(ats_chan_select(cs, 2, false, &fired, ats_ctx_background()));
	cr_expect_eq(fired, 1);
	void *v;
	cr_expect_eq(ats_chan_try_recv(room, &v), ATS_CHAN_OK);
	cr_expect_eq(v, V(3));
	/* Both full now (room refilled): the ctx's deadline ends it, nothing sent. */
	cr_assert_eq(ats_chan_try_send(room, V(4)), ATS_CHAN_OK);
	ats_ctx *x;
	cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 2 * MS, &x));
	expect_code(ats_chan_select(cs, 2, false, &fired, x), ATS_ERR_DEADLINE_EXCEEDED);
	ats_ctx_release(x);
	cr_expect_eq(ats_chan_len(full), 1);
	cr_expect_eq(ats_chan_len(room), 1);
	/* A receive from a closed, drained channel fires with CLOSED; so does a send to a closed one. */
	ats_chan *shut = mk(ATS_CHAN_MPMC, 2);
	cr_assert_null(ats_chan_close(shut));
	ats_chan_case rc[2] = {{.chan = full, .send = true, .value = V(9)}, {.chan = shut, .value = V(8)}};
	cr_assert_null(ats_chan_select(rc, 2, false, &fired, ats_ctx_background()));
	cr_expect_eq(fired, 1);
	cr_expect_eq(rc[1].status, ATS_CHAN_CLOSED);
	cr_expect_null(rc[1].value);
	rc[1] = (ats_chan_case){.chan = shut, .send = true, .value = V(8)};
	cr_assert_null(ats_chan_select(rc, 2, false, &fired, ats_ctx_background()));
	cr_expect_eq(fired, 1);
	cr_expect_eq(rc[1].status, ATS_CHAN_CLOSED);
	/* No cases and a cancelled ctx: its error. */
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &x));
	ats_ctx_cancel(x, NULL);
	expect_code(ats_chan_select(NULL, 0, false, &fired, x), ATS_ERR_CANCELLED);
	ats_ctx_release(x);
	ats_chan_free(full, NULL, NULL);
	ats_chan_free(room, NULL, NULL);
	ats_chan_free(shut, NULL, NULL);
}

/* Woken by a value on its second channel, close of its first or its second, and a cancel.
 * Without futex_waitv it watches both eventcounts and sleeps on its kick word alone, with no
 * bound: a wake-up that did not reach it would hang the test. */
Test(select, parked_woken_by_send_close_and_cancel, .timeout = 60)
{
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		for (int how = 0; how < 4; how++) {
			ats_chan *a = mk_parking(ATS_CHAN_MPMC, 4), *b = mk_parking(ATS_CHAN_SPSC, 4);
			struct sleeper s = {.n = 2};
			s.cs[0] = (ats_chan_case){.chan = a};
			s.cs[1] = (ats_chan_case){.chan = b};
			cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &s.ctx));
			pthread_t t;
			cr_assert_eq(asleep_start_parked(&t, sleeper_main, &s, &s.tid), 0);
			if (how == 0)
				cr_assert_eq(ats_chan_try_send(b, V(42)), ATS_CHAN_OK);
			else if (how == 1)
				cr_assert_null(ats_chan_close(a));
			else if (how == 2)
				cr_assert_null(ats_chan_close(b));
			else
				ats_ctx_cancel(s.ctx, NULL);
			pthread_join(t, NULL);
			if (how == 0) {
				cr_expect_null(s.err);
				cr_expect_eq(s.fired, 1);
				cr_expect_eq(s.cs[1].value, V(42));
			} else if (how == 1 || how == 2) {
				cr_expect_null(s.err);
				cr_expect_eq(s.fired, (size_t)how - 1);
				cr_expect_eq(s.cs[how - 1].status, ATS_CHAN_CLOSED);
			} else {
				expect_code(s.err, ATS_ERR_CANCELLED);
			}
			ats_ctx_release(s.ctx);
			ats_chan_free(a, NULL, NULL);
			ats_chan_free(b, NULL, NULL);
		}
	}
	atomic_store(&ats__ec_force_no_waitv, 0);
}

/* Its deadline ends one sleep, on kernels with futex_waitv and without it (forced): a select over
 * three channels does not wake every millisecond to look at the ones it cannot sleep on. */
Test(select, a_deadline_ends_one_sleep)
{
	for (int old_kernel = 0; old_kernel < 2; old_kernel++) {
		atomic_store(&ats__ec_force_no_waitv, old_kernel);
		ats_chan *a = mk_parking(ATS_CHAN_MPMC, 1), *b = mk_parking(ATS_CHAN_SPSC, 1);
		ats_chan *c = mk_parking(ATS_CHAN_SPMC, 1);
		ats_chan_case cs[3] = {{.chan = a}, {.chan = b}, {.chan = c}};
		ats_ctx *ctx;
		cr_assert_null(ats_ctx_with_timeout(ats_ctx_background(), 30 * MS, &ctx));
		unsigned long before = ats__futex_sleeps;
		size_t fired;
		expect_code(ats_chan_select(cs, 3, false, &fired, ctx), ATS_ERR_DEADLINE_EXCEEDED);
		unsigned long sleeps = ats__futex_sleeps - before;
		cr_expect_leq(sleeps, 3, "old kernel %d: %lu sleeps in a 30 ms select", old_kernel, sleeps);
		ats_ctx_release(ctx);
		ats_chan_free(a, NULL, NULL);
		ats_chan_free(b, NULL, NULL);
		ats_chan_free(c, NULL, NULL);
	}
	atomic_store(&ats__ec_force_no_waitv, 0);
}

/* ---- Combinators ---- */

struct fwd {
	ats_chan *in, *out, *out2;
	ats_ctx *ctx;
	ats_err *err;
	size_t n;
	void *undelivered;
};

static void *forward_main(void *arg)
{
	struct fwd *f = arg;
	f->err = f->out2 ? ats_chan_tee(f->in, f->out, f->out2, &f->n, &f->undelivered, f->ctx)
	                 : ats_chan_forward(f->in, f->out, &f->n, &f->undelivered, f->ctx);
	return NULL;
}

Test(combinators, forward_until_closed_then_until_cancelled)
{
	ats_chan *in = mk(ATS_CHAN_MPMC, 4), *out = mk(ATS_CHAN_MPMC, 2);
	struct fwd f = {.in = in, .out = out, .ctx = ats_ctx_background()};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, forward_main, &f), 0);
	for (uintptr_t i = 1; i <= 100; i++) {
		cr_assert_null(ats_chan_send(in, V(i), ats_ctx_background()));
		void *v;
		cr_assert_null(ats_chan_recv(out, &v, ats_ctx_background()));
		cr_assert_eq(v, V(i));
	}
	cr_assert_null(ats_chan_close(in));
	pthread_join(t, NULL);
	cr_expect_null(f.err);
	cr_expect_eq(f.n, 100);
	cr_expect_null(f.undelivered);
	/* or-done: out full, the forwarder holds a value; cancelling ctx stops it and hands it back. */
	ats_chan_free(in, NULL, NULL);
	in = mk(ATS_CHAN_MPMC, 4);
	cr_assert_eq(ats_chan_try_send(out, V(1)), ATS_CHAN_OK);
	cr_assert_eq(ats_chan_try_send(out, V(2)), ATS_CHAN_OK);
	cr_assert_eq(ats_chan_try_send(in, V(3)), ATS_CHAN_OK);
	f = (struct fwd){.in = in, .out = out};
	cr_assert_null(ats_ctx_with_cancel(ats_ctx_background(), &f.ctx));
	cr_assert_eq(pthread_create(&t, NULL, forward_main, &f), 0);
	ats_ctx_cancel(f.ctx, NULL);
	pthread_join(t, NULL);
	expect_code(f.err, ATS_ERR_CANCELLED);
	cr_expect(f.undelivered == NULL || f.undelivered == V(3)); /* cancelled before or after taking it */
	cr_expect_eq(ats_chan_len(in) + (f.undelivered != NULL), 1);
	ats_ctx_release(f.ctx);
	expect_code(ats_chan_forward(NULL, out, NULL, NULL, ats_ctx_background()), ATS_ERR_INVALID_ARGUMENT);
	ats_chan_free(in, NULL, NULL);
	ats_chan_free(out, NULL, NULL);
}

Test(combinators, tee_to_both)
{
	ats_chan *in = mk(ATS_CHAN_SPSC, 4), *a = mk(ATS_CHAN_SPSC, 1), *b = mk(ATS_CHAN_MPMC, 1000);
	struct fwd f = {.in = in, .out = a, .out2 = b, .ctx = ats_ctx_background()};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, forward_main, &f), 0);
	for (uintptr_t i = 1; i <= 200; i++) {
		cr_assert_null(ats_chan_send(in, V(i), ats_ctx_background()));
		void *v;
		cr_assert_null(ats_chan_recv(a, &v, ats_ctx_background()));
		cr_assert_eq(v, V(i));
	}
	cr_assert_null(ats_chan_close(in));
	pthread_join(t, NULL);
	cr_expect_null(f.err);
	cr_expect_eq(f.n, 200);
	for (uintptr_t i = 1; i <= 200; i++) {
		void *v;
		cr_assert_eq(ats_chan_try_recv(b, &v), ATS_CHAN_OK);
		cr_assert_eq(v, V(i));
	}
	/* An output closed: tee stops with closed and names the value in hand. */
	ats_chan_free(in, NULL, NULL);
	in = mk(ATS_CHAN_SPSC, 4);
	cr_assert_null(ats_chan_close(a));
	cr_assert_eq(ats_chan_try_send(in, V(7)), ATS_CHAN_OK);
	expect_code(ats_chan_tee(in, a, b, NULL, &f.undelivered, ats_ctx_background()), ATS_ERR_CLOSED);
	cr_expect_eq(f.undelivered, V(7));
	ats_chan_free(in, NULL, NULL);
	ats_chan_free(a, NULL, NULL);
	ats_chan_free(b, NULL, NULL);
}
