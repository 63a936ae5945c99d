// SPDX-License-Identifier: GPL-2.0-only
/*
 * mlos-ml: the ML-aware scheduler. A process registers threads with a class;
 * the module applies the class's policy, counts the thread's preemptions, and
 * restores the policy, priority and CPU mask it found on unregister or when
 * the descriptor closes.
 *
 *   latency     SCHED_FIFO (rt_priority) on the reserved CPUs, plus a CPU
 *               latency QoS request while any latency thread is registered
 *   throughput  SCHED_OTHER nice 0, kept off the reserved CPUs
 *   background  SCHED_IDLE, kept off the reserved CPUs
 *
 * sched_setattr_nocheck() skips the kernel's permission checks, so this file
 * makes its own: a caller may register threads of its own process; threads
 * of other processes, and FIFO priorities above the rt_priority parameter,
 * need CAP_SYS_NICE. Kernel threads are never touched. Access to the device
 * (group mlos) is what grants real-time scheduling, the way rtkit does.
 * Children forked by a latency thread start as SCHED_OTHER (reset on fork).
 */
#define pr_fmt(fmt) "mlos-ml: " fmt

#include <linux/cpumask.h>
#include <linux/capability.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/pm_qos.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <uapi/linux/sched/types.h>

#include "compat.h"
#include "mlos_ml.h"

static char mlos_reserved_cpus[64];
module_param_string(reserved_cpus, mlos_reserved_cpus, sizeof(mlos_reserved_cpus), 0444);
MODULE_PARM_DESC(reserved_cpus, "CPU list for latency-critical threads (e.g. \"1\" or \"2-3\"); empty: no pinning");

struct mlos_sched_reg {
	struct list_head file_node;	/* in mlos_file.sched_regs */
	struct list_head global_node;	/* in mlos_sched_all */
	struct pid *pid;
	u32 thread_class;
	struct sched_attr orig;
	cpumask_var_t orig_mask;
	bool mask_changed;
	unsigned long nivcsw0, nvcsw0;
};

static DEFINE_MUTEX(mlos_sched_mutex);	/* guards mlos_sched_all and the QoS request */
static LIST_HEAD(mlos_sched_all);
static struct pm_qos_request mlos_qos;
static unsigned int mlos_qos_users;
static cpumask_var_t mlos_reserved_mask;

int mlos_sched_init(void)
{
	int ret;

	if (!zalloc_cpumask_var(&mlos_reserved_mask, GFP_KERNEL))
		return -ENOMEM;
	if (!mlos_reserved_cpus[0])
		return 0;
	ret = cpulist_parse(mlos_reserved_cpus, mlos_reserved_mask);
	if (ret || !cpumask_subset(mlos_reserved_mask, cpu_possible_mask)) {
		pr_err("reserved_cpus=\"%s\" is not a list of possible CPUs\n", mlos_reserved_cpus);
		free_cpumask_var(mlos_reserved_mask);
		return -EINVAL;
	}
	return 0;
}

void mlos_sched_exit(void)
{
	/* Every descriptor is closed before module exit, so nothing is registered here. */
	WARN_ON(!list_empty(&mlos_sched_all));
	free_cpumask_var(mlos_reserved_mask);
}

static struct task_struct *mlos_sched_task(s32 tid)
{
	struct task_struct *task;
	struct pid *pid;

	if (!tid)
		return get_task_struct(current);
	if (tid < 0)
		return ERR_PTR(-EINVAL);
	pid = find_get_pid(tid);
	if (!pid)
		return ERR_PTR(-ESRCH);
	task = get_pid_task(pid, PIDTYPE_PID);
	put_pid(pid);
	return task ? task : ERR_PTR(-ESRCH);
}

/* Target CPUs for a class; false when the class leaves the mask alone. */
static int mlos_sched_mask(u32 thread_class, u64 cpu_mask, struct cpumask *out)
{
	unsigned int cpu;

	cpumask_clear(out);
	if (thread_class == MLOS_ML_CLASS_LATENCY && cpu_mask) {
		for (cpu = 0; cpu < 64; cpu++) {
			if (!(cpu_mask & BIT_ULL(cpu)))
				continue;
			if (cpu >= nr_cpu_ids)
				return -EINVAL;
			cpumask_set_cpu(cpu, out);
		}
		cpumask_and(out, out, cpu_online_mask);
		return cpumask_empty(out) ? -EINVAL : 1;
	}
	if (cpumask_empty(mlos_reserved_mask))
		return 0;
	if (thread_class == MLOS_ML_CLASS_LATENCY)
		cpumask_and(out, mlos_reserved_mask, cpu_online_mask);
	else
		cpumask_andnot(out, cpu_online_mask, mlos_reserved_mask);
	return cpumask_empty(out) ? 0 : 1;
}

