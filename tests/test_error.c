/* SPDX-License-Identifier: BSD-2-Clause */
/* Unit tests of the structured errors: constructors, accessors, chains, kinds and boundaries, the
 * user/log split, copy-on-write decorations, stacks, both formats, limits, and out-of-memory.
 *
 * The binary is linked with --wrap for malloc, calloc, realloc, strdup and free (see
 * test_error.cmake): every allocation libatscale.a makes goes through the wrappers below, which
 * count live blocks and can fail the Nth allocation.
 */
#include "atscale/clock.h"
#include "atscale/error.h"
#include "json_check.h"

#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- Allocation wrappers: live-block counting and failure injection ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
void __wrap_free(void *p);

static _Atomic long fail_at = -1; /* allocations to let through before failing one; -1: never */
static _Atomic long injected;     /* failures injected so far */
static _Atomic long live;         /* blocks from the wrappers not yet freed */

static bool fail_now(void)
{
	long n = atomic_load(&fail_at);
	if (n < 0)
		return false;
	atomic_store(&fail_at, n - 1); /* the failing one leaves -1: only one failure per arming */
	if (n == 0) {
		atomic_fetch_add(&injected, 1);
		return true;
	}
	return false;
}

void *__wrap_malloc(size_t n)
{
	void *p = fail_now() ? NULL : __real_malloc(n);
	if (p)
		atomic_fetch_add(&live, 1);
	return p;
}

void *__wrap_calloc(size_t n, size_t size)
{
	void *p = fail_now() ? NULL : __real_calloc(n, size);
	if (p)
		atomic_fetch_add(&live, 1);
	return p;
}

void *__wrap_realloc(void *p, size_t n)
{
	void *q = fail_now() ? NULL : __real_realloc(p, n);
	if (q && !p)
		atomic_fetch_add(&live, 1);
	return q;
}

char *__wrap_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = __wrap_malloc(n);
	if (d)
		memcpy(d, s, n);
	return d;
}

void __wrap_free(void *p)
{
	if (p)
		atomic_fetch_sub(&live, 1);
	__real_free(p);
}

/* ---- Helpers ---- */

/* Exported (the binary has -rdynamic) so the symbolized stack can name it. */
ats_err *make_bug_here(void);
__attribute__((noinline)) ats_err *make_bug_here(void)
{
	ats_err *e = ats_err_bug(NULL, "invariant broke");
	__asm__ __volatile__("" ::: "memory"); /* keeps the call out of tail position: a real frame */
	return e;
}

static char *format_all(const ats_err *e, size_t (*fmt)(const ats_err *, char *, size_t), size_t *len)
{
	size_t n = fmt(e, NULL, 0);
	char *buf = malloc(n + 1);
	cr_assert_not_null(buf);
	cr_assert_eq(fmt(e, buf, n + 1), n);
	cr_assert_eq(strlen(buf), n, "formatted text holds a NUL or the length is wrong");
	if (len)
		*len = n;
	return buf;
}

static void assert_json(const ats_err *e)
{
	size_t n;
	char *json = format_all(e, ats_err_format_json, &n);
	cr_assert(json_valid(json, n), "invalid JSON: %s", json);
	free(json);
}

/* ---- The JSON validator itself (a checker that accepts everything proves nothing) ---- */

Test(json_check, accepts_and_rejects)
{
	const char *good[] = {"{}",
	                      "[]",
	                      "0",
	                      "-1.5e+3",
	                      "\"a\\u00e9\\ud83d\\ude00\"",
	                      " {\"a\":[1,{\"b\":null}],\"c\":true} ",
	                      "[false,\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]",
	                      "\"\xc3\xa9\xf0\x9f\x98\x80\""};
	const char *bad[] = {"",
	                     "{",
	                     "{\"a\"}",
	                     "{\"a\":1,}",
	                     "[1,]",
	                     "01",
	                     "1.",
	                     "\"\x01\"",
	                     "\"\xff\"",
	                     "\"\xc0\x80\"",
	                     "\"\xed\xa0\x80\"",
	                     "\"\\ud800\"",
	                     "\"\\x\"",
	                     "{} {}",
	                     "tru",
	                     "[1 2]",
	                     "{1:2}",
	                     "\"abc",
	                     "-",
	                     "nul"};
	for (size_t i = 0; i < sizeof good / sizeof *good; i++)
		cr_assert(json_valid(good[i], strlen(good[i])), "rejected %s", good[i]);
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		cr_assert(!json_valid(bad[i], strlen(bad[i])), "accepted %s", bad[i]);
}

/* ---- Constructors and accessors ---- */

Test(error, new_has_every_field)
{
	uint64_t before = ats_now_ns();
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	int line = __LINE__ + 1;
	ats_err *e = ats_err_new(ATS_ERR_LIMITED, "queue full: %d of %d", 64, 64);
	uint64_t after = ats_now_ns();
	uint64_t prec = ats_fast_precision_ns();

	cr_assert_not_null(e);
	cr_assert_neq(e, ats_err_oom);
	cr_assert_eq(ats_err_code(e), ATS_ERR_LIMITED);
	cr_assert_eq(ats_err_kind_of(e), ATS_KIND_KNOWN);
	cr_assert(!ats_err_is_bug(e));
	cr_assert_str_eq(ats_err_message(e), "queue full: 64 of 64");
	cr_assert_null(ats_err_cause(e));
	cr_assert_eq(ats_err_root(e), e);
	cr_assert_null(ats_err_user(e));
	cr_assert_null(ats_err_hint(e));
	cr_assert_eq(ats_err_kv_count(e), 0);
	cr_assert_neq(ats_err_log_id(e), 0);
	cr_assert_str_eq(ats_err_file(e), __FILE__);
	cr_assert_eq(ats_err_line(e), line);
	cr_assert_str_eq(ats_err_func(e), __func__);
	cr_assert_eq(ats_err_thread_id(e), (int)gettid());
	/* The stamp comes from the cheap clock, which may differ from CLOCK_MONOTONIC by its precision. */
	uint64_t mono = ats_err_mono_ns(e);
	cr_assert(mono + prec >= before && mono <= after + prec, "mono %llu outside [%llu, %llu] +- %llu",
	          (unsigned long long)mono, (unsigned long long)before, (unsigned long long)after,
	          (unsigned long long)prec);
	int64_t wall_skew =
	    (int64_t)(ats_err_wall_ns(e) - ((uint64_t)rt.tv_sec * ATS_NS_PER_SEC + (uint64_t)rt.tv_nsec));
	cr_assert(wall_skew > -100000000 && wall_skew < 100000000, "wall time off by %lld ns", (long long)wall_skew);
	void *const *frames = NULL;
	cr_assert_eq(ats_err_stack(e, &frames), 0, "known errors capture no stack by default");
	ats_err_unref(e);
}

