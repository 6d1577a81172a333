/* Structured errors: construction, lifetime, accessors, formats and the user/log split. */
#include "atscale/error.h"
#include "atscale/clock.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define UNW_LOCAL_ONLY
#include <libunwind.h>

struct ats_kv {
	char *key;
	char *value;
};

struct ats_err {
	_Atomic uint32_t refs;
	uint8_t kind;
	uint8_t code;
	uint8_t is_static;
	uint8_t nframes;
	int line;
	int tid;
	uint32_t nkv;
	const char *file;
	const char *func;
	uint64_t log_id;
	uint64_t mono_ns;
	uint64_t wall_ns;
	ats_err *cause;
	char *user;
	char *hint;
	struct ats_kv *kv;
	size_t size;      /* bytes of this allocation: struct, frames, message */
	void **frames;    /* points into msg[]: the frames come first (pointer-aligned) */
	const char *text; /* the message: into msg[], after the frames */
	char msg[];
};

static struct ats_err oom_error = {
    .refs = 1,
    .kind = ATS_KIND_KNOWN,
    .code = ATS_ERR_OUT_OF_MEMORY,
    .is_static = 1,
    .file = "",
    .func = "",
    .log_id = 0,
    .text = "out of memory",
};
ats_err *const ats_err_oom = &oom_error;

/* ---- Global settings ---- */

static atomic_bool stack_for_known = false;

struct log_hook {
	ats_err_log_fn fn;
	void *arg;
	struct log_hook *older; /* kept for the process's life: a racing logger may still read one */
};
static _Atomic(struct log_hook *) log_hook;

void ats_err_set_stack_default(bool capture_for_known)
{
	atomic_store_explicit(&stack_for_known, capture_for_known, memory_order_relaxed);
}

void ats_err_set_log_hook(ats_err_log_fn fn, void *arg)
{
	struct log_hook *h = NULL;
	if (fn) {
		h = malloc(sizeof *h);
		if (!h)
			return; /* keep the current hook rather than lose logs */
		h->fn = fn;
		h->arg = arg;
	}
	struct log_hook *old = atomic_exchange_explicit(&log_hook, h, memory_order_acq_rel);
	if (h)
		h->older = old;
	else if (old) {
		/* Back to the default: park the old chain where it stays reachable. */
		static struct log_hook *_Atomic retired;
		struct log_hook *tail = old;
		while (tail->older)
			tail = tail->older;
		tail->older = atomic_exchange_explicit(&retired, old, memory_order_acq_rel);
	}
}

static void default_log(const ats_err *err)
{
	char small[2048];
	size_t n = ats_err_format_json(err, small, sizeof small);
	if (n < sizeof small) {
		fprintf(stderr, "%s\n", small);
		return;
	}
	char *big = malloc(n + 1);
	if (!big) {
		fprintf(stderr, "%s\n", small); /* truncated beats nothing */
		return;
	}
	ats_err_format_json(err, big, n + 1);
	fprintf(stderr, "%s\n", big);
	free(big);
}

void ats_err_log(const ats_err *err)
{
	if (!err)
		return;
	struct log_hook *h = atomic_load_explicit(&log_hook, memory_order_acquire);
	if (h)
		h->fn(err, h->arg);
	else
		default_log(err);
}

/* ---- Per-thread facts: thread id and a block of log ids ---- */

static _Atomic uint64_t next_id_block = 1;
static _Thread_local uint64_t tls_next_id, tls_id_end;
static _Thread_local int tls_tid;

static uint64_t new_log_id(void)
{
	if (tls_next_id == tls_id_end) {
		tls_next_id = atomic_fetch_add_explicit(&next_id_block, 1024, memory_order_relaxed);
		tls_id_end = tls_next_id + 1024;
	}
	return tls_next_id++;
}

static int thread_id(void)
{
	if (!tls_tid)
		tls_tid = (int)gettid();
	return tls_tid;
}

/* Wall time as the cheap monotonic clock plus an offset refreshed every second, so an error pays
 * for one TSC read instead of two vDSO calls. */
static _Atomic int64_t wall_offset;
static _Atomic uint64_t wall_offset_at;

