// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml: the GPU resource manager. At load it discovers display-class and
 * accelerator-class PCI devices; an administrator sets how much memory each
 * may lend (gpu_capacity_mb at load, or MLOS_ML_IOC_GPU_SET_CAPACITY with
 * CAP_SYS_ADMIN; the default is the device's largest memory BAR). Descriptors
 * take memory leases, placed on the least loaded device that fits unless the
 * caller names one; a descriptor's leases end when it closes.
 */
#define pr_fmt(fmt) "mlos-ml: " fmt

#include <linux/capability.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "compat.h"
#include "mlos_ml.h"

#define MLOS_PCI_BASE_CLASS_ACCEL 0x12	/* PCI_BASE_CLASS_ACCELERATOR, not in 5.15's pci_ids.h */

static unsigned int mlos_gpu_capacity_mb[MLOS_ML_MAX_GPUS];
static int mlos_gpu_capacity_count;
module_param_array_named(gpu_capacity_mb, mlos_gpu_capacity_mb, uint, &mlos_gpu_capacity_count, 0444);
MODULE_PARM_DESC(gpu_capacity_mb, "Leasable MiB per discovered GPU, in discovery order (0: largest BAR)");

struct mlos_gpu {
	struct pci_dev *pdev;
	u64 capacity, used;
	u32 nr_leases;
};

struct mlos_gpu_lease {
	u32 gpu;
	u64 size;
};

static DEFINE_MUTEX(mlos_gpu_mutex);	/* guards the table's capacity/used/nr_leases */
static struct mlos_gpu mlos_gpus[MLOS_ML_MAX_GPUS];
static unsigned int mlos_nr_gpus;

static u64 mlos_gpu_largest_bar(struct pci_dev *pdev)
{
	u64 best = 0;
	int bar;

	for (bar = 0; bar < PCI_STD_NUM_BARS; bar++)
		if ((pci_resource_flags(pdev, bar) & IORESOURCE_MEM) &&
		    pci_resource_len(pdev, bar) > best)
			best = pci_resource_len(pdev, bar);
	return best;
}

int mlos_gpu_init(void)
{
	struct pci_dev *pdev = NULL;
	unsigned int base;

	if (!mlos_enable_gpu_manager)
		return 0;
	while ((pdev = pci_get_device(PCI_ANY_ID, PCI_ANY_ID, pdev))) {
		base = pdev->class >> 16;
		if (base != PCI_BASE_CLASS_DISPLAY && base != MLOS_PCI_BASE_CLASS_ACCEL)
			continue;
		if (mlos_nr_gpus == MLOS_ML_MAX_GPUS) {
			pr_warn("more than %d GPUs; managing the first %d\n", MLOS_ML_MAX_GPUS,
				MLOS_ML_MAX_GPUS);
			pci_dev_put(pdev);
			break;
		}
		mlos_gpus[mlos_nr_gpus].pdev = pci_dev_get(pdev);
		if (mlos_nr_gpus < mlos_gpu_capacity_count && mlos_gpu_capacity_mb[mlos_nr_gpus])
			mlos_gpus[mlos_nr_gpus].capacity = (u64)mlos_gpu_capacity_mb[mlos_nr_gpus] << 20;
		else
			mlos_gpus[mlos_nr_gpus].capacity = mlos_gpu_largest_bar(pdev);
		mlos_dbg(1, "gpu %u: %s %04x:%04x class %06x capacity %llu\n", mlos_nr_gpus,
			 pci_name(pdev), pdev->vendor, pdev->device, pdev->class,
			 mlos_gpus[mlos_nr_gpus].capacity);
		mlos_nr_gpus++;
	}
	atomic64_set(&mlos_counters.gpus, mlos_nr_gpus);
	return 0;
}

void mlos_gpu_exit(void)
{
	unsigned int i;

	for (i = 0; i < mlos_nr_gpus; i++)
		pci_dev_put(mlos_gpus[i].pdev);
	mlos_nr_gpus = 0;
}

static void mlos_gpu_info(unsigned int i, struct mlos_ml_gpu_info *info)
{
	struct pci_dev *pdev = mlos_gpus[i].pdev;

	memset(info, 0, sizeof(*info));
	info->index = i;
	info->vendor = pdev->vendor;
	info->device = pdev->device;
	info->pci_class = pdev->class;
	info->domain = pci_domain_nr(pdev->bus);
	info->bus = pdev->bus->number;
	info->devfn = pdev->devfn;
	info->capacity = mlos_gpus[i].capacity;
	info->used = mlos_gpus[i].used;
	info->nr_leases = mlos_gpus[i].nr_leases;
}

long mlos_gpu_list(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_gpu_list req;
	struct mlos_ml_gpu_info info;
	struct mlos_ml_gpu_info __user *out;
	unsigned int i;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.reserved || (req.count && !req.gpus))
		return -EINVAL;
	out = u64_to_user_ptr(req.gpus);
	for (i = 0; i < mlos_nr_gpus && i < req.count; i++) {
		mutex_lock(&mlos_gpu_mutex);
		mlos_gpu_info(i, &info);
		mutex_unlock(&mlos_gpu_mutex);
		if (copy_to_user(&out[i], &info, sizeof(info)))
			return -EFAULT;
	}
	req.count = mlos_nr_gpus;
	return copy_to_user(arg, &req, sizeof(req)) ? -EFAULT : 0;
}