Test(error, plain_and_long_messages)
{
	ats_err *plain = ats_err_new(ATS_ERR_CLOSED, "channel closed");
	cr_assert_str_eq(ats_err_message(plain), "channel closed");
	ats_err *percent = ats_err_new(ATS_ERR_CLOSED, "100%% done");
	cr_assert_str_eq(ats_err_message(percent), "100% done");
	char big[1000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	ats_err *longer = ats_err_new(ATS_ERR_CLOSED, "[%s]", big); /* past the 256-byte first try */
	cr_assert_eq(strlen(ats_err_message(longer)), sizeof big + 1);
	cr_assert_eq(ats_err_message(longer)[0], '[');
	cr_assert_eq(ats_err_message(longer)[sizeof big], ']');
	ats_err_unref(plain);
	ats_err_unref(percent);
	ats_err_unref(longer);
}

Test(error, null_is_success_everywhere)
{
	cr_assert_eq(ats_err_code(NULL), 0);
	cr_assert_null(ats_err_message(NULL));
	cr_assert_null(ats_err_cause(NULL));
	cr_assert_null(ats_err_root(NULL));
	cr_assert_null(ats_err_user(NULL));
	cr_assert_null(ats_err_hint(NULL));
	cr_assert_eq(ats_err_kv_count(NULL), 0);
	cr_assert(!ats_err_kv_at(NULL, 0, NULL, NULL));
	cr_assert_null(ats_err_kv_get(NULL, "k"));
	cr_assert_eq(ats_err_log_id(NULL), 0);
	cr_assert_eq(ats_err_wall_ns(NULL), 0);
	cr_assert_eq(ats_err_mono_ns(NULL), 0);
	cr_assert_eq(ats_err_thread_id(NULL), 0);
	cr_assert_null(ats_err_file(NULL));
	cr_assert_eq(ats_err_line(NULL), 0);
	cr_assert_null(ats_err_func(NULL));
	void *const *frames = (void *const *)1;
	cr_assert_eq(ats_err_stack(NULL, &frames), 0);
	cr_assert_null(frames);
	cr_assert(!ats_err_is(NULL, ATS_ERR_CANCELLED));
	cr_assert_null(ats_err_find(NULL, ATS_ERR_CANCELLED));
	cr_assert(!ats_err_is_bug(NULL));
	cr_assert_null(ats_err_ref(NULL));
	ats_err_unref(NULL);
	cr_assert_null(ats_err_wrap(NULL, "nothing"));
	cr_assert_null(ats_err_boundary(NULL));
	cr_assert_null(ats_err_with_user(NULL, "u"));
	cr_assert_null(ats_err_with_hint(NULL, "h"));
	cr_assert_null(ats_err_with_kv(NULL, "k", "v"));
	char buf[32];
	cr_assert_eq(ats_err_user_text(NULL, buf, sizeof buf), 0);
	cr_assert_str_eq(buf, "");
	cr_assert_eq(ats_err_format_json(NULL, buf, sizeof buf), 4);
	cr_assert_str_eq(buf, "null");
	ats_err_format(NULL, buf, sizeof buf);
	cr_assert_str_eq(buf, "no error\n");
}

Test(error, names)
{
	const char *want[] = {"unknown",          "cancelled",     "deadline_exceeded", "closed",    "limited",
	                      "invalid_argument", "out_of_memory", "unavailable",       "not_found", "exists",
	                      "system",           "internal"};
	for (int c = 0; c <= ATS_ERR_CODE_COUNT; c++)
		cr_assert_str_eq(ats_code_name((ats_code)c), want[c]);
	cr_assert_str_eq(ats_code_name((ats_code)99), "unknown");
	cr_assert_str_eq(ats_code_name((ats_code)-1), "unknown");
	cr_assert_str_eq(ats_err_kind_name(ATS_KIND_KNOWN), "known");
	cr_assert_str_eq(ats_err_kind_name(ATS_KIND_RAW), "raw");
	cr_assert_str_eq(ats_err_kind_name(ATS_KIND_BUG), "bug");
	cr_assert_str_eq(ats_err_kind_name((ats_err_kind)7), "unknown");
}

Test(error, errno_errors)
{
	ats_err *e = ats_err_errno(ENOENT, "open %s", "/etc/x.conf");
	cr_assert_eq(ats_err_code(e), ATS_ERR_SYSTEM);
	cr_assert_eq(ats_err_kind_of(e), ATS_KIND_RAW);
	cr_assert_str_eq(ats_err_message(e), "open /etc/x.conf");
	cr_assert_str_eq(ats_err_kv_get(e, "errno"), "ENOENT (2)");
	cr_assert_str_eq(ats_err_func(e), __func__);
	ats_err_unref(e);
	e = ats_err_errno(99999, "odd");
	cr_assert_str_eq(ats_err_kv_get(e, "errno"), "unknown errno (99999)");
	ats_err_unref(e);
}

/* ---- Chains ---- */

Test(error, chains_is_find_root)
{
	ats_err *root = ats_err_new(ATS_ERR_DEADLINE_EXCEEDED, "read timed out");
	ats_err *mid = ats_err_wrap(root, "fetching user %d", 7);
	cr_assert_eq(ats_err_code(mid), ATS_ERR_DEADLINE_EXCEEDED, "wrap keeps the code");
	cr_assert_eq(ats_err_kind_of(mid), ATS_KIND_KNOWN, "wrap keeps the kind");
	cr_assert_eq(ats_err_cause(mid), root);
	ats_err *top = ats_err_wrapc(mid, ATS_ERR_CANCELLED, "request cancelled");
	cr_assert_eq(ats_err_code(top), ATS_ERR_CANCELLED);
	cr_assert_eq(ats_err_cause(top), mid);
	cr_assert_eq(ats_err_root(top), root);
	cr_assert(ats_err_is(top, ATS_ERR_CANCELLED));
	cr_assert(ats_err_is(top, ATS_ERR_DEADLINE_EXCEEDED));
	cr_assert(!ats_err_is(top, ATS_ERR_CLOSED));
	cr_assert_eq(ats_err_find(top, ATS_ERR_DEADLINE_EXCEEDED), mid, "find returns the first match");
	cr_assert_eq(ats_err_find(top, ATS_ERR_CANCELLED), top);
	cr_assert_null(ats_err_find(top, ATS_ERR_CLOSED));
	ats_err_unref(top); /* frees the whole chain; ASan/valgrind prove it */
}

Test(error, wrap_of_oom_is_oom)
{
	cr_assert_eq(ats_err_wrap(ats_err_oom, "ctx"), ats_err_oom);
	cr_assert_eq(ats_err_code(ats_err_oom), ATS_ERR_OUT_OF_MEMORY);
	cr_assert_eq(ats_err_ref(ats_err_oom), ats_err_oom);
	ats_err_unref(ats_err_oom);
	ats_err_unref(ats_err_oom);
	cr_assert_str_eq(ats_err_message(ats_err_oom), "out of memory");
	cr_assert_eq(ats_err_with_user(ats_err_oom, "u"), ats_err_oom);
	cr_assert_eq(ats_err_with_kv(ats_err_oom, "k", "v"), ats_err_oom);
	cr_assert_null(ats_err_user(ats_err_oom));
	assert_json(ats_err_oom);
	char buf[64];
	ats_err_user_text(ats_err_oom, buf, sizeof buf);
	cr_assert_str_eq(buf, ats_code_user_text(ATS_ERR_OUT_OF_MEMORY));
	cr_assert(ats_err_is_shared(ats_err_oom), "the static error is a shared record");
	char text[512];
	ats_err_format(ats_err_oom, text, sizeof text);
	cr_assert(strstr(text, "shared record: no place or time"), "%s", text);
	ats_err_format_json(ats_err_oom, text, sizeof text);
	cr_assert(strstr(text, "\"shared\":true") && !strstr(text, "\"file\""), "%s", text);
	/* A chain whose root is the static error frees fine. */
	ats_err *e = ats_err_wrapc(ats_err_oom, ATS_ERR_UNAVAILABLE, "gave up");
	cr_assert_eq(ats_err_root(e), ats_err_oom);
	assert_json(e);
	ats_err_unref(e);
}

Test(error, kv_attachments)
{
	ats_err *root = ats_err_new(ATS_ERR_UNAVAILABLE, "backend down");
	root = ats_err_with_kv(root, "peer", "%s:%d", "10.0.0.7", 443);
	root = ats_err_with_kv(root, "try", "%d", 1);
	root = ats_err_with_kv(root, "try", "%d", 3); /* a key is set once: the latest value wins */
	cr_assert_eq(ats_err_kv_count(root), 2);
	const char *k, *v;
	cr_assert(ats_err_kv_at(root, 0, &k, &v));
	cr_assert_str_eq(k, "peer");
	cr_assert_str_eq(v, "10.0.0.7:443");
	cr_assert(ats_err_kv_at(root, 1, &k, &v));
	cr_assert_str_eq(k, "try");
	cr_assert_str_eq(v, "3");
	cr_assert(!ats_err_kv_at(root, 2, &k, &v));
	cr_assert(ats_err_kv_at(root, 0, NULL, NULL));
	cr_assert_eq(ats_err_with_kv(root, NULL, "x"), root, "a NULL key changes nothing");
	ats_err *top = ats_err_wrap(root, "calling backend");
	top = ats_err_with_kv(top, "try", "%d", 4);
	cr_assert_str_eq(ats_err_kv_get(top, "try"), "4", "the nearest error's value wins");
	cr_assert_str_eq(ats_err_kv_get(top, "peer"), "10.0.0.7:443", "falls back along the chain");
	cr_assert_null(ats_err_kv_get(top, "absent"));
	cr_assert_null(ats_err_kv_get(top, NULL));
	assert_json(top);
	ats_err_unref(top);
}

/* ---- Kinds and boundaries ---- */

Test(error, kinds_and_boundary)
{
	ats_err *known = ats_err_new(ATS_ERR_CLOSED, "closed");
	cr_assert_eq(ats_err_boundary(known), known, "a known error passes a boundary unchanged");
	ats_err *bug = ats_err_bug(NULL, "broken invariant %d", 1);
	cr_assert_eq(ats_err_code(bug), ATS_ERR_INTERNAL);
	cr_assert_eq(ats_err_kind_of(bug), ATS_KIND_BUG);
	cr_assert(ats_err_is_bug(bug));
	cr_assert_eq(ats_err_boundary(bug), bug, "a bug passes a boundary unchanged");

	ats_err *raw = ats_err_raw(ATS_ERR_UNAVAILABLE, "libfoo said %d", -3);
	cr_assert_eq(ats_err_kind_of(raw), ATS_KIND_RAW);
	cr_assert(!ats_err_is_bug(raw));
	ats_err *wrapped = ats_err_wrap(raw, "calling libfoo");
	cr_assert_eq(ats_err_kind_of(wrapped), ATS_KIND_RAW, "wrapping keeps a raw error raw");
	int line = __LINE__ + 1;
	ats_err *b = ats_err_boundary(wrapped);
	cr_assert_neq(b, wrapped);
	cr_assert(ats_err_is_bug(b));
	cr_assert_eq(ats_err_code(b), ATS_ERR_INTERNAL);
	cr_assert_eq(ats_err_cause(b), wrapped);
	cr_assert(ats_err_is(b, ATS_ERR_UNAVAILABLE), "the raw code stays findable");
	cr_assert_eq(ats_err_line(b), line, "the boundary error is placed at the boundary");
	cr_assert_str_eq(ats_err_func(b), __func__);
	void *const *frames;
	cr_assert_gt(ats_err_stack(b, &frames), 0, "a boundary bug has a stack");

	ats_err *bug_with_cause = ats_err_bug(ats_err_new(ATS_ERR_CLOSED, "closed"), "should not close");
	cr_assert(ats_err_is(bug_with_cause, ATS_ERR_CLOSED));
	cr_assert_eq(ats_err_code(bug_with_cause), ATS_ERR_INTERNAL);

	ats_err_unref(known);
	ats_err_unref(bug);
	ats_err_unref(b);
	ats_err_unref(bug_with_cause);
}

/* ---- What users see, and what goes to the log ---- */

struct hook_rec {
	int calls;
	const ats_err *last;
	char json[8192];
	size_t json_len;
};

static void rec_hook(const ats_err *err, void *arg)
{
	struct hook_rec *r = arg;
	r->calls++;
	r->last = err;
	r->json_len = ats_err_format_json(err, r->json, sizeof r->json);
}

Test(error, user_text_known)
{
	struct hook_rec rec = {0};
	ats_err_set_log_hook(rec_hook, &rec);
	char buf[256];

	ats_err *e = ats_err_new(ATS_ERR_LIMITED, "queue full: 64 of 64");
	ats_err_user_text(e, buf, sizeof buf);
	cr_assert_str_eq(buf, "Too many requests. Try again later.", "no user message: the code's line");
	e = ats_err_with_hint(e, "Retry in %d seconds.", 5);
	ats_err_user_text(e, buf, sizeof buf);
	cr_assert_str_eq(buf, "Too many requests. Try again later. (Retry in 5 seconds.)");
	e = ats_err_with_user(e, "The server is busy.");
	cr_assert_str_eq(ats_err_user(e), "The server is busy.");
	cr_assert_str_eq(ats_err_hint(e), "Retry in 5 seconds.");
	size_t n = ats_err_user_text(e, buf, sizeof buf);
	cr_assert_str_eq(buf, "The server is busy. (Retry in 5 seconds.)");
	cr_assert_eq(n, strlen(buf));
	/* Wrapped: the first user message and hint along the chain. */
	e = ats_err_wrap(e, "admitting request");
	ats_err_user_text(e, buf, sizeof buf);
	cr_assert_str_eq(buf, "The server is busy. (Retry in 5 seconds.)");
	e = ats_err_with_user(e, "Busy, sorry.");
	ats_err_user_text(e, buf, sizeof buf);
	cr_assert_str_eq(buf, "Busy, sorry. (Retry in 5 seconds.)");
	cr_assert_eq(rec.calls, 0, "known errors are not logged by user_text");
	ats_err_unref(e);
	ats_err_set_log_hook(NULL, NULL);
}

/* Every code has its own fixed line, and nothing else in the table stands in for one. */
Test(error, code_user_text_table)
{
	for (int c = 1; c <= ATS_ERR_CODE_COUNT; c++) {
		const char *t = ats_code_user_text((ats_code)c);
		cr_assert_not_null(t);
		cr_assert_neq(strcmp(t, ats_code_user_text((ats_code)0)), 0, "code %d has its own line", c);
		cr_assert(strlen(t) > 10 && t[strlen(t) - 1] == '.', "a sentence: %s", t);
		for (int d = 1; d < c; d++)
			cr_assert_str_neq(t, ats_code_user_text((ats_code)d), "codes %d and %d share a line", d, c);
	}
	cr_assert_str_eq(ats_code_user_text(ATS_ERR_CANCELLED), "The request was cancelled.");
	cr_assert_str_eq(ats_code_user_text(ATS_ERR_DEADLINE_EXCEEDED), "The request took too long.");
	cr_assert_str_eq(ats_code_user_text(ATS_ERR_LIMITED), "Too many requests. Try again later.");
	cr_assert_not_null(ats_code_user_text((ats_code)(ATS_ERR_CODE_COUNT + 1)));
	cr_assert_not_null(ats_code_user_text((ats_code)-1));
}

/* Whatever the code, the chain or the attachments, internals never reach the user text: only a
 * user message, a hint, the code's fixed line or (for bugs) the log id line do. */
Test(error, user_text_never_leaks)
{
	struct hook_rec rec = {0};
	ats_err_set_log_hook(rec_hook, &rec); /* keep bugs' records off stderr */
	static const char *const secrets[] = {"/etc/ssl/private/server.key", "10.0.0.7:6379", "AKIAIOSFODNN7EXAMPLE",
	                                      "GET k0 (backend delay 5000000 us)"};
	char buf[512], full[4096];
	for (int c = 1; c <= ATS_ERR_CODE_COUNT; c++) {
		for (int shape = 0; shape < 5; shape++) {
			ats_err *e;
			switch (shape) {
			case 0: e = ats_err_new((ats_code)c, "open %s failed", secrets[0]); break;
			case 1: /* wrapped, with attachments at every level */
				e = ats_err_new((ats_code)c, "connect %s", secrets[1]);
				e = ats_err_with_kv(e, "key", "%s", secrets[2]);
				e = ats_err_wrap(e, "%s", secrets[3]);
				e = ats_err_with_kv(e, "path", "%s", secrets[0]);
				break;
			case 2: /* a new code over a cause */
				e = ats_err_wrapc(ats_err_new((ats_code)c, "%s", secrets[2]), ATS_ERR_UNAVAILABLE,
				                  "via %s", secrets[1]);
				break;
			case 3: e = ats_err_raw((ats_code)c, "%s", secrets[3]); break;
			default: e = ats_err_boundary(ats_err_errno(5, "read %s", secrets[0])); break;
			}
			cr_assert_not_null(e);
			size_t n = ats_err_user_text(e, buf, sizeof buf);
			cr_assert_eq(n, strlen(buf));
			for (size_t i = 0; i < sizeof secrets / sizeof *secrets; i++)
				cr_assert_null(strstr(buf, secrets[i]), "code %d shape %d leaks %s: %s", c, shape,
				               secrets[i], buf);
			cr_assert_null(strstr(buf, ats_err_message(e)), "code %d shape %d: %s", c, shape, buf);
			if (ats_err_kind_of(e) == ATS_KIND_KNOWN)
				cr_assert_str_eq(buf, ats_code_user_text(ats_err_code(e)));
			else
				cr_assert(strstr(buf, "unexpected issue"), "%s", buf);
			/* The secrets are still all in the record, for the logs. */
			ats_err_format(e, full, sizeof full);
			cr_assert(strstr(full, ats_err_message(ats_err_root(e))), "%s", full);
			/* A user message along the chain is what shows, and it is all that shows. */
			if (ats_err_kind_of(e) == ATS_KIND_KNOWN) {
				e = ats_err_wrap(ats_err_with_user(e, "Please sign in again."), "%s", secrets[0]);
				ats_err_user_text(e, buf, sizeof buf);
				cr_assert_str_eq(buf, "Please sign in again.");
			}
			ats_err_unref(e);
		}
	}
	ats_err_set_log_hook(NULL, NULL);
}

/* ats__err_shared: no place, thread or time, in every format; decorations still work. */
Test(error, shared_records)
{
	ats_err *e = ats__err_shared(ATS_ERR_CANCELLED, ats_err_new(ATS_ERR_CLOSED, "closed"), "shared");
	cr_assert(ats_err_is_shared(e));
	cr_assert_not(ats_err_is_shared(ats_err_cause(e)));
	cr_assert_not(ats_err_is_shared(NULL));
	cr_assert_str_eq(ats_err_file(e), "");
	cr_assert_eq(ats_err_line(e), 0);
	cr_assert_eq(ats_err_thread_id(e), 0);
	cr_assert_eq(ats_err_wall_ns(e), 0);
	cr_assert_eq(ats_err_mono_ns(e), 0);
	cr_assert_neq(ats_err_log_id(e), 0);
	cr_assert_eq(ats_err_code(e), ATS_ERR_CANCELLED);
	char text[2048];
	ats_err_format(e, text, sizeof text);
	cr_assert(strstr(text, "error: shared\n  code: cancelled (known)  log id: "), "%s", text);
	cr_assert(strstr(text, "shared record: no place or time"), "%s", text);
	cr_assert(strstr(text, "at: " __FILE__), "the cause keeps its place: %s", text);
	size_t n = ats_err_format_json(e, text, sizeof text);
	cr_assert(json_valid(text, n), "%s", text);
	cr_assert(strstr(text, "\"shared\":true,"), "%s", text);
	cr_assert_gt(strstr(text, "\"file\""), strstr(text, "\"cause\""), "no file member before the cause: %s", text);
	/* A copy made by a decoration stays shared. */
	ats_err *other = ats_err_ref(e);
	e = ats_err_with_user(e, "Stopped.");
	cr_assert_neq(e, other);
	cr_assert(ats_err_is_shared(e));
	ats_err_unref(other);
	ats_err_unref(e);
	/* A percent sign in the message is text, not a format. */
	e = ats__err_shared(ATS_ERR_LIMITED, NULL, "100% full");
	cr_assert_str_eq(ats_err_message(e), "100% full");
	ats_err_unref(e);
}

Test(error, user_text_bug_logs_full_record)
{
	struct hook_rec rec = {0};
	ats_err_set_log_hook(rec_hook, &rec);
	ats_err *raw = ats_err_raw(ATS_ERR_UNAVAILABLE, "secret detail: password=hunter2");
	raw = ats_err_with_user(raw, "not for users");
	ats_err *bug = ats_err_boundary(raw);
	char buf[256], want[256];
	size_t n = ats_err_user_text(bug, buf, sizeof buf);
	snprintf(want, sizeof want, "An unexpected issue occurred; please report it with log id %llu.",
	         (unsigned long long)ats_err_log_id(bug));
	cr_assert_str_eq(buf, want);
	cr_assert_eq(n, strlen(want));
	cr_assert(!strstr(buf, "hunter2"), "bug details never reach the user");
	cr_assert_eq(rec.calls, 1);
	cr_assert_eq(rec.last, bug, "the hook gets the bug itself");
	cr_assert(json_valid(rec.json, rec.json_len), "%s", rec.json);
	cr_assert(strstr(rec.json, "hunter2"), "the log gets the full record, cause included");
	cr_assert(strstr(rec.json, "\"kind\":\"bug\""));

	/* A raw error shown to a user is treated as a bug too. */
	ats_err *raw2 = ats_err_raw(ATS_ERR_SYSTEM, "raw");
	ats_err_user_text(raw2, buf, sizeof buf);
	snprintf(want, sizeof want, "An unexpected issue occurred; please report it with log id %llu.",
	         (unsigned long long)ats_err_log_id(raw2));
	cr_assert_str_eq(buf, want);
	cr_assert_eq(rec.calls, 2);
	cr_assert_eq(rec.last, raw2);

	/* ats_err_log goes to the hook; switching hooks takes effect at once. */
	struct hook_rec other = {0};
	ats_err_set_log_hook(rec_hook, &other);
	ats_err_log(bug);
	ats_err_log(NULL);
	cr_assert_eq(other.calls, 1);
	cr_assert_eq(rec.calls, 2);
	ats_err_set_log_hook(rec_hook, &rec); /* an interned pair comes back */
	ats_err_log(bug);
	cr_assert_eq(rec.calls, 3);
	ats_err_set_log_hook(NULL, NULL);
	ats_err_unref(bug);
	ats_err_unref(raw2);
}

Test(error, default_log_writes_json_to_stderr, .init = cr_redirect_stderr)
{
	ats_err_set_log_hook(NULL, NULL);
	ats_err *e = ats_err_new(ATS_ERR_CLOSED, "to \"stderr\"\n");
	ats_err_log(e);
	ats_err_unref(e);
	fflush(stderr);
	FILE *f = cr_get_redirected_stderr();
	char line[4096];
	cr_assert_not_null(fgets(line, sizeof line, f));
	size_t n = strlen(line);
	cr_assert(n > 1 && line[n - 1] == '\n', "one line");
	cr_assert(json_valid(line, n - 1), "%s", line);
	cr_assert(strstr(line, "to \\\"stderr\\\"\\n"));
}

/* ---- Copy-on-write decorations ---- */

Test(error, decorations_sole_owner_in_place)
{
	ats_err *e = ats_err_new(ATS_ERR_CLOSED, "closed");
	ats_err *d = ats_err_with_user(e, "u1");
	cr_assert_eq(d, e, "the sole owner decorates in place");
	d = ats_err_with_user(d, "u2");
	cr_assert_eq(d, e);
	cr_assert_str_eq(ats_err_user(d), "u2");
	ats_err_unref(d);
}

Test(error, decorations_never_mutate_shared_errors)
{
	ats_err *cause = ats_err_new(ATS_ERR_NOT_FOUND, "no such key");
	ats_err *e = ats_err_wrap(cause, "lookup");
	e = ats_err_with_user(e, "orig user");
	e = ats_err_with_hint(e, "orig hint");
	e = ats_err_with_kv(e, "a", "1");
	e = ats_err_with_kv(e, "b", "2");
	uint64_t id = ats_err_log_id(e);
	size_t n0;
	char *before = format_all(e, ats_err_format_json, &n0);

	ats_err *shared = ats_err_ref(e); /* another owner: e must never change again */
	ats_err *u = ats_err_with_user(ats_err_ref(shared), "new user %d", 1);
	ats_err *h = ats_err_with_hint(ats_err_ref(shared), "new hint");
	ats_err *k = ats_err_with_kv(ats_err_ref(shared), "a", "changed");
	ats_err *k2 = ats_err_with_kv(ats_err_ref(shared), "c", "added");
	cr_assert(u != shared && h != shared && k != shared && k2 != shared);

	char *after = format_all(shared, ats_err_format_json, NULL);
	cr_assert_str_eq(after, before, "the shared error changed");
	cr_assert_str_eq(ats_err_user(shared), "orig user");

	cr_assert_str_eq(ats_err_user(u), "new user 1");
	cr_assert_str_eq(ats_err_hint(u), "orig hint");
	cr_assert_str_eq(ats_err_hint(h), "new hint");
	cr_assert_str_eq(ats_err_kv_get(k, "a"), "changed");
	cr_assert_str_eq(ats_err_kv_get(k, "b"), "2");
	cr_assert_eq(ats_err_kv_count(k2), 3);
	cr_assert_str_eq(ats_err_kv_get(k2, "c"), "added");
	/* A copy is the same error (same id, cause, place), decorated. */
	cr_assert_eq(ats_err_log_id(u), id);
	cr_assert_eq(ats_err_cause(u), cause);
	cr_assert_str_eq(ats_err_message(u), "lookup");
	cr_assert_eq(ats_err_line(u), ats_err_line(shared));
	cr_assert_eq(ats_err_mono_ns(u), ats_err_mono_ns(shared));

	ats_err_unref(u);
	ats_err_unref(h);
	ats_err_unref(k);
	ats_err_unref(k2);
	ats_err_unref(shared);
	cr_assert_str_eq(ats_err_user(e), "orig user", "still alive: one reference left");
	ats_err_unref(e);
	free(before);
	free(after);
}

Test(error, shared_copy_keeps_stack)
{
	ats_err *e = make_bug_here();
	ats_err *shared = ats_err_ref(e);
	ats_err *d = ats_err_with_user(e, "x");
	cr_assert_neq(d, shared);
	void *const *f1, *const *f2;
	size_t n1 = ats_err_stack(shared, &f1), n2 = ats_err_stack(d, &f2);
	cr_assert_gt(n1, 0);
	cr_assert_eq(n1, n2);
	cr_assert_neq(f1, f2, "the copy owns its frames");
	cr_assert_eq(memcmp(f1, f2, n1 * sizeof(void *)), 0);
	cr_assert_str_eq(ats_err_message(d), "invariant broke");
	ats_err_unref(d);
	ats_err_unref(shared);
}

/* ---- Stacks ---- */

Test(error, stack_defaults_and_switches)
{
	void *const *frames;
	ats_err *known = ats_err_new(ATS_ERR_CLOSED, "x");
	cr_assert_eq(ats_err_stack(known, &frames), 0, "known: off by default");
	ats_err *on = ats_err_new_stack(ATS_ERR_CLOSED, "x");
	cr_assert_gt(ats_err_stack(on, &frames), 0, "ats_err_new_stack: on");
	ats_err *bug = ats_err_bug(NULL, "x");
	cr_assert_gt(ats_err_stack(bug, &frames), 0, "bugs: on by default");
	ats_err *raw = ats_err_raw(ATS_ERR_SYSTEM, "x");
	cr_assert_eq(ats_err_stack(raw, &frames), 0, "raw: like known");
	ats_err *bug_off =
	    ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_BUG, ATS_ERR_INTERNAL, ATS_STACK_OFF, NULL, "x");
	cr_assert_eq(ats_err_stack(bug_off, &frames), 0, "ATS_STACK_OFF wins for bugs");
	ats_err *known_on =
	    ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_KNOWN, ATS_ERR_CLOSED, ATS_STACK_ON, NULL, "x");
	cr_assert_gt(ats_err_stack(known_on, &frames), 0);
	ats_err *wrap_on = ats__err_wrap(__FILE__, __LINE__, __func__, ats_err_ref(known), ATS_STACK_ON, "w");
	cr_assert_gt(ats_err_stack(wrap_on, &frames), 0);

	ats_err_set_stack_default(true);
	ats_err *known2 = ats_err_new(ATS_ERR_CLOSED, "x");
	cr_assert_gt(ats_err_stack(known2, &frames), 0, "global switch on");
	ats_err *known_off =
	    ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_KNOWN, ATS_ERR_CLOSED, ATS_STACK_OFF, NULL, "x");
	cr_assert_eq(ats_err_stack(known_off, &frames), 0, "per call beats global");
	ats_err_set_stack_default(false);
	ats_err *known3 = ats_err_new(ATS_ERR_CLOSED, "x");
	cr_assert_eq(ats_err_stack(known3, &frames), 0, "global switch off again");

	ats_err *all[] = {known, on, bug, raw, bug_off, known_on, wrap_on, known2, known_off, known3};
	for (size_t i = 0; i < sizeof all / sizeof *all; i++)
		ats_err_unref(all[i]);
}

