/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note */
/*
 * mlos-ml: user-space API of the MLOS machine-learning helper module.
 *
 * The contract shared by the module, its selftests and the Python binding
 * (mlos_core/kernel/mlos_ml). Every command is _IOWR on one struct: the caller fills
 * the "in" fields and zeroes everything else, the module validates (reserved
 * fields and unknown flags must be 0, else -EINVAL), acts, and writes the
 * "out" fields back. A feature disabled by its module parameter answers
 * -EOPNOTSUPP. All fields are fixed width; structs are padded to 8 bytes.
 *
 * Device: /dev/mlos-ml (misc device). Everything a descriptor created (pools,
 * scheduler registrations, GPU leases) is released when it is closed. Buffers
 * are their own descriptors (returned by MLOS_ML_IOC_BUF_ALLOC): mmap them,
 * pass them to another process over a UNIX socket; their pages go back to the
 * pool when the last descriptor and mapping are gone.
 *
 * Ids (pool_id, lease_id) and buffer fds exist once the creating call has
 * returned 0: a create whose result cannot be written back (-EFAULT) leaves
 * nothing behind, and no other thread can reach the object before then.
 * Registrations follow the thread, not its number: one whose thread exited
 * ends at the descriptor's next SCHED_REGISTER or SCHED_UNREGISTER.
 */
#ifndef _UAPI_MLOS_ML_H
#define _UAPI_MLOS_ML_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define MLOS_ML_DEVICE		"/dev/mlos-ml"
#define MLOS_ML_API_VERSION	1
#define MLOS_ML_IOC_MAGIC	0xB7

/* Feature bits reported by MLOS_ML_IOC_VERSION (one per enable_* parameter). */
#define MLOS_ML_FEAT_MEMORY	(1U << 0)	/* enable_tmm */
#define MLOS_ML_FEAT_SCHED	(1U << 1)	/* enable_scheduler */
#define MLOS_ML_FEAT_GPU	(1U << 2)	/* enable_gpu_manager */

struct mlos_ml_version {
	__u32 api_version;	/* out: MLOS_ML_API_VERSION */
	__u32 features;		/* out: MLOS_ML_FEAT_* enabled at load */
	__u32 page_size;	/* out: bytes per pool page */
	__u32 reserved[5];	/* 0 */
};

/* ---- memory manager (enable_tmm) ---------------------------------------- */

#define MLOS_ML_NUMA_ANY	(-1)

struct mlos_ml_pool_create {
	__u64 size;		/* in: bytes, rounded up to pages; pinned now */
	__s32 numa_node;	/* in: node to allocate on, MLOS_ML_NUMA_ANY */
	__u32 flags;		/* in: 0 */
	__u32 pool_id;		/* out: id, valid on this descriptor */
	__u32 reserved;		/* 0 */
};

struct mlos_ml_pool_destroy {
	__u32 pool_id;		/* in */
	__u32 reserved;		/* 0 */
};

#define MLOS_ML_BUF_ZERO	(1U << 0)	/* clear the pages before handing them out */

struct mlos_ml_buf_alloc {
	__u32 pool_id;		/* in */
	__u32 flags;		/* in: MLOS_ML_BUF_* */
	__u64 size;		/* in: bytes (> 0); out: rounded up to pages */
	__s32 fd;		/* out: buffer descriptor (O_CLOEXEC), mmap it */
	__u32 reserved;		/* 0 */
};

/* Issued on a buffer descriptor (not the device): what it is. Any other fd: -ENOTTY. */
struct mlos_ml_buf_info {
	__u64 size;		/* out: bytes mapped by the buffer */
	__s32 numa_node;	/* out: node its pool was asked for, MLOS_ML_NUMA_ANY */
	__u32 reserved0;	/* 0 */
	__u64 reserved[2];	/* 0 */
};

struct mlos_ml_pool_stats {
	__u32 pool_id;		/* in */
	__s32 numa_node;	/* out: requested node */
	__u64 size;		/* out: bytes reserved */
	__u64 free;		/* out: bytes not in any buffer */
	__u64 peak_used;	/* out: highest bytes in buffers at once */
	__u64 nr_buffers;	/* out: live buffers */
	__u64 allocs;		/* out: successful allocations */
	__u64 alloc_failures;	/* out: allocations refused for lack of space */
	__u64 reserved[2];	/* 0 */
};

/* ---- scheduler (enable_scheduler) --------------------------------------- */

#define MLOS_ML_CLASS_LATENCY		1	/* SCHED_FIFO on the reserved CPUs + CPU latency QoS */
#define MLOS_ML_CLASS_THROUGHPUT	2	/* SCHED_OTHER nice 0, off the reserved CPUs */
#define MLOS_ML_CLASS_BACKGROUND	3	/* SCHED_IDLE, off the reserved CPUs */

struct mlos_ml_sched_register {
	__s32 tid;		/* in: thread id, 0 = the caller */
	__u32 thread_class;	/* in: MLOS_ML_CLASS_* */
	__u32 rt_priority;	/* in: 1..99 for LATENCY, 0 = module default */
	__u32 flags;		/* in: 0 */
	__u64 cpu_mask;		/* in: CPUs 0..63 for LATENCY, 0 = reserved_cpus param */
	__u64 reserved[2];	/* 0 */
};