static uint64_t wall_from_mono(uint64_t mono)
{
	uint64_t at = atomic_load_explicit(&wall_offset_at, memory_order_relaxed);
	if (at == 0 || mono - at > 1000000000u) {
		int64_t off = (int64_t)(ats_wall_ns() - ats_now_ns());
		atomic_store_explicit(&wall_offset, off, memory_order_relaxed);
		atomic_store_explicit(&wall_offset_at, mono ? mono : 1, memory_order_relaxed);
		return (uint64_t)((int64_t)mono + off);
	}
	return (uint64_t)((int64_t)mono + atomic_load_explicit(&wall_offset, memory_order_relaxed));
}

__attribute__((constructor)) static void error_init(void)
{
	/* A per-thread unwind cache keeps unw_backtrace off libunwind's global cache lock. */
	unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_PER_THREAD);
}

/* ---- Construction ---- */

static bool wants_stack(ats_err_kind kind, int stack)
{
	if (stack == ATS_STACK_ON)
		return true;
	if (stack == ATS_STACK_OFF)
		return false;
	return kind == ATS_KIND_BUG || atomic_load_explicit(&stack_for_known, memory_order_relaxed);
}

ats_err *ats__err_vnew(const char *file, int line, const char *func, ats_err_kind kind, ats_code code, int stack,
                       ats_err *cause, const char *fmt, va_list ap)
{
	/* The first two frames are this function and the ats__err_* entry point behind the macro. */
	void *raw_frames[ATS_ERR_MAX_FRAMES + 2];
	void **frames = raw_frames + 2;
	int nframes = 0;
	if (wants_stack(kind, stack)) {
		nframes = unw_backtrace(raw_frames, ATS_ERR_MAX_FRAMES + 2);
		nframes = nframes > 2 ? nframes - 2 : 0;
	}

	char small[256];
	const char *text = fmt ? fmt : "";
	size_t mlen;
	va_list again;
	va_copy(again, ap);
	if (strchr(text, '%')) {
		int n = vsnprintf(small, sizeof small, text, ap);
		mlen = n < 0 ? 0 : (size_t)n;
		if (n < 0)
			small[0] = '\0';
		text = small;
	} else {
		mlen = strlen(text);
	}

	size_t head = sizeof(struct ats_err) + (size_t)nframes * sizeof(void *);
	struct ats_err *e = malloc(head + mlen + 1);
	if (!e) {
		va_end(again);
		ats_err_unref(cause);
		return ats_err_oom;
	}
	if (text != small || mlen < sizeof small)
		memcpy(e->msg + (size_t)nframes * sizeof(void *), text, mlen + 1);
	else
		vsnprintf(e->msg + (size_t)nframes * sizeof(void *), mlen + 1, fmt, again);
	va_end(again);

	atomic_init(&e->refs, 1);
	e->kind = (uint8_t)kind;
	e->code = (uint8_t)code;
	e->is_static = 0;
	e->nframes = (uint8_t)nframes;
	e->line = line;
	e->tid = thread_id();
	e->nkv = 0;
	e->file = file;
	e->func = func;
	e->log_id = new_log_id();
	e->mono_ns = ats_fast_now_ns();
	e->wall_ns = wall_from_mono(e->mono_ns);
	e->cause = cause;
	e->user = NULL;
	e->hint = NULL;
	e->kv = NULL;
	e->size = head + mlen + 1;
	/* Frames sit right after the struct (pointer-aligned), the message after them. */
	e->frames = (void **)(void *)e->msg;
	e->text = e->msg + (size_t)nframes * sizeof(void *);
	memcpy(e->frames, frames, (size_t)nframes * sizeof(void *));
	return e;
}

ats_err *ats__err_new(const char *file, int line, const char *func, ats_err_kind kind, ats_code code, int stack,
                      ats_err *cause, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ats_err *e = ats__err_vnew(file, line, func, kind, code, stack, cause, fmt, ap);
	va_end(ap);
	return e;
}

ats_err *ats__err_wrap(const char *file, int line, const char *func, ats_err *cause, int stack, const char *fmt, ...)
{
	if (!cause)
		return NULL;
	if (cause == ats_err_oom)
		return cause; /* no memory to say more with */
	va_list ap;
	va_start(ap, fmt);
	ats_err_kind kind = (ats_err_kind)cause->kind;
	ats_code code = (ats_code)cause->code;
	ats_err *e = ats__err_vnew(file, line, func, kind, code, stack, ats_err_ref(cause), fmt, ap);
	va_end(ap);
	if (e == ats_err_oom)
		return cause; /* the cause, without the added context, beats an OOM error */
	ats_err_unref(cause);
	return e;
}