Test(error, stack_starts_at_caller_and_symbolizes)
{
	ats_err *e = make_bug_here();
	void *const *frames;
	size_t n = ats_err_stack(e, &frames);
	cr_assert_gt(n, 1);
	cr_assert_leq(n, ATS_ERR_MAX_FRAMES);
	Dl_info info;
	cr_assert(dladdr((char *)frames[0] - 1, &info));
	cr_assert_not_null(info.dli_sname);
	cr_assert_str_eq(info.dli_sname, "make_bug_here", "frame 0 is the caller, not atscale's internals");
	char *text = format_all(e, ats_err_format, NULL);
	cr_assert(strstr(text, "  stack:\n    #0  make_bug_here+0x"), "%s", text);
	cr_assert(strstr(text, "+0x") && strstr(text, ")\n"), "%s", text);
	free(text);
	size_t jn;
	char *json = format_all(e, ats_err_format_json, &jn);
	cr_assert(json_valid(json, jn));
	cr_assert(strstr(json, "\"stack\":[\"make_bug_here+0x"), "%s", json);
	free(json);
	ats_err_unref(e);
}

__attribute__((noinline)) static void *recurse_and_fail(int depth)
{
	if (depth == 0)
		return ats_err_new_stack(ATS_ERR_CLOSED, "deep");
	void *r = recurse_and_fail(depth - 1);
	__asm__ __volatile__("" ::: "memory");
	return r;
}