struct mlos_ml_sched_unregister {
	__s32 tid;		/* in: 0 = the caller */
	__u32 reserved;		/* 0 */
};

struct mlos_ml_sched_stats {
	__s32 tid;		/* in: 0 = the caller */
	__u32 thread_class;	/* out */
	__u64 preemptions;	/* out: involuntary switches since registration */
	__u64 voluntary;	/* out: voluntary switches since registration */
	__u64 reserved[2];	/* 0 */
};

/* ---- GPU manager (enable_gpu_manager) ----------------------------------- */

#define MLOS_ML_GPU_ANY		(-1)
#define MLOS_ML_MAX_GPUS	16

struct mlos_ml_gpu_info {
	__u32 index;
	__u16 vendor;
	__u16 device;
	__u32 pci_class;	/* 24-bit class code */
	__u16 domain;
	__u8 bus;
	__u8 devfn;
	__u64 capacity;		/* bytes leasable (admin-set; default: largest BAR) */
	__u64 used;		/* bytes leased */
	__u32 nr_leases;
	__u32 reserved;
};

struct mlos_ml_gpu_list {
	__u32 count;		/* in: entries room at gpus; out: devices found */
	__u32 reserved;		/* 0 */
	__u64 gpus;		/* in: user pointer to struct mlos_ml_gpu_info[count] */
};

struct mlos_ml_gpu_set_capacity {	/* CAP_SYS_ADMIN */
	__u32 index;		/* in */
	__u32 reserved;		/* 0 */
	__u64 capacity;		/* in: bytes; below current use is refused (-EBUSY) */
};

struct mlos_ml_gpu_lease {
	__u64 size;		/* in: bytes (> 0) */
	__s32 gpu;		/* in: index or MLOS_ML_GPU_ANY (least loaded); out: chosen */
	__u32 lease_id;		/* out */
	__u32 flags;		/* in: 0 */
	__u32 reserved;		/* 0 */
};

struct mlos_ml_gpu_release {
	__u32 lease_id;		/* in */
	__u32 reserved;		/* 0 */
};

/* ---- whole-module figures ----------------------------------------------- */

struct mlos_ml_stats {
	__u64 pools;		/* live pools (all descriptors) */
	__u64 buffers;		/* live buffers */
	__u64 pinned_bytes;	/* bytes reserved by live pools */
	__u64 sched_threads[4];	/* registered threads by class (index = class) */
	__u64 qos_active;	/* 1 while a CPU latency QoS request is held */
	__u64 gpus;		/* devices discovered */
	__u64 leases;		/* live GPU leases */
	__u64 leased_bytes;
	__u64 reserved[4];	/* 0 */
};

#define MLOS_ML_IOC_VERSION	_IOWR(MLOS_ML_IOC_MAGIC, 0x00, struct mlos_ml_version)
#define MLOS_ML_IOC_STATS	_IOWR(MLOS_ML_IOC_MAGIC, 0x01, struct mlos_ml_stats)
#define MLOS_ML_IOC_POOL_CREATE	_IOWR(MLOS_ML_IOC_MAGIC, 0x10, struct mlos_ml_pool_create)
#define MLOS_ML_IOC_POOL_DESTROY _IOWR(MLOS_ML_IOC_MAGIC, 0x11, struct mlos_ml_pool_destroy)
#define MLOS_ML_IOC_BUF_ALLOC	_IOWR(MLOS_ML_IOC_MAGIC, 0x12, struct mlos_ml_buf_alloc)
#define MLOS_ML_IOC_POOL_STATS	_IOWR(MLOS_ML_IOC_MAGIC, 0x13, struct mlos_ml_pool_stats)
#define MLOS_ML_IOC_BUF_INFO	_IOWR(MLOS_ML_IOC_MAGIC, 0x14, struct mlos_ml_buf_info)
#define MLOS_ML_IOC_SCHED_REGISTER _IOWR(MLOS_ML_IOC_MAGIC, 0x20, struct mlos_ml_sched_register)
#define MLOS_ML_IOC_SCHED_UNREGISTER _IOWR(MLOS_ML_IOC_MAGIC, 0x21, struct mlos_ml_sched_unregister)
#define MLOS_ML_IOC_SCHED_STATS	_IOWR(MLOS_ML_IOC_MAGIC, 0x22, struct mlos_ml_sched_stats)
#define MLOS_ML_IOC_GPU_LIST	_IOWR(MLOS_ML_IOC_MAGIC, 0x30, struct mlos_ml_gpu_list)
#define MLOS_ML_IOC_GPU_SET_CAPACITY _IOWR(MLOS_ML_IOC_MAGIC, 0x31, struct mlos_ml_gpu_set_capacity)
#define MLOS_ML_IOC_GPU_LEASE	_IOWR(MLOS_ML_IOC_MAGIC, 0x32, struct mlos_ml_gpu_lease)
#define MLOS_ML_IOC_GPU_RELEASE	_IOWR(MLOS_ML_IOC_MAGIC, 0x33, struct mlos_ml_gpu_release)

#endif /* _UAPI_MLOS_ML_H */
