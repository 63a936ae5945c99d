// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml: the memory manager. A pool reserves and pins its pages when it is
 * created (charged to the creator's RLIMIT_MEMLOCK, optionally on one NUMA
 * node); buffers take pages from it without touching the page allocator and
 * are handed out as descriptors that map those very pages (zero-copy) and can
 * travel to another process over a UNIX socket. A pool lives while its id is
 * in the creating descriptor or any of its buffers is alive.
 */
#define pr_fmt(fmt) "mlos-ml: " fmt

#include <linux/anon_inodes.h>
#include <linux/compat.h>
#include <linux/file.h>
#include <linux/highmem.h>
#include <linux/kref.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/nodemask.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>

#include "compat.h"
#include "mlos_ml.h"

struct mlos_pool {
	struct kref ref;
	spinlock_t lock;		/* guards free[], nfree and the figures */
	struct page **pages;
	u32 *free;			/* stack of indices into pages[] */
	u32 nfree;
	u32 npages;
	int node;
	struct mm_struct *mm;		/* charged for npages locked pages */
	u64 nr_buffers, allocs, alloc_failures, peak_used;
};

struct mlos_buf {
	struct mlos_pool *pool;
	u32 npages;
	u32 *idx;			/* indices into pool->pages[] */
	struct page **pages;		/* the same pages, as vm_map_pages() wants */
};

static void mlos_pool_free(struct kref *ref)
{
	struct mlos_pool *pool = container_of(ref, struct mlos_pool, ref);
	u32 i;

	for (i = 0; i < pool->npages; i++)
		__free_page(pool->pages[i]);
	account_locked_vm(pool->mm, pool->npages, false);
	mmdrop(pool->mm);
	atomic64_sub(pool->npages, &mlos_counters.pinned_pages);
	atomic64_dec(&mlos_counters.pools);
	mlos_dbg(1, "pool of %u pages freed\n", pool->npages);
	kvfree(pool->free);
	kvfree(pool->pages);
	kfree(pool);
}

static void mlos_pool_put(struct mlos_pool *pool)
{
	kref_put(&pool->ref, mlos_pool_free);
}

long mlos_pool_create(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_pool_create req;
	struct mlos_pool *pool;
	u64 npages, limit;
	u32 i;
	int ret, id;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.flags || req.reserved || req.pool_id || !req.size)
		return -EINVAL;
	if (req.numa_node != MLOS_ML_NUMA_ANY &&
	    (req.numa_node < 0 || req.numa_node >= MAX_NUMNODES || !node_online(req.numa_node)))
		return -EINVAL;
	if (req.size > (u64)mlos_max_pool_mb << 20)
		return -E2BIG;
	npages = PAGE_ALIGN(req.size) >> PAGE_SHIFT;

	/* The module-wide cap first: cheap, and it keeps a burst of creators honest. */
	limit = (u64)mlos_max_total_mb << (20 - PAGE_SHIFT);
	if (atomic64_add_return(npages, &mlos_counters.pinned_pages) > limit) {
		ret = -ENOMEM;
		goto out_uncount;
	}
	ret = account_locked_vm(current->mm, npages, true);
	if (ret)
		goto out_uncount;

	pool = kzalloc(sizeof(*pool), GFP_KERNEL);
	if (!pool) {
		ret = -ENOMEM;
		goto out_unaccount;
	}
	kref_init(&pool->ref);
	spin_lock_init(&pool->lock);
	pool->node = req.numa_node;
	pool->pages = kvcalloc(npages, sizeof(*pool->pages), GFP_KERNEL);
	pool->free = kvcalloc(npages, sizeof(*pool->free), GFP_KERNEL);
	if (!pool->pages || !pool->free) {
		ret = -ENOMEM;
		goto out_free_arrays;
	}
	for (i = 0; i < npages; i++) {
		/* A killed creator (a crash, an OOM kill) must not sit out a 1 GiB fill. */
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			goto out_free_pages;
		}
		pool->pages[i] = alloc_pages_node(req.numa_node, GFP_KERNEL | __GFP_ZERO |
						  __GFP_NOWARN | __GFP_RETRY_MAYFAIL, 0);
		if (!pool->pages[i]) {
			ret = -ENOMEM;
			goto out_free_pages;
		}
		pool->free[i] = npages - 1 - i;
		cond_resched();
	}
	pool->npages = npages;
	pool->nfree = npages;
	mmgrab(current->mm);
	pool->mm = current->mm;

	id = mlos_id_reserve(mf, &mf->pools);
	if (id < 0) {
		ret = id;
		goto out_drop_mm;
	}
	req.pool_id = id;
	if (copy_to_user(arg, &req, sizeof(req))) {
		/* Nobody else could see the id: the creator's reference is still the only one. */
		mlos_id_unreserve(mf, &mf->pools, id);
		ret = -EFAULT;
		goto out_drop_mm;
	}
	atomic64_inc(&mlos_counters.pools);
	mlos_id_publish(mf, &mf->pools, id, pool);
	mlos_dbg(1, "pool %d: %llu pages on node %d for pid %d\n", id, npages, req.numa_node,
		 task_pid_nr(current));
	return 0;

