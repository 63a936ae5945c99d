// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml ioctl fuzzer: random commands (mostly the real ones, some foreign),
 * random but plausible argument structs, NULL / unmapped / page-straddling
 * pointers, buffers mapped and touched, descriptors closed at random with
 * objects still alive. The kernel log and the module's counters, checked by
 * the caller afterwards, are the verdict; this program only must not hang.
 *
 * usage: mlos_ml_fuzz CALLS [SEED]
 * prints: "fuzz calls=N ok=N einval=N other=N seed=S"
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "common.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: fast and reproducible from the printed seed */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static uint64_t pick(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static const unsigned long cmds[] = {
	MLOS_ML_IOC_VERSION, MLOS_ML_IOC_STATS, MLOS_ML_IOC_POOL_CREATE,
	MLOS_ML_IOC_POOL_DESTROY, MLOS_ML_IOC_BUF_ALLOC, MLOS_ML_IOC_POOL_STATS,
	MLOS_ML_IOC_SCHED_REGISTER, MLOS_ML_IOC_SCHED_UNREGISTER, MLOS_ML_IOC_SCHED_STATS,
	MLOS_ML_IOC_GPU_LIST, MLOS_ML_IOC_GPU_SET_CAPACITY, MLOS_ML_IOC_GPU_LEASE,
	MLOS_ML_IOC_GPU_RELEASE,
};
#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

/* Small, often valid, sometimes wild values for an argument field. */
static uint64_t plausible(void)
{
	switch (pick(8)) {
	case 0: return 0;
	case 1: return pick(4);
	case 2: return pick(64);
	case 3: return 4096 * (1 + pick(64));
	case 4: return pick(1 << 20) + 1;
	case 5: return (uint64_t)-1 - pick(2);
	case 6: return 1ULL << pick(64);
	default: return rnd();
	}
}

static void fill(unsigned long cmd, void *p, size_t size, int self_tid)
{
	union {
		struct mlos_ml_pool_create pc;
		struct mlos_ml_buf_alloc ba;
		struct mlos_ml_sched_register sr;
		struct mlos_ml_gpu_lease gl;
		struct mlos_ml_gpu_list gli;
		unsigned char raw[512];
	} u;
	size_t i;

	memset(&u, 0, sizeof(u));
	if (pick(10) == 0) {		/* pure noise */
		for (i = 0; i < size; i++)
			u.raw[i] = rnd();
		memcpy(p, &u, size);
		return;
	}
	switch (cmd) {
	case MLOS_ML_IOC_POOL_CREATE:
		u.pc.size = pick(4) ? 4096 * (1 + pick(512)) : plausible();
		u.pc.numa_node = pick(4) ? -1 : (int)plausible();
		break;
	case MLOS_ML_IOC_BUF_ALLOC:
		u.ba.pool_id = 1 + pick(8);
		u.ba.size = pick(4) ? 4096 * (1 + pick(64)) - pick(100) : plausible();
		u.ba.flags = pick(4) ? 0 : pick(4);
		break;
	case MLOS_ML_IOC_SCHED_REGISTER:
		u.sr.tid = pick(3) == 0 ? self_tid : pick(3) == 0 ? (int)pick(300) : 0;
		u.sr.thread_class = pick(5);
		u.sr.rt_priority = pick(3) ? 0 : pick(120);
		u.sr.cpu_mask = pick(3) ? 0 : plausible();
		break;
	case MLOS_ML_IOC_GPU_LEASE:
		u.gl.size = pick(2) ? (1 + pick(32)) << 20 : plausible();
		u.gl.gpu = (int)pick(6) - 2;
		break;
	case MLOS_ML_IOC_GPU_LIST:
		u.gli.count = pick(3) ? pick(20) : plausible();
		u.gli.gpus = 0;		/* the caller points it somewhere */
		break;
	default:
		for (i = 0; i < 8 && i * 4 < size; i++)
			((uint32_t *)u.raw)[i] = pick(3) ? pick(16) : plausible();
		break;
	}
	if (pick(8) == 0)		/* a stray bit in a reserved or out field */
		u.raw[pick(size)] ^= 1 << pick(8);
	memcpy(p, &u, size);
}

