// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml: the device. Module parameters, /dev/mlos-ml, per-descriptor state,
 * ioctl dispatch and the sysfs figures. The features live in pool.c, sched.c
 * and gpu.c; a feature switched off by its parameter answers -EOPNOTSUPP.
 */
#define pr_fmt(fmt) "mlos-ml: " fmt

#include <linux/compat.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "compat.h"
#include "mlos_ml.h"

int mlos_debug_level;
module_param_named(debug_level, mlos_debug_level, int, 0644);
MODULE_PARM_DESC(debug_level, "Log verbosity: 0 quiet, 1 lifecycle, 2 every call");

bool mlos_enable_tmm = true;
module_param_named(enable_tmm, mlos_enable_tmm, bool, 0444);
MODULE_PARM_DESC(enable_tmm, "Enable the memory manager (pinned pools, mmap buffers)");

bool mlos_enable_scheduler;
module_param_named(enable_scheduler, mlos_enable_scheduler, bool, 0444);
MODULE_PARM_DESC(enable_scheduler, "Enable the ML-aware thread scheduler");

bool mlos_enable_gpu_manager;
module_param_named(enable_gpu_manager, mlos_enable_gpu_manager, bool, 0444);
MODULE_PARM_DESC(enable_gpu_manager, "Enable the GPU resource manager");

unsigned int mlos_max_pool_mb = 1024;
module_param_named(max_pool_mb, mlos_max_pool_mb, uint, 0444);
MODULE_PARM_DESC(max_pool_mb, "Largest single pool in MiB");

unsigned int mlos_max_total_mb = 4096;
module_param_named(max_total_mb, mlos_max_total_mb, uint, 0444);
MODULE_PARM_DESC(max_total_mb, "Most memory all pools together may pin, in MiB");

unsigned int mlos_rt_priority = 10;
module_param_named(rt_priority, mlos_rt_priority, uint, 0444);
MODULE_PARM_DESC(rt_priority, "Default SCHED_FIFO priority of latency-critical threads (1-99)");

int mlos_latency_qos_us;
module_param_named(latency_qos_us, mlos_latency_qos_us, int, 0444);
MODULE_PARM_DESC(latency_qos_us, "CPU wake-up latency bound (us) held while latency threads are registered; -1 disables");

struct mlos_counters mlos_counters;

int mlos_id_reserve(struct mlos_file *mf, struct idr *idr)
{
	int id;

	mutex_lock(&mf->lock);
	id = idr_alloc(idr, NULL, 1, 0, GFP_KERNEL);
	mutex_unlock(&mf->lock);
	return id;
}

void mlos_id_publish(struct mlos_file *mf, struct idr *idr, int id, void *obj)
{
	void *old;

	mutex_lock(&mf->lock);
	old = idr_replace(idr, obj, id);
	mutex_unlock(&mf->lock);
	/* Only the reserving call may publish or unreserve: anything else is our bug. */
	WARN_ON(old);
}

void mlos_id_unreserve(struct mlos_file *mf, struct idr *idr, int id)
{
	mutex_lock(&mf->lock);
	WARN_ON(idr_find(idr, id));
	idr_remove(idr, id);
	mutex_unlock(&mf->lock);
}

/*
 * Removes a published id and hands its reference to the caller; NULL for an id
 * that is free or still reserved. idr_remove() alone would also free a
 * reservation, letting a guessed id pull the slot from under its creator.
 */
void *mlos_id_take(struct mlos_file *mf, struct idr *idr, u32 id)
{
	void *obj = NULL;

	if (id > INT_MAX)
		return NULL;
	mutex_lock(&mf->lock);
	if (idr_find(idr, id))
		obj = idr_remove(idr, id);
	mutex_unlock(&mf->lock);
	return obj;
}

static int mlos_open(struct inode *inode, struct file *file)
{
	struct mlos_file *mf = kzalloc(sizeof(*mf), GFP_KERNEL);

	if (!mf)
		return -ENOMEM;
	mutex_init(&mf->lock);
	idr_init(&mf->pools);
	INIT_LIST_HEAD(&mf->sched_regs);
	idr_init(&mf->leases);
	file->private_data = mf;
	mlos_dbg(2, "open by pid %d\n", task_pid_nr(current));
	return 0;
}