static void mlos_sched_qos_get(void)
{
	if (mlos_latency_qos_us < 0)
		return;
	if (mlos_qos_users++ == 0) {
		cpu_latency_qos_add_request(&mlos_qos, mlos_latency_qos_us);
		atomic64_set(&mlos_counters.qos_active, 1);
	}
}

static void mlos_sched_qos_put(void)
{
	if (mlos_latency_qos_us < 0)
		return;
	if (--mlos_qos_users == 0) {
		cpu_latency_qos_remove_request(&mlos_qos);
		atomic64_set(&mlos_counters.qos_active, 0);
	}
}

static void mlos_sched_reap(struct mlos_file *mf);

long mlos_sched_register(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_sched_register req;
	struct sched_attr attr = { .size = sizeof(attr) };
	struct mlos_sched_reg *reg, *other;
	struct task_struct *task;
	cpumask_var_t mask;
	int use_mask, ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.flags || req.reserved[0] || req.reserved[1])
		return -EINVAL;
	if (req.thread_class < MLOS_ML_CLASS_LATENCY || req.thread_class > MLOS_ML_CLASS_BACKGROUND)
		return -EINVAL;
	if (req.rt_priority > 99 ||
	    (req.thread_class != MLOS_ML_CLASS_LATENCY && (req.rt_priority || req.cpu_mask)))
		return -EINVAL;
	if (!zalloc_cpumask_var(&mask, GFP_KERNEL))
		return -ENOMEM;
	use_mask = mlos_sched_mask(req.thread_class, req.cpu_mask, mask);
	if (use_mask < 0) {
		ret = use_mask;
		goto out_free_mask;
	}
	task = mlos_sched_task(req.tid);
	if (IS_ERR(task)) {
		ret = PTR_ERR(task);
		goto out_free_mask;
	}
	if ((task->flags & PF_KTHREAD) ||
	    (!same_thread_group(current, task) && !capable(CAP_SYS_NICE))) {
		ret = -EPERM;
		goto out_put_task;
	}
	if (req.rt_priority > mlos_rt_priority && !capable(CAP_SYS_NICE)) {
		ret = -EPERM;
		goto out_put_task;
	}
	if (task->policy == SCHED_DEADLINE) {
		ret = -EBUSY;	/* deadline threads have their own contract; leave them */
		goto out_put_task;
	}

	reg = kzalloc(sizeof(*reg), GFP_KERNEL);
	if (!reg || !zalloc_cpumask_var(&reg->orig_mask, GFP_KERNEL)) {
		kfree(reg);
		ret = -ENOMEM;
		goto out_put_task;
	}

	mutex_lock(&mlos_sched_mutex);
	mlos_sched_reap(mf);
	list_for_each_entry(other, &mlos_sched_all, global_node) {
		if (other->pid == task_pid(task)) {
			ret = -EBUSY;
			goto out_unlock;
		}
	}
	reg->orig.size = sizeof(reg->orig);
	reg->orig.sched_policy = task->policy;
	reg->orig.sched_priority = task->rt_priority;
	reg->orig.sched_nice = task_nice(task);
	reg->orig.sched_flags = task->sched_reset_on_fork ? SCHED_FLAG_RESET_ON_FORK : 0;
	cpumask_copy(reg->orig_mask, &task->cpus_mask);

	switch (req.thread_class) {
	case MLOS_ML_CLASS_LATENCY:
		attr.sched_policy = SCHED_FIFO;
		attr.sched_priority = req.rt_priority ? req.rt_priority : mlos_rt_priority;
		attr.sched_flags = SCHED_FLAG_RESET_ON_FORK;	/* no inherited RT children */
		break;
	case MLOS_ML_CLASS_THROUGHPUT:
		attr.sched_policy = SCHED_NORMAL;
		break;
	default:
		attr.sched_policy = SCHED_IDLE;
		break;
	}
	ret = sched_setattr_nocheck(task, &attr);
	if (ret)
		goto out_unlock;
	if (use_mask) {
		ret = set_cpus_allowed_ptr(task, mask);
		if (ret) {
			sched_setattr_nocheck(task, &reg->orig);
			goto out_unlock;
		}
		reg->mask_changed = true;
	}
	if (req.thread_class == MLOS_ML_CLASS_LATENCY)
		mlos_sched_qos_get();

	reg->pid = get_task_pid(task, PIDTYPE_PID);
	reg->thread_class = req.thread_class;
	reg->nivcsw0 = task->nivcsw;
	reg->nvcsw0 = task->nvcsw;
	list_add(&reg->global_node, &mlos_sched_all);
	mutex_lock(&mf->lock);
	list_add(&reg->file_node, &mf->sched_regs);
	mutex_unlock(&mf->lock);
	mutex_unlock(&mlos_sched_mutex);
	atomic64_inc(&mlos_counters.sched_threads[req.thread_class]);
	mlos_dbg(1, "thread %d registered as class %u\n", task_pid_nr(task), req.thread_class);
	put_task_struct(task);
	free_cpumask_var(mask);
	return 0;

