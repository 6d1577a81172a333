/* SPDX-License-Identifier: BSD-2-Clause */
/* atscale-bench: runs every registered row, then the peer programs in peers/ beside it, and prints
 * a table (or, with --json, one JSON object per line).
 *
 *   atscale-bench [--quick] [--json] [--filter PATTERN] [--threads N] [--no-peers] [--list]
 *
 * PATTERN is a comma-separated list of substrings or globs (bench/filter.h); a row runs when any
 * selects it. --threads sets the "all threads" count (default: the online cores).
 */
#include "atscale/common.h"
#include "bench.h"
#include "filter.h"

#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_BENCHES 256

static const ats_bench *benches[MAX_BENCHES];
static size_t nbenches;

void ats_bench_register(const ats_bench *b)
{
	if (nbenches < MAX_BENCHES)
		benches[nbenches++] = b;
	else
		fprintf(stderr, "atscale-bench: too many rows, %s dropped\n", b->name);
}

static struct {
	bool quick, json, list, peers;
	const char *filter;
	unsigned threads;
} opt = {.peers = true};

static unsigned rows_cap_hit; /* rows with a sample that hit MAX_RETAKES */

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * ATS_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static bool selected(const char *name)
{
	return ats_bench_filter_selects(opt.filter, name);
}

static void print_header(void)
{
	if (!opt.json && !opt.list)
		printf("%-36s %7s %11s %11s %11s  %s\n", "name", "threads", "ns/op", "min", "max", "extra");
}

static void print_row(const char *name, unsigned threads, bool peer, double med, double min, double max,
                      const char *extra)
{
	if (opt.json)
		printf("{\"name\": \"%s\", \"ns_per_op\": %.3f, \"min\": %.3f, \"max\": %.3f, \"threads\": %u, "
		       "\"peer\": %s%s%s}\n",
		       name, med, min, max, threads, peer ? "true" : "false", extra && *extra ? ", " : "",
		       extra ? extra : "");
	else
		printf("%-36s %7u %11.2f %11.2f %11.2f  %s\n", name, threads, med, min, max, extra ? extra : "");
	fflush(stdout);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static int cmp_tid(const void *a, const void *b)
{
	pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
	return (x > y) - (x < y);
}

bool ats_bench_threads_get(ats_bench_threads *out)
{
	out->tid = NULL;
	out->n = 0;
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return false;
	size_t cap = 0;
	bool ok = true;
	for (struct dirent *e; ok && (e = readdir(d));) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		if (out->n == cap) {
			cap = cap ? 2 * cap : 64;
			pid_t *t = realloc(out->tid, cap * sizeof *t);
			ok = t != NULL;
			if (t)
				out->tid = t;
		}
		if (ok)
			out->tid[out->n++] = (pid_t)atoi(e->d_name);
	}
	closedir(d);
	if (!ok) {
		ats_bench_threads_free(out);
		return false;
	}
	qsort(out->tid, out->n, sizeof *out->tid, cmp_tid);
	return true;
}

void ats_bench_threads_free(ats_bench_threads *t)
{
	free(t->tid);
	t->tid = NULL;
	t->n = 0;
}

/* A thread's CPU time, through its CPU clock (the clock id pthread_getcpuclockid makes: the
 * kernel's per-thread scheduler clock of that thread id); false once the thread has ended. */
static bool thread_cpu_ns(pid_t tid, uint64_t *ns)
{
	clockid_t clock = (clockid_t)((~(unsigned)tid << 3) | 6u); /* per-thread (4), scheduler (2) */
	struct timespec ts;
	if (clock_gettime(clock, &ts) != 0)
		return false;
	*ns = (uint64_t)ts.tv_sec * ATS_NS_PER_SEC + (uint64_t)ts.tv_nsec;
	return true;
}

double ats_bench_cpu_per_sec(const ats_bench_threads *before, uint64_t window_ns, size_t *threads)
{
	ats_bench_threads now;
	*threads = 0;
	if (!ats_bench_threads_get(&now))
		return -1;
	uint64_t *c0 = calloc(now.n ? now.n : 1, sizeof *c0);
	bool *fresh = calloc(now.n ? now.n : 1, sizeof *fresh);
	if (!c0 || !fresh) {
		free(c0);
		free(fresh);
		ats_bench_threads_free(&now);
		return -1;
	}
	for (size_t i = 0; i < now.n; i++)
		fresh[i] = !bsearch(&now.tid[i], before->tid, before->n, sizeof *before->tid, cmp_tid) &&
		           thread_cpu_ns(now.tid[i], &c0[i]);
	struct timespec window = {(time_t)(window_ns / ATS_NS_PER_SEC), (long)(window_ns % ATS_NS_PER_SEC)};
	uint64_t w0 = mono_ns();
	while (nanosleep(&window, &window) != 0)
		;
	uint64_t w1 = mono_ns(), used = 0;
	for (size_t i = 0; i < now.n; i++) {
		uint64_t c1;
		if (fresh[i] && thread_cpu_ns(now.tid[i], &c1)) { /* (a thread that ended meanwhile: not counted) */
			used += c1 - c0[i];
			++*threads;
		}
	}
	free(c0);
	free(fresh);
	ats_bench_threads_free(&now);
	return (double)used * 1e9 / (double)(w1 - w0);
}

