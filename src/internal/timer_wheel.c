/* SPDX-License-Identifier: BSD-2-Clause */
/* The hierarchical timing wheel; see timer_wheel.h for the scheme. */
#include "internal/timer_wheel.h"

#include <string.h>

#define MASK ((uint64_t)ATS__TW_SLOTS - 1)

void ats__tw_init(struct ats__tw *w, uint64_t now_tick)
{
	memset(w, 0, sizeof *w);
	w->now = now_tick;
}

static inline uint64_t rotr64(uint64_t v, unsigned s)
{
	s &= 63;
	return s ? (v >> s) | (v << (64 - s)) : v;
}

/* Files n by its distance from w->now (> 0): level = which power of 64 the distance reaches. */
static void file_node(struct ats__tw *w, struct ats__tw_node *n)
{
	uint64_t rem = n->expires - w->now;
	unsigned level = (unsigned)(63 - __builtin_clzll(rem)) / ATS__TW_BITS;
	if (level >= ATS__TW_LEVELS)
		level = ATS__TW_LEVELS - 1; /* cannot happen with 48-bit ticks; never late if it did */
	unsigned slot = (unsigned)((n->expires >> (level * ATS__TW_BITS)) & MASK);
	struct ats__tw_node **head = &w->slot[level][slot];
	n->next = *head;
	if (*head)
		(*head)->pprev = &n->next;
	*head = n;
	n->pprev = head;
	n->where = level * ATS__TW_SLOTS + slot;
	w->pending[level] |= 1ull << slot;
}

bool ats__tw_add(struct ats__tw *w, struct ats__tw_node *n, uint64_t expires)
{
	if (expires <= w->now)
		return false;
	n->expires = expires;
	file_node(w, n);
	w->count++;
	return true;
}

void ats__tw_del(struct ats__tw *w, struct ats__tw_node *n)
{
	if (!n->pprev)
		return;
	*n->pprev = n->next;
	if (n->next)
		n->next->pprev = n->pprev;
	unsigned level = n->where / ATS__TW_SLOTS, slot = n->where % ATS__TW_SLOTS;
	if (!w->slot[level][slot])
		w->pending[level] &= ~(1ull << slot);
	n->next = NULL;
	n->pprev = NULL;
	w->count--;
}

struct ats__tw_node *ats__tw_advance(struct ats__tw *w, uint64_t to)
{
	if (to <= w->now)
		return NULL;
	/* Collect every slot whose block the clock entered in (now, to], level by level. Block b of
	 * level w spans ticks [b * 64^w, (b + 1) * 64^w); a timer filed at level w in slot s is
	 * first reached by entering the block whose digit is s, which is no later than its expiry. */
	struct ats__tw_node *todo = NULL;
	for (unsigned level = 0; level < ATS__TW_LEVELS; level++) {
		unsigned shift = level * ATS__TW_BITS;
		uint64_t from_block = w->now >> shift, to_block = to >> shift;
		if (from_block == to_block)
			break; /* higher levels' blocks did not change either */
		uint64_t entered = to_block - from_block, sel;
		if (entered >= ATS__TW_SLOTS) {
			sel = ~0ull;
		} else {
			/* `entered` consecutive digits starting after the current one. */
			unsigned first = (unsigned)((from_block + 1) & MASK);
			uint64_t run = (1ull << entered) - 1;
			sel = (run << first) | (first ? run >> (64 - first) : 0);
		}
		uint64_t hit = sel & w->pending[level];
		while (hit) {
			unsigned slot = (unsigned)__builtin_ctzll(hit);
			hit &= hit - 1;
			struct ats__tw_node *n = w->slot[level][slot];
			w->slot[level][slot] = NULL;
			w->pending[level] &= ~(1ull << slot);
			while (n) {
				struct ats__tw_node *next = n->next;
				n->next = todo;
				todo = n;
				n = next;
			}
		}
	}
	w->now = to;
	struct ats__tw_node *expired = NULL;
	while (todo) {
		struct ats__tw_node *n = todo;
		todo = n->next;
		if (n->expires <= to) {
			n->pprev = NULL;
			n->next = expired;
			expired = n;
			w->count--;
		} else {
			file_node(w, n);
		}
	}
	return expired;
}

uint64_t ats__tw_next(const struct ats__tw *w)
{
	uint64_t best = UINT64_MAX;
	for (unsigned level = 0; level < ATS__TW_LEVELS; level++) {
		if (!w->pending[level])
			continue;
		unsigned shift = level * ATS__TW_BITS;
		uint64_t block = w->now >> shift;
		/* The first occupied digit after the current one, j blocks ahead (1 <= j <= 64). */
		uint64_t rot = rotr64(w->pending[level], (unsigned)((block + 1) & MASK));
		uint64_t j = (uint64_t)__builtin_ctzll(rot) + 1;
		uint64_t at = (block + j) << shift;
		if (at < best)
			best = at;
	}
	return best;
}
