// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml multi-threaded ioctl fuzzer. Several threads share one descriptor
 * of /dev/mlos-ml and hammer every ioctl at once: they destroy, release and
 * allocate from ids they guess (small ones, ones another thread just got,
 * the next one a create in flight is about to get), register each other's
 * threads, pass result buffers that are read-only, unmapped, NULL or that
 * straddle into an unmapped page, map buffer descriptors, unmap mappings and
 * close descriptors other threads are using, and now and then swap the
 * shared descriptor for a fresh one, closing the old one under the others.
 *
 * The verdict on the kernel is its log and the module's counters, which the
 * guest checks afterwards; this program only must not hang. TAP output:
 *   1 fuzz_mt          every thread finished its share of the calls
 *   2 counters_zero    after everything is closed, the module holds nothing
 * and a summary line "# fuzz_mt threads=T ioctls=N ok=N efault=N ...".
 *
 * usage: mlos_ml_fuzz_mt IOCTLS [SEED] [THREADS]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#include "fuzz.h"

#define MAX_THREADS 16
#define SLOTS 32		/* shared tables: recent ids, buffer fds, mappings */

static atomic_int devfd;		/* the descriptor every thread uses */
static atomic_long budget;		/* ioctls left to issue, all threads together */
static atomic_uint recent_ids[SLOTS];	/* ids creates returned, pool or lease */
static atomic_uint recent_pos;
static atomic_int bufs[SLOTS];		/* buffer fds anyone may use or close; -1 empty */
static atomic_uintptr_t maps[SLOTS];	/* mapping address | pages, anyone may unmap */
static atomic_int tids[MAX_THREADS];	/* the fuzzer's threads, for cross-registration */
static int nthreads;
static int page;

enum { C_IOCTLS, C_OK, C_EFAULT, C_EINVAL, C_ENOENT, C_OTHER, C_HITS, C_RO, C_BAD_PTR,
       C_MMAPS, C_CLOSES, C_REOPENS, C_NR };
static const char *const counter_names[C_NR] = {
	"ioctls", "ok", "efault", "einval", "enoent", "other", "guessed_hits", "ro_results",
	"bad_pointers", "mmaps", "closes", "reopens",
};
static atomic_long counters[C_NR];

struct worker {
	int index;
	pthread_t thread;
	struct rng rng;
	long n[C_NR];
	unsigned char *rw;	/* writable view of a memfd page ... */
	unsigned char *ro;	/* ... and the same page read-only, followed by a hole */
	unsigned char *edge;	/* a writable page followed by a hole */
	unsigned char *hole;	/* PROT_NONE */
};

static void remember_id(uint32_t id)
{
	atomic_store(&recent_ids[atomic_fetch_add(&recent_pos, 1) % SLOTS], id);
}

/* An id worth trying: one just handed out, a small one, or the next to be handed out. */
static uint32_t guess_id(struct worker *w)
{
	uint32_t last = atomic_load(&recent_ids[(atomic_load(&recent_pos) - 1) % SLOTS]);

	switch (pick(&w->rng, 10)) {
	case 0: case 1: case 2: case 3:
		return atomic_load(&recent_ids[pick(&w->rng, SLOTS)]);
	case 4: case 5:
		return last + 1 + pick(&w->rng, 2);	/* a create in flight may hold it */
	case 6:
		return (uint32_t)plausible(&w->rng);
	default:
		return 1 + pick(&w->rng, 8);
	}
}

static void put_buf(int fd)
{
	int i, old;

	for (i = 0; i < SLOTS; i++) {
		old = -1;
		if (atomic_compare_exchange_strong(&bufs[i], &old, fd))
			return;
	}
	old = atomic_exchange(&bufs[fd % SLOTS], fd);	/* full: evict one */
	if (old >= 0)
		close(old);
}

static void put_map(void *p, size_t npages)
{
	uintptr_t v = (uintptr_t)p | npages, old = 0;
	int i;

	for (i = 0; i < SLOTS; i++)
		if (atomic_compare_exchange_strong(&maps[i], &old, v))
			return;
		else
			old = 0;
	munmap(p, npages * page);
}

