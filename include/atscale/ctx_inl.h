/* SPDX-License-Identifier: BSD-2-Clause */
/* Not API: the inline internals of atscale/ctx.h. Included by ctx.h; never include it directly.
 * Every name here may change in any release. */
#ifndef ATSCALE_CTX_INL_H
#define ATSCALE_CTX_INL_H

#ifndef ATSCALE_CTX_H
#error "include <atscale/ctx.h>, not atscale/ctx_inl.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The transparent prefix of every context, read by the inline fast paths. */
struct ats__ctx_xval {
	const ats_ctx_key *key;
	void *value;
	const struct ats__ctx_xval *next;
};
struct ats__ctx_vals {
	uint32_t mask; /* which slots hold a value */
	const struct ats__ctx_xval *overflow;
	void *slot[ATS_CTX_VALUE_SLOTS];
};
#define ATS__CTX_CANCELLED 1u
#define ATS__CTX_DEADLINE 2u
#define ATS__CTX_DONE_MASK 3u
#define ATS__CTX_LOCKED 4u
#define ATS__CTX_WAITERS 0x80000000u
struct ats__ctx_head {
	ATS_ATOMIC(uint32_t) state; /* 0 live; the reason (1 cancelled, 2 deadline) once done; lock, waiters */
	uint32_t flags;
	uint64_t deadline_ns;             /* immutable */
	const struct ats__ctx_vals *vals; /* immutable; NULL when no values */
};
ATS_API bool ats__ctx_lookup_overflow(const struct ats__ctx_vals *v, const ats_ctx_key *key, void **out);

static inline bool ats_ctx_done(const ats_ctx *ctx)
{
	const struct ats__ctx_head *h = (const struct ats__ctx_head *)(const void *)ctx;
	/* acquire: pairs with the canceller's release unlock that stores the reason (ctx_unlock in
	 * src/ctx.c), so a caller that sees done also sees the context's err. */
	return (ats__atomic_load((ATS_ATOMIC(uint32_t) *)&h->state, ats__mo_acquire) & ATS__CTX_DONE_MASK) != 0;
}

static inline bool ats_ctx_done_at(const ats_ctx *ctx, uint64_t now_ns)
{
	const struct ats__ctx_head *h = (const struct ats__ctx_head *)(const void *)ctx;
	return ats_ctx_done(ctx) || now_ns >= h->deadline_ns;
}

static inline uint64_t ats_ctx_deadline(const ats_ctx *ctx)
{
	return ((const struct ats__ctx_head *)(const void *)ctx)->deadline_ns;
}

static inline bool ats_ctx_lookup(const ats_ctx *ctx, ats_ctx_key *key, void **out)
{
	const struct ats__ctx_vals *v = ((const struct ats__ctx_head *)(const void *)ctx)->vals;
	/* relaxed: the slot number is the whole message (no data rides on it). A table built with key
	 * was built after its slot was assigned, and reached here through a hand-off of ctx, so this
	 * load sees that slot; any other reading (unassigned, or a slot outside the mask) means the
	 * table was built without key, and "not found" is the right answer. */
	uint32_t s = ats__atomic_load(&key->slot_, ats__mo_relaxed);
	if (!v || s == ATS__CTX_KEY_UNASSIGNED)
		return false;
	if (s < ATS_CTX_VALUE_SLOTS) {
		if (!((v->mask >> s) & 1u))
			return false;
		*out = v->slot[s];
		return true;
	}
	return ats__ctx_lookup_overflow(v, key, out);
}

static inline void *ats_ctx_value(const ats_ctx *ctx, ats_ctx_key *key)
{
	void *v = NULL;
	return ats_ctx_lookup(ctx, key, &v) ? v : NULL;
}

#ifdef __cplusplus
}
#endif
#endif
