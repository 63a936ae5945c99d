/* SPDX-License-Identifier: GPL-2.0-only */
/* mlos-ml selftests: one TAP runner for the test programs (mlos_ml_test, mlos_ml_race). */
#ifndef MLOS_ML_SELFTEST_TAP_H
#define MLOS_ML_SELFTEST_TAP_H

#include "common.h"

enum { PASS, FAIL, SKIP };
static char reason[256];
static int feat_mem, feat_sched, feat_gpu;
static int always = 1;

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		snprintf(reason, sizeof(reason), __VA_ARGS__);		\
		return FAIL;						\
	}								\
} while (0)

struct test {
	const char *name;
	int (*fn)(void);
	int *feature;		/* &always: runs whatever the module parameters say */
};

/* Reads the module's feature switches, runs each test (skipping, not passing, when the
 * device is absent or the test's feature is off) and prints TAP; exit status 1 on a failure. */
static int run_tests(const struct test *tests, unsigned int n)
{
	unsigned int i, failed = 0;
	int present = access(MLOS_ML_DEVICE, F_OK) == 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	feat_mem = read_param_bool("enable_tmm") == 1;
	feat_sched = read_param_bool("enable_scheduler") == 1;
	feat_gpu = read_param_bool("enable_gpu_manager") == 1;
	printf("TAP version 13\n1..%u\n", n);
	for (i = 0; i < n; i++) {
		int rc;

		if (!present) {
			printf("ok %u - %s # SKIP %s absent\n", i + 1, tests[i].name, MLOS_ML_DEVICE);
			continue;
		}
		if (!*tests[i].feature) {
			printf("ok %u - %s # SKIP feature disabled by its module parameter\n", i + 1,
			       tests[i].name);
			continue;
		}
		reason[0] = 0;
		rc = tests[i].fn();
		if (rc == PASS)
			printf("ok %u - %s\n", i + 1, tests[i].name);
		else if (rc == SKIP)
			printf("ok %u - %s # SKIP %s\n", i + 1, tests[i].name, reason);
		else {
			printf("not ok %u - %s # %s\n", i + 1, tests[i].name, reason);
			failed++;
		}
	}
	return failed ? 1 : 0;
}

#endif
