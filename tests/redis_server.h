/* SPDX-License-Identifier: BSD-2-Clause */
/* A real redis-server for the fleet tests and the bench: started on a free loopback port in a
 * scratch folder (mktemp -d), persistence off, stopped afterwards. The server is started with
 * PR_SET_PDEATHSIG, so it dies with the process that started it even when that process fails an
 * assertion or crashes (no stray servers on a failed run).
 *
 *   struct ats_test_redis r;
 *   const char *why = ats_test_redis_start(&r, 0);   // NULL, or why not (names the package)
 *   ... r.port ...
 *   ats_test_redis_stop(&r);                          // also removes the folder
 *
 * ats_test_redis_kill() stops the server but keeps the port and folder, so
 * ats_test_redis_start(&r, r.port) brings it back on the same port (a restart). */
#ifndef ATS_TEST_REDIS_SERVER_H
#define ATS_TEST_REDIS_SERVER_H

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct ats_test_redis {
	pid_t pid; /* 0 when not running */
	uint16_t port;
	char dir[64]; /* scratch folder, "" before the first start */
	char bin[256];
};

/* redis-server's path: $PATH, then the Debian location. */
static inline int ats_test_redis_find(char *out, size_t len)
{
	const char *path = getenv("PATH");
	char buf[4096];
	snprintf(buf, sizeof buf, "%s:/usr/bin:/usr/sbin", path ? path : "");
	for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		snprintf(out, len, "%s/redis-server", d);
		if (access(out, X_OK) == 0)
			return 0;
	}
	return -1;
}

/* A port the kernel says is free now (bind to port 0, read it back, close). Another process may
 * take it before redis-server binds: start() then fails and the caller retries. */
static inline uint16_t ats_test_free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof a;
	uint16_t port = 0;
	if (s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(s, (struct sockaddr *)&a, &al) == 0)
		port = ntohs(a.sin_port);
	if (s >= 0)
		close(s);
	return port;
}

/* Whether the server answers PING with PONG. */
static inline int ats_test_redis_ping(uint16_t port)
{
	struct timeval tv = {0, 200000};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	int ok = 0;
	if (c && !c->err) {
		redisSetTimeout(c, tv);
		redisReply *r = redisCommand(c, "PING");
		ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
		if (r)
			freeReplyObject(r);
	}
	if (c)
		redisFree(c);
	return ok;
}

static inline uint64_t ats_test_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Stops the server (SIGKILL: a restart test wants it gone at once, and persistence is off) and
 * reaps it; keeps port and folder. */
static inline void ats_test_redis_kill(struct ats_test_redis *r)
{
	if (r->pid > 0) {
		kill(r->pid, SIGKILL);
		while (waitpid(r->pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	r->pid = 0;
}

static inline int ats_test_redis_start_once(struct ats_test_redis *r, uint16_t port)
{
	char portbuf[16];
	snprintf(portbuf, sizeof portbuf, "%u", port);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* dies with the test, whatever way it ends */
		if (getppid() != parent)
			_exit(127);
		int null = open("/dev/null", O_WRONLY);
		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2);
		}
		execl(r->bin, r->bin, "--port", portbuf, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		      "--dir", r->dir, "--daemonize", "no", "--protected-mode", "no", (char *)NULL);
		_exit(127);
	}
	r->pid = pid;
	r->port = port;
	/* Bounded wait on the observed state: PING answers, or the server exited, or 10 s passed. */
	uint64_t deadline = ats_test_mono_ns() + 10000000000u;
	while (ats_test_mono_ns() < deadline) {
		if (ats_test_redis_ping(port))
			return 0;
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			r->pid = 0;
			return -1;
		}
		struct timespec ts = {0, 5000000};
		nanosleep(&ts, NULL); /* polling pace, not synchronization */
	}
	ats_test_redis_kill(r);
	return -1;
}

/* Starts a server on `port` (0: a free one; retried a few times if the port was taken). NULL on
 * success, else a message saying why (no redis-server: the package to install). */
static inline const char *ats_test_redis_start(struct ats_test_redis *r, uint16_t port)
{
	if (port == 0)
		memset(r, 0, sizeof *r);
	if (ats_test_redis_find(r->bin, sizeof r->bin) != 0)
		return "redis-server not found: apt-get install redis-server (scripts/deps.sh installs it)";
	if (!r->dir[0]) {
		snprintf(r->dir, sizeof r->dir, "/tmp/atscale-redis-XXXXXX");
		if (!mkdtemp(r->dir)) {
			r->dir[0] = 0;
			return "mkdtemp failed";
		}
	}
	for (int attempt = 0; attempt < (port ? 50 : 5); attempt++) {
		uint16_t p = port ? port : ats_test_free_port();
		if (p && ats_test_redis_start_once(r, p) == 0)
			return NULL;
		if (port) { /* a restart: the old socket may linger a moment; poll with a pace */
			struct timespec ts = {0, 20000000};
			nanosleep(&ts, NULL);
		}
	}
	return "redis-server did not start (see its log: it logs to stdout, sent to /dev/null)";
}

/* Stops the server and removes its folder. */
static inline void ats_test_redis_stop(struct ats_test_redis *r)
{
	ats_test_redis_kill(r);
	if (r->dir[0]) {
		char cmd[128];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", r->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", r->dir);
		r->dir[0] = 0;
	}
}

#endif