#define MAX_BUFS 32

int main(int argc, char **argv)
{
	long calls = argc > 1 ? atol(argv[1]) : 100000, i;
	long ok = 0, einval = 0, other = 0;
	int page = getpagesize(), fd, bufs[MAX_BUFS], nbufs = 0, self_tid;
	unsigned char *area, *guard_edge, arg[512];

	rng_state = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x9e3779b97f4a7c15ULL;
	if (!rng_state)
		rng_state = 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("# fuzz seed=%s\n", argc > 2 ? argv[2] : "default");
	self_tid = syscall(SYS_gettid);

	/* Two pages, the second inaccessible: structs that straddle it fault midway. */
	area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED || mprotect(area + page, page, PROT_NONE))
		return 2;
	fd = open(MLOS_ML_DEVICE, O_RDWR);
	if (fd < 0) {
		perror(MLOS_ML_DEVICE);
		return 2;
	}
	for (i = 0; i < calls; i++) {
		unsigned long cmd;
		size_t size;
		void *p;
		long r;

		switch (pick(20)) {
		case 0:		/* a command number of our magic that does not exist */
			cmd = _IOC(pick(4), MLOS_ML_IOC_MAGIC, pick(256), pick(512));
			break;
		case 1:		/* anything at all */
			cmd = (unsigned long)(uint32_t)rnd();
			break;
		default:
			cmd = cmds[pick(NCMDS)];
		}
		size = _IOC_SIZE(cmd);
		if (size > sizeof(arg) - 16)
			size = sizeof(arg) - 16;
		switch (pick(16)) {
		case 0:
			p = NULL;
			break;
		case 1:
			p = (void *)(uintptr_t)(pick(2) ? 0xffff888000000000ULL : 16);
			break;
		case 2:
			guard_edge = area + page - (size ? 1 + pick(size) : 0);
			fill(cmd, guard_edge, area + page - guard_edge, self_tid);
			p = guard_edge;
			break;
		default:
			fill(cmd, arg, size, self_tid);
			if (cmd == MLOS_ML_IOC_GPU_LIST)
				((struct mlos_ml_gpu_list *)arg)->gpus =
					pick(4) ? (uintptr_t)(arg + 64) : (uintptr_t)(area + page - 8);
			p = arg;
		}
		r = ioctl(fd, cmd, p);
		if (r == 0) {
			ok++;
		} else if (errno == EINVAL) {
			einval++;
		} else {
			other++;
		}
		if (r == 0 && cmd == MLOS_ML_IOC_BUF_ALLOC && p == arg) {
			struct mlos_ml_buf_alloc *ba = (void *)arg;
			int bfd = ba->fd;

			if (pick(2)) {
				unsigned char *m = mmap(NULL, ba->size, PROT_READ | PROT_WRITE,
							MAP_SHARED, bfd, 0);

				if (m != MAP_FAILED) {
					m[pick(ba->size)] = 0xa5;
					if (pick(2))
						munmap(m, ba->size);	/* else it lives till exit */
				}
			}
			if (nbufs == MAX_BUFS)
				close(bufs[--nbufs]);
			bufs[nbufs++] = bfd;
		}
		if (nbufs && pick(4) == 0) {	/* buffer descriptors take ioctls too */
			unsigned long bcmd = pick(2) ? MLOS_ML_IOC_BUF_INFO : cmds[pick(NCMDS)];

			fill(bcmd, arg, _IOC_SIZE(bcmd), self_tid);
			ioctl(bufs[pick(nbufs)], bcmd, pick(8) ? (void *)arg : NULL);
		}
		if (nbufs && pick(8) == 0)
			close(bufs[--nbufs]);
		if (pick(1500) == 0) {	/* drop everything this descriptor made, mid-flight */
			close(fd);
			fd = open(MLOS_ML_DEVICE, O_RDWR);
			if (fd < 0)
				return 3;
		}
	}
	while (nbufs)
		close(bufs[--nbufs]);
	close(fd);
	printf("fuzz calls=%ld ok=%ld einval=%ld other=%ld\n", calls, ok, einval, other);
	return 0;
}
