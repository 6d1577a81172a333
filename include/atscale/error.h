/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale structured errors.
 *
 * An error says what happened (a canonical code, a message and a cause chain), when and where
 * (wall and monotonic timestamps, thread id, file:line:function, optionally a raw stack captured
 * with libunwind and symbolized only when printed), what a user should be told (a user-facing
 * message and a hint) and how to find more (a log id and key/value attachments).
 *
 * Errors fall into two kinds, after the seed's "bugs vs known edge cases":
 *  - known edge cases (ATS_KIND_KNOWN): well-formed errors made on purpose by atscale's modules
 *    and by applications (cancelled, deadline exceeded, closed, limited, invalid argument, ...);
 *  - bugs (ATS_KIND_BUG): anything else. A foreign or raw error (ATS_KIND_RAW: an errno value, a
 *    third-party failure) that reaches a module boundary is wrapped as a bug by
 *    ats_err_boundary().
 *
 * What users see never leaks internals. ats_err_user_text() shows only text written for users:
 * a user message set with ats_err_with_user() on the error or one of its causes or, when none
 * is set, a fixed generic line for the code (ats_code_user_text: "The request was cancelled.",
 * "Too many requests. Try again later.", ...). Messages, attachments, file names and stacks go
 * to logs and ats_err_format() only, so put anything secret (paths, ports, keys, peer names) in
 * them freely. A bug (or a raw error shown to a user) gets "An unexpected issue occurred; please
 * report it with log id <id>." while its full record goes to the log hook.
 *
 * Shared records. A record made once and handed to many callers (ats_err_oom, and the errors of
 * contexts cancelled or expired without a cause, see ctx.h) has no place, thread or time of its
 * own: ats_err_is_shared() says so, ats_err_format() prints "shared record: no place or time"
 * and the JSON format has "shared":true instead of the file, line, thread and time members.
 *
 * Ownership: an `ats_err *` is a counted reference; NULL means success. Constructors return a new
 * reference; ats_err_wrap*, ats_err_bug, ats_err_boundary and ats_err_with_* consume the
 * reference they are given (so `return ats_err_wrap(err, "reading %s", path);` neither leaks nor
 * double-frees). An error is immutable once another reference to it exists, so it can be handed
 * across threads freely. Out of memory while making an error yields ats_err_oom, a static error
 * whose ref/unref are no-ops: nothing crashes and nothing leaks.
 *
 * Costs (see `atscale-bench --filter error`): making an error is one malloc, a TSC read and the
 * message copy (vsnprintf only when the format holds a '%'); wrapping is the same (the cause's
 * reference moves, no extra atomics); freeing is one atomic decrement and a free per error.
 * Reading any field is a load. Formatting and symbolizing happen only when printed.
 *
 * Stack capture is one unw_backtrace with libunwind's per-thread caches (UNW_CACHE_PER_THREAD,
 * set at load time). Once a thread has unwound through the same code before, it takes no lock
 * and makes no system call (~1,300 instructions for a short stack). The first capture on a
 * thread, and any capture through a return address not yet in that thread's cache, is slower:
 * libunwind then looks up unwind tables with dl_iterate_phdr, which takes the dynamic loader's
 * lock, blocks signals with sigprocmask and may probe memory with a write() to a pipe. Capture
 * is therefore lock-free only in the steady state; bugs (which capture by default) are rare.
 *
 * Symbol names. Frames are named with dladdr, which sees only dynamic symbols: shared libraries'
 * exported functions are named, but an executable's own frames print as (server+0x244f) unless
 * it is linked with -rdynamic (CMake: link atscale::rdynamic, or set ENABLE_EXPORTS on the
 * executable). Static functions are never named. The module+offset form always resolves with
 * `addr2line -f -e server 0x244f`.
 */
#ifndef ATSCALE_ERROR_H
#define ATSCALE_ERROR_H

#include "atscale/common.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* On every function returning an `ats_err *`: ignoring the result leaks the error, or worse,
 * ignores a failure. The compiler warns (-Wunused-result; with GCC even a (void) cast does not
 * silence it, so handle the error: `ats_err_unref(f())` when there is truly nothing to do). */
#if defined(__GNUC__) || defined(__clang__)
#define ATS_NODISCARD __attribute__((warn_unused_result))
#else
#define ATS_NODISCARD
#endif

