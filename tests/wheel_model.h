/* SPDX-License-Identifier: BSD-2-Clause */
/* The timing wheel (src/internal/timer_wheel.h) beside a model of which nodes are armed and when
 * they expire: the check shared by tests/test_ctx.c (seeded random steps) and fuzz/fuzz_ctx.c (the
 * fuzzer's bytes). Each step returns NULL when the wheel agrees with the model, else a description
 * of the difference, so that each caller fails in its own way (cr_assert, abort). */
#ifndef ATS_TESTS_WHEEL_MODEL_H
#define ATS_TESTS_WHEEL_MODEL_H

#include "internal/timer_wheel.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define WHEEL_MODEL_MAX_NODES 256

struct wheel_model {
	struct ats__tw w;
	int nodes; /* in use: 1..WHEEL_MODEL_MAX_NODES */
	struct ats__tw_node node[WHEEL_MODEL_MAX_NODES];
	bool armed[WHEEL_MODEL_MAX_NODES];
	uint64_t exp[WHEEL_MODEL_MAX_NODES];
	char why[160];
};

static inline void wheel_model_init(struct wheel_model *m, int nodes, uint64_t now)
{
	memset(m, 0, sizeof *m);
	m->nodes = nodes;
	ats__tw_init(&m->w, now);
}

/* Arms node k to expire at e unless it is armed already: the wheel must file it exactly when e is
 * still ahead. */
static inline const char *wheel_model_add(struct wheel_model *m, int k, uint64_t e)
{
	if (m->armed[k])
		return NULL;
	bool filed = ats__tw_add(&m->w, &m->node[k], e);
	if (filed != (e > m->w.now)) {
		snprintf(m->why, sizeof m->why, "node %d at %llu, now %llu: filed %d", k, (unsigned long long)e,
		         (unsigned long long)m->w.now, filed);
		return m->why;
	}
	m->armed[k] = filed;
	m->exp[k] = e;
	return NULL;
}

static inline void wheel_model_del(struct wheel_model *m, int k)
{
	ats__tw_del(&m->w, &m->node[k]);
	m->armed[k] = false;
}

/* The wheel's next expiry: after now and no later than the model's earliest. */
static inline const char *wheel_model_next(struct wheel_model *m, uint64_t *next)
{
	uint64_t min = UINT64_MAX;
	for (int i = 0; i < m->nodes; i++)
		if (m->armed[i] && m->exp[i] < min)
			min = m->exp[i];
	*next = ats__tw_next(&m->w);
	if (*next > min || *next <= m->w.now) {
		snprintf(m->why, sizeof m->why, "next %llu, earliest expiry %llu, now %llu", (unsigned long long)*next,
		         (unsigned long long)min, (unsigned long long)m->w.now);
		return m->why;
	}
	return NULL;
}

/* Advances the wheel to `to`: exactly the nodes due by then come out, each once, and the others
 * stay armed. */
static inline const char *wheel_model_advance(struct wheel_model *m, uint64_t to)
{
	bool got[WHEEL_MODEL_MAX_NODES] = {0};
	for (struct ats__tw_node *x = ats__tw_advance(&m->w, to); x; x = x->next) {
		int i = (int)(x - m->node);
		if (got[i]) {
			snprintf(m->why, sizeof m->why, "node %d came out twice", i);
			return m->why;
		}
		got[i] = true;
	}
	for (int i = 0; i < m->nodes; i++) {
		bool due = m->armed[i] && m->exp[i] <= to;
		if (got[i] != due || ats__tw_armed(&m->node[i]) != (m->armed[i] && !due)) {
			snprintf(m->why, sizeof m->why,
			         "node %d expiring at %llu, advanced to %llu: came out %d, armed %d", i,
			         (unsigned long long)m->exp[i], (unsigned long long)to, got[i],
			         ats__tw_armed(&m->node[i]));
			return m->why;
		}
		if (due)
			m->armed[i] = false;
	}
	return NULL;
}

#endif
