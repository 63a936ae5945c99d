/* SPDX-License-Identifier: GPL-2.0-only */
/* mlos-ml selftests: TAP helpers and module figures shared by the test and the fuzzer. */
#ifndef MLOS_ML_SELFTEST_COMMON_H
#define MLOS_ML_SELFTEST_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../include/uapi/mlos_ml.h"

#define PARAM_DIR "/sys/module/mlos_ml/parameters/"
#define STATS_FILE "/sys/class/misc/mlos-ml/stats"

/* A bool parameter reads back as Y/N (or 1/0 on some kernels). */
static inline int read_param_bool(const char *name)
{
	char path[256], buf[16] = "";
	FILE *f;

	snprintf(path, sizeof(path), PARAM_DIR "%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return buf[0] == 'Y' || buf[0] == 'y' || buf[0] == '1';
}

static inline long read_param_long(const char *name)
{
	char path[256], buf[64] = "";
	FILE *f;

	snprintf(path, sizeof(path), PARAM_DIR "%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return strtol(buf, NULL, 0);
}

/* Returns the ioctl's result as 0 or -errno, the kernel's convention. */
static inline int mlos_ioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) < 0 ? -errno : 0;
}

static inline int mlos_stats(int fd, struct mlos_ml_stats *s)
{
	memset(s, 0, sizeof(*s));
	return mlos_ioctl(fd, MLOS_ML_IOC_STATS, s);
}

#endif