/* The closed set of canonical codes, the one list the enum, ATS_ERR_CODE_COUNT and ats_code_name()
 * are generated from (as libuv's UV_ERRNO_MAP): X(NAME, name, what it means) gives ATS_ERR_NAME,
 * numbered from 1 in this order, and the stable lower-case name "name". Codes are only ever added
 * at the end. */
#define ATS_ERR_CODE_MAP(X)                                                                                            \
	X(CANCELLED, cancelled, "the operation was cancelled (ctx cancelled, pool stopped)")                           \
	X(DEADLINE_EXCEEDED, deadline_exceeded, "a deadline passed, or would pass before the operation ends")          \
	X(CLOSED, closed, "the channel, pool or object was closed")                                                    \
	X(LIMITED, limited, "a rate or resource limit refused the request")                                            \
	X(INVALID_ARGUMENT, invalid_argument, "the caller passed something that can never work")                       \
	X(OUT_OF_MEMORY, out_of_memory, "an allocation failed")                                                        \
	X(UNAVAILABLE, unavailable, "a dependency is down or busy; retrying may help")                                 \
	X(NOT_FOUND, not_found, "a named thing does not exist")                                                        \
	X(EXISTS, exists, "a named thing already exists")                                                              \
	X(SYSTEM, system, "a system call failed (the \"errno\" attachment says how)")                                  \
	X(INTERNAL, internal, "a bug: an invariant broke or an unexpected error escaped")

/* (private: each code's position in the list, from 0) */
#define ATS__ERR_CODE_INDEX(NAME, name, what) ATS__ERR_INDEX_##NAME,
enum ats__err_code_index { ATS_ERR_CODE_MAP(ATS__ERR_CODE_INDEX) };
#undef ATS__ERR_CODE_INDEX
#define ATS__ERR_CODE_ENUM(NAME, name, what) ATS_ERR_##NAME = ATS__ERR_INDEX_##NAME + 1,
typedef enum ats_code { ATS_ERR_CODE_MAP(ATS__ERR_CODE_ENUM) } ats_code;
#undef ATS__ERR_CODE_ENUM

/* How many codes there are (they run from 1 to ATS_ERR_CODE_COUNT). */
#define ATS__ERR_CODE_ONE(NAME, name, what) +1
#define ATS_ERR_CODE_COUNT (0 ATS_ERR_CODE_MAP(ATS__ERR_CODE_ONE))

typedef enum ats_err_kind {
	ATS_KIND_KNOWN = 0, /* a well-formed error for a known edge case */
	ATS_KIND_RAW = 1,   /* a foreign error not yet classified; a bug if it crosses a boundary */
	ATS_KIND_BUG = 2,   /* a bug */
} ats_err_kind;

typedef struct ats_err ats_err;

/* Private: the per-call stack switch the macros below pass to ats__err_new (DEFAULT, or ON for
 * ats_err_new_stack). No public call takes it; ATS_STACK_OFF exists for the library's tests. */
enum {
	ATS_STACK_DEFAULT = 0, /* bugs capture a stack; known errors follow ats_err_set_stack_default */
	ATS_STACK_ON = 1,
	ATS_STACK_OFF = 2,
};
#define ATS_ERR_MAX_FRAMES 32

/* The static error returned when memory for an error could not be had. */
ATS_API extern ats_err *const ats_err_oom;

/* ---- Making errors (all take printf-style formats; all capture file:line:function). ---- */

/* A known edge case with `code`. */
#define ats_err_new(code, ...)                                                                                         \
	ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_KNOWN, (code), ATS_STACK_DEFAULT, NULL, __VA_ARGS__)
/* The same, with a stack captured whatever the default. */
#define ats_err_new_stack(code, ...)                                                                                   \
	ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_KNOWN, (code), ATS_STACK_ON, NULL, __VA_ARGS__)
/* Wraps `cause` (consumed) with a message; the new error keeps the cause's code and kind. A NULL
 * cause gives NULL: wrapping success is success. */
#define ats_err_wrap(cause, ...) ats__err_wrap(__FILE__, __LINE__, __func__, (cause), 0, __VA_ARGS__)
/* Wraps `cause` (consumed) as a known edge case with a new code (cancelled wrapping its cause). */
#define ats_err_wrapc(cause, code, ...)                                                                                \
	ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_KNOWN, (code), ATS_STACK_DEFAULT, (cause), __VA_ARGS__)
