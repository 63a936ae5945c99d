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

#include "fuzz.h"

static struct rng rng;

#define MAX_BUFS 32

int main(int argc, char **argv)
{
	long calls = argc > 1 ? atol(argv[1]) : 100000, i;
	long ok = 0, einval = 0, other = 0;
	int page = getpagesize(), fd, bufs[MAX_BUFS], nbufs = 0, self_tid;
	unsigned char *area, *guard_edge, arg[512];

	rng_seed(&rng, argc > 2 ? strtoull(argv[2], NULL, 0) : 0x9e3779b97f4a7c15ULL);
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

		cmd = fuzz_cmd(&rng);
		size = _IOC_SIZE(cmd);
		if (size > sizeof(arg) - 16)
			size = sizeof(arg) - 16;
		switch (pick(&rng, 16)) {
		case 0:
			p = NULL;
			break;
		case 1:
			p = (void *)(uintptr_t)(pick(&rng, 2) ? 0xffff888000000000ULL : 16);
			break;
		case 2:
			guard_edge = area + page - (size ? 1 + pick(&rng, size) : 0);
			fuzz_fill(&rng, cmd, guard_edge, area + page - guard_edge, self_tid);
			p = guard_edge;
			break;
		default:
			fuzz_fill(&rng, cmd, arg, size, self_tid);
			if (cmd == MLOS_ML_IOC_GPU_LIST)
				((struct mlos_ml_gpu_list *)arg)->gpus =
					pick(&rng, 4) ? (uintptr_t)(arg + 64) : (uintptr_t)(area + page - 8);
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

			if (pick(&rng, 2)) {
				unsigned char *m = mmap(NULL, ba->size, PROT_READ | PROT_WRITE,
							MAP_SHARED, bfd, 0);

				if (m != MAP_FAILED) {
					m[pick(&rng, ba->size)] = 0xa5;
					if (pick(&rng, 2))
						munmap(m, ba->size);	/* else it lives till exit */
				}
			}
			if (nbufs == MAX_BUFS)
				close(bufs[--nbufs]);
			bufs[nbufs++] = bfd;
		}
		if (nbufs && pick(&rng, 4) == 0) {	/* buffer descriptors take ioctls too */
			unsigned long bcmd = pick(&rng, 2) ? MLOS_ML_IOC_BUF_INFO :
					     fuzz_cmds[pick(&rng, FUZZ_NCMDS)];

			fuzz_fill(&rng, bcmd, arg, _IOC_SIZE(bcmd), self_tid);
			ioctl(bufs[pick(&rng, nbufs)], bcmd, pick(&rng, 8) ? (void *)arg : NULL);
		}
		if (nbufs && pick(&rng, 8) == 0)
			close(bufs[--nbufs]);
		if (pick(&rng, 1500) == 0) {	/* drop everything this descriptor made, mid-flight */
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