out_unlock:
	mutex_unlock(&mlos_sched_mutex);
	free_cpumask_var(reg->orig_mask);
	kfree(reg);
out_put_task:
	put_task_struct(task);
out_free_mask:
	free_cpumask_var(mask);
	return ret;
}

/* Puts the thread back as it was found; called with mlos_sched_mutex held, reg unlinked. */
static void mlos_sched_restore(struct mlos_sched_reg *reg)
{
	struct task_struct *task = get_pid_task(reg->pid, PIDTYPE_PID);

	if (task) {
		if (sched_setattr_nocheck(task, &reg->orig))
			pr_warn_ratelimited("could not restore the policy of thread %d\n",
					    task_pid_nr(task));
		if (reg->mask_changed)
			set_cpus_allowed_ptr(task, reg->orig_mask);
		put_task_struct(task);
	}
	if (reg->thread_class == MLOS_ML_CLASS_LATENCY)
		mlos_sched_qos_put();
	atomic64_dec(&mlos_counters.sched_threads[reg->thread_class]);
	put_pid(reg->pid);
	free_cpumask_var(reg->orig_mask);
	kfree(reg);
}

/*
 * This descriptor's registration of tid (0: the caller), or NULL; with mf->lock held.
 * Matched by struct pid, not by number: a registration outliving its thread holds
 * that thread's pid, which no new thread reusing the number can be mistaken for.
 */
static struct mlos_sched_reg *mlos_sched_find(struct mlos_file *mf, s32 tid)
{
	struct mlos_sched_reg *reg, *found = NULL;
	struct pid *want;

	rcu_read_lock();
	want = tid ? find_vpid(tid) : task_pid(current);
	if (want)
		list_for_each_entry(reg, &mf->sched_regs, file_node)
			if (reg->pid == want) {
				found = reg;
				break;
			}
	rcu_read_unlock();
	return found;
}

/*
 * Ends this descriptor's registrations whose thread is gone (nothing to restore), so a
 * register-and-exit loop cannot grow the list without bound; with mlos_sched_mutex held.
 */
static void mlos_sched_reap(struct mlos_file *mf)
{
	struct mlos_sched_reg *reg, *tmp;
	LIST_HEAD(dead);

	mutex_lock(&mf->lock);
	list_for_each_entry_safe(reg, tmp, &mf->sched_regs, file_node)
		if (!pid_has_task(reg->pid, PIDTYPE_PID))
			list_move(&reg->file_node, &dead);
	mutex_unlock(&mf->lock);
	list_for_each_entry_safe(reg, tmp, &dead, file_node) {
		list_del(&reg->global_node);
		mlos_sched_restore(reg);
	}
}

long mlos_sched_unregister(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_sched_unregister req;
	struct mlos_sched_reg *reg;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.reserved || req.tid < 0)
		return -EINVAL;
	mutex_lock(&mlos_sched_mutex);
	/* An exited thread's registration ends here too (its tid finds nothing any more). */
	mlos_sched_reap(mf);
	mutex_lock(&mf->lock);
	reg = mlos_sched_find(mf, req.tid);
	if (reg)
		list_del(&reg->file_node);
	mutex_unlock(&mf->lock);
	if (!reg) {
		mutex_unlock(&mlos_sched_mutex);
		return -ENOENT;
	}
	list_del(&reg->global_node);
	mlos_sched_restore(reg);
	mutex_unlock(&mlos_sched_mutex);
	return 0;
}

long mlos_sched_stats(struct mlos_file *mf, void __user *arg)
{
	struct mlos_ml_sched_stats st;
	struct mlos_sched_reg *reg;
	struct task_struct *task = NULL;

	if (copy_from_user(&st, arg, sizeof(st)))
		return -EFAULT;
	if (st.tid < 0 || st.thread_class || st.preemptions || st.voluntary ||
	    st.reserved[0] || st.reserved[1])
		return -EINVAL;
	mutex_lock(&mf->lock);
	reg = mlos_sched_find(mf, st.tid);
	if (reg) {
		task = get_pid_task(reg->pid, PIDTYPE_PID);
		st.thread_class = reg->thread_class;
		if (task) {
			st.preemptions = task->nivcsw - reg->nivcsw0;
			st.voluntary = task->nvcsw - reg->nvcsw0;
			put_task_struct(task);
		}
	}
	mutex_unlock(&mf->lock);
	if (!reg)
		return -ENOENT;
	return copy_to_user(arg, &st, sizeof(st)) ? -EFAULT : 0;
}

void mlos_sched_release_all(struct mlos_file *mf)
{
	struct mlos_sched_reg *reg, *tmp;

	mutex_lock(&mlos_sched_mutex);
	list_for_each_entry_safe(reg, tmp, &mf->sched_regs, file_node) {
		list_del(&reg->file_node);
		list_del(&reg->global_node);
		mlos_sched_restore(reg);
	}
	mutex_unlock(&mlos_sched_mutex);
}