Test(error, stack_is_capped)
{
	ats_err *e = recurse_and_fail(100);
	void *const *frames;
	cr_assert_eq(ats_err_stack(e, &frames), ATS_ERR_MAX_FRAMES);
	ats_err_unref(e);
}

/* ---- Formats ---- */

static ats_err *nasty_chain(const char *bytes)
{
	ats_err *e = ats_err_raw(ATS_ERR_SYSTEM, "%s", bytes);
	e = ats_err_with_kv(e, bytes, "%s", bytes);
	e = ats_err_with_user(e, "%s", bytes);
	e = ats_err_with_hint(e, "%s", bytes);
	e = ats_err_wrap(e, "%s|%s", bytes, bytes);
	e = ats_err_boundary(e); /* with a stack */
	return ats_err_with_kv(e, "k", "%s", bytes);
}

Test(error, json_for_any_bytes)
{
	const char *cases[] = {
	    "plain",
	    "quotes \" and \\ backslash / slash",
	    "controls \x01\x02\x1f\x7f\b\f\r\n\t end",
	    "invalid \xff\xfe \xc0\x80 \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82",
	    "truncated at end \xf0\x9f\x98",
	    "valid h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80",
	    "",
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		ats_err *e = nasty_chain(cases[i]);
		assert_json(e);
		ats_err_unref(e);
	}
	/* Every byte 1..255 in one message. */
	char all[256];
	for (int i = 0; i < 255; i++)
		all[i] = (char)(i + 1);
	all[255] = '\0';
	ats_err *e = nasty_chain(all);
	assert_json(e);
	ats_err_unref(e);

	/* Valid UTF-8 survives as is; each invalid byte becomes one U+FFFD. */
	e = ats_err_new(ATS_ERR_CLOSED, "h\xc3\xa9llo \xf0\x9f\x98\x80 \xff\xfe!");
	char *json = format_all(e, ats_err_format_json, NULL);
	cr_assert(strstr(json, "\"message\":\"h\xc3\xa9llo \xf0\x9f\x98\x80 \\ufffd\\ufffd!\""), "%s", json);
	free(json);
	ats_err_unref(e);
}

