// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml selftests: one test per behaviour, TAP output. Features a module
 * parameter switched off are checked for -EOPNOTSUPP instead. Without the
 * device every test is skipped, not passed.
 *
 * usage: mlos_ml_test [expected-gpu-count]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "tap.h"

static int expected_gpus = -1;

static int dev_open(void)
{
	return open(MLOS_ML_DEVICE, O_RDWR | O_CLOEXEC);
}

static int pool_create(int fd, uint64_t size, uint32_t *id)
{
	struct mlos_ml_pool_create req = { .size = size, .numa_node = MLOS_ML_NUMA_ANY };
	int ret = mlos_ioctl(fd, MLOS_ML_IOC_POOL_CREATE, &req);

	if (!ret)
		*id = req.pool_id;
	return ret;
}

static int buf_alloc(int fd, uint32_t pool, uint64_t size, uint32_t flags)
{
	struct mlos_ml_buf_alloc req = { .pool_id = pool, .size = size, .flags = flags };
	int ret = mlos_ioctl(fd, MLOS_ML_IOC_BUF_ALLOC, &req);

	return ret ? ret : req.fd;
}

static int pool_stats(int fd, uint32_t pool, struct mlos_ml_pool_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->pool_id = pool;
	return mlos_ioctl(fd, MLOS_ML_IOC_POOL_STATS, st);
}

static long vmlck_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* Runs fn in a child that has given up root (uid 65534, no capabilities). */
static int as_nobody(int (*fn)(int fd), int fd)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(99);
		_exit(fn(fd));
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return 98;
	return WEXITSTATUS(status);
}

/* ---- device ---------------------------------------------------------------- */

static int t_version(void)
{
	struct mlos_ml_version v = { 0 };
	int fd = dev_open();
	uint32_t want;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_VERSION, &v), "VERSION failed");
	close(fd);
	want = (feat_mem ? MLOS_ML_FEAT_MEMORY : 0) | (feat_sched ? MLOS_ML_FEAT_SCHED : 0) |
	       (feat_gpu ? MLOS_ML_FEAT_GPU : 0);
	CHECK(v.api_version == MLOS_ML_API_VERSION, "api_version %u", v.api_version);
	CHECK(v.features == want, "features 0x%x, parameters say 0x%x", v.features, want);
	CHECK(v.page_size == (uint32_t)getpagesize(), "page_size %u", v.page_size);
	return PASS;
}

static int t_reserved_rejected(void)
{
	struct mlos_ml_version v = { .reserved = { 0, 0, 1 } };
	struct mlos_ml_stats s = { .reserved = { 7 } };
	int fd = dev_open();

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_VERSION, &v) == -EINVAL, "VERSION accepted reserved");
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_STATS, &s) == -EINVAL, "STATS accepted reserved");
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_VERSION, NULL) == -EFAULT, "NULL not EFAULT");
	close(fd);
	return PASS;
}

static int t_unknown_ioctl(void)
{
	int fd = dev_open(), x = 0;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(mlos_ioctl(fd, _IOWR(MLOS_ML_IOC_MAGIC, 0x7f, int), &x) == -ENOTTY, "nr 0x7f");
	CHECK(mlos_ioctl(fd, _IOWR('x', 0x10, struct mlos_ml_pool_create), &x) == -ENOTTY,
	      "foreign magic");
	close(fd);
	return PASS;
}

static int t_disabled_features(void)
{
	struct mlos_ml_pool_create pc = { .size = 4096, .numa_node = -1 };
	struct mlos_ml_sched_register sr = { .thread_class = MLOS_ML_CLASS_THROUGHPUT };
	struct mlos_ml_gpu_list gl = { 0 };
	int fd = dev_open();

	CHECK(fd >= 0, "open: %s", strerror(errno));
	if (!feat_mem)
		CHECK(mlos_ioctl(fd, MLOS_ML_IOC_POOL_CREATE, &pc) == -EOPNOTSUPP, "pool");
	if (!feat_sched)
		CHECK(mlos_ioctl(fd, MLOS_ML_IOC_SCHED_REGISTER, &sr) == -EOPNOTSUPP, "sched");
	if (!feat_gpu)
		CHECK(mlos_ioctl(fd, MLOS_ML_IOC_GPU_LIST, &gl) == -EOPNOTSUPP, "gpu");
	close(fd);
	return PASS;
}