/* A bug (code internal, stack captured), optionally wrapping `cause` (consumed, may be NULL). */
#define ats_err_bug(cause, ...)                                                                                        \
	ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_BUG, ATS_ERR_INTERNAL, ATS_STACK_DEFAULT, (cause),         \
	             __VA_ARGS__)
/* A raw, foreign error: what a third-party call or an unclassified failure produced. */
#define ats_err_raw(code, ...)                                                                                         \
	ats__err_new(__FILE__, __LINE__, __func__, ATS_KIND_RAW, (code), ATS_STACK_DEFAULT, NULL, __VA_ARGS__)
/* A raw system error from errno value `errnum`: code system, attachment "errno" = strerror name. */
#define ats_err_errno(errnum, ...) ats__err_errno(__FILE__, __LINE__, __func__, (errnum), __VA_ARGS__)
/* At a module boundary: a well-formed error (known or bug) passes through unchanged; a raw error
 * is wrapped as a bug, with a stack. Consumes `err`; NULL stays NULL. */
#define ats_err_boundary(err) ats__err_boundary(__FILE__, __LINE__, __func__, (err))

/* Decorations, applied while the caller still holds the only reference. Each consumes `err` and
 * returns the decorated error: the same object when the caller is the sole owner, else a copy
 * (errors others can see never change). On out-of-memory the error comes back undecorated. */
