/* SPDX-License-Identifier: BSD-2-Clause */
/* Structured errors: construction, lifetime, accessors, formats and the user/log split. */
#include "atscale/error.h"
#include "atscale/clock.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
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
	uint8_t shared; /* no place, thread or time of its own (see error.h) */
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
    .shared = 1,
    .file = "",
    .func = "",
    .log_id = 0,
    .text = "out of memory",
};
ats_err *const ats_err_oom = &oom_error;

/* Static shared records of the two context errors, for when memory for the real ones cannot be
 * had (ctx.c): a cancel or an expiry must never report out_of_memory instead. */
static struct ats_err static_shared[2] = {
    {.refs = 1,
     .kind = ATS_KIND_KNOWN,
     .code = ATS_ERR_CANCELLED,
     .is_static = 1,
     .shared = 1,
     .file = "",
     .func = "",
     .text = "context cancelled"},
    {.refs = 1,
     .kind = ATS_KIND_KNOWN,
     .code = ATS_ERR_DEADLINE_EXCEEDED,
     .is_static = 1,
     .shared = 1,
     .file = "",
     .func = "",
     .text = "context deadline exceeded"},
};

ats_err *ats__err_static_shared(ats_code code)
{
	return code == ATS_ERR_DEADLINE_EXCEEDED ? &static_shared[1] : &static_shared[0];
}

/* ---- Global settings ---- */

static atomic_bool stack_for_known = false;

/* Log hooks are interned: one immutable node per distinct (fn, arg) pair ever set, kept on an
 * append-only list for the process's life. A logger that loaded the old pointer can therefore keep
 * using it while another thread swaps hooks (no reclamation scheme needed), and memory stays
 * bounded by the number of distinct hooks rather than the number of swaps. */
struct log_hook {
	ats_err_log_fn fn;
	void *arg;
	struct log_hook *next; /* on the interned list; set before the node is published */
};
static _Atomic(struct log_hook *) log_hooks; /* every node ever made */
static _Atomic(struct log_hook *) log_hook;  /* the current hook; NULL = the default */

void ats_err_set_stack_default(bool capture_for_known)
{
	/* relaxed: a setting read on its own; nothing is published with it */
	atomic_store_explicit(&stack_for_known, capture_for_known, memory_order_relaxed);
}

void ats_err_set_log_hook(ats_err_log_fn fn, void *arg)
{
	struct log_hook *h = NULL;
	if (fn) {
		/* acquire: pairs with the release CAS below (another setter's): the nodes' fn, arg and next are seen */
		struct log_hook *head = atomic_load_explicit(&log_hooks, memory_order_acquire);
		for (h = head; h && (h->fn != fn || h->arg != arg); h = h->next)
			;
		if (!h) {
			h = malloc(sizeof *h);
			if (!h)
				return; /* keep the current hook rather than lose logs */
			h->fn = fn;
			h->arg = arg;
			/* Two threads racing to add the same pair may both add it: harmless. */
			/* release: publishes h's fields and next to the acquire loads of log_hooks; failure
			 * acquire: not needed (head is only stored as next, never read through here, and our
			 * CAS continues the release sequence of the one that wrote it), harmless: rare */
			do
				h->next = head;
			while (!atomic_compare_exchange_weak_explicit(&log_hooks, &head, h, memory_order_release,
			                                              memory_order_acquire));
		}
	}
	/* release: pairs with ats_err_log's acquire: the node's fn and arg (ours, or one a setter published and
	 * we acquired above) are seen */
	atomic_store_explicit(&log_hook, h, memory_order_release);
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
	/* acquire: pairs with ats_err_set_log_hook's release store */
	struct log_hook *h = atomic_load_explicit(&log_hook, memory_order_acquire);
	if (h)
		h->fn(err, h->arg);
	else
		default_log(err);
}

/* ---- Per-thread facts: thread id and a block of log ids ---- */

/* One initial-exec TLS block: the library is built -fPIC, where plain _Thread_local costs a
 * __tls_get_addr call per variable; initial-exec is one %fs-relative load. */
struct tls {
	uint64_t next_id, id_end;
	int tid;
};
static _Thread_local struct tls tls __attribute__((tls_model("initial-exec")));
static _Atomic uint64_t next_id_block = 1;

static uint64_t new_log_id(struct tls *t)
{
	if (__builtin_expect(t->next_id == t->id_end, 0)) {
		/* relaxed: the RMW alone makes blocks unique; nothing is published with it */
		t->next_id = atomic_fetch_add_explicit(&next_id_block, 1024, memory_order_relaxed);
		t->id_end = t->next_id + 1024;
	}
	return t->next_id++;
}

