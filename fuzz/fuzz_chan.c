/* SPDX-License-Identifier: BSD-2-Clause */
/* libFuzzer target for channels: single-thread operation sequences (try_send, try_recv, bursts,
 * blocking calls that cannot block, select with a default, close, destroy) on one channel of any
 * variant and capacity, checked step by step against a plain FIFO model: the same answers, the same
 * values in the same order, and destroy handing back exactly what the model still holds.
 *
 * Input: byte 0 the variant, byte 1 the capacity (1..64), byte 2 flags (bit 0: capacity 2^k - 1,
 * so the ring's own full test is the exact one); then one operation per byte (low 3 bits the
 * op, high 5 bits its count). */
#include "atscale/chan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXCAP 64

struct model {
	uintptr_t q[MAXCAP];
	size_t head, len, cap;
	bool closed;
	uintptr_t next; /* the next value to send (never NULL) */
};

#define CHECK(cond)                                                                                                    \
	do {                                                                                                           \
		if (!(cond)) {                                                                                         \
			fprintf(stderr, "fuzz_chan: %s:%d: %s\n", __FILE__, __LINE__, #cond);                          \
			abort();                                                                                       \
		}                                                                                                      \
	} while (0)

static bool m_push(struct model *m, uintptr_t v)
{
	if (m->closed || m->len == m->cap)
		return false;
	m->q[(m->head + m->len++) % MAXCAP] = v;
	return true;
}

static uintptr_t m_pop(struct model *m)
{
	uintptr_t v = m->q[m->head];
	m->head = (m->head + 1) % MAXCAP;
	m->len--;
	return v;
}

/* The status the model expects from a send when nothing fits, or a receive of nothing. */
static ats_chan_status m_send_fail(const struct model *m)
{
	return m->closed ? ATS_CHAN_CLOSED : ATS_CHAN_WOULD_BLOCK;
}
static ats_chan_status m_recv_fail(const struct model *m)
{
	return m->closed ? ATS_CHAN_CLOSED : ATS_CHAN_WOULD_BLOCK;
}

static void expect_err(ats_err *err, ats_code code)
{
	CHECK(err && ats_err_code(err) == code);
	ats_err_unref(err);
}

struct drop_check {
	struct model *m;
	size_t n;
};

static void drop(void *v, void *arg)
{
	struct drop_check *d = arg;
	CHECK(d->m->len > 0 && (uintptr_t)v == m_pop(d->m));
	d->n++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	struct model m = {.next = 1};
	ats_chan_config cfg = ATS_CHAN_CONFIG((ats_chan_kind)(data[0] % 4), 1 + data[1] % MAXCAP);
	if (data[2] & 1) {
		size_t c = 1;
		while (c * 2 - 1 < cfg.capacity && c * 2 - 1 < MAXCAP)
			c *= 2;
		cfg.capacity = c - 1 ? c - 1 : 1;
	}
	m.cap = cfg.capacity;
	ats_chan c;
	CHECK(!ats_chan_init(&c, &cfg));
	/* A done ctx: blocking calls that would wait return its error at once instead. */
	ats_ctx *done;
	CHECK(!ats_ctx_with_cancel(ats_ctx_background(), &done));
	ats_ctx_cancel(done, NULL);
	for (size_t i = 3; i < size; i++) {
		unsigned op = data[i] & 7, cnt = 1 + (data[i] >> 3); /* 1..32 */
		void *buf[32];
		ats_chan_status st;
		switch (op) {
		case 0: { /* try_send */
			ats_chan_status want = m_push(&m, m.next) ? ATS_CHAN_OK : m_send_fail(&m);
			CHECK(ats_chan_try_send(&c, (void *)m.next) == want);
			if (want == ATS_CHAN_OK)
				m.next++;
			break;
		}
		case 1: { /* try_recv */
			void *v = (void *)1234;
			st = ats_chan_try_recv(&c, &v);
			if (m.len) {
				CHECK(st == ATS_CHAN_OK && (uintptr_t)v == m_pop(&m));
			} else {
				CHECK(st == m_recv_fail(&m) && v == (void *)1234);
			}
			break;
		}
		case 2: { /* try_send_n */
			for (unsigned j = 0; j < cnt; j++)
				buf[j] = (void *)(m.next + j);
			size_t k = ats_chan_try_send_n(&c, buf, cnt, &st);
			size_t want = 0;
			while (want < cnt && m_push(&m, m.next + want))
				want++;
			CHECK(k == want);
			CHECK(st == (want == cnt ? ATS_CHAN_OK : m_send_fail(&m)));
			m.next += want;
			break;
		}
		case 3: { /* try_recv_n */
			size_t k = ats_chan_try_recv_n(&c, buf, cnt, &st);
			size_t want = m.len < cnt ? m.len : cnt;
			CHECK(k == want);
			for (size_t j = 0; j < k; j++)
				CHECK((uintptr_t)buf[j] == m_pop(&m));
			CHECK(st == (k == cnt ? ATS_CHAN_OK : k ? ATS_CHAN_WOULD_BLOCK : m_recv_fail(&m)));
			break;
		}
		case 4: { /* blocking send / recv that cannot block: background when it will not wait */
			if (cnt & 1) {
				bool fits = !m.closed && m.len < m.cap;
				ats_err *err =
				    ats_chan_send(&c, (void *)m.next, fits || m.closed ? ats_ctx_background() : done);
				if (fits) {
					CHECK(!err && m_push(&m, m.next));
					m.next++;
				} else {
					expect_err(err, m.closed ? ATS_ERR_CLOSED : ATS_ERR_CANCELLED);
				}
			} else {
				void *v = NULL;
				ats_err *err = ats_chan_recv(&c, &v, m.len || m.closed ? ats_ctx_background() : done);
				if (m.len)
					CHECK(!err && (uintptr_t)v == m_pop(&m));
				else
					expect_err(err, m.closed ? ATS_ERR_CLOSED : ATS_ERR_CANCELLED);
			}
			break;
		}
		case 5: { /* select with a default: a send case and a receive case on the same channel */
			ats_chan_case cs[3] = {
			    {.chan = &c, .send = true, .value = (void *)m.next}, {.chan = NULL}, {.chan = &c}};
			size_t fired = 77;
			CHECK(!ats_chan_select(cs, 3, true, &fired, ats_ctx_background()));
			bool can_send = m.closed || m.len < m.cap, can_recv = m.closed || m.len > 0;
			if (!can_send && !can_recv) {
				CHECK(fired == ATS_CHAN_SELECT_DEFAULT);
			} else if (fired == 0) {
				CHECK(can_send);
				if (m.closed) {
					CHECK(cs[0].status == ATS_CHAN_CLOSED);
				} else {
					CHECK(cs[0].status == ATS_CHAN_OK && m_push(&m, m.next));
					m.next++;
				}
			} else {
				CHECK(fired == 2 && can_recv);
				if (m.len)
					CHECK(cs[2].status == ATS_CHAN_OK && (uintptr_t)cs[2].value == m_pop(&m));
				else
					CHECK(cs[2].status == ATS_CHAN_CLOSED && !cs[2].value);
			}
			break;
		}
		case 6: { /* close */
			ats_err *err = ats_chan_close(&c);
			if (m.closed)
				expect_err(err, ATS_ERR_CLOSED);
			else
				CHECK(!err);
			m.closed = true;
			CHECK(ats_chan_closed(&c));
			break;
		}
		default: /* len and cap */ CHECK(ats_chan_len(&c) == m.len && ats_chan_cap(&c) == m.cap); break;
		}
	}
	struct drop_check d = {&m, 0};
	ats_chan_destroy(&c, drop, &d);
	CHECK(m.len == 0);
	ats_ctx_release(done);
	return 0;
}
