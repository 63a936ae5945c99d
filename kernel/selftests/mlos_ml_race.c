// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml race selftests: the id lifecycle under threads sharing one
 * descriptor, and release after a crash. TAP output, one test per behaviour;
 * a feature switched off by its module parameter is skipped, the device
 * absent skips everything.
 *
 * The regression these guard: a create whose result buffer is read-only used
 * to publish its id, fail the copy, then remove the id and drop its reference,
 * while a second thread could already have destroyed the object by guessing
 * the id (ids are small and reused): a double put (a refcount_t underflow
 * WARN for pools) or a double kfree plus counter underflow (GPU leases).
 * Here a failed create must never be destroyable at all. Also: registrations
 * of threads that exited end instead of piling up, and a process killed while
 * creating everything the module has leaves nothing behind.
 *
 * usage: mlos_ml_race
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "tap.h"


/* Enough rounds that the old code lost the race every run (15 pool, 1-3 lease hits). */
#define RACE_ITERATIONS 3000
#define RACE_MIN_SECONDS 1.0
#define RACE_MAX_SECONDS 3.0

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* Pins the calling thread to one CPU, so creator and destroyer really run at once. */
static void pin_to(int cpu)
{
	cpu_set_t set;

	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void pin_to_all(void)
{
	cpu_set_t set;
	int cpu, n = sysconf(_SC_NPROCESSORS_ONLN);

	CPU_ZERO(&set);
	for (cpu = 0; cpu < n && cpu < CPU_SETSIZE; cpu++)
		CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* A page holding a valid request, mapped read-only: copy_from_user works, copy_to_user fails. */
static void *ro_request(const void *req, size_t size)
{
	void *p = mmap(NULL, getpagesize(), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	memcpy(p, req, size);
	if (mprotect(p, getpagesize(), PROT_READ)) {
		munmap(p, getpagesize());
		return NULL;
	}
	return p;
}

/* The destroyer: tries every small id over and over, as an attacker guessing ids would. */
struct guesser {
	int fd;
	unsigned long cmd;	/* POOL_DESTROY or GPU_RELEASE; 0: close() fds */
	int first, count;	/* ids (or fd numbers) first .. first+count-1 */
	atomic_int stop;
	atomic_long hits;	/* guesses that found something */
	long tries;
};

static void *guess_loop(void *arg)
{
	struct guesser *g = arg;
	int i;

	pin_to(1);
	while (!atomic_load(&g->stop)) {
		for (i = g->first; i < g->first + g->count; i++) {
			uint32_t req[2] = { (uint32_t)i, 0 };	/* {id, reserved} of both structs */
			int r = g->cmd ? ioctl(g->fd, g->cmd, req) : close(i);

			if (r == 0)
				atomic_fetch_add(&g->hits, 1);
			g->tries++;
		}
	}
	return NULL;
}

/*
 * Runs create(ro) in this thread against a guesser in another; returns the number of
 * creates that answered anything but -EFAULT (stored in *bad_ret the first of them).
 */
static long race(struct guesser *g, unsigned long create_cmd, void *ro, int *bad_ret,
		 long *creates)
{
	pthread_t th;
	long bad = 0, n = 0;
	double t0 = now(), t = t0;
	int r;

	pin_to(0);
	if (pthread_create(&th, NULL, guess_loop, g))
		return -1;
	for (n = 0; t - t0 < RACE_MAX_SECONDS &&
	     (n < RACE_ITERATIONS || t - t0 < RACE_MIN_SECONDS); n++, t = now()) {
		r = mlos_ioctl(g->fd, create_cmd, ro);
		if (r != -EFAULT && !bad++)
			*bad_ret = r;
		if (r == 0 && !g->cmd)	/* a buffer fd that should not exist: do not leak it */
			close(((struct mlos_ml_buf_alloc *)ro)->fd);
	}
	atomic_store(&g->stop, 1);
	pthread_join(th, NULL);
	pin_to_all();
	*creates = n;
	printf("# %.1f s: ", now() - t0);
	return bad;
}

static int stats_now(struct mlos_ml_stats *s)
{
	int fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC), r;

	if (fd < 0)
		return -errno;
	r = mlos_stats(fd, s);
	close(fd);
	return r;
}

/* ---- the id lifecycle ------------------------------------------------------------ */

static int t_pool_create_ro_vs_destroy(void)
{
	struct mlos_ml_pool_create req = { .size = 4096, .numa_node = MLOS_ML_NUMA_ANY };
	struct guesser g = { .cmd = MLOS_ML_IOC_POOL_DESTROY, .first = 1, .count = 2 };
	struct mlos_ml_stats s0, s;
	int bad_ret = 0;
	long bad, creates;
	void *ro;

	g.fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC);
	CHECK(g.fd >= 0, "open: %s", strerror(errno));
	CHECK(!stats_now(&s0), "stats");
	ro = ro_request(&req, sizeof(req));
	CHECK(ro, "read-only page");
	bad = race(&g, MLOS_ML_IOC_POOL_CREATE, ro, &bad_ret, &creates);
	printf("%ld creates with a read-only result, %ld destroys by guessed id\n", creates,
	       g.tries);
	CHECK(bad == 0, "%ld creates answered %d, not -EFAULT", bad, bad_ret);
	CHECK(atomic_load(&g.hits) == 0,
	      "%ld destroys by guessed id found a pool whose create failed: the id was "
	      "published before its result reached user space", atomic_load(&g.hits));
	CHECK(!stats_now(&s) && s.pools == s0.pools && s.pinned_bytes == s0.pinned_bytes,
	      "pools %llu -> %llu, pinned %llu -> %llu", (unsigned long long)s0.pools,
	      (unsigned long long)s.pools, (unsigned long long)s0.pinned_bytes,
	      (unsigned long long)s.pinned_bytes);
	/* No reservation left behind: the descriptor's first id is free again. */
	req.size = 4096;
	CHECK(!mlos_ioctl(g.fd, MLOS_ML_IOC_POOL_CREATE, &req) && req.pool_id == 1,
	      "a create after the race got id %u, not 1", req.pool_id);
	munmap(ro, getpagesize());
	close(g.fd);
	return PASS;
}

static int t_gpu_lease_ro_vs_release(void)
{
	struct mlos_ml_gpu_lease req = { .size = 4096, .gpu = MLOS_ML_GPU_ANY };
	struct guesser g = { .cmd = MLOS_ML_IOC_GPU_RELEASE, .first = 1, .count = 2 };
	struct mlos_ml_gpu_info info[MLOS_ML_MAX_GPUS];
	struct mlos_ml_gpu_list list = { .count = MLOS_ML_MAX_GPUS, .gpus = (uintptr_t)info };
	struct mlos_ml_stats s0, s;
	int bad_ret = 0;
	long bad, creates;
	uint32_t i;
	void *ro;

	g.fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC);
	CHECK(g.fd >= 0, "open: %s", strerror(errno));
	CHECK(!mlos_ioctl(g.fd, MLOS_ML_IOC_GPU_LIST, &list), "list");
	if (list.count == 0) {
		close(g.fd);
		snprintf(reason, sizeof(reason), "no GPU in this guest");
		return SKIP;
	}
	CHECK(!stats_now(&s0), "stats");
	ro = ro_request(&req, sizeof(req));
	CHECK(ro, "read-only page");
	bad = race(&g, MLOS_ML_IOC_GPU_LEASE, ro, &bad_ret, &creates);
	printf("%ld leases with a read-only result, %ld releases by guessed id\n", creates,
	       g.tries);
	CHECK(bad == 0, "%ld leases answered %d, not -EFAULT", bad, bad_ret);
	CHECK(atomic_load(&g.hits) == 0,
	      "%ld releases by guessed id found a lease whose create failed: the id was "
	      "published before its result reached user space", atomic_load(&g.hits));
	CHECK(!stats_now(&s) && s.leases == s0.leases && s.leased_bytes == s0.leased_bytes,
	      "leases %lld -> %lld, bytes %lld -> %lld", (long long)s0.leases,
	      (long long)s.leases, (long long)s0.leased_bytes, (long long)s.leased_bytes);
	list.count = MLOS_ML_MAX_GPUS;
	CHECK(!mlos_ioctl(g.fd, MLOS_ML_IOC_GPU_LIST, &list), "list");
	for (i = 0; i < list.count && i < MLOS_ML_MAX_GPUS; i++)
		CHECK(info[i].used == 0 && info[i].nr_leases == 0, "gpu %u: used %lld, %d leases",
		      i, (long long)info[i].used, (int)info[i].nr_leases);
	munmap(ro, getpagesize());
	close(g.fd);
	return PASS;
}

