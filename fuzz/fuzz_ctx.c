/* SPDX-License-Identifier: BSD-2-Clause */
/* libFuzzer target: random context trees and operation orders against a reference model, and
 * the timing wheel against a sorted-expiry model. The first byte picks the mode.
 *
 * Contexts: up to 32 nodes made with with_cancel, with_deadline (in the past, or hours ahead so
 * no timer fires during a run), with_value (10 keys: past the 8 slots into the overflow path),
 * without_cancel and merge; cancels with and without causes; releases in any order (a released
 * node stays in the model: its descendants still hang off it); after-func registrations and
 * stops. After every operation each held node's done state, error code, cause and values must
 * match the model, and every after-func must have run exactly when the model says. LSan checks
 * that nothing is left when the run ends. */
#include "atscale/ctx.h"
#include "atscale/clock.h"
#include "wheel_model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NODES 32
#define KEYS 10
#define HOUR 3600000000000ull

static ats_ctx_key keys[KEYS] = {
    ATS_CTX_KEY_INIT("k0"), ATS_CTX_KEY_INIT("k1"), ATS_CTX_KEY_INIT("k2"), ATS_CTX_KEY_INIT("k3"),
    ATS_CTX_KEY_INIT("k4"), ATS_CTX_KEY_INIT("k5"), ATS_CTX_KEY_INIT("k6"), ATS_CTX_KEY_INIT("k7"),
    ATS_CTX_KEY_INIT("k8"), ATS_CTX_KEY_INIT("k9"),
};

struct mnode {
	bool exists, held, cancellable, done;
	int reason;         /* 1 cancelled, 2 deadline */
	int cause;          /* ats_code of the cause, 0 none */
	int parents[2];     /* -1 none; [0] also gives the values */
	bool has_val[KEYS]; /* set on this node itself */
	uintptr_t val[KEYS];
	bool reg, stopped; /* after-func state */
	int ran;           /* how many times it ran (real, written by the callback) */
	bool should_run;
	ats_ctx *h;
	ats_ctx_after after;
};

static struct mnode m[NODES];
static int nnodes;

#define CHECK(c)                                                                                                       \
	do {                                                                                                           \
		if (!(c))                                                                                              \
			__builtin_trap();                                                                              \
	} while (0)

static void after_fn(void *arg)
{
	((struct mnode *)arg)->ran++;
}

static bool model_lookup(int i, int k, uintptr_t *out)
{
	while (i >= 0) {
		if (m[i].has_val[k]) {
			*out = m[i].val[k];
			return true;
		}
		i = m[i].parents[0];
	}
	return false;
}

/* Marks i done and everything below it (children: nodes listing it as a parent). */
static void model_cancel(int i, int reason, int cause)
{
	int stack[NODES * 2], n = 0;
	if (!m[i].cancellable || m[i].done)
		return;
	stack[n++] = i;
	while (n) {
		int x = stack[--n];
		if (m[x].done || !m[x].cancellable)
			continue;
		m[x].done = true;
		m[x].reason = reason;
		m[x].cause = cause;
		if (m[x].reg && !m[x].stopped)
			m[x].should_run = true;
		for (int c = 0; c < nnodes; c++)
			if (m[c].exists && (m[c].parents[0] == x || m[c].parents[1] == x) && !m[c].done &&
			    m[c].cancellable && n < NODES * 2)
				stack[n++] = c;
	}
}

static void check_all(void)
{
	for (int i = 0; i < nnodes; i++) {
		struct mnode *x = &m[i];
		if (x->reg)
			CHECK(x->ran == (x->should_run ? 1 : 0));
		if (!x->held)
			continue;
		CHECK(ats_ctx_done(x->h) == x->done);
		ats_err *e = ats_ctx_err(x->h);
		if (!x->done) {
			CHECK(e == NULL);
		} else {
			CHECK(ats_err_code(e) == (x->reason == 2 ? ATS_ERR_DEADLINE_EXCEEDED : ATS_ERR_CANCELLED));
			const ats_err *cause = ats_ctx_cause(x->h);
			if (x->cause)
				CHECK(ats_err_code(cause) == (ats_code)x->cause);
			else
				CHECK(cause == e);
			ats_err_unref(e);
		}
		for (int k = 0; k < KEYS; k++) {
			uintptr_t want = 0;
			void *got = NULL;
			bool has = model_lookup(i, k, &want);
			CHECK(ats_ctx_lookup(x->h, &keys[k], &got) == has);
			if (has)
				CHECK((uintptr_t)got == want);
		}
	}
}

/* A node to use as a parent: a held one, or the background (-1). */
static int pick_held(uint8_t b)
{
	if (nnodes == 0)
		return -1;
	int i = b % nnodes;
	for (int t = 0; t < nnodes; t++, i = (i + 1) % nnodes)
		if (m[i].held)
			return i;
	return -1;
}

static ats_ctx *handle_of(int i)
{
	return i < 0 ? ats_ctx_background() : m[i].h;
}

static int new_node(int p0, int p1, bool cancellable)
{
	int i = nnodes++;
	memset(&m[i], 0, sizeof m[i]);
	m[i].exists = m[i].held = true;
	m[i].cancellable = cancellable;
	m[i].parents[0] = p0;
	m[i].parents[1] = p1;
	/* Born done when a parent it listens to is done. */
	if (cancellable) {
		for (int j = 0; j < 2; j++) {
			int p = m[i].parents[j];
			if (p >= 0 && m[p].done && !m[i].done) {
				m[i].done = true;
				m[i].reason = m[p].reason;
				m[i].cause = m[p].cause;
			}
		}
	}
	return i;
}