out_drop_mm:
	mmdrop(pool->mm);
out_free_pages:
	while (i--)
		__free_page(pool->pages[i]);
out_free_arrays:
	kvfree(pool->free);
	kvfree(pool->pages);
	kfree(pool);
out_unaccount:
	account_locked_vm(current->mm, npages, false);
out_uncount:
	atomic64_sub(npages, &mlos_counters.pinned_pages);
	return ret;
}

/* Looks a pool up by id and takes a reference; NULL when the id is not this descriptor's. */
static struct mlos_pool *mlos_pool_get(struct mlos_file *mf, u32 id)
{
	struct mlos_pool *pool;

	if (id > INT_MAX)
		return NULL;
	mutex_lock(&mf->lock);
	pool = idr_find(&mf->pools, id);
	if (pool)
		kref_get(&pool->ref);
	mutex_unlock(&mf->lock);
	return pool;
}

long mlos_pool_destroy(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_pool_destroy req;
	struct mlos_pool *pool;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.reserved || req.pool_id > INT_MAX)
		return -EINVAL;
	pool = mlos_id_take(mf, &mf->pools, req.pool_id);
	if (!pool)
		return -ENOENT;
	/* Live buffers keep the pages until their last descriptor or mapping goes. */
	mlos_pool_put(pool);
	return 0;
}

long mlos_pool_stats(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_pool_stats st;
	struct mlos_pool *pool;

	if (copy_from_user(&st, arg, sizeof(st)))
		return -EFAULT;
	if (st.numa_node || st.size || st.free || st.peak_used || st.nr_buffers || st.allocs ||
	    st.alloc_failures || st.reserved[0] || st.reserved[1])
		return -EINVAL;
	pool = mlos_pool_get(mf, st.pool_id);
	if (!pool)
		return -ENOENT;
	spin_lock(&pool->lock);
	st.numa_node = pool->node;
	st.size = (u64)pool->npages << PAGE_SHIFT;
	st.free = (u64)pool->nfree << PAGE_SHIFT;
	st.peak_used = pool->peak_used << PAGE_SHIFT;
	st.nr_buffers = pool->nr_buffers;
	st.allocs = pool->allocs;
	st.alloc_failures = pool->alloc_failures;
	spin_unlock(&pool->lock);
	mlos_pool_put(pool);
	return copy_to_user(arg, &st, sizeof(st)) ? -EFAULT : 0;
}

static void mlos_buf_destroy(struct mlos_buf *buf)
{
	struct mlos_pool *pool = buf->pool;
	u32 i;

	spin_lock(&pool->lock);
	for (i = 0; i < buf->npages; i++)
		pool->free[pool->nfree++] = buf->idx[i];
	pool->nr_buffers--;
	spin_unlock(&pool->lock);
	atomic64_dec(&mlos_counters.buffers);
	kvfree(buf->pages);
	kvfree(buf->idx);
	kfree(buf);
	mlos_pool_put(pool);
}

static int mlos_buf_release(struct inode *inode, struct file *file)
{
	mlos_buf_destroy(file->private_data);
	return 0;
}

static int mlos_buf_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct mlos_buf *buf = file->private_data;
	unsigned long count = vma_pages(vma), left;
	int ret;

	/* A private mapping would copy on write: the opposite of what a pool is for. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_pgoff >= buf->npages || count > buf->npages - vma->vm_pgoff)
		return -EINVAL;
	mlos_vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
	/* All pages now, in batches under one page-table lock: no faults on first touch. */
	left = count;
	ret = vm_insert_pages(vma, vma->vm_start, buf->pages + vma->vm_pgoff, &left);
	if (!ret && left)
		ret = -EFAULT;
	return ret;
}