/* ---- memory manager ----------------------------------------------------------- */

static int t_pool_lifecycle(void)
{
	struct mlos_ml_pool_stats st;
	struct mlos_ml_pool_destroy pd = { 0 };
	int fd = dev_open();
	uint32_t id;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!pool_create(fd, 1 << 20, &id), "create 1 MiB");
	CHECK(id > 0, "pool id %u", id);
	CHECK(!pool_stats(fd, id, &st), "stats");
	CHECK(st.size == 1 << 20 && st.free == 1 << 20 && st.nr_buffers == 0, "fresh stats");
	pd.pool_id = id;
	CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_POOL_DESTROY, &pd), "destroy");
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_POOL_DESTROY, &pd) == -ENOENT, "double destroy");
	CHECK(pool_stats(fd, id, &st) == -ENOENT, "stats of destroyed pool");
	/* Node 0 is always online: a pool placed there reports it. */
	{
		struct mlos_ml_pool_create req = { .size = 1 << 16, .numa_node = 0 };

		CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_POOL_CREATE, &req), "create on node 0");
		CHECK(!pool_stats(fd, req.pool_id, &st) && st.numa_node == 0, "node not kept");
	}
	close(fd);
	return PASS;
}

static int t_pool_invalid(void)
{
	struct mlos_ml_pool_create req = { .size = 4096, .numa_node = -1, .flags = 1 };
	int fd = dev_open();
	uint32_t id;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(pool_create(fd, 0, &id) == -EINVAL, "size 0");
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_POOL_CREATE, &req) == -EINVAL, "flags");
	req.flags = 0;
	req.numa_node = 4095;
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_POOL_CREATE, &req) == -EINVAL, "offline node");
	CHECK(pool_create(fd, UINT64_MAX, &id) == -E2BIG, "huge pool");
	CHECK(buf_alloc(fd, 12345, 4096, 0) == -ENOENT, "alloc from unknown pool");
	close(fd);
	return PASS;
}

static int t_buf_mmap(void)
{
	int fd = dev_open(), bfd;
	uint32_t id;
	size_t len = 64 << 10, i;
	unsigned char *p;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!pool_create(fd, 1 << 20, &id), "create");
	bfd = buf_alloc(fd, id, len - 100, MLOS_ML_BUF_ZERO);
	CHECK(bfd >= 0, "alloc: %d", bfd);
	CHECK(fcntl(bfd, F_GETFD) & FD_CLOEXEC, "buffer fd lacks CLOEXEC");
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, bfd, 0);
	CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0, "not zeroed at %zu", i);
	for (i = 0; i < len; i++)
		p[i] = (unsigned char)(i * 7);
	munmap(p, len);
	p = mmap(NULL, len, PROT_READ, MAP_SHARED, bfd, 0);
	CHECK(p != MAP_FAILED, "remap: %s", strerror(errno));
	for (i = 0; i < len; i++)
		CHECK(p[i] == (unsigned char)(i * 7), "byte %zu lost", i);
	munmap(p, len);
	CHECK(mmap(NULL, len, PROT_READ, MAP_PRIVATE, bfd, 0) == MAP_FAILED && errno == EINVAL,
	      "MAP_PRIVATE accepted");
	CHECK(mmap(NULL, 2 * len, PROT_READ, MAP_SHARED, bfd, 0) == MAP_FAILED,
	      "mapping past the buffer accepted");
	close(bfd);
	close(fd);
	return PASS;
}