/* A buffer fd appears only after its number reached user space: close(guess) finds nothing. */
static int t_buf_alloc_ro_vs_close(void)
{
	struct mlos_ml_pool_create pc = { .size = 1 << 20, .numa_node = MLOS_ML_NUMA_ANY };
	struct mlos_ml_buf_alloc req = { .size = 4096 };
	struct guesser g = { .cmd = 0, .count = 4 };
	struct mlos_ml_stats s0, s;
	int bad_ret = 0, next;
	long bad, creates;
	void *ro;

	g.fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC);
	CHECK(g.fd >= 0, "open: %s", strerror(errno));
	CHECK(!mlos_ioctl(g.fd, MLOS_ML_IOC_POOL_CREATE, &pc), "create");
	req.pool_id = pc.pool_id;
	ro = ro_request(&req, sizeof(req));
	CHECK(ro, "read-only page");
	CHECK(!stats_now(&s0), "stats");
	g.first = dup(0);	/* the lowest free descriptor number: where a new fd would land */
	CHECK(g.first >= 0, "dup");
	close(g.first);
	bad = race(&g, MLOS_ML_IOC_BUF_ALLOC, ro, &bad_ret, &creates);
	printf("%ld allocations with a read-only result, %ld guessed closes\n", creates,
	       g.tries);
	CHECK(bad == 0, "%ld allocations answered %d, not -EFAULT", bad, bad_ret);
	CHECK(atomic_load(&g.hits) == 0, "%ld closes found a buffer fd whose allocation failed",
	      atomic_load(&g.hits));
	CHECK(!stats_now(&s) && s.buffers == s0.buffers, "buffers %llu -> %llu",
	      (unsigned long long)s0.buffers, (unsigned long long)s.buffers);
	next = dup(0);
	CHECK(next == g.first, "a descriptor leaked: the next free one is %d, not %d", next,
	      g.first);
	close(next);
	munmap(ro, getpagesize());
	close(g.fd);
	return PASS;
}