static void drop_map(uintptr_t v)
{
	if (v)
		munmap((void *)(v & ~(uintptr_t)(page - 1)), (v & (page - 1)) * page);
}

/* Where the result goes: mostly a normal struct, else the shapes copy_to_user must survive. */
static void *result_buffer(struct worker *w, unsigned long cmd, unsigned char *arg,
			   size_t size, int tid)
{
	unsigned char *p;

	switch (pick(&w->rng, 20)) {
	case 0: case 1: case 2: case 3:		/* read-only: the copy in works, the copy out fails */
		w->n[C_RO]++;
		fuzz_fill(&w->rng, cmd, w->rw, size, tid);
		return w->ro;
	case 4:					/* read-only, running into the hole */
		w->n[C_RO]++;
		p = w->ro + page - (size ? 1 + pick(&w->rng, size) : 0);
		fuzz_fill(&w->rng, cmd, w->rw + (p - w->ro), w->ro + page - p, tid);
		return p;
	case 5:					/* writable, running into the hole */
		w->n[C_BAD_PTR]++;
		p = w->edge + page - (size ? 1 + pick(&w->rng, size) : 0);
		fuzz_fill(&w->rng, cmd, p, w->edge + page - p, tid);
		return p;
	case 6:
		w->n[C_BAD_PTR]++;
		return w->hole;
	case 7:
		w->n[C_BAD_PTR]++;
		return pick(&w->rng, 2) ? NULL : (void *)(uintptr_t)0xffff888000000000ULL;
	default:
		fuzz_fill(&w->rng, cmd, arg, size, tid);
		return arg;
	}
}

/* Points id-taking commands at guessed ids and the GPU table at odd memory. */
static void aim(struct worker *w, unsigned long cmd, unsigned char *p, unsigned char *arg)
{
	unsigned char *target = p == w->ro ? w->rw : p;	/* write through the writable view */

	if (p != arg && p != w->ro)
		return;
	switch (cmd) {
	case MLOS_ML_IOC_POOL_DESTROY:
	case MLOS_ML_IOC_BUF_ALLOC:
	case MLOS_ML_IOC_POOL_STATS:
	case MLOS_ML_IOC_GPU_RELEASE:
		if (pick(&w->rng, 8))	/* the id is the first field of all four */
			*(uint32_t *)target = guess_id(w);
		break;
	case MLOS_ML_IOC_SCHED_REGISTER:
	case MLOS_ML_IOC_SCHED_UNREGISTER:
	case MLOS_ML_IOC_SCHED_STATS:
		if (pick(&w->rng, 3) == 0)	/* the tid is the first field of all three */
			*(int32_t *)target = atomic_load(&tids[pick(&w->rng, nthreads)]);
		break;
	case MLOS_ML_IOC_GPU_LIST: {
		struct mlos_ml_gpu_list *gl = (void *)target;
		uintptr_t where[] = { (uintptr_t)(arg + 64), (uintptr_t)w->ro,
				      (uintptr_t)w->hole, (uintptr_t)(w->edge + page - 8) };

		gl->gpus = where[pick(&w->rng, 4)];
		break;
	}
	}
}

static void count(struct worker *w, long r, int err)
{
	atomic_fetch_sub(&budget, 1);
	w->n[C_IOCTLS]++;
	if (r == 0)
		w->n[C_OK]++;
	else if (err == EFAULT)
		w->n[C_EFAULT]++;
	else if (err == EINVAL)
		w->n[C_EINVAL]++;
	else if (err == ENOENT)
		w->n[C_ENOENT]++;
	else
		w->n[C_OTHER]++;
}

