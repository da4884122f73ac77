// SPDX-License-Identifier: GPL-2.0-only
/*
 * PID 1 of the real-guest suite's nested Linux guest: a known workload in
 * two phases the host side can tell apart, then power off.
 *
 *  - "PHASE user": user_spin(), a loop in guest user space, no syscalls;
 *  - "PHASE kernel": read() of 64 KiB from /dev/zero in a loop, nearly all
 *    of it in the guest kernel (read_iter_zero, iov_iter_zero, clearing
 *    user memory).
 *
 * No libc (built with -nostdlib -static): the guest's root is a directory
 * holding this file alone. Its messages go to /dev/console, which is the
 * guest's serial port. No port I/O from user space: under QEMU TCG's
 * nested SVM it faults (Documentation/real-guest.md).
 */
typedef unsigned long u64;

enum { SYS_read = 0, SYS_write = 1, SYS_open = 2, SYS_exit = 60,
       SYS_reboot = 169, SYS_clock_gettime = 228 };

static long sys3(long n, long a, long b, long c)
{
	long r;

	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}

static long console = -1;

static void say(const char *s)
{
	long n = 0;

	while (s[n])
		n++;
	sys3(SYS_write, console, (long)s, n);
}

static u64 now_ms(void)
{
	struct { long sec, nsec; } ts = { 0, 0 };

	sys3(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0);
	return ts.sec * 1000 + ts.nsec / 1000000;
}

/* Seconds each phase lasts, by the guest's clock. */
#define PHASE_MS 30000

/* The user phase's work; noinline so that it has an address of its own. */
__attribute__((noinline)) static u64 user_spin(u64 n)
{
	volatile u64 x = 0;

	for (u64 i = 0; i < n; i++)
		x += i;
	return x;
}

static char buf[65536];

void _start(void)
{
	long zero;
	u64 end;

	console = sys3(SYS_open, (long)"/dev/console", 1 /* O_WRONLY */, 0);
	if (console < 0)
		sys3(SYS_exit, 2, 0, 0);
	say("\r\nGUEST-UP\r\n");

	say("PHASE user\r\n");
	for (end = now_ms() + PHASE_MS; now_ms() < end;)
		user_spin(1ul << 20);

	zero = sys3(SYS_open, (long)"/dev/zero", 0 /* O_RDONLY */, 0);
	if (zero < 0) {
		say("GUEST-ERROR cannot open /dev/zero\r\n");
	} else {
		say("PHASE kernel\r\n");
		for (end = now_ms() + PHASE_MS; now_ms() < end;)
			for (int i = 0; i < 16; i++)
				sys3(SYS_read, zero, (long)buf, sizeof(buf));
	}

	say("GUEST-DONE\r\n");
	sys3(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc /* POWER_OFF */);
	sys3(SYS_exit, 0, 0, 0);
}