/* Lets a process that received a buffer fd check what it is before mapping it. */
static long mlos_buf_ioctl(struct file *file, unsigned int cmd, unsigned long uarg)
{
	struct mlos_buf *buf = file->private_data;
	void __user *arg = (void __user *)uarg;
	struct mlos_ml_buf_info info;

	if (cmd != MLOS_ML_IOC_BUF_INFO)
		return -ENOTTY;
	if (copy_from_user(&info, arg, sizeof(info)))
		return -EFAULT;
	if (info.size || info.numa_node || info.reserved0 || info.reserved[0] || info.reserved[1])
		return -EINVAL;
	info.size = (u64)buf->npages << PAGE_SHIFT;
	info.numa_node = buf->pool->node;
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

#ifdef CONFIG_COMPAT
static long mlos_buf_compat_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	return mlos_buf_ioctl(file, cmd, (unsigned long)compat_ptr(arg));
}
#endif

static const struct file_operations mlos_buf_fops = {
	.owner = THIS_MODULE,
	.release = mlos_buf_release,
	.mmap = mlos_buf_mmap,
	.unlocked_ioctl = mlos_buf_ioctl,
#ifdef CONFIG_COMPAT
	.compat_ioctl = mlos_buf_compat_ioctl,
#endif
	.llseek = mlos_llseek,
};

long mlos_buf_alloc(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_buf_alloc req;
	struct mlos_pool *pool;
	struct mlos_buf *buf;
	struct file *file;
	u64 npages, used;
	u32 i;
	int fd, ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.reserved || req.fd || (req.flags & ~MLOS_ML_BUF_ZERO) || !req.size)
		return -EINVAL;
	pool = mlos_pool_get(mf, req.pool_id);
	if (!pool)
		return -ENOENT;
	if (req.size > (u64)pool->npages << PAGE_SHIFT) {
		ret = -EINVAL;
		goto out_put_pool;
	}
	npages = PAGE_ALIGN(req.size) >> PAGE_SHIFT;

	buf = kzalloc(sizeof(*buf), GFP_KERNEL);
	if (!buf) {
		ret = -ENOMEM;
		goto out_put_pool;
	}
	buf->idx = kvmalloc_array(npages, sizeof(*buf->idx), GFP_KERNEL);
	buf->pages = kvmalloc_array(npages, sizeof(*buf->pages), GFP_KERNEL);
	if (!buf->idx || !buf->pages) {
		ret = -ENOMEM;
		goto out_free_buf;
	}

	spin_lock(&pool->lock);
	if (pool->nfree < npages) {
		pool->alloc_failures++;
		spin_unlock(&pool->lock);
		ret = -ENOSPC;
		goto out_free_buf;
	}
	for (i = 0; i < npages; i++) {
		buf->idx[i] = pool->free[--pool->nfree];
		buf->pages[i] = pool->pages[buf->idx[i]];
	}
	buf->npages = npages;
	pool->nr_buffers++;
	pool->allocs++;
	used = pool->npages - pool->nfree;
	if (used > pool->peak_used)
		pool->peak_used = used;
	spin_unlock(&pool->lock);
	buf->pool = pool;		/* the buffer now owns the pool reference */
	atomic64_inc(&mlos_counters.buffers);

	if (req.flags & MLOS_ML_BUF_ZERO)
		for (i = 0; i < npages; i++)
			clear_highpage(buf->pages[i]);

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		ret = fd;
		goto out_destroy_buf;
	}
	file = anon_inode_getfile("[mlos-ml-buf]", &mlos_buf_fops, buf, O_RDWR | O_CLOEXEC);
	if (IS_ERR(file)) {
		ret = PTR_ERR(file);
		goto out_put_fd;
	}
	req.fd = fd;
	req.size = npages << PAGE_SHIFT;
	if (copy_to_user(arg, &req, sizeof(req))) {
		put_unused_fd(fd);
		fput(file);		/* its release puts the pages back */
		return -EFAULT;
	}
	fd_install(fd, file);
	return 0;

out_put_fd:
	put_unused_fd(fd);
out_destroy_buf:
	mlos_buf_destroy(buf);
	return ret;
out_free_buf:
	kvfree(buf->pages);
	kvfree(buf->idx);
	kfree(buf);
out_put_pool:
	mlos_pool_put(pool);
	return ret;
}

void mlos_pool_release_all(struct mlos_file *mf)
{
	struct mlos_pool *pool;
	int id;

	idr_for_each_entry(&mf->pools, pool, id)
		mlos_pool_put(pool);
}