ats_err *ats__err_errno(const char *file, int line, const char *func, int errnum, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ats_err *e = ats__err_vnew(file, line, func, ATS_KIND_RAW, ATS_ERR_SYSTEM, ATS_STACK_DEFAULT, NULL, fmt, ap);
	va_end(ap);
	char name[64];
	const char *desc = strerrorname_np(errnum);
	snprintf(name, sizeof name, "%s (%d)", desc ? desc : "unknown errno", errnum);
	return ats_err_with_kv(e, "errno", "%s", name);
}

ats_err *ats__err_boundary(const char *file, int line, const char *func, ats_err *err)
{
	if (!err || err->kind != ATS_KIND_RAW)
		return err;
	return ats__err_new(file, line, func, ATS_KIND_BUG, ATS_ERR_INTERNAL, ATS_STACK_DEFAULT, err,
	                    "unexpected error crossed a module boundary");
}

/* ---- Decorations (copy on write) ---- */

static char *vdup(const char *fmt, va_list ap)
{
	va_list again;
	va_copy(again, ap);
	int n = vsnprintf(NULL, 0, fmt, ap);
	char *s = n < 0 ? NULL : malloc((size_t)n + 1);
	if (s)
		vsnprintf(s, (size_t)n + 1, fmt, again);
	va_end(again);
	return s;
}

static void free_decorations(struct ats_err *e)
{
	free(e->user);
	free(e->hint);
	for (uint32_t i = 0; i < e->nkv; i++) {
		free(e->kv[i].key);
		free(e->kv[i].value);
	}
	free(e->kv);
}

/* Returns an error the caller alone owns with err's content (err itself if already so), or NULL. */
static struct ats_err *owned(ats_err *err)
{
	if (atomic_load_explicit(&err->refs, memory_order_acquire) == 1)
		return err;
	struct ats_err *c = malloc(err->size);
	if (!c)
		return NULL;
	memcpy(c, err, err->size);
	atomic_init(&c->refs, 1);
	c->frames = (void **)(void *)c->msg;
	c->text = c->msg + (size_t)c->nframes * sizeof(void *);
	c->user = err->user ? strdup(err->user) : NULL;
	c->hint = err->hint ? strdup(err->hint) : NULL;
	c->kv = err->nkv ? calloc(err->nkv, sizeof *c->kv) : NULL;
	bool ok = (!err->user || c->user) && (!err->hint || c->hint) && (!err->nkv || c->kv);
	for (uint32_t i = 0; ok && i < err->nkv; i++) {
		c->kv[i].key = strdup(err->kv[i].key);
		c->kv[i].value = strdup(err->kv[i].value);
		ok = c->kv[i].key && c->kv[i].value;
	}
	if (!ok) {
		free_decorations(c);
		free(c);
		return NULL;
	}
	ats_err_ref(c->cause);
	ats_err_unref(err);
	return c;
}

static ats_err *set_text(ats_err *err, size_t field, const char *fmt, va_list ap)
{
	if (!err || err->is_static)
		return err;
	char *s = vdup(fmt, ap);
	struct ats_err *e = s ? owned(err) : NULL;
	if (!e) {
		free(s);
		return err;
	}
	char **slot = (char **)(void *)((char *)e + field);
	free(*slot);
	*slot = s;
	return e;
}

ats_err *ats_err_with_user(ats_err *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	err = set_text(err, offsetof(struct ats_err, user), fmt, ap);
	va_end(ap);
	return err;
}

ats_err *ats_err_with_hint(ats_err *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	err = set_text(err, offsetof(struct ats_err, hint), fmt, ap);
	va_end(ap);
	return err;
}

ats_err *ats_err_with_kv(ats_err *err, const char *key, const char *fmt, ...)
{
	if (!err || err->is_static || !key)
		return err;
	va_list ap;
	va_start(ap, fmt);
	char *value = vdup(fmt, ap);
	va_end(ap);
	char *k = value ? strdup(key) : NULL;
	struct ats_err *e = k ? owned(err) : NULL;
	if (!e) {
		free(value);
		free(k);
		return err;
	}
	for (uint32_t i = 0; i < e->nkv; i++) {
		if (strcmp(e->kv[i].key, k) == 0) { /* a key is set once; the latest value wins */
			free(e->kv[i].value);
			e->kv[i].value = value;
			free(k);
			return e;
		}
	}
	struct ats_kv *kv = realloc(e->kv, (e->nkv + 1) * sizeof *kv);
	if (!kv) {
		free(value);
		free(k);
		return e;
	}
	kv[e->nkv].key = k;
	kv[e->nkv].value = value;
	e->kv = kv;
	e->nkv++;
	return e;
}