static int thread_id(struct tls *t)
{
	if (__builtin_expect(!t->tid, 0))
		t->tid = (int)gettid();
	return t->tid;
}

/* A forked child runs on a new thread id: forget the parent's. (Log ids stay unique within each
 * process, which is what the header promises.) */
static void forget_tid(void)
{
	tls.tid = 0;
}

/* Wall time as the cheap monotonic clock plus an offset refreshed every second, so an error pays
 * for one TSC read instead of two vDSO calls. A reader may pair a fresh stamp with the previous
 * offset: the error is the clocks' drift over one second. */
static _Atomic int64_t wall_offset;
static _Atomic uint64_t wall_offset_at;

static uint64_t wall_from_mono(uint64_t mono)
{
	/* acquire: pairs with the release store of `at` below, so a nonzero `at` comes with an offset at
	 * least as new as the one stored before it, never the initial 0 (with relaxed, a weakly ordered
	 * CPU could pair the first refresh's `at` with offset 0 and stamp boot-relative time as wall time).
	 * An older offset than `at`'s is fine: one second of drift, as said above. */
	uint64_t at = atomic_load_explicit(&wall_offset_at, memory_order_acquire);
	/* Signed: another thread may have stamped a slightly later `at` than our mono. */
	if (__builtin_expect(at == 0 || (int64_t)(mono - at) > (int64_t)ATS_NS_PER_SEC, 0)) {
		int64_t off = (int64_t)(ats_wall_ns() - ats_now_ns());
		/* relaxed: published by the release store of `at` just after */
		atomic_store_explicit(&wall_offset, off, memory_order_relaxed);
		/* release: pairs with the acquire load above (the offset stored first is seen with it) */
		atomic_store_explicit(&wall_offset_at, mono ? mono : 1, memory_order_release);
		return (uint64_t)((int64_t)mono + off);
	}
	/* relaxed: ordered after the acquire load of `at` above */
	return (uint64_t)((int64_t)mono + atomic_load_explicit(&wall_offset, memory_order_relaxed));
}

__attribute__((constructor)) static void error_init(void)
{
	/* A per-thread cache keeps unw_backtrace off libunwind's global cache lock (which also blocks
	 * signals with a sigprocmask system call). */
	unw_set_caching_policy(unw_local_addr_space, UNW_CACHE_PER_THREAD);
	pthread_atfork(NULL, NULL, forget_tid);
}

/* ---- Construction ---- */

static bool wants_stack(ats_err_kind kind, int stack)
{
	if (stack == ATS_STACK_ON)
		return true;
	if (stack == ATS_STACK_OFF)
		return false;
	/* relaxed: a setting (see ats_err_set_stack_default) */
	return kind == ATS_KIND_BUG || atomic_load_explicit(&stack_for_known, memory_order_relaxed);
}

/* Up to ATS_ERR_MAX_FRAMES frames starting at the caller of the public entry point. `caller` is
 * that entry point's return address: searching for it drops exactly atscale's own frames whatever
 * the compiler inlined or turned into tail calls. Lock-free once warm (see error.h). */
__attribute__((noinline)) static int capture(void **out, void *caller)
{
	enum { SLACK = 6 }; /* atscale frames above the caller: capture, make, an entry point, ... */
	void *raw[ATS_ERR_MAX_FRAMES + SLACK];
	int n = unw_backtrace(raw, ATS_ERR_MAX_FRAMES + SLACK);
	int skip = 1; /* without a match, drop only capture() itself */
	for (int i = 0; i < n && i < SLACK; i++) {
		/* Within one instruction either way, not equal: an unwinder may report a frame's pc as
		 * the return address, that address minus one (x86, to land inside the call) or the call
		 * instruction itself (4 bytes back on arm64), while `caller` is the exact return address. */
		uintptr_t d = (uintptr_t)raw[i] - (uintptr_t)caller + 4;
		if (d <= 8) {
			skip = i;
			break;
		}
	}
	n = n > skip ? n - skip : 0;
	if (n > ATS_ERR_MAX_FRAMES)
		n = ATS_ERR_MAX_FRAMES;
	memcpy(out, raw + skip, (size_t)n * sizeof(void *));
	return n;
}

enum { OOM_GIVES_OOM, OOM_GIVES_CAUSE };