static int t_buf_info(void)
{
	struct mlos_ml_buf_info info = { 0 };
	int fd = dev_open(), bfd, null = open("/dev/null", O_RDWR);
	uint32_t id;

	CHECK(fd >= 0 && null >= 0, "open: %s", strerror(errno));
	CHECK(!pool_create(fd, 1 << 20, &id), "create");
	bfd = buf_alloc(fd, id, 5000, 0);
	CHECK(bfd >= 0, "alloc: %d", bfd);
	CHECK(!mlos_ioctl(bfd, MLOS_ML_IOC_BUF_INFO, &info), "BUF_INFO");
	CHECK(info.size == 8192 && info.numa_node == MLOS_ML_NUMA_ANY, "size %llu node %d",
	      (unsigned long long)info.size, info.numa_node);
	info.size = 0;
	info.reserved0 = 1;
	CHECK(mlos_ioctl(bfd, MLOS_ML_IOC_BUF_INFO, &info) == -EINVAL, "reserved accepted");
	memset(&info, 0, sizeof(info));
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_BUF_INFO, &info) == -ENOTTY, "device fd answered");
	CHECK(mlos_ioctl(null, MLOS_ML_IOC_BUF_INFO, &info) == -ENOTTY, "/dev/null answered");
	CHECK(mlos_ioctl(bfd, MLOS_ML_IOC_VERSION, &info) == -ENOTTY, "buffer took VERSION");
	close(bfd);
	close(null);
	close(fd);
	return PASS;
}

static int send_fd(int sock, int fd)
{
	char data = 'F', cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = &data, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
	char data, cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = &data, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;
	int fd;

	if (recvmsg(sock, &msg, 0) != 1)
		return -1;
	cm = CMSG_FIRSTHDR(&msg);
	if (!cm || cm->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

/* Another process maps the same pages through a descriptor passed over a socket. */
static int t_buf_share_fd(void)
{
	int fd = dev_open(), bfd, sv[2], status;
	size_t len = 1 << 20, i;
	uint32_t id, *p;
	pid_t pid;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	pid = fork();
	if (pid == 0) {
		int cfd = recv_fd(sv[1]);
		uint32_t *q;

		if (cfd < 0)
			_exit(2);
		q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
		if (q == MAP_FAILED)
			_exit(3);
		for (i = 0; i < len / 4; i++)
			if (q[i] != i)
				_exit(4);
		q[0] = 0xfeedface;	/* the parent must see this without a copy */
		_exit(0);
	}
	CHECK(!pool_create(fd, len, &id), "create");
	bfd = buf_alloc(fd, id, len, 0);
	CHECK(bfd >= 0, "alloc: %d", bfd);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, bfd, 0);
	CHECK(p != MAP_FAILED, "mmap");
	for (i = 0; i < len / 4; i++)
		p[i] = i;
	CHECK(!send_fd(sv[0], bfd), "sendmsg");
	CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
	CHECK(p[0] == 0xfeedface, "child's write not visible: 0x%x", p[0]);
	munmap(p, len);
	close(bfd);
	close(sv[0]);
	close(sv[1]);
	close(fd);
	return PASS;
}

static int t_pool_exhaust(void)
{
	int fd = dev_open(), bfd[17], i, page = getpagesize();
	struct mlos_ml_pool_stats st;
	uint32_t id;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!pool_create(fd, 16 * page, &id), "create");
	for (i = 0; i < 16; i++) {
		bfd[i] = buf_alloc(fd, id, page, 0);
		CHECK(bfd[i] >= 0, "alloc %d: %d", i, bfd[i]);
	}
	CHECK(buf_alloc(fd, id, page, 0) == -ENOSPC, "17th page");
	CHECK(buf_alloc(fd, id, 17 * page, 0) == -EINVAL, "larger than the pool");
	CHECK(!pool_stats(fd, id, &st), "stats");
	CHECK(st.free == 0 && st.nr_buffers == 16 && st.allocs == 16 && st.alloc_failures == 1 &&
	      st.peak_used == 16ULL * page, "stats free=%llu bufs=%llu allocs=%llu fail=%llu",
	      (unsigned long long)st.free, (unsigned long long)st.nr_buffers,
	      (unsigned long long)st.allocs, (unsigned long long)st.alloc_failures);
	close(bfd[3]);
	bfd[3] = buf_alloc(fd, id, page, 0);
	CHECK(bfd[3] >= 0, "page not returned on close");
	for (i = 0; i < 16; i++)
		close(bfd[i]);
	CHECK(!pool_stats(fd, id, &st) && st.free == 16ULL * page, "pages not all returned");
	close(fd);
	return PASS;
}