static void run_ctx(const uint8_t *d, size_t n)
{
	nnodes = 0;
	static const ats_code causes[] = {ATS_ERR_CLOSED, ATS_ERR_UNAVAILABLE, ATS_ERR_LIMITED};
	for (size_t pos = 0; pos + 3 <= n; pos += 3) {
		uint8_t op = d[pos] % 10, a = d[pos + 1], b = d[pos + 2];
		int p = pick_held(a);
		ats_ctx *out = NULL;
		if (op <= 4 && nnodes == NODES)
			op = 5 + op % 4; /* full: cancel, release, register or stop instead */
		switch (op) {
		case 0:
			CHECK(ats_ctx_with_cancel(handle_of(p), &out) == NULL);
			m[new_node(p, -1, true)].h = out;
			break;
		case 1: {
			bool past = b & 1;
			uint64_t now = ats_now_ns();
			/* Past on the clock the library reads, which may be behind now by its precision. */
			uint64_t d0 = past ? now - ats_fast_precision_ns() - 1 - b : now + HOUR * (1 + b);
			CHECK(ats_ctx_with_deadline(handle_of(p), d0, &out) == NULL);
			int i = new_node(p, -1, true);
			m[i].h = out;
			if (past && !m[i].done) {
				m[i].done = true;
				m[i].reason = 2;
			}
			break;
		}
		case 2: {
			int k = b % KEYS;
			uintptr_t v = (uintptr_t)a * 256 + b + 1;
			CHECK(ats_ctx_with_value(handle_of(p), &keys[k], (void *)v, &out) == NULL);
			int i = new_node(p, -1, true);
			m[i].h = out;
			m[i].has_val[k] = true;
			m[i].val[k] = v;
			break;
		}
		case 3:
			CHECK(ats_ctx_without_cancel(handle_of(p), &out) == NULL);
			m[new_node(p, -1, false)].h = out;
			break;
		case 4: {
			int q = pick_held(b);
			ats_ctx *ps[2] = {handle_of(p), handle_of(q)};
			CHECK(ats_ctx_merge(ps, 2, &out) == NULL);
			m[new_node(p, q, true)].h = out;
			break;
		}
		case 5:
			if (p >= 0) {
				int cause = (b & 3) ? (int)causes[b % 3] : 0;
				bool did = ats_ctx_cancel(m[p].h, cause ? ats_err_new((ats_code)cause, "fuzz") : NULL);
				CHECK(did == (m[p].cancellable && !m[p].done));
				model_cancel(p, 1, cause);
			}
			break;
		case 6:
			if (p >= 0) {
				ats_ctx_release(m[p].h);
				m[p].held = false;
				m[p].h = NULL;
			}
			break;
		case 7:
			if (p >= 0 && (!m[p].reg || m[p].stopped || m[p].should_run)) {
				if (m[p].reg)
					ats_ctx_after_stop(&m[p].after); /* settled either way */
				m[p].reg = true;
				m[p].stopped = false;
				m[p].ran = 0;
				m[p].should_run = m[p].done && m[p].cancellable;
				ats_ctx_after_func(m[p].h, &m[p].after, after_fn, &m[p]);
			}
			break;
		case 8:
			if (p >= 0 && m[p].reg && !m[p].stopped) {
				bool stopped = ats_ctx_after_stop(&m[p].after);
				CHECK(stopped == !m[p].should_run);
				m[p].stopped = true;
			}
			break;
		default: break;
		}
		check_all();
	}
	for (int i = 0; i < nnodes; i++)
		if (m[i].reg)
			ats_ctx_after_stop(&m[i].after);
	for (int i = 0; i < nnodes; i++)
		if (m[i].held)
			ats_ctx_release(m[i].h);
}

/* ---- The wheel ---- */

static void wheel_check(const char *why)
{
	if (why) {
		fprintf(stderr, "fuzz_ctx: timing wheel: %s\n", why);
		abort();
	}
}

static void run_wheel(const uint8_t *d, size_t n)
{
	static struct wheel_model m;
	wheel_model_init(&m, 64, n >= 9 ? ((uint64_t)d[1] << 40 | (uint64_t)d[2] << 20 | d[3]) : 0);
	for (size_t pos = 9; pos + 6 <= n; pos += 6) {
		int k = d[pos + 1] % m.nodes;
		/* A distance spread over every level: d[2] picks the magnitude, the rest the value. */
		uint64_t raw =
		    (uint64_t)d[pos + 3] << 24 | (uint64_t)d[pos + 4] << 16 | (uint64_t)d[pos + 5] << 8 | d[pos];
		uint64_t dist = raw & ((1ull << (d[pos + 2] % 47)) - 1);
		switch (d[pos] % 3) {
		case 0: wheel_check(wheel_model_add(&m, k, m.w.now + dist)); break;
		case 1: wheel_model_del(&m, k); break;
		default: {
			uint64_t next;
			wheel_check(wheel_model_next(&m, &next));
			wheel_check(
			    wheel_model_advance(&m, (d[pos + 1] & 1) && next != UINT64_MAX ? next : m.w.now + dist));
		}
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] & 1)
		run_wheel(data, size);
	else
		run_ctx(data + 1, size - 1);
	return 0;
}