static void device_call(struct worker *w, int tid)
{
	unsigned char arg[512] __attribute__((aligned(16)));
	unsigned long cmd = fuzz_cmd(&w->rng);
	size_t size = _IOC_SIZE(cmd);
	unsigned char *p;
	long r;
	int err;

	if (size > sizeof(arg) - 64)
		size = sizeof(arg) - 64;
	p = result_buffer(w, cmd, arg, size, tid);
	aim(w, cmd, p, arg);
	r = ioctl(atomic_load(&devfd), cmd, p);
	err = errno;
	count(w, r, err);
	if (r == 0 && (cmd == MLOS_ML_IOC_POOL_DESTROY || cmd == MLOS_ML_IOC_GPU_RELEASE))
		w->n[C_HITS]++;		/* a guess found something: ids really are shared */
	if (r != 0)
		return;
	/* Success means p was readable and writable: a straddling struct can fit, too. */
	switch (cmd) {
	case MLOS_ML_IOC_POOL_CREATE:
		remember_id(((struct mlos_ml_pool_create *)p)->pool_id);
		break;
	case MLOS_ML_IOC_GPU_LEASE:
		remember_id(((struct mlos_ml_gpu_lease *)p)->lease_id);
		break;
	case MLOS_ML_IOC_BUF_ALLOC: {
		struct mlos_ml_buf_alloc *ba = (void *)p;

		if (pick(&w->rng, 2)) {
			unsigned char *m = mmap(NULL, ba->size, PROT_READ | PROT_WRITE, MAP_SHARED,
						ba->fd, 0);

			w->n[C_MMAPS]++;
			if (m != MAP_FAILED) {
				m[pick(&w->rng, ba->size)] = 0xa5;
				put_map(m, ba->size / page);
			}
		}
		put_buf(ba->fd);
		break;
	}
	}
}

/* Buffer descriptors: info, map, close, from any thread, racing the others. */
static void buffer_call(struct worker *w, int tid)
{
	int slot = pick(&w->rng, SLOTS), fd = atomic_load(&bufs[slot]);
	struct mlos_ml_buf_info info;
	unsigned char *m;
	unsigned long cmd;
	size_t len;
	void *p;
	long r;

	switch (pick(&w->rng, 6)) {
	case 0:
		fd = atomic_exchange(&bufs[slot], -1);
		if (fd >= 0) {
			close(fd);
			w->n[C_CLOSES]++;
		}
		return;
	case 1:
		drop_map(atomic_exchange(&maps[pick(&w->rng, SLOTS)], 0));
		return;
	case 2:
		if (fd < 0)
			return;
		/* May race a close and a reuse of the number: then it maps whatever fd that is. */
		len = page * (1 + pick(&w->rng, 2));
		m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, page * pick(&w->rng, 2));
		w->n[C_MMAPS]++;
		if (m != MAP_FAILED)
			munmap(m, len);	/* never touched: the fd may not be ours any more */
		return;
	default:
		if (fd < 0)
			return;
		cmd = pick(&w->rng, 4) ? MLOS_ML_IOC_BUF_INFO : fuzz_cmd(&w->rng);
		memset(&info, 0, sizeof(info));
		p = pick(&w->rng, 4) ? (void *)&info : result_buffer(w, cmd, (void *)&info, 0, tid);
		if (p == w->ro)
			memset(w->rw, 0, sizeof(info));
		r = ioctl(fd, cmd, p);
		count(w, r, errno);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	int tid = syscall(SYS_gettid), i, fd, old;

	atomic_store(&tids[w->index], tid);
	while (atomic_load(&budget) > 0) {
		switch (pick(&w->rng, 16)) {
		case 0: case 1: case 2:
			buffer_call(w, tid);
			break;
		case 3:
			if (pick(&w->rng, 400) == 0) {	/* a fresh descriptor; the old one dies under us */
				fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC);
				if (fd >= 0) {
					old = atomic_exchange(&devfd, fd);
					close(old);
					w->n[C_REOPENS]++;
				}
			}
			/* fall through */
		default:
			device_call(w, tid);
		}
	}
	for (i = 0; i < C_NR; i++)
		atomic_fetch_add(&counters[i], w->n[i]);
	return NULL;
}

