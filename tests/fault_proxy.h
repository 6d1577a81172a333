/* SPDX-License-Identifier: BSD-2-Clause */
/* A fault-injecting TCP proxy in front of a real redis-server, for the fleet tests: the limiters
 * connect to the proxy's loopback port, the proxy forwards to the server, and a test switches
 * what it does to the traffic while the limiter runs:
 *   PROXY_PASS       forward both ways;
 *   PROXY_DELAY      hold every reply delay_ms before forwarding it (a slow Redis);
 *   PROXY_BLACKHOLE  take requests and never answer (a hung Redis, or a lost network);
 *   PROXY_GARBLE     replace each reply by a wrong one, in turn: an error reply, a reply of the
 *                    wrong type, an array with a negative grant, an array granting more than any
 *                    request asks, and bytes that are not RESP at all;
 *   PROXY_DROP       close every connection as soon as it carries anything (a Redis that dies).
 * One thread serves every connection with poll(); it starts on a free loopback port and stops
 * (closing everything) in ats_test_proxy_stop.
 *
 *   struct ats_test_proxy p;
 *   const char *why = ats_test_proxy_start(&p, redis_port);   // NULL, or why not
 *   ... connect to p.port; atomic_store(&p.mode, PROXY_GARBLE); ...
 *   ats_test_proxy_stop(&p);
 */
#ifndef ATS_TEST_FAULT_PROXY_H
#define ATS_TEST_FAULT_PROXY_H

#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { PROXY_PASS, PROXY_DELAY, PROXY_BLACKHOLE, PROXY_GARBLE, PROXY_DROP };

#define ATS_TEST_PROXY_PAIRS 32

struct ats_test_proxy {
	uint16_t port;        /* where clients connect */
	uint16_t target_port; /* the redis-server */
	int listen_fd;
	pthread_t thread;
	_Atomic int mode;
	_Atomic uint32_t delay_ms;
	_Atomic int stop;
	_Atomic uint64_t garbled, dropped, replies; /* what it did, for the tests' checks */
	_Atomic uint64_t swallowed;                 /* requests (reads) taken and never answered */
	int client[ATS_TEST_PROXY_PAIRS], server[ATS_TEST_PROXY_PAIRS];
	unsigned garble_next;
};

static inline void ats_test_proxy_close(struct ats_test_proxy *p, int i)
{
	close(p->client[i]);
	close(p->server[i]);
	p->client[i] = p->server[i] = -1;
}

static inline void ats_test_proxy_send_all(int fd, const char *buf, size_t n)
{
	while (n) {
		ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		buf += w;
		n -= (size_t)w;
	}
}

static inline const char *ats_test_proxy_garbage(struct ats_test_proxy *p, size_t *len)
{
	static const char *const replies[] = {
	    "-ERR injected by the fault proxy\r\n", /* an error reply */
	    "$3\r\nfoo\r\n",                        /* a string where an array belongs */
	    "*2\r\n:-5\r\n:0\r\n",                  /* a negative grant */
	    "*2\r\n:99999999999\r\n:0\r\n",         /* more than any lease asks */
	    "\x01\x02garbage that is not RESP\r\n", /* not the protocol at all */
	};
	const char *r = replies[p->garble_next++ % (sizeof replies / sizeof *replies)];
	*len = strlen(r);
	return r;
}

static inline void ats_test_proxy_accept(struct ats_test_proxy *p)
{
	int c = accept(p->listen_fd, NULL, NULL);
	if (c < 0)
		return;
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p->target_port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int i = 0;
	while (i < ATS_TEST_PROXY_PAIRS && p->client[i] >= 0)
		i++;
	if (s < 0 || i == ATS_TEST_PROXY_PAIRS || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		close(c);
		if (s >= 0)
			close(s);
		return;
	}
	p->client[i] = c;
	p->server[i] = s;
}