static int mlos_release(struct inode *inode, struct file *file)
{
	struct mlos_file *mf = file->private_data;

	/* Undo everything this descriptor created, whatever state the caller left. */
	mlos_sched_release_all(mf);
	mlos_gpu_release_all(mf);
	mlos_pool_release_all(mf);
	idr_destroy(&mf->pools);
	idr_destroy(&mf->leases);
	mutex_destroy(&mf->lock);
	kfree(mf);
	return 0;
}

static long mlos_version(void __user *arg)
{
	struct mlos_ml_version v;

	if (copy_from_user(&v, arg, sizeof(v)))
		return -EFAULT;
	if (memchr_inv(v.reserved, 0, sizeof(v.reserved)))
		return -EINVAL;
	v.api_version = MLOS_ML_API_VERSION;
	v.features = (mlos_enable_tmm ? MLOS_ML_FEAT_MEMORY : 0) |
		     (mlos_enable_scheduler ? MLOS_ML_FEAT_SCHED : 0) |
		     (mlos_enable_gpu_manager ? MLOS_ML_FEAT_GPU : 0);
	v.page_size = PAGE_SIZE;
	return copy_to_user(arg, &v, sizeof(v)) ? -EFAULT : 0;
}

static void mlos_stats_fill(struct mlos_ml_stats *s)
{
	int i;

	memset(s, 0, sizeof(*s));
	s->pools = atomic64_read(&mlos_counters.pools);
	s->buffers = atomic64_read(&mlos_counters.buffers);
	s->pinned_bytes = (u64)atomic64_read(&mlos_counters.pinned_pages) << PAGE_SHIFT;
	for (i = 0; i < 4; i++)
		s->sched_threads[i] = atomic64_read(&mlos_counters.sched_threads[i]);
	s->qos_active = atomic64_read(&mlos_counters.qos_active);
	s->gpus = atomic64_read(&mlos_counters.gpus);
	s->leases = atomic64_read(&mlos_counters.leases);
	s->leased_bytes = atomic64_read(&mlos_counters.leased_bytes);
}

static long mlos_stats(void __user *arg)
{
	struct mlos_ml_stats s;

	if (copy_from_user(&s, arg, sizeof(s)))
		return -EFAULT;
	if (memchr_inv(s.reserved, 0, sizeof(s.reserved)))
		return -EINVAL;
	mlos_stats_fill(&s);
	return copy_to_user(arg, &s, sizeof(s)) ? -EFAULT : 0;
}

static long mlos_ioctl(struct file *file, unsigned int cmd, unsigned long uarg)
{
	struct mlos_file *mf = file->private_data;
	void __user *arg = (void __user *)uarg;

	if (_IOC_TYPE(cmd) != MLOS_ML_IOC_MAGIC)
		return -ENOTTY;
	mlos_dbg(2, "ioctl nr 0x%x by pid %d\n", _IOC_NR(cmd), task_pid_nr(current));

	switch (cmd) {
	case MLOS_ML_IOC_VERSION:
		return mlos_version(arg);
	case MLOS_ML_IOC_STATS:
		return mlos_stats(arg);
	case MLOS_ML_IOC_POOL_CREATE:
	case MLOS_ML_IOC_POOL_DESTROY:
	case MLOS_ML_IOC_BUF_ALLOC:
	case MLOS_ML_IOC_POOL_STATS:
		if (!mlos_enable_tmm)
			return -EOPNOTSUPP;
		if (cmd == MLOS_ML_IOC_POOL_CREATE)
			return mlos_pool_create(mf, arg);
		if (cmd == MLOS_ML_IOC_POOL_DESTROY)
			return mlos_pool_destroy(mf, arg);
		if (cmd == MLOS_ML_IOC_BUF_ALLOC)
			return mlos_buf_alloc(mf, arg);
		return mlos_pool_stats(mf, arg);
	case MLOS_ML_IOC_SCHED_REGISTER:
	case MLOS_ML_IOC_SCHED_UNREGISTER:
	case MLOS_ML_IOC_SCHED_STATS:
		if (!mlos_enable_scheduler)
			return -EOPNOTSUPP;
		if (cmd == MLOS_ML_IOC_SCHED_REGISTER)
			return mlos_sched_register(mf, arg);
		if (cmd == MLOS_ML_IOC_SCHED_UNREGISTER)
			return mlos_sched_unregister(mf, arg);
		return mlos_sched_stats(mf, arg);
	case MLOS_ML_IOC_GPU_LIST:
	case MLOS_ML_IOC_GPU_SET_CAPACITY:
	case MLOS_ML_IOC_GPU_LEASE:
	case MLOS_ML_IOC_GPU_RELEASE:
		if (!mlos_enable_gpu_manager)
			return -EOPNOTSUPP;
		if (cmd == MLOS_ML_IOC_GPU_LIST)
			return mlos_gpu_list(mf, arg);
		if (cmd == MLOS_ML_IOC_GPU_SET_CAPACITY)
			return mlos_gpu_set_capacity(mf, arg);
		if (cmd == MLOS_ML_IOC_GPU_LEASE)
			return mlos_gpu_lease(mf, arg);
		return mlos_gpu_release(mf, arg);
	}
	return -ENOTTY;
}