static int setup_memory(struct worker *w)
{
	int mfd = memfd_create("mlos-fuzz", MFD_CLOEXEC);
	unsigned char *area;

	if (mfd < 0 || ftruncate(mfd, page))
		return -1;
	/* [edge rw][hole][ro view][hole] and the rw view elsewhere */
	area = mmap(NULL, 4 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED || mprotect(area, page, PROT_READ | PROT_WRITE))
		return -1;
	w->edge = area;
	w->hole = area + page;
	w->ro = mmap(area + 2 * page, page, PROT_READ, MAP_SHARED | MAP_FIXED, mfd, 0);
	w->rw = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	close(mfd);
	return w->ro == MAP_FAILED || w->rw == MAP_FAILED ? -1 : 0;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static struct worker workers[MAX_THREADS];
	long calls = argc > 1 ? atol(argv[1]) : 100000;
	uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x9e3779b97f4a7c15ULL;
	struct mlos_ml_stats s;
	double t0;
	int i, fd, left = 0;

	nthreads = argc > 3 ? atoi(argv[3]) : 4;
	if (nthreads < 2 || nthreads > MAX_THREADS) {
		fprintf(stderr, "mlos_ml_fuzz_mt: THREADS must be 2..%d\n", MAX_THREADS);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	page = getpagesize();
	printf("TAP version 13\n1..2\n# fuzz_mt seed=%llu threads=%d ioctls=%ld\n",
	       (unsigned long long)seed, nthreads, calls);
	if (access(MLOS_ML_DEVICE, F_OK)) {
		printf("ok 1 - fuzz_mt # SKIP %s absent\nok 2 - counters_zero # SKIP\n",
		       MLOS_ML_DEVICE);
		return 0;
	}
	fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("not ok 1 - fuzz_mt # open: %s\nnot ok 2 - counters_zero\n", strerror(errno));
		return 1;
	}
	atomic_store(&devfd, fd);
	atomic_store(&budget, calls);
	for (i = 0; i < SLOTS; i++)
		atomic_store(&bufs[i], -1);
	t0 = now();
	for (i = 0; i < nthreads; i++) {
		workers[i].index = i;
		rng_seed(&workers[i].rng, seed * (i + 1) + i);
		if (setup_memory(&workers[i]) ||
		    pthread_create(&workers[i].thread, NULL, worker_main, &workers[i])) {
			printf("not ok 1 - fuzz_mt # thread %d: %s\n", i, strerror(errno));
			return 1;
		}
	}
	for (i = 0; i < nthreads; i++)
		pthread_join(workers[i].thread, NULL);
	printf("ok 1 - fuzz_mt\n# fuzz_mt threads=%d seconds=%.1f", nthreads, now() - t0);
	for (i = 0; i < C_NR; i++)
		printf(" %s=%ld", counter_names[i], atomic_load(&counters[i]));
	printf("\n");

	for (i = 0; i < SLOTS; i++) {
		fd = atomic_exchange(&bufs[i], -1);
		if (fd >= 0)
			close(fd);
		drop_map(atomic_exchange(&maps[i], 0));
	}
	close(atomic_load(&devfd));
	fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC);
	if (fd < 0 || mlos_stats(fd, &s)) {
		printf("not ok 2 - counters_zero # stats: %s\n", strerror(errno));
		return 1;
	}
	close(fd);
	for (i = 0; i < 4; i++)
		left += s.sched_threads[i] != 0;
	if (s.pools || s.buffers || s.pinned_bytes || s.leases || s.leased_bytes ||
	    s.qos_active || left) {
		printf("not ok 2 - counters_zero # pools=%lld buffers=%lld pinned=%lld leases=%lld "
		       "leased_bytes=%lld qos=%lld sched_classes_left=%d\n", (long long)s.pools,
		       (long long)s.buffers, (long long)s.pinned_bytes, (long long)s.leases,
		       (long long)s.leased_bytes, (long long)s.qos_active, left);
		return 1;
	}
	printf("ok 2 - counters_zero\n");
	return 0;
}