/* The one constructor behind every entry point. Consumes `cause`; on out-of-memory returns
 * ats_err_oom (dropping the cause) or, for a wrap, the cause itself (its context lost, its
 * reference handed back). Cost: one malloc, a TSC read, the message copy (vsnprintf only when
 * the format has a '%'), and unw_backtrace when a stack is wanted. */
static ats_err *make(const char *file, int line, const char *func, ats_err_kind kind, ats_code code, int stack,
                     ats_err *cause, int on_oom, void *caller, const char *fmt, va_list ap)
{
	void *frames[ATS_ERR_MAX_FRAMES];
	int nframes = wants_stack(kind, stack) ? capture(frames, caller) : 0;

	char small[256];
	const char *text = fmt ? fmt : "";
	size_t mlen;
	bool reformat = false;
	if (strchr(text, '%')) {
		va_list again;
		va_copy(again, ap);
		int n = vsnprintf(small, sizeof small, text, again);
		va_end(again);
		mlen = n < 0 ? 0 : (size_t)n;
		if (n < 0)
			small[0] = '\0';
		reformat = mlen >= sizeof small; /* too long for small: format again into the error */
		text = small;
	} else {
		mlen = strlen(text);
	}

	size_t head = sizeof(struct ats_err) + (size_t)nframes * sizeof(void *);
	struct ats_err *e = malloc(head + mlen + 1);
	if (__builtin_expect(!e, 0)) {
		if (on_oom == OOM_GIVES_CAUSE)
			return cause;
		ats_err_unref(cause);
		return ats_err_oom;
	}
	char *msg = e->msg + (size_t)nframes * sizeof(void *);
	if (reformat)
		vsnprintf(msg, mlen + 1, fmt, ap);
	else
		memcpy(msg, text, mlen + 1);

	struct tls *t = &tls;
	atomic_init(&e->refs, 1);
	e->kind = (uint8_t)kind;
	e->code = (uint8_t)code;
	e->is_static = 0;
	e->shared = 0;
	e->nframes = (uint8_t)nframes;
	e->line = line;
	e->tid = thread_id(t);
	e->nkv = 0;
	e->file = file;
	e->func = func;
	e->log_id = new_log_id(t);
	e->mono_ns = ats_fast_now_ns();
	e->wall_ns = wall_from_mono(e->mono_ns);
	e->cause = cause;
	e->user = NULL;
	e->hint = NULL;
	e->kv = NULL;
	e->size = head + mlen + 1;
	/* Frames sit right after the struct (pointer-aligned), the message after them. */
	e->frames = (void **)(void *)e->msg;
	e->text = msg;
	memcpy(e->frames, frames, (size_t)nframes * sizeof(void *));
	return e;
}

ats_err *ats__err_vnew(const char *file, int line, const char *func, ats_err_kind kind, ats_code code, int stack,
                       ats_err *cause, const char *fmt, va_list ap)
{
	return make(file, line, func, kind, code, stack, cause, OOM_GIVES_OOM, __builtin_return_address(0), fmt, ap);
}

ats_err *ats__err_new(const char *file, int line, const char *func, ats_err_kind kind, ats_code code, int stack,
                      ats_err *cause, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ats_err *e =
	    make(file, line, func, kind, code, stack, cause, OOM_GIVES_OOM, __builtin_return_address(0), fmt, ap);
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
	/* The cause's reference moves into the new error; on OOM it comes back as the result: the
	 * cause without the added context beats an OOM error. */
	ats_err *e = make(file, line, func, (ats_err_kind)cause->kind, (ats_code)cause->code, stack, cause,
	                  OOM_GIVES_CAUSE, __builtin_return_address(0), fmt, ap);
	va_end(ap);
	return e;
}

