/* SPDX-License-Identifier: BSD-2-Clause */
/* A Criterion-compatible runner for the ThreadSanitizer build of the stress tests.
 *
 * Why: Criterion (2.4, through boxfort) maps its inheritable arena with MAP_FIXED at random
 * addresses that all fall inside ThreadSanitizer's shadow range, so under TSan it aborts before any
 * test runs ("Could not initialize inheritable arena", Snaipe/Criterion#274, open). The TSan build
 * compiles tests/stress_*.c against this header instead: the same Test()/cr_assert* source, each
 * test in its own forked process like Criterion, a non-zero exit when any test fails. Only the
 * subset the stress tests use is here; assertion messages must be string literals.
 */
#ifndef ATS_TSAN_CRITERION_H
#define ATS_TSAN_CRITERION_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct ats_crl_test {
	const char *name;
	void (*fn)(void);
};
static struct ats_crl_test ats_crl_tests[256];
static int ats_crl_count;

static inline void ats_crl_register(const char *name, void (*fn)(void))
{
	if (ats_crl_count < 256)
		ats_crl_tests[ats_crl_count++] = (struct ats_crl_test){name, fn};
}

__attribute__((format(printf, 4, 5), noreturn)) static inline void ats_crl_fail(const char *file, int line,
                                                                                const char *expr, const char *fmt, ...)
{
	fprintf(stderr, "%s:%d: assertion failed: %s", file, line, expr);
	if (fmt && *fmt) {
		va_list ap;
		va_start(ap, fmt);
		fputs(": ", stderr);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
	}
	fputc('\n', stderr);
	exit(1);
}

#define Test(suite, name, ...)                                                                                         \
	static void suite##_##name(void);                                                                              \
	__attribute__((constructor)) static void ats_crl_reg_##suite##_##name(void)                                    \
	{                                                                                                              \
		ats_crl_register(#suite "::" #name, suite##_##name);                                                   \
	}                                                                                                              \
	static void suite##_##name(void)

#define cr_assert(cond, ...)                                                                                           \
	do {                                                                                                           \
		if (!(cond))                                                                                           \
			ats_crl_fail(__FILE__, __LINE__, #cond, "" __VA_ARGS__);                                       \
	} while (0)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...) cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_gt(a, b, ...) cr_assert((a) > (b), __VA_ARGS__)
#define cr_assert_geq(a, b, ...) cr_assert((a) >= (b), __VA_ARGS__)
#define cr_assert_lt(a, b, ...) cr_assert((a) < (b), __VA_ARGS__)
#define cr_assert_leq(a, b, ...) cr_assert((a) <= (b), __VA_ARGS__)
#define cr_assert_null(p, ...) cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) cr_assert(strcmp((a), (b)) == 0, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) cr_assert(strcmp((a), (b)) != 0, __VA_ARGS__)
/* An expectation fails the test too; here it stops it at once (stricter than Criterion). */
#define cr_expect cr_assert
#define cr_expect_eq cr_assert_eq
#define cr_expect_neq cr_assert_neq
#define cr_expect_gt cr_assert_gt
#define cr_expect_geq cr_assert_geq
#define cr_expect_lt cr_assert_lt
#define cr_expect_leq cr_assert_leq
#define cr_expect_null cr_assert_null
#define cr_expect_not_null cr_assert_not_null

/* Runs every test (or those whose name holds the --filter text) in its own child process. */
int main(int argc, char **argv)
{
	const char *filter = NULL;
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--filter") && i + 1 < argc)
			filter = argv[++i];
	int failed = 0, ran = 0;
	for (int i = 0; i < ats_crl_count; i++) {
		if (filter && !strstr(ats_crl_tests[i].name, filter))
			continue;
		fflush(NULL);
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (pid == 0) {
			ats_crl_tests[i].fn();
			exit(0);
		}
		int status = 0;
		waitpid(pid, &status, 0);
		bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
		fprintf(stderr, "[%s] %s\n", ok ? "PASS" : "FAIL", ats_crl_tests[i].name);
		failed += !ok;
		ran++;
	}
	fprintf(stderr, "[====] Tested: %d | Passing: %d | Failing: %d\n", ran, ran - failed, failed);
	return failed ? 1 : 0;
}

#endif