/* ---- registrations of threads that exited ----------------------------------------- */

struct short_lived {
	atomic_int tid;
	atomic_int go;
};

static void *short_lived_main(void *arg)
{
	struct short_lived *t = arg;

	atomic_store(&t->tid, syscall(SYS_gettid));
	while (!atomic_load(&t->go))
		usleep(100);
	return NULL;
}

#define EXITED_THREADS 50

/*
 * Threads registered and then exiting (thread pools that come and go) must not pile up
 * registrations the descriptor keeps until it closes: that was unbounded kernel memory.
 */
static int t_sched_exited_threads_end(void)
{
	struct mlos_ml_sched_unregister un = { 0 };
	struct mlos_ml_stats s0, s;
	int fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC), i, r;
	struct short_lived t;
	double deadline;
	char path[64];
	pthread_t th;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!stats_now(&s0), "stats");
	for (i = 0; i < EXITED_THREADS; i++) {
		struct mlos_ml_sched_register sr = { .thread_class = MLOS_ML_CLASS_THROUGHPUT };

		atomic_store(&t.tid, 0);
		atomic_store(&t.go, 0);
		CHECK(!pthread_create(&th, NULL, short_lived_main, &t), "pthread_create");
		while (!atomic_load(&t.tid))
			usleep(100);
		sr.tid = atomic_load(&t.tid);
		r = mlos_ioctl(fd, MLOS_ML_IOC_SCHED_REGISTER, &sr);
		atomic_store(&t.go, 1);
		pthread_join(th, NULL);
		CHECK(r == 0, "register thread %d: %d", sr.tid, r);
		/* join returns when the thread clears its tid, before the kernel unhashes it */
		snprintf(path, sizeof(path), "/proc/self/task/%d", sr.tid);
		for (deadline = now() + 5; !access(path, F_OK) && now() < deadline;)
			usleep(200);
	}
	/* Any later call on the descriptor ends what the exited threads left. */
	mlos_ioctl(fd, MLOS_ML_IOC_SCHED_UNREGISTER, &un);
	CHECK(!stats_now(&s), "stats");
	CHECK(s.sched_threads[MLOS_ML_CLASS_THROUGHPUT] == s0.sched_threads[MLOS_ML_CLASS_THROUGHPUT],
	      "%lld registrations of exited threads still held",
	      (long long)(s.sched_threads[MLOS_ML_CLASS_THROUGHPUT] -
			  s0.sched_threads[MLOS_ML_CLASS_THROUGHPUT]));
	close(fd);
	return PASS;
}

/* ---- release after a crash -------------------------------------------------------- */

struct crash_ctx {
	int fd;
	int thread;
	atomic_int *ready;
};