static ats_err *make_l(const char *file, int line, const char *func, ats_err_kind kind, ats_code code, ats_err *cause,
                       void *caller, const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static ats_err *make_l(const char *file, int line, const char *func, ats_err_kind kind, ats_code code, ats_err *cause,
                       void *caller, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ats_err *e = make(file, line, func, kind, code, ATS_STACK_DEFAULT, cause, OOM_GIVES_OOM, caller, fmt, ap);
	va_end(ap);
	return e;
}

ats_err *ats__err_errno(const char *file, int line, const char *func, int errnum, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ats_err *e = make(file, line, func, ATS_KIND_RAW, ATS_ERR_SYSTEM, ATS_STACK_DEFAULT, NULL, OOM_GIVES_OOM,
	                  __builtin_return_address(0), fmt, ap);
	va_end(ap);
	const char *name = strerrorname_np(errnum);
	return ats_err_with_kv(e, "errno", "%s (%d)", name ? name : "unknown errno", errnum);
}

ats_err *ats__err_boundary(const char *file, int line, const char *func, ats_err *err)
{
	if (!err || err->kind != ATS_KIND_RAW)
		return err;
	return make_l(file, line, func, ATS_KIND_BUG, ATS_ERR_INTERNAL, err, __builtin_return_address(0),
	              "unexpected error crossed a module boundary");
}

ats_err *ats__err_shared(ats_code code, ats_err *cause, const char *msg)
{
	ats_err *e = ats__err_new("", 0, "", ATS_KIND_KNOWN, code, ATS_STACK_OFF, cause, "%s", msg);
	if (e == ats_err_oom)
		return e;
	/* Clear what make() stamped: a shared record's place and time would describe its first
	 * user only. The log id stays: it still names this one record. */
	e->shared = 1;
	e->tid = 0;
	e->mono_ns = 0;
	e->wall_ns = 0;
	return e;
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
	/* acquire: pairs with the release decrement of every owner gone before (ats_err_unref), so their
	 * reads of err happen before the caller changes it in place */
	if (atomic_load_explicit(&err->refs, memory_order_acquire) == 1)
		return err;
	struct ats_err *c = malloc(err->size);
	if (!c)
		return NULL;
	/* Everything but the count: other owners may be changing it right now (atomically), and a
	 * plain read of it would race. */
	size_t from = offsetof(struct ats_err, kind);
	memcpy((char *)c + from, (const char *)err + from, err->size - from);
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
		if (!c->kv)
			c->nkv = 0; /* the array itself failed: nothing in it to free */
		free_decorations(c);
		free(c);
		return NULL;
	}
	c->cause = ats_err_ref(c->cause);
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
		/* relaxed: the caller holds a reference, so the count cannot reach 0 here; no data is handed over
		 * (the one who passes err on orders that) */
		atomic_fetch_add_explicit(&err->refs, 1, memory_order_relaxed);
	return err;
}

