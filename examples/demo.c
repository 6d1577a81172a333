/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale-demo: each pattern the library has, shown once with real output. */
#include <atscale/atscale.h>

#include <stdio.h>
#include <stdlib.h>

/* ---- Error propagation: a low-level failure, wrapped on its way up, shown to a user ---- */

static ats_err *read_config(const char *path)
{
	/* A raw, foreign failure, as a system call would report it. */
	return ats_err_errno(2, "open %s", path);
}

static ats_err *load_settings(void)
{
	ats_err *err = read_config("/etc/demo.conf");
	/* Crossing the module boundary: a raw error becomes a bug with a stack and a log id. */
	return ats_err_boundary(ats_err_wrap(err, "loading settings"));
}

static ats_err *admit_request(int queued, int capacity)
{
	if (queued < capacity)
		return NULL;
	ats_err *err = ats_err_new(ATS_ERR_LIMITED, "queue full: %d of %d", queued, capacity);
	err = ats_err_with_user(err, "The server is busy right now.");
	err = ats_err_with_hint(err, "Retry in a few seconds.");
	return ats_err_with_kv(err, "queue", "%d/%d", queued, capacity);
}

/* The application's log: here, one JSON line per record on stdout. */
static void log_to_stdout(const ats_err *err, void *arg)
{
	(void)arg;
	char json[4096];
	ats_err_format_json(err, json, sizeof json);
	printf("  [log] %s\n", json);
}

static void demo_errors(void)
{
	char text[512];
	printf("== error propagation ==\n");

	ats_err *known = admit_request(64, 64);
	ats_err_user_text(known, text, sizeof text);
	printf("known edge case, shown to the user: %s\n", text);
	printf("is limited: %s, code %s, log id %llu\n", ats_err_is(known, ATS_ERR_LIMITED) ? "yes" : "no",
	       ats_code_name(ats_err_code(known)), (unsigned long long)ats_err_log_id(known));
	ats_err_unref(known);

	ats_err *bug = load_settings();
	printf("bug, shown to the user (its full record goes to the log hook):\n");
	ats_err_set_log_hook(log_to_stdout, NULL);
	ats_err_user_text(bug, text, sizeof text);
	ats_err_set_log_hook(NULL, NULL);
	printf("  %s\n", text);
	printf("bug, full record for the developer:\n");
	ats_err_print(bug, stdout);
	ats_err_unref(bug);
}

/* One file per pattern: examples/demo_<module>.c. */
void demo_ctx(void);
void demo_limiter(void);
void demo_keyed(void);
void demo_supervisor(void);

int main(void)
{
	demo_errors();
	demo_ctx();
	demo_limiter();
	demo_keyed();
	demo_supervisor();
	return EXIT_SUCCESS;
}