static inline void *ats_test_proxy_main(void *arg)
{
	struct ats_test_proxy *p = arg;
	char buf[65536];
	while (!atomic_load(&p->stop)) {
		struct pollfd fds[1 + 2 * ATS_TEST_PROXY_PAIRS];
		int idx[1 + 2 * ATS_TEST_PROXY_PAIRS];
		nfds_t n = 0;
		fds[n] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
		idx[n++] = -1;
		for (int i = 0; i < ATS_TEST_PROXY_PAIRS; i++) {
			if (p->client[i] < 0)
				continue;
			fds[n] = (struct pollfd){.fd = p->client[i], .events = POLLIN};
			idx[n++] = 2 * i;
			fds[n] = (struct pollfd){.fd = p->server[i], .events = POLLIN};
			idx[n++] = 2 * i + 1;
		}
		if (poll(fds, n, 20) <= 0)
			continue; /* 20 ms: how soon a stop is seen */
		for (nfds_t j = 0; j < n; j++) {
			if (!fds[j].revents)
				continue;
			if (idx[j] < 0) {
				ats_test_proxy_accept(p);
				continue;
			}
			int i = idx[j] / 2;
			bool from_server = idx[j] & 1;
			int from = from_server ? p->server[i] : p->client[i];
			if (from < 0)
				continue; /* closed earlier in this pass */
			ssize_t r = recv(from, buf, sizeof buf, 0);
			int mode = atomic_load(&p->mode);
			if (r <= 0 || mode == PROXY_DROP) {
				if (r > 0)
					atomic_fetch_add(&p->dropped, 1);
				ats_test_proxy_close(p, i);
				continue;
			}
			if (!from_server) {
				if (mode != PROXY_BLACKHOLE)
					ats_test_proxy_send_all(p->server[i], buf, (size_t)r);
				else
					atomic_fetch_add(&p->swallowed, 1);
				continue;
			}
			atomic_fetch_add(&p->replies, 1);
			if (mode == PROXY_DELAY) {
				uint32_t ms = atomic_load(&p->delay_ms);
				struct timespec d = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
				nanosleep(&d, NULL); /* the injected slowness itself */
			}
			if (mode == PROXY_GARBLE) {
				size_t len;
				const char *g = ats_test_proxy_garbage(p, &len);
				atomic_fetch_add(&p->garbled, 1);
				ats_test_proxy_send_all(p->client[i], g, len);
			} else if (mode != PROXY_BLACKHOLE) {
				ats_test_proxy_send_all(p->client[i], buf, (size_t)r);
			}
		}
	}
	for (int i = 0; i < ATS_TEST_PROXY_PAIRS; i++)
		if (p->client[i] >= 0)
			ats_test_proxy_close(p, i);
	return NULL;
}

static inline const char *ats_test_proxy_start(struct ats_test_proxy *p, uint16_t target_port)
{
	memset(p, 0, sizeof *p);
	for (int i = 0; i < ATS_TEST_PROXY_PAIRS; i++)
		p->client[i] = p->server[i] = -1;
	p->target_port = target_port;
	p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (p->listen_fd < 0)
		return "fault proxy: socket failed";
	int one = 1;
	setsockopt(p->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof a;
	if (bind(p->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(p->listen_fd, 16) != 0 ||
	    getsockname(p->listen_fd, (struct sockaddr *)&a, &alen) != 0) {
		close(p->listen_fd);
		return "fault proxy: cannot listen on a loopback port";
	}
	p->port = ntohs(a.sin_port);
	if (pthread_create(&p->thread, NULL, ats_test_proxy_main, p) != 0) {
		close(p->listen_fd);
		return "fault proxy: cannot start its thread";
	}
	return NULL;
}

static inline void ats_test_proxy_stop(struct ats_test_proxy *p)
{
	atomic_store(&p->stop, 1);
	pthread_join(p->thread, NULL);
	close(p->listen_fd);
}

#endif