void ats_bench_percentile(uint64_t *samples, size_t n, unsigned percentile, ats_bench_result *out)
{
	qsort(samples, n, sizeof *samples, cmp_u64);
	out->ns_per_op = (double)samples[n * percentile / 100];
	out->min = (double)samples[0];
	out->max = (double)samples[n - 1];
}

/* ---- Timed runs on N threads ---- */

struct worker {
	pthread_t thread;
	const ats_bench *b;
	void *state;
	unsigned tid, threads;
	uint64_t iters;
	atomic_uint *ready;
	uint64_t start, end;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	/* Start together: each worker spins until all are running, so none is timed while another
	 * still waits for a CPU. The main thread is blocked in pthread_join meanwhile, so with
	 * threads <= cores every spinner has a core. */
	atomic_fetch_add_explicit(w->ready, 1, memory_order_acq_rel);
	while (atomic_load_explicit(w->ready, memory_order_acquire) < w->threads)
		;
	w->start = mono_ns();
	w->b->run(w->state, w->tid, w->iters);
	w->end = mono_ns();
	return NULL;
}

/* One timed run: wall ns from the first thread's start to the last thread's end. *side_by_side
 * (optional) gets the share of that time in which all threads were running: below 1 when a thread
 * started late or lost its CPU. */
static uint64_t timed_run(const ats_bench *b, void *state, unsigned threads, uint64_t iters, double *side_by_side)
{
	if (side_by_side)
		*side_by_side = 1;
	if (threads == 1) {
		uint64_t t0 = mono_ns();
		b->run(state, 0, iters);
		return mono_ns() - t0;
	}
	struct worker w[threads];
	atomic_uint ready = 0;
	for (unsigned i = 0; i < threads; i++) {
		w[i] = (struct worker){
		    .b = b, .state = state, .tid = i, .threads = threads, .iters = iters, .ready = &ready};
		if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0) {
			fprintf(stderr, "atscale-bench: pthread_create failed\n");
			exit(1);
		}
	}
	uint64_t first = UINT64_MAX, last = 0, last_start = 0, first_end = UINT64_MAX;
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(w[i].thread, NULL);
		if (w[i].start < first)
			first = w[i].start;
		if (w[i].start > last_start)
			last_start = w[i].start;
		if (w[i].end > last)
			last = w[i].end;
		if (w[i].end < first_end)
			first_end = w[i].end;
	}
	if (side_by_side && last > first)
		*side_by_side = first_end > last_start ? (double)(first_end - last_start) / (double)(last - first) : 0;
	return last - first;
}

/* One row at one thread count. */
struct row_case {
	const ats_bench *b;
	unsigned threads;
	void *state;
	bool setup_failed;
	bool ok; /* set up, and (rows that measure themselves) measured */
	uint64_t iters;
	unsigned retaken; /* samples taken again because the threads did not run side by side */
	unsigned cap_hit; /* samples still not side by side after MAX_RETAKES: the row's figure is suspect */
	double samples[11];
	ats_bench_result r;
};

static void case_setup(struct row_case *c)
{
	c->state = c->b->setup ? c->b->setup(c->threads) : NULL;
	c->setup_failed = c->b->setup && !c->state;
	c->ok = !c->setup_failed;
}

/* Grows the per-thread iteration count until one run takes the target time, then warms up. */
static void case_calibrate(struct row_case *c)
{
	uint64_t target = opt.quick ? 2000000u : 20000000u;
	uint64_t iters = 64, t = 0;
	for (;;) {
		t = timed_run(c->b, c->state, c->threads, iters, NULL);
		if (t >= target / 2 || iters > (1ull << 40))
			break;
		iters *= 4;
	}
	if (t < target && t > 0)
		iters = (uint64_t)((double)iters * (double)target / (double)t) + 1;
	timed_run(c->b, c->state, c->threads, iters, NULL); /* warm-up at full size */
	c->iters = iters;
}

/* A sample in which the threads ran side by side for less than this share of the wall time
 * measured the host's scheduling (on a shared VM a vCPU can stall for milliseconds), not the code:
 * a contended row looks faster and a scaling row slower. It is taken again, at most MAX_RETAKES
 * times per sample; the row reports how many were ("retaken"), and how many samples were still
 * not side by side when the cap was reached ("retake_cap_hit"): such a row's figure was not
 * measured side by side and must not be quoted as a multi-thread result. */