Test(error, json_random_bytes)
{
	uint64_t x = 0x9e3779b97f4a7c15u;
	for (int round = 0; round < 500; round++) {
		char s[64];
		size_t n = (size_t)(round % 63);
		for (size_t i = 0; i < n; i++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			s[i] = (char)((x & 0xff) ? (x & 0xff) : 1);
		}
		s[n] = '\0';
		ats_err *e = nasty_chain(s);
		assert_json(e);
		ats_err_unref(e);
	}
}

Test(error, human_format_fields)
{
	ats_err *e = ats_err_new(ATS_ERR_LIMITED, "queue full");
	e = ats_err_with_user(e, "busy");
	e = ats_err_with_hint(e, "retry");
	e = ats_err_with_kv(e, "queue", "64/64");
	e = ats_err_wrap(e, "admitting");
	char *text = format_all(e, ats_err_format, NULL);
	char want[128];
	snprintf(want, sizeof want, "error: admitting\n  code: limited (known)  log id: %llu\n",
	         (unsigned long long)ats_err_log_id(e));
	cr_assert_eq(strncmp(text, want, strlen(want)), 0, "%s", text);
	snprintf(want, sizeof want, "  at: %s:", __FILE__);
	cr_assert(strstr(text, want));
	cr_assert(strstr(text, "caused by: queue full\n"));
	cr_assert(strstr(text, "  user message: busy\n  hint: retry\n  queue: 64/64\n"));
	snprintf(want, sizeof want, "thread %d\n  time: ", (int)gettid());
	cr_assert(strstr(text, want));
	/* The date is the wall stamp's, to the second. */
	time_t secs = (time_t)(ats_err_wall_ns(e) / ATS_NS_PER_SEC);
	struct tm tm;
	gmtime_r(&secs, &tm);
	char date[64];
	strftime(date, sizeof date, "  time: %Y-%m-%dT%H:%M:%S.", &tm);
	cr_assert(strstr(text, date), "%s not in %s", date, text);
	free(text);

	/* ats_err_print writes the same text. */
	char *mem = NULL;
	size_t memlen = 0;
	FILE *f = open_memstream(&mem, &memlen);
	cr_assert_not_null(f);
	ats_err_print(e, f);
	fclose(f);
	char *again = format_all(e, ats_err_format, NULL);
	cr_assert_str_eq(mem, again);
	free(again);
	free(mem);
	ats_err_unref(e);
}