/* ---- Lifetime ---- */

ats_err *ats_err_ref(ats_err *err)
{
	if (err && !err->is_static)
		atomic_fetch_add_explicit(&err->refs, 1, memory_order_relaxed);
	return err;
}

void ats_err_unref(ats_err *err)
{
	while (err && !err->is_static) {
		if (atomic_fetch_sub_explicit(&err->refs, 1, memory_order_acq_rel) != 1)
			return;
		ats_err *cause = err->cause;
		free_decorations(err);
		free(err);
		err = cause; /* iterate instead of recursing: long chains cannot overflow the stack */
	}
}

/* ---- Reading ---- */

ats_code ats_err_code(const ats_err *err)
{
	return err ? (ats_code)err->code : (ats_code)0;
}
ats_err_kind ats_err_kind_of(const ats_err *err)
{
	return err ? (ats_err_kind)err->kind : ATS_KIND_KNOWN;
}
bool ats_err_is_bug(const ats_err *err)
{
	return err && err->kind == ATS_KIND_BUG;
}
const char *ats_err_message(const ats_err *err)
{
	return err ? err->text : NULL;
}
const ats_err *ats_err_cause(const ats_err *err)
{
	return err ? err->cause : NULL;
}
const ats_err *ats_err_root(const ats_err *err)
{
	while (err && err->cause)
		err = err->cause;
	return err;
}
const char *ats_err_user(const ats_err *err)
{
	return err ? err->user : NULL;
}
const char *ats_err_hint(const ats_err *err)
{
	return err ? err->hint : NULL;
}
size_t ats_err_kv_count(const ats_err *err)
{
	return err ? err->nkv : 0;
}
bool ats_err_kv_at(const ats_err *err, size_t i, const char **key, const char **value)
{
	if (!err || i >= err->nkv)
		return false;
	if (key)
		*key = err->kv[i].key;
	if (value)
		*value = err->kv[i].value;
	return true;
}
const char *ats_err_kv_get(const ats_err *err, const char *key)
{
	for (; err && key; err = err->cause)
		for (uint32_t i = 0; i < err->nkv; i++)
			if (strcmp(err->kv[i].key, key) == 0)
				return err->kv[i].value;
	return NULL;
}
uint64_t ats_err_log_id(const ats_err *err)
{
	return err ? err->log_id : 0;
}
uint64_t ats_err_wall_ns(const ats_err *err)
{
	return err ? err->wall_ns : 0;
}
uint64_t ats_err_mono_ns(const ats_err *err)
{
	return err ? err->mono_ns : 0;
}
int ats_err_thread_id(const ats_err *err)
{
	return err ? err->tid : 0;
}
const char *ats_err_file(const ats_err *err)
{
	return err ? err->file : NULL;
}
int ats_err_line(const ats_err *err)
{
	return err ? err->line : 0;
}
const char *ats_err_func(const ats_err *err)
{
	return err ? err->func : NULL;
}
size_t ats_err_stack(const ats_err *err, void *const **frames)
{
	if (frames)
		*frames = err ? err->frames : NULL;
	return err ? err->nframes : 0;
}

const ats_err *ats_err_find(const ats_err *err, ats_code code)
{
	for (; err; err = err->cause)
		if (err->code == code)
			return err;
	return NULL;
}

bool ats_err_is(const ats_err *err, ats_code code)
{
	return ats_err_find(err, code) != NULL;
}

static const char *const code_names[] = {
    [ATS_ERR_CANCELLED] = "cancelled",
    [ATS_ERR_DEADLINE_EXCEEDED] = "deadline_exceeded",
    [ATS_ERR_CLOSED] = "closed",
    [ATS_ERR_LIMITED] = "limited",
    [ATS_ERR_INVALID_ARGUMENT] = "invalid_argument",
    [ATS_ERR_OUT_OF_MEMORY] = "out_of_memory",
    [ATS_ERR_UNAVAILABLE] = "unavailable",
    [ATS_ERR_NOT_FOUND] = "not_found",
    [ATS_ERR_EXISTS] = "exists",
    [ATS_ERR_SYSTEM] = "system",
    [ATS_ERR_INTERNAL] = "internal",
};