#define MIN_SIDE_BY_SIDE 0.9
#define MAX_RETAKES 4

static void case_sample(struct row_case *c, int rep)
{
	for (int attempt = 0;; attempt++) {
		double side_by_side;
		uint64_t t = timed_run(c->b, c->state, c->threads, c->iters, &side_by_side);
		c->samples[rep] = (double)t / ((double)c->iters * c->threads);
		if (side_by_side >= MIN_SIDE_BY_SIDE)
			return;
		if (attempt == MAX_RETAKES) {
			c->cap_hit++; /* kept, but said: the row reports it and the table flags it */
			return;
		}
		c->retaken++;
	}
}

static void case_finish(struct row_case *c, int reps)
{
	if (!c->ok) {
		if (!opt.json)
			printf("%-36s %7u  skipped%s\n", c->b->name, c->threads,
			       c->setup_failed ? " (setup failed)" : "");
	} else {
		if (!c->b->measure) {
			qsort(c->samples, (size_t)reps, sizeof *c->samples, cmp_double);
			c->r.ns_per_op = c->samples[reps / 2];
			c->r.min = c->samples[0];
			c->r.max = c->samples[reps - 1];
		}
		if (c->b->extra)
			c->b->extra(c->state, c->r.extra, sizeof c->r.extra);
		if (c->retaken) {
			size_t len = strlen(c->r.extra);
			snprintf(c->r.extra + len, sizeof c->r.extra - len, "%s\"retaken\": %u", len ? ", " : "",
			         c->retaken);
		}
		if (c->cap_hit) {
			size_t len = strlen(c->r.extra);
			snprintf(c->r.extra + len, sizeof c->r.extra - len, "%s\"retake_cap_hit\": %u", len ? ", " : "",
			         c->cap_hit);
			rows_cap_hit++;
		}
		print_row(c->b->name, c->threads, (c->b->flags & ATS_BENCH_PEER) != 0, c->r.ns_per_op, c->r.min,
		          c->r.max, c->r.extra);
	}
	if (c->b->teardown && !c->setup_failed)
		c->b->teardown(c->state);
}

/* Runs the cases and prints them in order. Rows that measure themselves run first, one after the
 * other. The timed rows are set up and calibrated, then sampled round-robin: repetition i of every
 * row before repetition i + 1 of any. The machine's noise comes in periods of seconds (other
 * tenants, frequency changes), so sampling all rows across the whole run gives each median the
 * same mix of quiet and noisy periods and keeps the ratios between rows (to the floors, 1 to N
 * threads) steady where back-to-back runs of one row would all fall in one period. Every state
 * stays alive until the end (the largest, the 1M-key maps, take 33-67 MB each; a run of every row peaks
 * at about 410 MB of RSS). */
static void run_cases(struct row_case *cases, size_t n)
{
	int reps = opt.quick ? 3 : 11;
	for (size_t i = 0; i < n; i++) {
		struct row_case *c = &cases[i];
		if (!c->b->measure)
			continue;
		case_setup(c);
		if (c->ok && !c->b->measure(c->state, opt.quick, &c->r))
			c->ok = false;
	}
	for (size_t i = 0; i < n; i++) {
		struct row_case *c = &cases[i];
		if (c->b->measure)
			continue;
		case_setup(c);
		if (c->ok)
			case_calibrate(c);
	}
	for (int rep = 0; rep < reps; rep++)
		for (size_t i = 0; i < n; i++)
			if (!cases[i].b->measure && cases[i].ok)
				case_sample(&cases[i], rep);
	for (size_t i = 0; i < n; i++)
		case_finish(&cases[i], reps);
}

static int cmp_bench(const void *a, const void *b)
{
	return strcmp((*(const ats_bench *const *)a)->name, (*(const ats_bench *const *)b)->name);
}

/* ---- Peers: separate programs in peers/ that print the same JSON lines ---- */

/* The value of "key" in a flat JSON line, as text (numbers) or the string's content. */
static bool json_field(const char *line, const char *key, char *out, size_t len)
{
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\"", key);
	const char *p = strstr(line, pat);
	if (!p)
		return false;
	p += strlen(pat);
	while (*p == ' ' || *p == ':')
		p++;
	bool quoted = *p == '"';
	p += quoted;
	size_t n = 0;
	while (*p && n + 1 < len && (quoted ? *p != '"' : (*p != ',' && *p != '}' && *p != ' ')))
		out[n++] = *p++;
	out[n] = '\0';
	return true;
}