Test(error, long_names_are_not_truncated)
{
	char file[600];
	memset(file, 'f', sizeof file - 1);
	file[sizeof file - 1] = '\0';
	ats_err *e =
	    ats__err_new(file, 1, "a_function_name", ATS_KIND_KNOWN, ATS_ERR_CLOSED, ATS_STACK_DEFAULT, NULL, "x");
	char *text = format_all(e, ats_err_format, NULL);
	char want[700];
	snprintf(want, sizeof want, "  at: %s:1 (a_function_name)", file);
	cr_assert(strstr(text, want));
	free(text);
	ats_err_unref(e);
}

static void check_snprintf_contract(const ats_err *e, size_t (*fmt)(const ats_err *, char *, size_t))
{
	size_t n = fmt(e, NULL, 0);
	cr_assert_gt(n, 0);
	char *full = format_all(e, fmt, NULL);
	char *buf = malloc(n + 2);
	for (size_t len = 1; len <= n + 1; len++) {
		memset(buf, '#', n + 2);
		cr_assert_eq(fmt(e, buf, len), n, "the return value is the whole length");
		cr_assert_eq(strlen(buf), len - 1);
		cr_assert_eq(memcmp(buf, full, len - 1), 0, "a truncated text is a prefix");
		cr_assert_eq(buf[len], '#', "wrote past len");
	}
	char c = '#';
	cr_assert_eq(fmt(e, &c, 0), n);
	cr_assert_eq(c, '#', "len 0 writes nothing");
	free(buf);
	free(full);
}

static size_t user_text_fmt(const ats_err *e, char *buf, size_t len)
{
	return ats_err_user_text(e, buf, len);
}