long mlos_gpu_set_capacity(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_gpu_set_capacity req;
	long ret = 0;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.reserved)
		return -EINVAL;
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (req.index >= mlos_nr_gpus)
		return -ENODEV;
	mutex_lock(&mlos_gpu_mutex);
	if (req.capacity < mlos_gpus[req.index].used)
		ret = -EBUSY;
	else
		mlos_gpus[req.index].capacity = req.capacity;
	mutex_unlock(&mlos_gpu_mutex);
	return ret;
}

/* Least loaded device with room for size (load = used / capacity); -1 if none. */
static int mlos_gpu_place(u64 size)
{
	u64 load, best_load = U64_MAX;
	int i, best = -1;

	for (i = 0; i < mlos_nr_gpus; i++) {
		struct mlos_gpu *g = &mlos_gpus[i];

		if (!g->capacity || g->capacity - g->used < size)
			continue;
		load = div64_u64(g->used * 1000, g->capacity);
		if (load < best_load || (load == best_load && best >= 0 &&
					 g->nr_leases < mlos_gpus[best].nr_leases)) {
			best_load = load;
			best = i;
		}
	}
	return best;
}

long mlos_gpu_lease(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_gpu_lease req;
	struct mlos_gpu_lease *lease;
	int gpu, id;
	long ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.flags || req.reserved || req.lease_id || !req.size || req.gpu < MLOS_ML_GPU_ANY)
		return -EINVAL;
	if (!mlos_nr_gpus || (req.gpu >= 0 && req.gpu >= mlos_nr_gpus))
		return -ENODEV;
	lease = kzalloc(sizeof(*lease), GFP_KERNEL);
	if (!lease)
		return -ENOMEM;

	mutex_lock(&mlos_gpu_mutex);
	gpu = req.gpu;
	if (gpu == MLOS_ML_GPU_ANY)
		gpu = mlos_gpu_place(req.size);
	else if (mlos_gpus[gpu].capacity - mlos_gpus[gpu].used < req.size)
		gpu = -1;
	if (gpu < 0) {
		mutex_unlock(&mlos_gpu_mutex);
		ret = -ENOSPC;
		goto out_free_lease;
	}
	mlos_gpus[gpu].used += req.size;
	mlos_gpus[gpu].nr_leases++;
	mutex_unlock(&mlos_gpu_mutex);
	lease->gpu = gpu;
	lease->size = req.size;

	id = mlos_id_reserve(mf, &mf->leases);
	if (id < 0) {
		ret = id;
		goto out_unuse;
	}
	req.gpu = gpu;
	req.lease_id = id;
	if (copy_to_user(arg, &req, sizeof(req))) {
		/* Unpublished, so no release by a guessed id can have ended it already. */
		mlos_id_unreserve(mf, &mf->leases, id);
		ret = -EFAULT;
		goto out_unuse;
	}
	atomic64_inc(&mlos_counters.leases);
	atomic64_add(lease->size, &mlos_counters.leased_bytes);
	mlos_id_publish(mf, &mf->leases, id, lease);
	return 0;

out_unuse:
	mutex_lock(&mlos_gpu_mutex);
	mlos_gpus[gpu].used -= req.size;
	mlos_gpus[gpu].nr_leases--;
	mutex_unlock(&mlos_gpu_mutex);
out_free_lease:
	kfree(lease);
	return ret;
}

static void mlos_gpu_lease_end(struct mlos_gpu_lease *lease)
{
	mutex_lock(&mlos_gpu_mutex);
	mlos_gpus[lease->gpu].used -= lease->size;
	mlos_gpus[lease->gpu].nr_leases--;
	mutex_unlock(&mlos_gpu_mutex);
	atomic64_dec(&mlos_counters.leases);
	atomic64_sub(lease->size, &mlos_counters.leased_bytes);
	kfree(lease);
}

long mlos_gpu_release(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_gpu_release req;
	struct mlos_gpu_lease *lease;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.reserved || req.lease_id > INT_MAX)
		return -EINVAL;
	lease = mlos_id_take(mf, &mf->leases, req.lease_id);
	if (!lease)
		return -ENOENT;
	mlos_gpu_lease_end(lease);
	return 0;
}

void mlos_gpu_release_all(struct mlos_file *mf)
{
	struct mlos_gpu_lease *lease;
	int id;

	idr_for_each_entry(&mf->leases, lease, id)
		mlos_gpu_lease_end(lease);
}

ssize_t mlos_gpu_show(char *buf, size_t size)
{
	struct mlos_ml_gpu_info info;
	ssize_t len = 0;
	unsigned int i;

	mutex_lock(&mlos_gpu_mutex);
	for (i = 0; i < mlos_nr_gpus; i++) {
		mlos_gpu_info(i, &info);
		len += scnprintf(buf + len, size - len,
				 "%u %04x:%02x:%02x.%x %04x:%04x class=%06x capacity=%llu used=%llu leases=%u\n",
				 i, info.domain, info.bus, PCI_SLOT(info.devfn), PCI_FUNC(info.devfn),
				 info.vendor, info.device, info.pci_class, info.capacity, info.used,
				 info.nr_leases);
	}
	mutex_unlock(&mlos_gpu_mutex);
	return len;
}
