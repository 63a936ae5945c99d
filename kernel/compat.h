/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mlos-ml: the kernel API differences between 5.15, 6.1, 6.8 and 6.12, in one
 * place, so the object files read as if there were one kernel.
 */
#ifndef _MLOS_ML_COMPAT_H
#define _MLOS_ML_COMPAT_H

#include <linux/version.h>
#include <linux/mm.h>
#include <linux/fs.h>

/* 6.3 made vma->vm_flags read-only; vm_flags_set() took over. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 3, 0)
static inline void mlos_vm_flags_set(struct vm_area_struct *vma, unsigned long flags)
{
	vma->vm_flags |= flags;
}
#else
#define mlos_vm_flags_set(vma, flags) vm_flags_set(vma, flags)
#endif

/* 6.12 removed no_llseek; noop_llseek is there on every supported kernel. */
#define mlos_llseek noop_llseek

/* The DMA_BUF namespace is not used; kept here should exports move to namespaces. */

#endif /* _MLOS_ML_COMPAT_H */