Test(error, formatters_follow_snprintf)
{
	ats_err *e = ats_err_new(ATS_ERR_CLOSED, "closed \xff \"q\"");
	e = ats_err_with_user(e, "user");
	e = ats_err_with_hint(e, "hint");
	e = ats_err_with_kv(e, "k", "v\x01");
	e = ats_err_wrap(e, "outer");
	check_snprintf_contract(e, ats_err_format);
	check_snprintf_contract(e, ats_err_format_json);
	check_snprintf_contract(e, user_text_fmt);
	ats_err_unref(e);
	ats_err *b = make_bug_here();
	struct hook_rec rec = {0};
	ats_err_set_log_hook(rec_hook, &rec);
	check_snprintf_contract(b, ats_err_format);
	check_snprintf_contract(b, ats_err_format_json);
	check_snprintf_contract(b, user_text_fmt);
	ats_err_set_log_hook(NULL, NULL);
	ats_err_unref(b);
}

/* ---- Limits: deep chains ---- */

Test(error, million_deep_chain_unrefs_iteratively)
{
	ats_err *e = ats_err_new(ATS_ERR_CLOSED, "root");
	for (int i = 0; i < 1000000; i++) {
		e = ats_err_wrap(e, "w");
		cr_assert_neq(e, ats_err_oom);
	}
	cr_assert(ats_err_is(e, ATS_ERR_CLOSED));
	cr_assert_str_eq(ats_err_message(ats_err_root(e)), "root");
	ats_err_unref(e); /* recursion would overflow the stack here */
}

Test(error, hundred_thousand_deep_chain_formats)
{
	ats_err *e = ats_err_new(ATS_ERR_CLOSED, "root");
	for (int i = 0; i < 100000; i++)
		e = ats_err_wrap(e, "w%d", i);
	size_t n;
	char *json = format_all(e, ats_err_format_json, &n);
	cr_assert(json_valid(json, n));
	free(json);
	char *text = format_all(e, ats_err_format, &n);
	cr_assert(strstr(text, "caused by: root\n"));
	free(text);
	ats_err_unref(e);
}

/* ---- Identity: log ids and threads ---- */

#define ID_THREADS 4
#define IDS_PER_THREAD 3000

struct id_job {
	uint64_t ids[IDS_PER_THREAD];
	int tid_seen, tid_real;
};

static void *make_ids(void *arg)
{
	struct id_job *j = arg;
	j->tid_real = (int)gettid();
	for (int i = 0; i < IDS_PER_THREAD; i++) {
		ats_err *e = ats_err_new(ATS_ERR_CLOSED, "x");
		j->ids[i] = ats_err_log_id(e);
		j->tid_seen = ats_err_thread_id(e);
		ats_err_unref(e);
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

Test(error, log_ids_unique_and_thread_ids_right)
{
	static struct id_job jobs[ID_THREADS];
	pthread_t th[ID_THREADS];
	for (int i = 0; i < ID_THREADS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, make_ids, &jobs[i]), 0);
	for (int i = 0; i < ID_THREADS; i++)
		pthread_join(th[i], NULL);
	static uint64_t all[ID_THREADS * IDS_PER_THREAD];
	for (int i = 0; i < ID_THREADS; i++) {
		cr_assert_eq(jobs[i].tid_seen, jobs[i].tid_real);
		cr_assert_neq(jobs[i].tid_real, (int)gettid());
		memcpy(all + i * IDS_PER_THREAD, jobs[i].ids, sizeof jobs[i].ids);
	}
	qsort(all, ID_THREADS * IDS_PER_THREAD, sizeof *all, cmp_u64);
	cr_assert_neq(all[0], 0);
	for (int i = 1; i < ID_THREADS * IDS_PER_THREAD; i++)
		cr_assert_neq(all[i], all[i - 1], "log id %llu twice", (unsigned long long)all[i]);
}

Test(error, forked_child_reports_its_own_thread_id)
{
	ats_err *e = ats_err_new(ATS_ERR_CLOSED, "parent"); /* caches the parent's id */
	cr_assert_eq(ats_err_thread_id(e), (int)gettid());
	ats_err_unref(e);
	/* The child answers through a pipe, not its exit status: under valgrind a forked Criterion
	 * worker exits non-zero for Criterion's own inherited allocations. */
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		ats_err *c = ats_err_new(ATS_ERR_CLOSED, "child");
		char ok = ats_err_thread_id(c) == (int)gettid() ? 'y' : 'n';
		ats_err_unref(c);
		_exit(write(fds[1], &ok, 1) == 1 ? 0 : 1);
	}
	close(fds[1]);
	char answer = 0;
	cr_assert_eq(read(fds[0], &answer, 1), 1);
	close(fds[0]);
	waitpid(pid, NULL, 0);
	cr_assert_eq(answer, 'y', "the child saw its parent's thread id");
}

/* ---- Out of memory: fail each allocation of each operation in turn ---- */

struct oom_case {
	const char *name;
	ats_err *(*setup)(void); /* made before injection starts; the op consumes it */
	ats_err *(*op)(ats_err *in);
	/* Checks the result; `failed` says whether an allocation failed during op. */
	void (*check)(ats_err *in, ats_err *out, bool failed);
};

static ats_err *shared_ref; /* a second reference the shared-decoration cases take */

static ats_err *mk_known(void)
{
	return ats_err_new(ATS_ERR_CLOSED, "known");
}
static ats_err *mk_raw(void)
{
	return ats_err_raw(ATS_ERR_UNAVAILABLE, "raw");
}
static ats_err *mk_decorated(void)
{
	ats_err *e = ats_err_bug(ats_err_new(ATS_ERR_CLOSED, "cause"), "decorated");
	e = ats_err_with_user(e, "user");
	e = ats_err_with_hint(e, "hint");
	e = ats_err_with_kv(e, "a", "1");
	return ats_err_with_kv(e, "b", "2");
}