static void run_peer_program(const char *path)
{
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof cmd, "'%s'%s --threads %u", path, opt.quick ? " --quick" : "", opt.threads);
	if (opt.filter) {
		/* Peers get the filter too so they skip unselected rows instead of timing them. */
		size_t n = strlen(cmd);
		snprintf(cmd + n, sizeof cmd - n, " --filter '%s'", opt.filter);
	}
	FILE *p = popen(cmd, "r");
	if (!p) {
		fprintf(stderr, "atscale-bench: cannot run %s\n", path);
		return;
	}
	char line[1024];
	while (fgets(line, sizeof line, p)) {
		char name[128], med[32], min[32], max[32], thr[16];
		if (!json_field(line, "name", name, sizeof name) || !json_field(line, "ns_per_op", med, sizeof med))
			continue;
		if (!selected(name))
			continue;
		if (opt.list) {
			printf("%s\n", name);
			continue;
		}
		if (opt.json) {
			fputs(line, stdout);
			fflush(stdout);
			continue;
		}
		if (!json_field(line, "min", min, sizeof min))
			strcpy(min, med);
		if (!json_field(line, "max", max, sizeof max))
			strcpy(max, med);
		if (!json_field(line, "threads", thr, sizeof thr))
			strcpy(thr, "1");
		print_row(name, (unsigned)atoi(thr), true, atof(med), atof(min), atof(max), NULL);
	}
	int rc = pclose(p);
	if (rc != 0)
		fprintf(stderr, "atscale-bench: %s exited with status %d\n", path, rc);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_peers(const char *argv0)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0) {
		snprintf(self, sizeof self, "%s", argv0);
		n = (ssize_t)strlen(self);
	}
	self[n] = '\0';
	char *slash = strrchr(self, '/');
	char dir[PATH_MAX + 8];
	snprintf(dir, sizeof dir, "%.*s/peers", slash ? (int)(slash - self) : 1, slash ? self : ".");
	DIR *d = opendir(dir);
	if (!d) {
		if (!opt.json)
			printf("(no peers: %s missing)\n", dir);
		return;
	}
	char *names[64];
	size_t count = 0;
	struct dirent *e;
	while ((e = readdir(d)) && count < 64) {
		char path[2 * PATH_MAX];
		struct stat st;
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		if (e->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & S_IXUSR))
			names[count++] = strdup(path);
	}
	closedir(d);
	qsort(names, count, sizeof *names, cmp_str);
	if (count == 0 && !opt.json)
		printf("(no peers built: see README, Go and DPDK are optional)\n");
	for (size_t i = 0; i < count; i++) {
		run_peer_program(names[i]);
		free(names[i]);
	}
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: atscale-bench [--quick] [--json] [--filter PATTERN] [--threads N] [--no-peers] [--list]\n");
}

int main(int argc, char **argv)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	opt.threads = cores > 0 ? (unsigned)cores : 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			opt.quick = true;
		else if (!strcmp(argv[i], "--json"))
			opt.json = true;
		else if (!strcmp(argv[i], "--list"))
			opt.list = true;
		else if (!strcmp(argv[i], "--no-peers"))
			opt.peers = false;
		else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
			opt.filter = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc && atoi(argv[i + 1]) > 0)
			opt.threads = (unsigned)atoi(argv[++i]);
		else {
			usage();
			return 2;
		}
	}
	qsort(benches, nbenches, sizeof *benches, cmp_bench);
	print_header();
	static struct row_case cases[3 * MAX_BENCHES];
	size_t ncases = 0;
	for (size_t i = 0; i < nbenches; i++) {
		const ats_bench *b = benches[i];
		if (!selected(b->name))
			continue;
		if (opt.list) {
			printf("%s\n", b->name);
			continue;
		}
		unsigned flags =
		    b->flags & (ATS_BENCH_1T | ATS_BENCH_MT | ATS_BENCH_FIXED_2T) ? b->flags : b->flags | ATS_BENCH_1T;
		if (flags & ATS_BENCH_1T)
			cases[ncases++] = (struct row_case){.b = b, .threads = 1};
		if (flags & ATS_BENCH_FIXED_2T)
			cases[ncases++] = (struct row_case){.b = b, .threads = 2};
		if ((flags & ATS_BENCH_MT) && opt.threads > 1 && !((flags & ATS_BENCH_FIXED_2T) && opt.threads == 2))
			cases[ncases++] = (struct row_case){.b = b, .threads = opt.threads};
	}
	run_cases(cases, ncases);
	if (rows_cap_hit)
		fprintf(
		    stderr,
		    "atscale-bench: %u row(s) hit the retake cap (\"retake_cap_hit\"): some of their samples never ran "
		    "side by side, so their multi-thread figures are not side-by-side measurements\n",
		    rows_cap_hit);
	if (opt.peers)
		run_peers(argv[0]);
	return 0;
}