ATS_API ATS_NODISCARD ats_err *ats_err_with_user(ats_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
ATS_API ATS_NODISCARD ats_err *ats_err_with_hint(ats_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
ATS_API ATS_NODISCARD ats_err *ats_err_with_kv(ats_err *err, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- Lifetime ---- */

/* Adds a reference; wait-free (one atomic add). Returns err. NULL-safe. */
ATS_API ATS_NODISCARD ats_err *ats_err_ref(ats_err *err);
/* Drops a reference; the last one frees the error and its cause chain (iteratively, so chains of
 * any length are fine). NULL-safe. Wait-free while other references remain (one atomic
 * decrement); blocking when it drops the last one (free). */
ATS_API void ats_err_unref(ats_err *err);

/* ---- Reading (all wait-free, no allocation; NULL err gives 0/NULL/false) ---- */

ATS_API ats_code ats_err_code(const ats_err *err);
ATS_API ats_err_kind ats_err_kind_of(const ats_err *err);
ATS_API bool ats_err_is_bug(const ats_err *err);
ATS_API const char *ats_err_message(const ats_err *err);
/* The next error in the chain (borrowed: valid while err is). */
ATS_API const ats_err *ats_err_cause(const ats_err *err);
/* The deepest error in the chain (err itself when it has no cause). */
ATS_API const ats_err *ats_err_root(const ats_err *err);
ATS_API const char *ats_err_user(const ats_err *err); /* the user message set on this error, or NULL */
ATS_API const char *ats_err_hint(const ats_err *err); /* the hint set on this error, or NULL */
ATS_API size_t ats_err_kv_count(const ats_err *err);
ATS_API bool ats_err_kv_at(const ats_err *err, size_t i, const char **key, const char **value);
/* The value of `key` on this error or, failing that, the nearest cause that has it. */
ATS_API const char *ats_err_kv_get(const ats_err *err, const char *key);
ATS_API uint64_t ats_err_log_id(const ats_err *err);  /* unique in the process, never 0 for a real error */
ATS_API uint64_t ats_err_wall_ns(const ats_err *err); /* CLOCK_REALTIME nanoseconds */
ATS_API uint64_t ats_err_mono_ns(const ats_err *err); /* CLOCK_MONOTONIC nanoseconds */
ATS_API int ats_err_thread_id(const ats_err *err);    /* kernel thread id (gettid) */
ATS_API const char *ats_err_file(const ats_err *err);
ATS_API int ats_err_line(const ats_err *err);
ATS_API const char *ats_err_func(const ats_err *err);
/* The raw stack (return addresses, innermost first); 0 frames when none was captured. */
ATS_API size_t ats_err_stack(const ats_err *err, void *const **frames);
/* True for a shared record (see above): no place, thread or time of its own; file and func are
 * "", line, thread and times 0. Wait-free. */
ATS_API bool ats_err_is_shared(const ats_err *err);

/* True when err or any error in its cause chain has `code`. */
ATS_API bool ats_err_is(const ats_err *err, ats_code code);
/* The first error in the chain with `code` (borrowed), or NULL. */
ATS_API const ats_err *ats_err_find(const ats_err *err, ats_code code);

/* The code's stable lower-case name ("deadline_exceeded"); "unknown" outside the set. */
ATS_API const char *ats_code_name(ats_code code);
ATS_API const char *ats_err_kind_name(ats_err_kind kind);
/* The fixed line shown to a user for a well-formed error with `code` and no user message ("The
 * request took too long." for deadline_exceeded); a generic line outside the set. Static text,
 * never NULL; wait-free. */
ATS_API const char *ats_code_user_text(ats_code code);

/* ---- Formatting (snprintf contract: returns the length the whole text needs, writes at most
 * len-1 bytes and a NUL when len > 0). Symbolizes the stack with dladdr. Blocking: allocation-free
 * but may take the dynamic loader's lock while symbolizing. ---- */

/* Multi-line human format: every error of the chain with all its fields and symbolized stack. */
ATS_API size_t ats_err_format(const ats_err *err, char *buf, size_t len);
/* One JSON object (valid JSON and valid UTF-8 whatever bytes the messages hold); the chain is
 * the "cause" member, nested. */
ATS_API size_t ats_err_format_json(const ats_err *err, char *buf, size_t len);
/* Writes the human format to f. */
ATS_API void ats_err_print(const ats_err *err, FILE *f);

/* What to show a user, never a message or attachment: for a well-formed error, its user message
 * (the first one set along the chain) or, if none, ats_code_user_text(code), followed by the hint
 * (the first set along the chain) in parentheses; for a bug or a raw error, "An unexpected issue
 * occurred; please report it with log id <id>." after handing the full record to the log hook.
 * Every call on a bug logs it, so size the buffer once rather than calling twice (128 bytes
 * always fit the bug text). Allocation-free; blocking only through the log hook. snprintf
 * contract. */
ATS_API size_t ats_err_user_text(const ats_err *err, char *buf, size_t len);

/* ---- Global settings ---- */

/* The log hook receives full records (bugs shown to users, ats_err_log). The default writes the
 * JSON format, one line, to stderr. NULL restores the default. Thread-safe; blocking (it may
 * allocate): each distinct (fn, arg) pair gets one small node, kept for the process's life (so a
 * logger racing a swap never reads freed memory; memory grows with distinct hooks, not with
 * swaps); the swap is an atomic store. A logger that raced a swap may still call the previous hook
 * once. The hook may be called from any thread at once. */
typedef void (*ats_err_log_fn)(const ats_err *err, void *arg);
ATS_API void ats_err_set_log_hook(ats_err_log_fn fn, void *arg);
/* Sends err's full record to the log hook. */
ATS_API void ats_err_log(const ats_err *err);
/* Whether known edge cases capture a stack by default (default: false). Bugs always capture one.
 * Thread-safe (relaxed atomic). */
ATS_API void ats_err_set_stack_default(bool capture_for_known);

/* ---- Internals behind the macros ---- */
ATS_API ATS_NODISCARD ats_err *ats__err_new(const char *file, int line, const char *func, ats_err_kind kind,
                                            ats_code code, int stack, ats_err *cause, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));
ATS_API ATS_NODISCARD ats_err *ats__err_vnew(const char *file, int line, const char *func, ats_err_kind kind,
                                             ats_code code, int stack, ats_err *cause, const char *fmt, va_list ap);
ATS_API ATS_NODISCARD ats_err *ats__err_wrap(const char *file, int line, const char *func, ats_err *cause, int stack,
                                             const char *fmt, ...) __attribute__((format(printf, 6, 7)));
ATS_API ATS_NODISCARD ats_err *ats__err_errno(const char *file, int line, const char *func, int errnum, const char *fmt,
                                              ...) __attribute__((format(printf, 5, 6)));
ATS_API ATS_NODISCARD ats_err *ats__err_boundary(const char *file, int line, const char *func, ats_err *err);
/* A shared record (no place, thread or time) with `code`, message `msg` (static text, not copied
 * into a format) and `cause` (consumed); for modules that hand one record to many callers. One
 * malloc; ats_err_oom (the cause dropped) when it fails. */
ATS_NODISCARD ats_err *ats__err_shared(ats_code code, ats_err *cause, const char *msg);
/* A static shared record (ref/unref no-ops, never freed) of code cancelled or deadline_exceeded,
 * "context cancelled" / "context deadline exceeded": what a context reports when memory for its
 * record could not be had. */
ats_err *ats__err_static_shared(ats_code code);

#ifdef __cplusplus
}
#endif
#endif
