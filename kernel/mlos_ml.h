/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mlos-ml: objects shared between the module's files. One file per object:
 * main.c (device, parameters, dispatch), pool.c (memory manager),
 * sched.c (ML-aware scheduler), gpu.c (GPU resource manager).
 */
#ifndef _MLOS_ML_INTERNAL_H
#define _MLOS_ML_INTERNAL_H

#include <linux/atomic.h>
#include <linux/idr.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include "include/uapi/mlos_ml.h"

#define MLOS_ML_NAME "mlos-ml"

/* Module parameters (main.c). */
extern int mlos_debug_level;
extern bool mlos_enable_tmm, mlos_enable_scheduler, mlos_enable_gpu_manager;
extern unsigned int mlos_max_pool_mb, mlos_max_total_mb;
extern unsigned int mlos_rt_priority;
extern int mlos_latency_qos_us;

#define mlos_dbg(level, fmt, ...) do {					\
	if (mlos_debug_level >= (level))				\
		pr_info(fmt, ##__VA_ARGS__);		\
} while (0)

/* State of one open descriptor of /dev/mlos-ml. */
struct mlos_file {
	struct mutex lock;		/* guards the three tables below */
	struct idr pools;		/* pool id -> struct mlos_pool */
	struct list_head sched_regs;	/* struct mlos_sched_reg.file_node */
	struct idr leases;		/* lease id -> struct mlos_gpu_lease */
};

/*
 * The id lifecycle (main.c), the one rule every create/destroy pair follows:
 * an id is reserved (its entry NULL: lookups and destroy see nothing), the
 * result is copied to the caller, and only then is the object published. A
 * failed copy unreserves an id no other thread could have touched, so the
 * creator still owns its only reference. Destroy takes only published ids.
 */
int mlos_id_reserve(struct mlos_file *mf, struct idr *idr);
void mlos_id_publish(struct mlos_file *mf, struct idr *idr, int id, void *obj);
void mlos_id_unreserve(struct mlos_file *mf, struct idr *idr, int id);
void *mlos_id_take(struct mlos_file *mf, struct idr *idr, u32 id);

/* Global figures, reported by MLOS_ML_IOC_STATS and the stats sysfs file. */
struct mlos_counters {
	atomic64_t pools, buffers, pinned_pages;
	atomic64_t sched_threads[4];
	atomic64_t qos_active;
	atomic64_t gpus, leases, leased_bytes;
};
extern struct mlos_counters mlos_counters;

/* pool.c */
long mlos_pool_create(struct mlos_file *mf, void __user *arg);
long mlos_pool_destroy(struct mlos_file *mf, void __user *arg);
long mlos_pool_stats(struct mlos_file *mf, void __user *arg);
long mlos_buf_alloc(struct mlos_file *mf, void __user *arg);
void mlos_pool_release_all(struct mlos_file *mf);

/* sched.c */
int mlos_sched_init(void);
void mlos_sched_exit(void);
long mlos_sched_register(struct mlos_file *mf, void __user *arg);
long mlos_sched_unregister(struct mlos_file *mf, void __user *arg);
long mlos_sched_stats(struct mlos_file *mf, void __user *arg);
void mlos_sched_release_all(struct mlos_file *mf);

/* gpu.c */
int mlos_gpu_init(void);
void mlos_gpu_exit(void);
long mlos_gpu_list(struct mlos_file *mf, void __user *arg);
long mlos_gpu_set_capacity(struct mlos_file *mf, void __user *arg);
long mlos_gpu_lease(struct mlos_file *mf, void __user *arg);
long mlos_gpu_release(struct mlos_file *mf, void __user *arg);
void mlos_gpu_release_all(struct mlos_file *mf);
ssize_t mlos_gpu_show(char *buf, size_t size);

#endif /* _MLOS_ML_INTERNAL_H */