const char *ats_code_name(ats_code code)
{
	if ((unsigned)code < sizeof code_names / sizeof *code_names && code_names[code])
		return code_names[code];
	return "unknown";
}

const char *ats_err_kind_name(ats_err_kind kind)
{
	switch (kind) {
	case ATS_KIND_KNOWN: return "known";
	case ATS_KIND_RAW: return "raw";
	case ATS_KIND_BUG: return "bug";
	}
	return "unknown";
}

/* ---- Formatting ---- */

/* An snprintf-style writer: counts every byte, stores what fits. */
struct out {
	char *buf;
	size_t len;
	size_t pos;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->pos < o->len) {
		size_t room = o->len - 1 - o->pos;
		memcpy(o->buf + o->pos, s, n < room ? n : room);
	}
	o->pos += n;
}

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void putf(struct out *o, const char *fmt, ...)
{
	char tmp[128];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n > 0)
		put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static size_t finish(struct out *o)
{
	if (o->len)
		o->buf[o->pos < o->len ? o->pos : o->len - 1] = '\0';
	return o->pos;
}

/* "function+0xoff (module+0xoff)". Only dynamic symbols have names (link executables with
 * -rdynamic for theirs); the module offset always works with `addr2line -e module 0xoff`. */
static void symbolize(struct out *o, void *pc)
{
	Dl_info info;
	/* A return address points after the call; look up the call itself. */
	if (!dladdr((char *)pc - 1, &info)) {
		putf(o, "%p", pc);
		return;
	}
	if (info.dli_sname)
		putf(o, "%s+0x%zx ", info.dli_sname, (size_t)((char *)pc - (char *)info.dli_saddr));
	const char *base = info.dli_fname ? strrchr(info.dli_fname, '/') : NULL;
	putf(o, "(%s+0x%zx)", base ? base + 1 : (info.dli_fname ? info.dli_fname : "?"),
	     (size_t)((char *)pc - (char *)info.dli_fbase));
}

static void put_time(struct out *o, uint64_t wall_ns)
{
	time_t secs = (time_t)(wall_ns / 1000000000u);
	struct tm tm;
	char tmp[40];
	gmtime_r(&secs, &tm);
	strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%S", &tm);
	putf(o, "%s.%09uZ", tmp, (unsigned)(wall_ns % 1000000000u));
}

size_t ats_err_format(const ats_err *err, char *buf, size_t len)
{
	struct out o = {buf, len, 0};
	if (!err)
		puts_(&o, "no error\n");
	for (int depth = 0; err; err = err->cause, depth++) {
		puts_(&o, depth ? "caused by: " : "error: ");
		puts_(&o, ats_err_message(err));
		putf(&o, "\n  code: %s (%s)  log id: %llu\n", ats_code_name((ats_code)err->code),
		     ats_err_kind_name((ats_err_kind)err->kind), (unsigned long long)err->log_id);
		if (err->is_static)
			continue;
		putf(&o, "  at: %s:%d (%s)  thread %d\n  time: ", err->file, err->line, err->func, err->tid);
		put_time(&o, err->wall_ns);
		putf(&o, "  (monotonic %llu ns)\n", (unsigned long long)err->mono_ns);
		if (err->user) {
			puts_(&o, "  user message: ");
			puts_(&o, err->user);
			puts_(&o, "\n");
		}
		if (err->hint) {
			puts_(&o, "  hint: ");
			puts_(&o, err->hint);
			puts_(&o, "\n");
		}
		for (uint32_t i = 0; i < err->nkv; i++) {
			puts_(&o, "  ");
			puts_(&o, err->kv[i].key);
			puts_(&o, ": ");
			puts_(&o, err->kv[i].value);
			puts_(&o, "\n");
		}
		if (err->nframes)
			puts_(&o, "  stack:\n");
		for (unsigned i = 0; i < err->nframes; i++) {
			putf(&o, "    #%-2u ", i);
			symbolize(&o, err->frames[i]);
			puts_(&o, "\n");
		}
	}
	return finish(&o);
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if the bytes there are not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t len;
	uint32_t cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0; /* overlong, out of range or a surrogate */
	return len;
}