/* A buffer keeps its pages after the pool id and even the device are gone. */
static int t_buf_outlives_pool(void)
{
	struct mlos_ml_pool_destroy pd = { 0 };
	struct mlos_ml_stats s0, s;
	int fd = dev_open(), sfd = dev_open(), bfd;
	uint32_t id;
	char *p;

	CHECK(fd >= 0 && sfd >= 0, "open: %s", strerror(errno));
	CHECK(!mlos_stats(sfd, &s0), "stats");
	CHECK(!pool_create(fd, 1 << 16, &id), "create");
	bfd = buf_alloc(fd, id, 1 << 16, 0);
	CHECK(bfd >= 0, "alloc");
	p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_SHARED, bfd, 0);
	CHECK(p != MAP_FAILED, "mmap");
	close(bfd);		/* the mapping alone keeps the buffer */
	pd.pool_id = id;
	CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_POOL_DESTROY, &pd), "destroy");
	close(fd);
	strcpy(p, "still here");
	CHECK(!mlos_stats(sfd, &s) && s.pools == s0.pools + 1 && s.buffers == s0.buffers + 1,
	      "pool gone while mapped");
	CHECK(!strcmp(p, "still here"), "contents");
	munmap(p, 1 << 16);
	CHECK(!mlos_stats(sfd, &s) && s.pools == s0.pools && s.buffers == s0.buffers &&
	      s.pinned_bytes == s0.pinned_bytes, "not freed after munmap");
	close(sfd);
	return PASS;
}

static int memlock_child(int fd)
{
	struct rlimit rl = { 256 << 10, 256 << 10 };
	long before;
	uint32_t id;

	if (setrlimit(RLIMIT_MEMLOCK, &rl))
		return 10;
	if (pool_create(fd, 1 << 20, &id) != -ENOMEM)
		return 11;	/* over RLIMIT_MEMLOCK without CAP_IPC_LOCK */
	before = vmlck_kib();
	if (pool_create(fd, 128 << 10, &id))
		return 12;
	if (vmlck_kib() != before + 128)
		return 13;	/* not charged to this process */
	return 0;
}

static int t_memlock_charged(void)
{
	int fd = dev_open(), rc;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	rc = as_nobody(memlock_child, fd);
	close(fd);
	CHECK(rc == 0, "child step %d failed", rc);
	return PASS;
}

static int t_close_frees(void)
{
	struct mlos_ml_stats s0, s;
	int sfd = dev_open(), fd = dev_open(), i;
	uint32_t id;

	CHECK(fd >= 0 && sfd >= 0, "open: %s", strerror(errno));
	CHECK(!mlos_stats(sfd, &s0), "stats");
	for (i = 0; i < 4; i++) {
		CHECK(!pool_create(fd, 1 << 18, &id), "create %d", i);
		close(buf_alloc(fd, id, 1 << 12, 0));
	}
	CHECK(!mlos_stats(sfd, &s) && s.pools == s0.pools + 4 &&
	      s.pinned_bytes == s0.pinned_bytes + (1 << 20), "pools not counted");
	close(fd);
	CHECK(!mlos_stats(sfd, &s) && s.pools == s0.pools && s.pinned_bytes == s0.pinned_bytes,
	      "close left %llu pools", (unsigned long long)(s.pools - s0.pools));
	close(sfd);
	return PASS;
}

