/* SPDX-License-Identifier: BSD-2-Clause */
/* Refusing one system call in this process, as a container runtime's or a service manager's
 * seccomp filter written before the call existed does: every thread of the process, from now on,
 * gets -1 with errno `err` for it. For tests that prove the library copes with such a sandbox
 * (Criterion runs each test in a process of its own, so the filter ends with the test). */
#ifndef ATS_TESTS_SECCOMP_REFUSE_H
#define ATS_TESTS_SECCOMP_REFUSE_H

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define SECCOMP_REFUSE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SECCOMP_REFUSE_ARCH AUDIT_ARCH_AARCH64
#endif

/* Refuses the n system calls nr[0..n) (n <= 8). 0 when the filter is in place; -1 (errno set)
 * where this system offers none to a process (no seccomp, an unknown architecture, or an emulator
 * such as qemu-user that does not pass filters on). The filter stays across execve. */
static inline int seccomp_refuse_n(const long *nr, unsigned n, int err)
{
#ifdef SECCOMP_REFUSE_ARCH
	if (n > 8) {
		errno = EINVAL;
		return -1;
	}
	struct sock_filter f[4 + 2 * 8 + 1];
	unsigned k = 0;
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
	f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_REFUSE_ARCH, 1, 0);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	for (unsigned i = 0; i < n; i++) /* a match jumps to the refusal after the last test */
		f[k++] =
		    (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr[i], (unsigned char)(n - i), 0);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA));
	struct sock_fprog prog = {.len = (unsigned short)k, .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	/* TSYNC: the threads that already run (the library's timer thread, say) get it too. */
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) == 0 ? 0 : -1;
#else
	(void)nr, (void)n, (void)err;
	errno = ENOSYS;
	return -1;
#endif
}

/* Refuses one system call (seccomp_refuse_n). */
static inline int seccomp_refuse(long nr, int err)
{
	return seccomp_refuse_n(&nr, 1, err);
}

#endif