/* A JSON string: quotes, escapes, and U+FFFD for each byte that is not valid UTF-8. */
static void put_json_string(struct out *o, const char *str)
{
	const unsigned char *s = (const unsigned char *)(str ? str : "");
	size_t n = strlen((const char *)s);
	put(o, "\"", 1);
	while (n) {
		unsigned char c = *s;
		size_t l = utf8_len(s, n);
		if (l == 0) {
			puts_(o, "\\ufffd");
			l = 1;
		} else if (c == '"') {
			puts_(o, "\\\"");
		} else if (c == '\\') {
			puts_(o, "\\\\");
		} else if (c == '\n') {
			puts_(o, "\\n");
		} else if (c == '\t') {
			puts_(o, "\\t");
		} else if (c < 0x20 || c == 0x7f) {
			putf(o, "\\u%04x", c);
		} else {
			put(o, (const char *)s, l);
		}
		s += l;
		n -= l;
	}
	put(o, "\"", 1);
}

size_t ats_err_format_json(const ats_err *err, char *buf, size_t len)
{
	struct out o = {buf, len, 0};
	if (!err) {
		puts_(&o, "null");
		return finish(&o);
	}
	size_t depth = 0;
	for (; err; err = err->cause, depth++) {
		puts_(&o, "{\"message\":");
		put_json_string(&o, ats_err_message(err));
		putf(&o, ",\"code\":\"%s\",\"kind\":\"%s\",\"log_id\":%llu", ats_code_name((ats_code)err->code),
		     ats_err_kind_name((ats_err_kind)err->kind), (unsigned long long)err->log_id);
		if (!err->is_static) {
			putf(&o, ",\"wall_ns\":%llu,\"mono_ns\":%llu,\"thread\":%d,\"file\":",
			     (unsigned long long)err->wall_ns, (unsigned long long)err->mono_ns, err->tid);
			put_json_string(&o, err->file);
			putf(&o, ",\"line\":%d,\"func\":", err->line);
			put_json_string(&o, err->func);
		}
		if (err->user) {
			puts_(&o, ",\"user\":");
			put_json_string(&o, err->user);
		}
		if (err->hint) {
			puts_(&o, ",\"hint\":");
			put_json_string(&o, err->hint);
		}
		if (err->nkv) {
			puts_(&o, ",\"attachments\":{");
			for (uint32_t i = 0; i < err->nkv; i++) {
				if (i)
					puts_(&o, ",");
				put_json_string(&o, err->kv[i].key);
				puts_(&o, ":");
				put_json_string(&o, err->kv[i].value);
			}
			puts_(&o, "}");
		}
		if (err->nframes) {
			puts_(&o, ",\"stack\":[");
			for (unsigned i = 0; i < err->nframes; i++) {
				char frame[512];
				struct out f = {frame, sizeof frame, 0};
				symbolize(&f, err->frames[i]);
				finish(&f);
				if (i)
					puts_(&o, ",");
				put_json_string(&o, frame);
			}
			puts_(&o, "]");
		}
		if (err->cause)
			puts_(&o, ",\"cause\":");
	}
	while (depth--)
		puts_(&o, "}");
	return finish(&o);
}

void ats_err_print(const ats_err *err, FILE *f)
{
	char small[4096];
	size_t n = ats_err_format(err, small, sizeof small);
	char *text = n < sizeof small ? small : malloc(n + 1);
	if (!text) {
		fputs(small, f); /* truncated beats nothing */
		return;
	}
	if (text != small)
		ats_err_format(err, text, n + 1);
	fputs(text, f);
	if (text != small)
		free(text);
}

size_t ats_err_user_text(const ats_err *err, char *buf, size_t len)
{
	struct out o = {buf, len, 0};
	if (!err)
		return finish(&o);
	if (err->kind != ATS_KIND_KNOWN) {
		ats_err_log(err);
		putf(&o, "An unexpected issue occurred; please report it with log id %llu.",
		     (unsigned long long)err->log_id);
		return finish(&o);
	}
	const char *user = NULL, *hint = NULL;
	for (const ats_err *e = err; e; e = e->cause) {
		if (!user)
			user = e->user;
		if (!hint)
			hint = e->hint;
	}
	puts_(&o, user ? user : ats_err_message(err));
	if (hint) {
		puts_(&o, " (");
		puts_(&o, hint);
		puts_(&o, ")");
	}
	return finish(&o);
}