/* ---- scheduler ------------------------------------------------------------------ */

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif

/* The policy without the reset-on-fork flag the module sets on latency threads. */
static int policy_of(pid_t tid)
{
	int pol = sched_getscheduler(tid);

	return pol < 0 ? pol : pol & ~SCHED_RESET_ON_FORK;
}

static int sched_reg(int fd, pid_t tid, uint32_t cls, uint64_t mask)
{
	struct mlos_ml_sched_register r = { .tid = tid, .thread_class = cls, .cpu_mask = mask };

	return mlos_ioctl(fd, MLOS_ML_IOC_SCHED_REGISTER, &r);
}

static int sched_unreg(int fd, pid_t tid)
{
	struct mlos_ml_sched_unregister u = { .tid = tid };

	return mlos_ioctl(fd, MLOS_ML_IOC_SCHED_UNREGISTER, &u);
}

static int t_sched_latency(void)
{
	struct sched_param sp;
	struct mlos_ml_sched_stats st = { 0 };
	struct mlos_ml_stats s;
	int fd = dev_open();

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(policy_of(0) == SCHED_OTHER, "not SCHED_OTHER to begin with");
	CHECK(!sched_reg(fd, 0, MLOS_ML_CLASS_LATENCY, 0), "register");
	CHECK(policy_of(0) == SCHED_FIFO, "policy %d", policy_of(0));
	sched_getparam(0, &sp);
	CHECK(sp.sched_priority == read_param_long("rt_priority"), "prio %d", sp.sched_priority);
	CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_SCHED_STATS, &st), "sched stats");
	CHECK(st.thread_class == MLOS_ML_CLASS_LATENCY, "class %u", st.thread_class);
	CHECK(!mlos_stats(fd, &s) && s.sched_threads[MLOS_ML_CLASS_LATENCY] == 1 &&
	      s.qos_active == 1, "latency count/QoS not held");
	CHECK(sched_reg(fd, 0, MLOS_ML_CLASS_LATENCY, 0) == -EBUSY, "double register");
	{
		pid_t child = fork();
		int status;

		if (child == 0)
			_exit(policy_of(0) == SCHED_OTHER ? 0 : 1);
		CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
		      WEXITSTATUS(status) == 0, "forked child inherited SCHED_FIFO");
	}
	CHECK(!sched_unreg(fd, 0), "unregister");
	CHECK(policy_of(0) == SCHED_OTHER, "not restored");
	CHECK(!mlos_stats(fd, &s) && s.qos_active == 0, "QoS still held");
	CHECK(sched_unreg(fd, 0) == -ENOENT, "double unregister");
	close(fd);
	return PASS;
}

static void *sleeper(void *arg)
{
	(void)arg;
	pause();
	return NULL;
}