#ifdef CONFIG_COMPAT
/* Every struct has the same layout in 32- and 64-bit callers; only the pointer moves. */
static long mlos_compat_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	return mlos_ioctl(file, cmd, (unsigned long)compat_ptr(arg));
}
#endif

static const struct file_operations mlos_fops = {
	.owner = THIS_MODULE,
	.open = mlos_open,
	.release = mlos_release,
	.unlocked_ioctl = mlos_ioctl,
#ifdef CONFIG_COMPAT
	.compat_ioctl = mlos_compat_ioctl,
#endif
	.llseek = mlos_llseek,
};

/* /sys/class/misc/mlos-ml/stats: "key value" lines, one per counter. */
static ssize_t stats_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct mlos_ml_stats s;

	mlos_stats_fill(&s);
	return sysfs_emit(buf,
			  "pools %llu\nbuffers %llu\npinned_bytes %llu\n"
			  "sched_latency %llu\nsched_throughput %llu\nsched_background %llu\n"
			  "qos_active %llu\ngpus %llu\nleases %llu\nleased_bytes %llu\n",
			  s.pools, s.buffers, s.pinned_bytes,
			  s.sched_threads[MLOS_ML_CLASS_LATENCY],
			  s.sched_threads[MLOS_ML_CLASS_THROUGHPUT],
			  s.sched_threads[MLOS_ML_CLASS_BACKGROUND],
			  s.qos_active, s.gpus, s.leases, s.leased_bytes);
}
static DEVICE_ATTR_RO(stats);

/* /sys/class/misc/mlos-ml/gpus: one line per discovered device. */
static ssize_t gpus_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return mlos_gpu_show(buf, PAGE_SIZE);
}
static DEVICE_ATTR_RO(gpus);

static struct attribute *mlos_attrs[] = {
	&dev_attr_stats.attr,
	&dev_attr_gpus.attr,
	NULL,
};
ATTRIBUTE_GROUPS(mlos);

static struct miscdevice mlos_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = MLOS_ML_NAME,
	.fops = &mlos_fops,
	.groups = mlos_groups,
	.mode = 0660,
};

static int __init mlos_init(void)
{
	int ret;

	if (mlos_rt_priority < 1 || mlos_rt_priority > 99) {
		pr_err("rt_priority must be 1..99, got %u\n", mlos_rt_priority);
		return -EINVAL;
	}
	ret = mlos_sched_init();
	if (ret)
		return ret;
	ret = mlos_gpu_init();
	if (ret)
		goto out_sched_exit;
	ret = misc_register(&mlos_misc);
	if (ret)
		goto out_gpu_exit;
	pr_info("loaded: memory=%d scheduler=%d gpu=%d gpus=%lld\n", mlos_enable_tmm,
		mlos_enable_scheduler, mlos_enable_gpu_manager,
		(long long)atomic64_read(&mlos_counters.gpus));
	return 0;

out_gpu_exit:
	mlos_gpu_exit();
out_sched_exit:
	mlos_sched_exit();
	return ret;
}

static void __exit mlos_exit(void)
{
	misc_deregister(&mlos_misc);
	mlos_gpu_exit();
	mlos_sched_exit();
	pr_info("unloaded\n");
}

module_init(mlos_init);
module_exit(mlos_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("MLOS ML helper: pinned zero-copy tensor pools, ML-aware scheduling, GPU leases");
MODULE_AUTHOR("MLOS project");
MODULE_VERSION("0.1.0");
