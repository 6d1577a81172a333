/* SPDX-License-Identifier: BSD-2-Clause */
/* libFuzzer target for the keyed map: random allow / throttle / burst / tokens / override /
 * idle-eviction / time sequences, over short keys and long ones (17..256 bytes, identified by
 * their hash) that share long prefixes, on a map that must resize and evict, checked step by step
 * against a reference model that knows nothing of tables or eviction: one exact GCRA bucket per key. Idle eviction and
 * growth are lossless, so the map must agree with the model on every answer. */
#include "atscale/keyed.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEYS 48
#define LIMITS 4 /* 0: the default; 1..3: overrides */

static const ats_keyed_limit limits[LIMITS] = {
    {{3, 1000}, 4}, {{1, 700}, 1}, {{5, 3000}, 9}, {{1, 0}, 2} /* infinite */};

struct model_key {
	bool seen;
	int limit;
	uint64_t tat;
};

static ats_token_clock clocks[LIMITS];

static void key_bytes(unsigned id, unsigned char *buf, size_t *len)
{
	static const size_t long_lens[] = {17, 32, 255, 256};
	if (id < 32) {
		*len = 1 + id % 16; /* lengths 1..16; ids differ in byte 0 */
		memset(buf, 0xa5, *len);
		buf[0] = (unsigned char)id;
	} else {
		/* Long keys of four lengths, the same bytes but for the last one: every id in this range
		 * shares all but one byte with three others. */
		*len = long_lens[id % 4];
		memset(buf, 0xa5, *len);
		buf[*len - 1] = (unsigned char)(id / 4);
	}
}

static uint64_t model_tokens(const struct model_key *k, uint64_t now)
{
	const ats_token_clock *c = &clocks[k->seen ? k->limit : 0];
	if (c->inf)
		return c->burst_units;
	return k->seen ? ats_gcra_tokens(c, k->tat, now) : c->burst_units >> c->shift;
}

static bool model_allow(struct model_key *k, uint64_t n, uint64_t now)
{
	const ats_token_clock *c = &clocks[k->seen ? k->limit : 0];
	if (c->inf)
		return true;
	uint64_t u = ats_token_clock_units(c, now), tat = k->seen ? k->tat : u, next;
	if (!ats_gcra_next(c, tat, u, n, &next))
		return false;
	k->seen = true;
	k->tat = next;
	return true;
}

static void model_set(struct model_key *k, int limit, uint64_t now)
{
	/* The limit it already has: nothing changes (its fraction of a token stays too). */
	if (k->seen && k->limit == limit)
		return;
	const ats_token_clock *nc = &clocks[limit];
	uint64_t burst = nc->inf ? 0 : nc->burst_units >> nc->shift;
	/* A full bucket (idle, new, or under an infinite limit) starts full under the new limit. */
	const ats_token_clock *oc = &clocks[k->seen ? k->limit : 0];
	bool full = !k->seen || oc->inf || ats_gcra_is_full(oc, k->tat, now);
	uint64_t tokens = full ? burst : model_tokens(k, now);
	if (tokens > burst)
		tokens = burst;
	k->seen = true;
	k->limit = limit;
	k->tat = nc->inf ? 0 : ats_token_clock_units(nc, now) + ((burst - tokens) << nc->shift);
}

#define CHECK(cond, ...)                                                                                               \
	do {                                                                                                           \
		if (!(cond)) {                                                                                         \
			fprintf(stderr, __VA_ARGS__);                                                                  \
			abort();                                                                                       \
		}                                                                                                      \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (int i = 0; i < LIMITS; i++)
		if (ats_token_clock_make(&clocks[i], limits[i].rate, limits[i].burst, 0))
			abort();
	/* Room for every key (no forced eviction), a tiny start so it must grow. */
	ats_keyed_config cfg = {.rate = limits[0].rate, .burst = limits[0].burst, .max_keys = KEYS, .capacity_hint = 1};
	ats_keyed *m;
	ats_err *err = ats_keyed_new(&m, &cfg);
	if (err)
		abort();
	struct model_key model[KEYS] = {{0}};
	uint64_t now = 1000000;
	for (size_t i = 0; i + 4 <= size; i += 4) {
		unsigned op = data[i] % 7, id = data[i + 1] % KEYS, arg = data[i + 2];
		now += (uint64_t)data[i + 3] * (data[i + 3] > 200 ? 1000 : 10);
		unsigned char key[ATS_KEYED_MAX_KEY];
		size_t len;
		key_bytes(id, key, &len);
		switch (op) {
		case 0:
		case 1: {
			uint64_t n = 1 + arg % 5;
			bool got = ats_keyed_allow_n_at(m, key, len, n, now), want = model_allow(&model[id], n, now);
			CHECK(got == want, "allow key %u n %llu: map %d model %d\n", id, (unsigned long long)n, got,
			      want);
			break;
		}
		case 2: {
			uint64_t got = ats_keyed_tokens_at(m, key, len, now), want = model_tokens(&model[id], now);
			CHECK(got == want, "tokens key %u: map %llu model %llu\n", id, (unsigned long long)got,
			      (unsigned long long)want);
			break;
		}
		case 3: {
			int limit = arg % LIMITS;
			err = ats_keyed_set_limit(m, key, len, limit ? &limits[limit] : NULL, now);
			CHECK(!err, "set_limit: %s\n", ats_err_message(err));
			if (model[id].seen || limit)
				model_set(&model[id], limit, now);
			break;
		}
		case 4: (void)ats_keyed_evict_idle_at(m, now, arg); break;
		case 5: {
			/* A burst of up to 8 keys (repeats allowed), answered in order. */
			const void *keys[8];
			size_t lens[8];
			unsigned char kb[8][ATS_KEYED_MAX_KEY];
			bool res[8];
			size_t count = 1 + arg % 8;
			for (size_t j = 0; j < count; j++) {
				key_bytes((id + j * (arg % 3)) % KEYS, kb[j], &lens[j]);
				keys[j] = kb[j];
			}
			(void)ats_keyed_allow_burst_at(m, keys, lens, count, 1, now, res);
			for (size_t j = 0; j < count; j++) {
				bool want = model_allow(&model[(id + j * (arg % 3)) % KEYS], 1, now);
				CHECK(res[j] == want, "burst entry %zu: map %d model %d\n", j, res[j], want);
			}
			break;
		}
		case 6: {
			/* The throttle agrees with the model on the outcome; a denial changes nothing. */
			uint64_t n = 1 + arg % 10;
			ats_limiter_result r;
			ats_keyed_status st = ats_keyed_throttle_at(m, key, len, n, now, &r);
			bool want = model_allow(&model[id], n, now);
			CHECK((st == ATS_KEYED_ALLOWED) == want && r.allowed == want,
			      "throttle key %u n %llu: %d model %d\n", id, (unsigned long long)n, (int)st, want);
			CHECK(want || st == (n > r.limit ? ATS_KEYED_EXCEEDS_BURST : ATS_KEYED_DENIED),
			      "throttle key %u: status %d\n", id, (int)st);
			CHECK(ats_keyed_throttle_at(m, key, ATS_KEYED_MAX_KEY + 1, n, now, &r) == ATS_KEYED_INVALID_KEY,
			      "a 257-byte key\n");
			break;
		}
		}
		CHECK(ats_keyed_count(m) <= KEYS, "count %zu above the cap\n", ats_keyed_count(m));
	}
	ats_keyed_free(m);
	return 0;
}