static int t_sched_restore_on_close(void)
{
	int fd = dev_open(), pol;
	pthread_t th;
	struct sched_param sp;
	pid_t tid;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!setpriority(PRIO_PROCESS, 0, 5), "renice");
	CHECK(!sched_reg(fd, 0, MLOS_ML_CLASS_THROUGHPUT, 0), "register throughput");
	CHECK(getpriority(PRIO_PROCESS, 0) == 0, "throughput nice %d", getpriority(PRIO_PROCESS, 0));
	pthread_create(&th, NULL, sleeper, NULL);
	usleep(10000);
	/* The newest thread: scan /proc/self/task would do; pthread_gettid_np is not in glibc 2.36. */
	tid = 0;
	{
		char path[64];
		pid_t t;

		for (t = getpid() + 1; t < getpid() + 64 && !tid; t++) {
			snprintf(path, sizeof(path), "/proc/self/task/%d", t);
			if (!access(path, F_OK))
				tid = t;
		}
	}
	CHECK(tid > 0, "no thread id");
	CHECK(!sched_reg(fd, tid, MLOS_ML_CLASS_BACKGROUND, 0), "register background");
	pol = policy_of(tid);
	CHECK(pol == SCHED_IDLE, "background policy %d", pol);
	close(fd);
	CHECK(policy_of(tid) == SCHED_OTHER, "thread not restored on close");
	CHECK(getpriority(PRIO_PROCESS, 0) == 5, "nice not restored: %d", getpriority(PRIO_PROCESS, 0));
	sched_getparam(tid, &sp);
	setpriority(PRIO_PROCESS, 0, 0);
	pthread_cancel(th);
	pthread_join(th, NULL);
	return PASS;
}

static int sched_perm_child(int fd)
{
	struct mlos_ml_sched_register hi = { .thread_class = MLOS_ML_CLASS_LATENCY,
					     .rt_priority = 99 };

	if (sched_reg(fd, getppid(), MLOS_ML_CLASS_LATENCY, 0) != -EPERM)
		return 20;	/* another user's process */
	if (read_param_long("rt_priority") < 99 &&
	    mlos_ioctl(fd, MLOS_ML_IOC_SCHED_REGISTER, &hi) != -EPERM)
		return 24;	/* above the admin's rt_priority without CAP_SYS_NICE */
	if (sched_reg(fd, 0, MLOS_ML_CLASS_LATENCY, 0) != 0)
		return 21;	/* its own thread: allowed through the device */
	if (policy_of(0) != SCHED_FIFO)
		return 22;
	if (sched_unreg(fd, 0) != 0 || policy_of(0) != SCHED_OTHER)
		return 23;
	return 0;
}

static int t_sched_permissions(void)
{
	int fd = dev_open(), rc;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(sched_reg(fd, 2, MLOS_ML_CLASS_BACKGROUND, 0) == -EPERM, "kernel thread accepted");
	CHECK(sched_reg(fd, 999999, MLOS_ML_CLASS_BACKGROUND, 0) == -ESRCH, "missing tid");
	CHECK(sched_reg(fd, 0, 9, 0) == -EINVAL, "class 9");
	CHECK(sched_reg(fd, 0, MLOS_ML_CLASS_THROUGHPUT, 1) == -EINVAL, "mask on throughput");
	rc = as_nobody(sched_perm_child, fd);
	close(fd);
	CHECK(rc == 0, "unprivileged child step %d", rc);
	return PASS;
}

static int t_sched_affinity(void)
{
	cpu_set_t before, set;
	int fd = dev_open(), ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	if (ncpu < 2) {
		snprintf(reason, sizeof(reason), "needs 2 CPUs");
		return SKIP;
	}
	CHECK(fd >= 0, "open: %s", strerror(errno));
	sched_getaffinity(0, sizeof(before), &before);
	CHECK(!sched_reg(fd, 0, MLOS_ML_CLASS_LATENCY, 1ULL << 1), "register on CPU 1");
	sched_getaffinity(0, sizeof(set), &set);
	CHECK(CPU_COUNT(&set) == 1 && CPU_ISSET(1, &set), "mask not CPU 1 only");
	CHECK(!sched_unreg(fd, 0), "unregister");
	sched_getaffinity(0, sizeof(set), &set);
	CHECK(CPU_EQUAL(&set, &before), "mask not restored");
	CHECK(sched_reg(fd, 0, MLOS_ML_CLASS_LATENCY, 1ULL << 63) == -EINVAL, "CPU 63 accepted");
	close(fd);
	return PASS;
}