/* Creates everything the module has, forever; the parent kills the process mid-flight. */
static void *crash_worker(void *arg)
{
	struct crash_ctx *c = arg;
	struct mlos_ml_pool_create pc = { .numa_node = MLOS_ML_NUMA_ANY };
	struct mlos_ml_buf_alloc ba = { .size = 16 << 10 };
	struct mlos_ml_gpu_lease gl = { .size = 1 << 20, .gpu = MLOS_ML_GPU_ANY };
	struct mlos_ml_sched_register sr = { .thread_class = MLOS_ML_CLASS_THROUGHPUT };
	unsigned long n;
	char *m;

	for (n = 0;; n++) {
		/* Thread 0 asks for big pools, so the kill often lands inside the page fill. */
		pc.size = c->thread == 0 ? 32 << 20 : 64 << 10;
		pc.pool_id = 0;
		if (feat_mem && !mlos_ioctl(c->fd, MLOS_ML_IOC_POOL_CREATE, &pc)) {
			ba.pool_id = pc.pool_id;
			ba.fd = 0;
			ba.size = 16 << 10;
			if (!mlos_ioctl(c->fd, MLOS_ML_IOC_BUF_ALLOC, &ba)) {
				m = mmap(NULL, ba.size, PROT_READ | PROT_WRITE, MAP_SHARED, ba.fd, 0);
				if (m != MAP_FAILED)
					m[0] = 1;	/* stays mapped: the crash must undo it */
				if (n & 1)
					close(ba.fd);
			}
		}
		gl.lease_id = 0;
		gl.gpu = MLOS_ML_GPU_ANY;
		if (feat_gpu)
			mlos_ioctl(c->fd, MLOS_ML_IOC_GPU_LEASE, &gl);
		if (feat_sched && n == 0)
			mlos_ioctl(c->fd, MLOS_ML_IOC_SCHED_REGISTER, &sr);
		if (n == 2)
			atomic_fetch_add(c->ready, 1);
	}
	return NULL;
}

static void crash_child(atomic_int *ready)
{
	struct crash_ctx ctx[3];
	pthread_t th;
	int fd = open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC), i;

	if (fd < 0)
		_exit(2);
	for (i = 0; i < 3; i++) {
		ctx[i] = (struct crash_ctx){ .fd = fd, .thread = i, .ready = ready };
		pthread_create(&th, NULL, crash_worker, &ctx[i]);
	}
	pause();
	_exit(0);
}

static int t_crash_releases_all(void)
{
	struct mlos_ml_stats s0, s;
	atomic_int *ready = mmap(NULL, sizeof(*ready), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	double deadline;
	int status, round, i;
	pid_t pid;

	CHECK(ready != MAP_FAILED, "mmap");
	CHECK(!stats_now(&s0), "stats");
	for (round = 0; round < 3; round++) {
		atomic_store(ready, 0);
		pid = fork();
		CHECK(pid >= 0, "fork");
		if (pid == 0)
			crash_child(ready);
		deadline = now() + 20;
		while (atomic_load(ready) < 3 && now() < deadline)
			usleep(1000);
		usleep(5000 * round);	/* land the kill at different points */
		kill(pid, SIGKILL);
		CHECK(waitpid(pid, &status, 0) == pid && WIFSIGNALED(status), "child status %d",
		      status);
		CHECK(!stats_now(&s), "stats");
		for (i = 0; i < 4; i++)
			CHECK(s.sched_threads[i] == s0.sched_threads[i], "class %d threads left", i);
		CHECK(s.pools == s0.pools && s.buffers == s0.buffers &&
		      s.pinned_bytes == s0.pinned_bytes && s.leases == s0.leases &&
		      s.leased_bytes == s0.leased_bytes && s.qos_active == s0.qos_active,
		      "round %d left pools %lld buffers %lld pinned %lld leases %lld", round,
		      (long long)(s.pools - s0.pools), (long long)(s.buffers - s0.buffers),
		      (long long)(s.pinned_bytes - s0.pinned_bytes),
		      (long long)(s.leases - s0.leases));
	}
	munmap(ready, sizeof(*ready));
	return PASS;
}

/* ---- runner --------------------------------------------------------------------- */

static const struct test tests[] = {
	{ "pool_create_ro_vs_destroy", t_pool_create_ro_vs_destroy, &feat_mem },
	{ "gpu_lease_ro_vs_release", t_gpu_lease_ro_vs_release, &feat_gpu },
	{ "buf_alloc_ro_vs_close", t_buf_alloc_ro_vs_close, &feat_mem },
	{ "sched_exited_threads_end", t_sched_exited_threads_end, &feat_sched },
	{ "crash_releases_all", t_crash_releases_all, &always },
};

int main(void)
{
	return run_tests(tests, sizeof(tests) / sizeof(tests[0]));
}