static ats_err *op_new(ats_err *in)
{
	(void)in;
	return ats_err_new(ATS_ERR_CLOSED, "closed %d", 1);
}
static ats_err *op_new_long(ats_err *in)
{
	(void)in;
	char big[400];
	memset(big, 'y', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	return ats_err_new(ATS_ERR_CLOSED, "%s", big);
}
static ats_err *op_new_stack(ats_err *in)
{
	(void)in;
	return ats_err_new_stack(ATS_ERR_CLOSED, "closed");
}
static ats_err *op_wrap(ats_err *in)
{
	return ats_err_wrap(in, "wrapped");
}
static ats_err *op_wrapc(ats_err *in)
{
	return ats_err_wrapc(in, ATS_ERR_CANCELLED, "cancelled");
}
static ats_err *op_bug(ats_err *in)
{
	return ats_err_bug(in, "bug");
}
static ats_err *op_boundary(ats_err *in)
{
	return ats_err_boundary(in);
}
static ats_err *op_errno(ats_err *in)
{
	(void)in;
	return ats_err_errno(EIO, "read");
}
static ats_err *op_user(ats_err *in)
{
	return ats_err_with_user(in, "new user");
}
static ats_err *op_hint(ats_err *in)
{
	return ats_err_with_hint(in, "new hint");
}
static ats_err *op_kv_new(ats_err *in)
{
	return ats_err_with_kv(in, "c", "3");
}
static ats_err *op_kv_replace(ats_err *in)
{
	return ats_err_with_kv(in, "a", "changed");
}
static ats_err *op_shared_user(ats_err *in)
{
	shared_ref = ats_err_ref(in);
	return ats_err_with_user(in, "new user");
}
static ats_err *op_shared_kv(ats_err *in)
{
	shared_ref = ats_err_ref(in);
	return ats_err_with_kv(in, "c", "3");
}

static void chk_oom_or_made(ats_err *in, ats_err *out, bool failed)
{
	(void)in;
	cr_assert_not_null(out);
	if (failed)
		cr_assert_eq(out, ats_err_oom);
	else
		cr_assert_neq(out, ats_err_oom);
}
static void chk_wrap(ats_err *in, ats_err *out, bool failed)
{
	cr_assert_eq(out == in, failed, "OOM while wrapping hands the cause back");
	if (!failed)
		cr_assert_eq(ats_err_cause(out), in);
}
static void chk_boundary(ats_err *in, ats_err *out, bool failed)
{
	(void)in;
	cr_assert_eq(out, failed ? ats_err_oom : out);
	if (!failed)
		cr_assert(ats_err_is_bug(out));
}
static void chk_errno(ats_err *in, ats_err *out, bool failed)
{
	(void)in;
	cr_assert_not_null(out);
	if (!failed)
		cr_assert_str_eq(ats_err_kv_get(out, "errno"), "EIO (5)");
	else if (out != ats_err_oom)
		cr_assert_null(ats_err_kv_get(out, "errno"), "the error comes back undecorated");
}
static void chk_user(ats_err *in, ats_err *out, bool failed)
{
	cr_assert_eq(out, in, "the sole owner decorates in place, or gets its error back");
	if (failed)
		cr_assert(ats_err_user(out) == NULL || strcmp(ats_err_user(out), "user") == 0);
	else
		cr_assert_str_eq(ats_err_user(out), "new user");
}
static void chk_hint(ats_err *in, ats_err *out, bool failed)
{
	cr_assert_eq(out, in);
	if (!failed)
		cr_assert_str_eq(ats_err_hint(out), "new hint");
}
static void chk_kv_new(ats_err *in, ats_err *out, bool failed)
{
	cr_assert_eq(out, in);
	cr_assert_eq(ats_err_kv_count(out), failed ? 2 : 3);
	cr_assert_str_eq(ats_err_kv_get(out, "b"), "2");
}
static void chk_kv_replace(ats_err *in, ats_err *out, bool failed)
{
	cr_assert_eq(out, in);
	cr_assert_str_eq(ats_err_kv_get(out, "a"), failed ? "1" : "changed");
}
static void chk_shared(ats_err *in, ats_err *out, bool failed)
{
	(void)in;
	cr_assert_str_eq(ats_err_user(shared_ref), "user", "the shared error never changes");
	cr_assert_eq(ats_err_kv_count(shared_ref), 2);
	if (failed) {
		/* The caller's error or, when the copy was made before the failure, an equal copy. */
		cr_assert_str_eq(ats_err_user(out), "user", "OOM: the error comes back undecorated");
		cr_assert_eq(ats_err_kv_count(out), 2);
		cr_assert_eq(ats_err_log_id(out), ats_err_log_id(shared_ref));
	} else {
		cr_assert_neq(out, shared_ref);
		cr_assert(strcmp(ats_err_user(out), "new user") == 0 || ats_err_kv_count(out) == 3);
		cr_assert_str_eq(ats_err_kv_get(out, "b"), "2");
		cr_assert_str_eq(ats_err_hint(out), "hint");
	}
	ats_err_unref(shared_ref);
	shared_ref = NULL;
}

static const struct oom_case oom_cases[] = {
    {"new", NULL, op_new, chk_oom_or_made},
    {"new_long", NULL, op_new_long, chk_oom_or_made},
    {"new_stack", NULL, op_new_stack, chk_oom_or_made},
    {"wrap", mk_known, op_wrap, chk_wrap},
    {"wrapc", mk_known, op_wrapc, chk_oom_or_made},
    {"bug", mk_known, op_bug, chk_oom_or_made},
    {"bug_no_cause", NULL, op_bug, chk_oom_or_made},
    {"boundary", mk_raw, op_boundary, chk_boundary},
    {"errno", NULL, op_errno, chk_errno},
    {"with_user", mk_decorated, op_user, chk_user},
    {"with_hint", mk_decorated, op_hint, chk_hint},
    {"with_kv_new", mk_decorated, op_kv_new, chk_kv_new},
    {"with_kv_replace", mk_decorated, op_kv_replace, chk_kv_replace},
    {"shared_with_user", mk_decorated, op_shared_user, chk_shared},
    {"shared_with_kv", mk_decorated, op_shared_kv, chk_shared},
};

Test(error, oom_every_allocation_of_every_operation)
{
	for (size_t c = 0; c < sizeof oom_cases / sizeof *oom_cases; c++) {
		const struct oom_case *oc = &oom_cases[c];
		long allocations = -1;
		for (long n = 0; n < 64; n++) {
			long base = atomic_load(&live);
			ats_err *in = oc->setup ? oc->setup() : NULL;
			long before = atomic_load(&injected);
			atomic_store(&fail_at, n);
			ats_err *out = oc->op(in);
			atomic_store(&fail_at, -1);
			bool failed = atomic_load(&injected) != before;
			oc->check(in, out, failed);
			if (!failed) /* only ever fails without ats_err_oom being returned: check it's usable */
				cr_assert(ats_err_message(out) != NULL);
			ats_err_unref(out);
			cr_assert_eq(atomic_load(&live), base, "%s, allocation %ld failed: %ld blocks leaked", oc->name,
			             n, atomic_load(&live) - base);
			if (!failed) {
				allocations = n;
				break;
			}
		}
		cr_assert_gt(allocations, 0, "%s never completed (or allocated nothing)", oc->name);
	}
}

Test(error, oom_set_log_hook_keeps_current)
{
	struct hook_rec rec = {0};
	ats_err_set_log_hook(rec_hook, &rec);
	struct hook_rec other = {0};
	atomic_store(&fail_at, 0);
	ats_err_set_log_hook(rec_hook, &other); /* a new pair needs a node: fails */
	atomic_store(&fail_at, -1);
	ats_err *e = ats_err_new(ATS_ERR_CLOSED, "x");
	ats_err_log(e);
	cr_assert_eq(rec.calls, 1, "the old hook stays when a new one cannot be set");
	cr_assert_eq(other.calls, 0);
	ats_err_unref(e);
	ats_err_set_log_hook(NULL, NULL);
}

/* Bug: ats_err_format_json symbolized each stack frame into a 1024-byte buffer, so a longer frame
 * (a C++ template instantiation's name) lost its tail, "+0xoff (module+0xoff)", the part that
 * addr2line resolves; ats_err_format had no such limit. The frame below is an exported function
 * whose dynamic symbol name is 1,512 bytes long. */
#define X10 "xxxxxxxxxx"
#define X100 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10
#define LONG_NAME "long_symbol_" X100 X100 X100 X100 X100 X100 X100 X100 X100 X100 X100 X100 X100 X100 X100
ats_err *err_from_a_long_name(void) __asm__(LONG_NAME);
__attribute__((noinline)) ats_err *err_from_a_long_name(void)
{
	ats_err *e = ats_err_bug(NULL, "deep in a template");
	__asm__ __volatile__("" ::: "memory"); /* keeps the call out of tail position */
	return e;
}

Test(error, json_keeps_long_stack_frames_whole)
{
	ats_err *e = err_from_a_long_name();
	char *text = format_all(e, ats_err_format, NULL);
	cr_assert(strstr(text, LONG_NAME "+0x"), "the human format names the frame in full");
	size_t n;
	char *json = format_all(e, ats_err_format_json, &n);
	bool whole = strstr(json, "\"" LONG_NAME "+0x") != NULL;
	free(json);
	free(text);
	ats_err_unref(e);
	cr_expect(whole, "the JSON format cut the frame short");
}