/* A SCHED_IDLE thread sharing a CPU with a busy SCHED_OTHER one gets preempted. */
static int t_sched_preemptions(void)
{
	struct mlos_ml_sched_stats st = { 0 };
	cpu_set_t one, before;
	struct timespec t0, t;
	int fd = dev_open(), status;
	volatile unsigned long spin = 0;
	pid_t hog;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	sched_getaffinity(0, sizeof(before), &before);
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	sched_setaffinity(0, sizeof(one), &one);
	hog = fork();
	if (hog == 0) {
		for (;;)
			spin++;
	}
	if (sched_reg(fd, 0, MLOS_ML_CLASS_BACKGROUND, 0)) {
		kill(hog, SIGKILL);
		waitpid(hog, &status, 0);
		CHECK(0, "register");
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		spin++;
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000000000L + t.tv_nsec - t0.tv_nsec < 300000000L);
	CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_SCHED_STATS, &st), "stats");
	kill(hog, SIGKILL);
	waitpid(hog, &status, 0);
	close(fd);
	sched_setaffinity(0, sizeof(before), &before);
	CHECK(st.preemptions > 0, "no preemptions counted");
	return PASS;
}

/* ---- GPU manager ---------------------------------------------------------------- */

static int gpu_list(int fd, struct mlos_ml_gpu_info *info, uint32_t *count)
{
	struct mlos_ml_gpu_list req = { .count = MLOS_ML_MAX_GPUS, .gpus = (uintptr_t)info };
	int ret = mlos_ioctl(fd, MLOS_ML_IOC_GPU_LIST, &req);

	*count = req.count;
	return ret;
}

static int gpu_lease(int fd, uint64_t size, int gpu, uint32_t *id)
{
	struct mlos_ml_gpu_lease req = { .size = size, .gpu = gpu };
	int ret = mlos_ioctl(fd, MLOS_ML_IOC_GPU_LEASE, &req);

	if (ret)
		return ret;
	if (id)
		*id = req.lease_id;
	return req.gpu;
}

static int t_gpu_list(void)
{
	struct mlos_ml_gpu_info info[MLOS_ML_MAX_GPUS];
	int fd = dev_open();
	uint32_t n, i;

	CHECK(fd >= 0, "open: %s", strerror(errno));
	CHECK(!gpu_list(fd, info, &n), "list");
	if (expected_gpus >= 0)
		CHECK(n == (uint32_t)expected_gpus, "found %u GPUs, expected %d", n, expected_gpus);
	for (i = 0; i < n; i++) {
		unsigned int base = info[i].pci_class >> 16;

		CHECK(info[i].index == i, "index");
		CHECK(base == 0x03 || base == 0x12, "class %06x", info[i].pci_class);
		CHECK(info[i].used == 0 && info[i].nr_leases == 0, "fresh device in use");
		printf("# gpu %u: %04x:%04x class %06x capacity %llu\n", i, info[i].vendor,
		       info[i].device, info[i].pci_class, (unsigned long long)info[i].capacity);
	}
	close(fd);
	return PASS;
}

static int gpu_admin_child(int fd)
{
	struct mlos_ml_gpu_set_capacity c = { .index = 0, .capacity = 1 };

	return mlos_ioctl(fd, MLOS_ML_IOC_GPU_SET_CAPACITY, &c) == -EPERM ? 0 : 30;
}