void ats_err_unref(ats_err *err)
{
	while (err && !err->is_static) {
		/* A count of 1 means the caller holds the only reference: no other thread can change it
		 * (taking a reference needs one), so the last owner skips the atomic read-modify-write.
		 * The acquire load pairs with the release decrement of the owner before us. */
		/* acq_rel: release so this owner's reads of err happen before the free by the last owner; acquire
		 * for when we are the last, to see every other owner's (the usual release + acquire fence, as one) */
		if (atomic_load_explicit(&err->refs, memory_order_acquire) != 1 &&
		    atomic_fetch_sub_explicit(&err->refs, 1, memory_order_acq_rel) != 1)
			return;
		ats_err *cause = err->cause;
		if (err->user || err->hint || err->kv)
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
bool ats_err_is_shared(const ats_err *err)
{
	return err && err->shared;
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

#define CODE_NAME(NAME, name, what) [ATS_ERR_##NAME] = #name,
static const char *const code_names[] = {ATS_ERR_CODE_MAP(CODE_NAME)};
#undef CODE_NAME
_Static_assert(sizeof code_names / sizeof *code_names == ATS_ERR_CODE_COUNT + 1, "one name per code");

const char *ats_code_name(ats_code code)
{
	if ((unsigned)code < sizeof code_names / sizeof *code_names && code_names[code])
		return code_names[code];
	return "unknown";
}

/* One line per code, written for the people using an application: nothing in them depends on
 * what failed inside it. */
static const char *const code_user_texts[] = {
    [ATS_ERR_CANCELLED] = "The request was cancelled.",
    [ATS_ERR_DEADLINE_EXCEEDED] = "The request took too long.",
    [ATS_ERR_CLOSED] = "The service is closing. Try again later.",
    [ATS_ERR_LIMITED] = "Too many requests. Try again later.",
    [ATS_ERR_INVALID_ARGUMENT] = "The request is not valid.",
    [ATS_ERR_OUT_OF_MEMORY] = "The service is overloaded. Try again later.",
    [ATS_ERR_UNAVAILABLE] = "The service is unavailable. Try again later.",
    [ATS_ERR_NOT_FOUND] = "The requested item was not found.",
    [ATS_ERR_EXISTS] = "The item already exists.",
    [ATS_ERR_SYSTEM] = "The service ran into a system problem. Try again later.",
    [ATS_ERR_INTERNAL] = "The service could not complete the request.",
};
_Static_assert(sizeof code_user_texts / sizeof *code_user_texts == ATS_ERR_CODE_COUNT + 1, "one user line per code");
_Static_assert(sizeof code_names / sizeof *code_names == ATS_ERR_CODE_COUNT + 1, "one name per code");

const char *ats_code_user_text(ats_code code)
{
	if ((unsigned)code < sizeof code_user_texts / sizeof *code_user_texts && code_user_texts[code])
		return code_user_texts[code];
	return "The request failed.";
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

/* An snprintf-style writer: counts every byte, stores what fits. Numbers are written by hand:
 * a vsnprintf call costs several times what the whole field does (row error.format). */
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

static void put_u64(struct out *o, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof tmp;
	do
		tmp[--i] = (char)('0' + v % 10);
	while (v /= 10);
	put(o, tmp + i, sizeof tmp - i);
}

static void put_i64(struct out *o, int64_t v)
{
	if (v < 0) {
		put(o, "-", 1);
		put_u64(o, 0 - (uint64_t)v);
	} else {
		put_u64(o, (uint64_t)v);
	}
}

/* `v` in hex with a 0x prefix. */
static void put_hex(struct out *o, uint64_t v)
{
	char tmp[18];
	size_t i = sizeof tmp;
	do
		tmp[--i] = "0123456789abcdef"[v & 15];
	while (v >>= 4);
	tmp[--i] = 'x';
	tmp[--i] = '0';
	put(o, tmp + i, sizeof tmp - i);
}

/* `v` in decimal, zero-padded to `width` digits (width <= 9). */
static void put_padded(struct out *o, unsigned v, unsigned width)
{
	char tmp[9];
	for (unsigned i = width; i-- > 0; v /= 10)
		tmp[i] = (char)('0' + v % 10);
	put(o, tmp, width);
}

static size_t finish(struct out *o)
{
	if (o->len)
		o->buf[o->pos < o->len ? o->pos : o->len - 1] = '\0';
	return o->pos;
}

static void put_json_chars(struct out *o, const char *str);

/* A name from dladdr: as is, or escaped for the inside of a JSON string. */
static void put_name(struct out *o, const char *s, bool json)
{
	if (json)
		put_json_chars(o, s);
	else
		puts_(o, s);
}

/* "function+0xoff (module+0xoff)", its names escaped for a JSON string when json. Only dynamic
 * symbols have names (link executables with -rdynamic for theirs); the module offset always works
 * with `addr2line -e module 0xoff`. No length limit: C++ names can run to kilobytes. */
static void symbolize(struct out *o, void *pc, bool json)
{
	Dl_info info;
	/* A return address points after the call; look up the call itself. */
	if (!dladdr((char *)pc - 1, &info)) {
		put_hex(o, (uintptr_t)pc);
		return;
	}
	if (info.dli_sname) {
		put_name(o, info.dli_sname, json);
		put(o, "+", 1);
		put_hex(o, (uintptr_t)((char *)pc - (char *)info.dli_saddr));
		put(o, " ", 1);
	}
	const char *base = info.dli_fname ? strrchr(info.dli_fname, '/') : NULL;
	put(o, "(", 1);
	put_name(o, base ? base + 1 : (info.dli_fname && *info.dli_fname ? info.dli_fname : "?"), json);
	put(o, "+", 1);
	put_hex(o, (uintptr_t)((char *)pc - (char *)info.dli_fbase));
	put(o, ")", 1);
}

/* RFC 3339 UTC with nanoseconds. By hand (days to civil date, H. Hinnant's algorithm) because
 * gmtime_r takes glibc's time zone lock. */
static void put_time(struct out *o, uint64_t wall_ns)
{
	uint64_t secs = wall_ns / ATS_NS_PER_SEC;
	int64_t z = (int64_t)(secs / 86400) + 719468;
	unsigned sod = (unsigned)(secs % 86400);
	int64_t era = z / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	unsigned day = doy - (153 * mp + 2) / 5 + 1;
	unsigned month = mp < 10 ? mp + 3 : mp - 9;
	uint64_t year = (uint64_t)(yoe + era * 400) + (month <= 2);
	put_padded(o, (unsigned)(year % 10000), 4);
	put(o, "-", 1);
	put_padded(o, month, 2);
	put(o, "-", 1);
	put_padded(o, day, 2);
	put(o, "T", 1);
	put_padded(o, sod / 3600, 2);
	put(o, ":", 1);
	put_padded(o, sod / 60 % 60, 2);
	put(o, ":", 1);
	put_padded(o, sod % 60, 2);
	put(o, ".", 1);
	put_padded(o, (unsigned)(wall_ns % ATS_NS_PER_SEC), 9);
	put(o, "Z", 1);
}

size_t ats_err_format(const ats_err *err, char *buf, size_t len)
{
	struct out o = {buf, len, 0};
	if (!err)
		puts_(&o, "no error\n");
	for (int depth = 0; err; err = err->cause, depth++) {
		puts_(&o, depth ? "caused by: " : "error: ");
		puts_(&o, ats_err_message(err));
		puts_(&o, "\n  code: ");
		puts_(&o, ats_code_name((ats_code)err->code));
		puts_(&o, " (");
		puts_(&o, ats_err_kind_name((ats_err_kind)err->kind));
		puts_(&o, ")  log id: ");
		put_u64(&o, err->log_id);
		puts_(&o, "\n");
		if (err->shared) {
			puts_(&o, "  shared record: no place or time\n");
		} else {
			puts_(&o, "  at: ");
			puts_(&o, err->file);
			puts_(&o, ":");
			put_i64(&o, err->line);
			puts_(&o, " (");
			puts_(&o, err->func);
			puts_(&o, ")  thread ");
			put_i64(&o, err->tid);
			puts_(&o, "\n  time: ");
			put_time(&o, err->wall_ns);
			puts_(&o, "  (monotonic ");
			put_u64(&o, err->mono_ns);
			puts_(&o, " ns)\n");
		}
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
			puts_(&o, "    #");
			put_u64(&o, i);
			puts_(&o, i < 10 ? "  " : " ");
			symbolize(&o, err->frames[i], false);
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

/* A JSON string: quotes, escapes, and U+FFFD for each byte that is not valid UTF-8. Runs of
 * plain printable ASCII are copied at once. */
static void put_json_chars(struct out *o, const char *str)
{
	const unsigned char *s = (const unsigned char *)(str ? str : "");
	for (;;) {
		const unsigned char *run = s;
		while (*s >= 0x20 && *s < 0x7f && *s != '"' && *s != '\\')
			s++;
		put(o, (const char *)run, (size_t)(s - run));
		unsigned char c = *s;
		if (!c)
			break;
		size_t l = c < 0x80 ? 1 : utf8_len(s, strnlen((const char *)s, 4));
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
			char esc[6] = {'\\', 'u', '0', '0', "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]};
			put(o, esc, sizeof esc);
		} else {
			put(o, (const char *)s, l);
		}
		s += l;
	}
}

static void put_json_string(struct out *o, const char *str)
{
	put(o, "\"", 1);
	put_json_chars(o, str);
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
		puts_(&o, ",\"code\":\"");
		puts_(&o, ats_code_name((ats_code)err->code));
		puts_(&o, "\",\"kind\":\"");
		puts_(&o, ats_err_kind_name((ats_err_kind)err->kind));
		puts_(&o, "\",\"log_id\":");
		put_u64(&o, err->log_id);
		if (err->shared) {
			puts_(&o, ",\"shared\":true");
		} else {
			puts_(&o, ",\"wall_ns\":");
			put_u64(&o, err->wall_ns);
			puts_(&o, ",\"mono_ns\":");
			put_u64(&o, err->mono_ns);
			puts_(&o, ",\"thread\":");
			put_i64(&o, err->tid);
			puts_(&o, ",\"file\":");
			put_json_string(&o, err->file);
			puts_(&o, ",\"line\":");
			put_i64(&o, err->line);
			puts_(&o, ",\"func\":");
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
				/* Straight into the output, escaped: a frame's name has no length limit. */
				if (i)
					puts_(&o, ",");
				put(&o, "\"", 1);
				symbolize(&o, err->frames[i], true);
				put(&o, "\"", 1);
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
		puts_(&o, "An unexpected issue occurred; please report it with log id ");
		put_u64(&o, err->log_id);
		puts_(&o, ".");
		return finish(&o);
	}
	const char *user = NULL, *hint = NULL;
	for (const ats_err *e = err; e; e = e->cause) {
		if (!user)
			user = e->user;
		if (!hint)
			hint = e->hint;
	}
	puts_(&o, user ? user : ats_code_user_text((ats_code)err->code));
	if (hint) {
		puts_(&o, " (");
		puts_(&o, hint);
		puts_(&o, ")");
	}
	return finish(&o);
}
