/* SPDX-License-Identifier: BSD-2-Clause */
/* libFuzzer target for the structured errors: the input is a little program that builds, wraps,
 * decorates, shares and drops errors made of arbitrary bytes (messages, keys, values, user text,
 * hints), and formats them into buffers of every size. Checked on every format:
 *  - the JSON of any error parses (strict RFC 8259 + UTF-8, tests/json_check.h);
 *  - both formats follow the snprintf contract: the return value is the full length, a truncated
 *    text is a NUL-terminated prefix that stays inside its buffer (ASan sees an overrun because
 *    each buffer is its own exact-size allocation);
 *  - user text of bugs goes to the log hook, which validates the record too;
 *  - everything is freed (LeakSanitizer at exit of each run).
 *
 * Program: a sequence of ops, each one byte (op = byte % OPS) followed by its operands. Strings
 * are a length byte then that many bytes (NULs end them early, as C strings would).
 */
#include "atscale/error.h"
#include "json_check.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct input {
	const uint8_t *p;
	size_t n;
};

static uint8_t take(struct input *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

/* A NUL-free string of up to 255 bytes, copied into buf. */
static const char *take_str(struct input *in, char *buf)
{
	size_t len = take(in);
	if (len > in->n)
		len = in->n;
	size_t k = 0;
	for (; k < len && in->p[k]; k++)
		buf[k] = (char)in->p[k];
	buf[k] = '\0';
	in->p += len;
	in->n -= len;
	return buf;
}

static void check_format(const ats_err *e, size_t (*fmt)(const ats_err *, char *, size_t), bool json, size_t cut)
{
	size_t n = fmt(e, NULL, 0);
	char *full = malloc(n + 1);
	if (!full)
		abort();
	if (fmt(e, full, n + 1) != n || strlen(full) != n)
		abort();
	if (json && !json_valid(full, n)) {
		fprintf(stderr, "invalid JSON: %s\n", full);
		abort();
	}
	/* A buffer of exactly `len` bytes: writing past it is a heap overflow ASan reports. */
	size_t len = cut % (n + 2);
	char *buf = len ? malloc(len) : NULL;
	if (len && !buf)
		abort();
	if (fmt(e, buf, len) != n)
		abort();
	if (len) {
		size_t got = strnlen(buf, len);
		if (got != (n < len ? n : len - 1) || memcmp(buf, full, got) != 0)
			abort();
	}
	free(buf);
	free(full);
}

static size_t user_text(const ats_err *e, char *buf, size_t len)
{
	return ats_err_user_text(e, buf, len);
}

static void validating_hook(const ats_err *err, void *arg)
{
	(void)arg;
	check_format(err, ats_err_format_json, true, 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	ats_err_set_log_hook(validating_hook, NULL); /* and keeps bugs' records off stderr */
	return 0;
}

/* The message as the format itself (checked '%'-free by the caller): the path that copies the
 * format without vsnprintf. Through the va_list entry point, which takes a non-literal format. */
static ats_err *make_plain(ats_err_kind kind, ats_code code, int stack, const char *msg, ...)
{
	va_list ap;
	va_start(ap, msg);
	ats_err *e = ats__err_vnew("fuzz.c", 1, "fuzz", kind, code, stack, NULL, msg, ap);
	va_end(ap);
	return e;
}

#define SLOTS 8
#define OPS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = {data, size};
	ats_err *slot[SLOTS] = {0};
	char a[256], b[256];
	int steps = 0;
	while (in.n && steps++ < 64) {
		uint8_t op = take(&in) % OPS;
		uint8_t x = take(&in);
		ats_err **s = &slot[x % SLOTS];
		ats_code code = (ats_code)(x >> 3) % (ATS_ERR_CODE_COUNT + 2); /* 0 and beyond the set too */
		int stack = (x >> 3) % 3;
		switch (op) {
		case 0: /* a new error; the message is the format when it has no '%' */
			take_str(&in, a);
			ats_err_unref(*s);
			if (strchr(a, '%'))
				*s = ats__err_new("fuzz.c", 1, "fuzz", (ats_err_kind)(x % 3), code, stack, NULL, "%s",
				                  a);
			else
				*s = make_plain((ats_err_kind)(x % 3), code, stack, a);
			break;
		case 1: *s = ats_err_wrap(*s, "%s", take_str(&in, a)); break;
		case 2: *s = ats_err_wrapc(*s, code, "%s", take_str(&in, a)); break;
		case 3: *s = ats_err_bug(*s, "%s", take_str(&in, a)); break;
		case 4: *s = ats_err_boundary(*s); break;
		case 5: *s = ats_err_with_user(*s, "%s", take_str(&in, a)); break;
		case 6: *s = ats_err_with_hint(*s, "%s", take_str(&in, a)); break;
		case 7:
			take_str(&in, a);
			*s = ats_err_with_kv(*s, a, "%s", take_str(&in, b));
			break;
		case 8: { /* share: another slot takes a reference (then decorations must copy) */
			ats_err **t = &slot[(x >> 3) % SLOTS];
			if (t != s) {
				ats_err_unref(*t);
				*t = ats_err_ref(*s);
			}
			break;
		}
		case 9:
			ats_err_unref(*s);
			*s = NULL;
			break;
		case 10: check_format(*s, ats_err_format, false, take(&in) * 7u); break;
		case 11: check_format(*s, ats_err_format_json, true, take(&in) * 7u); break;
		case 12: check_format(*s, user_text, false, take(&in)); break;
		case 13:
			ats_err_unref(*s);
			*s = ats_err_errno(x, "%s", take_str(&in, a));
			break;
		case 14: ats_err_set_stack_default(x & 1); break;
		case 15: { /* readers */
			const ats_err *f = ats_err_find(*s, code);
			if (f && ats_err_code(f) != code)
				abort();
			if ((f != NULL) != ats_err_is(*s, code))
				abort();
			const ats_err *r = ats_err_root(*s);
			if (*s && (!r || ats_err_cause(r)))
				abort();
			ats_err_kv_get(*s, take_str(&in, a));
			for (size_t i = 0; i < ats_err_kv_count(*s); i++) {
				const char *k, *v;
				if (!ats_err_kv_at(*s, i, &k, &v) || strcmp(ats_err_kv_get(*s, k), v) != 0)
					abort();
			}
			break;
		}
		}
	}
	for (int i = 0; i < SLOTS; i++) {
		check_format(slot[i], ats_err_format_json, true, 0);
		ats_err_unref(slot[i]);
	}
	ats_err_set_stack_default(false);
	return 0;
}