static int t_gpu_leases(void)
{
	struct mlos_ml_gpu_info info[MLOS_ML_MAX_GPUS];
	struct mlos_ml_gpu_set_capacity cap = { 0 };
	struct mlos_ml_gpu_release rel = { 0 };
	struct mlos_ml_stats s;
	int fd = dev_open(), fd2 = dev_open(), used[MLOS_ML_MAX_GPUS] = { 0 };
	uint32_t n, i, id;
	int g;

	CHECK(fd >= 0 && fd2 >= 0, "open: %s", strerror(errno));
	CHECK(!gpu_list(fd, info, &n), "list");
	if (n == 0) {
		CHECK(gpu_lease(fd, 1 << 20, MLOS_ML_GPU_ANY, NULL) == -ENODEV, "lease without GPU");
		close(fd);
		close(fd2);
		return PASS;
	}
	for (i = 0; i < n; i++) {
		cap.index = i;
		cap.capacity = 64 << 20;
		CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_GPU_SET_CAPACITY, &cap), "set capacity %u", i);
	}
	CHECK(as_nobody(gpu_admin_child, fd) == 0, "unprivileged set capacity accepted");
	/* Least loaded first: n leases land on n different devices. */
	for (i = 0; i < n; i++) {
		g = gpu_lease(fd2, 16 << 20, MLOS_ML_GPU_ANY, NULL);
		CHECK(g >= 0 && g < (int)n, "lease %u: %d", i, g);
		CHECK(!used[g], "device %d got two leases before others got one", g);
		used[g] = 1;
	}
	g = gpu_lease(fd, 40 << 20, 0, &id);
	CHECK(g == 0, "explicit device 0: %d", g);
	CHECK(gpu_lease(fd, 40 << 20, 0, NULL) == -ENOSPC, "over capacity accepted");
	CHECK(gpu_lease(fd, 1 << 20, (int)n, NULL) == -ENODEV, "bad index accepted");
	cap.index = 0;
	cap.capacity = 1 << 20;
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_GPU_SET_CAPACITY, &cap) == -EBUSY, "shrink under use");
	rel.lease_id = id;
	CHECK(!mlos_ioctl(fd, MLOS_ML_IOC_GPU_RELEASE, &rel), "release");
	CHECK(mlos_ioctl(fd, MLOS_ML_IOC_GPU_RELEASE, &rel) == -ENOENT, "double release");
	CHECK(!mlos_stats(fd, &s) && s.leases == n, "leases %llu", (unsigned long long)s.leases);
	close(fd2);
	CHECK(!mlos_stats(fd, &s) && s.leases == 0 && s.leased_bytes == 0, "close kept leases");
	CHECK(!gpu_list(fd, info, &n), "list");
	for (i = 0; i < n; i++)
		CHECK(info[i].used == 0, "device %u still used", i);
	close(fd);
	return PASS;
}

/* ---- runner --------------------------------------------------------------------- */

static const struct test tests[] = {
	{ "version", t_version, &always },
	{ "reserved_rejected", t_reserved_rejected, &always },
	{ "unknown_ioctl", t_unknown_ioctl, &always },
	{ "disabled_features", t_disabled_features, &always },
	{ "pool_lifecycle", t_pool_lifecycle, &feat_mem },
	{ "pool_invalid", t_pool_invalid, &feat_mem },
	{ "buf_mmap", t_buf_mmap, &feat_mem },
	{ "buf_info", t_buf_info, &feat_mem },
	{ "buf_share_fd", t_buf_share_fd, &feat_mem },
	{ "pool_exhaust", t_pool_exhaust, &feat_mem },
	{ "buf_outlives_pool", t_buf_outlives_pool, &feat_mem },
	{ "memlock_charged", t_memlock_charged, &feat_mem },
	{ "close_frees", t_close_frees, &feat_mem },
	{ "sched_latency", t_sched_latency, &feat_sched },
	{ "sched_restore_on_close", t_sched_restore_on_close, &feat_sched },
	{ "sched_permissions", t_sched_permissions, &feat_sched },
	{ "sched_affinity", t_sched_affinity, &feat_sched },
	{ "sched_preemptions", t_sched_preemptions, &feat_sched },
	{ "gpu_list", t_gpu_list, &feat_gpu },
	{ "gpu_leases", t_gpu_leases, &feat_gpu },
};

int main(int argc, char **argv)
{
	if (argc > 1)
		expected_gpus = atoi(argv[1]);
	return run_tests(tests, sizeof(tests) / sizeof(tests[0]));
}
