/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mlos-ml fuzzers: the random source and the argument filler shared by the
 * single-threaded fuzzer and the multi-threaded one. Each thread owns its
 * struct rng, so a run replays from its printed seed (modulo scheduling).
 */
#ifndef MLOS_ML_SELFTEST_FUZZ_H
#define MLOS_ML_SELFTEST_FUZZ_H

#include <stdint.h>
#include <string.h>

#include "common.h"

struct rng {
	uint64_t s;
};

static inline void rng_seed(struct rng *r, uint64_t seed)
{
	r->s = seed ? seed : 1;
}

static inline uint64_t rnd(struct rng *r)
{
	/* xorshift64*: fast and reproducible from the printed seed */
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 2685821657736338717ULL;
}

static inline uint64_t pick(struct rng *r, uint64_t n)
{
	return n ? rnd(r) % n : 0;
}

static const unsigned long fuzz_cmds[] = {
	MLOS_ML_IOC_VERSION, MLOS_ML_IOC_STATS, MLOS_ML_IOC_POOL_CREATE,
	MLOS_ML_IOC_POOL_DESTROY, MLOS_ML_IOC_BUF_ALLOC, MLOS_ML_IOC_POOL_STATS,
	MLOS_ML_IOC_SCHED_REGISTER, MLOS_ML_IOC_SCHED_UNREGISTER, MLOS_ML_IOC_SCHED_STATS,
	MLOS_ML_IOC_GPU_LIST, MLOS_ML_IOC_GPU_SET_CAPACITY, MLOS_ML_IOC_GPU_LEASE,
	MLOS_ML_IOC_GPU_RELEASE,
};
#define FUZZ_NCMDS (sizeof(fuzz_cmds) / sizeof(fuzz_cmds[0]))

/* Mostly a real command; sometimes one of our magic that does not exist, or anything. */
static inline unsigned long fuzz_cmd(struct rng *r)
{
	switch (pick(r, 20)) {
	case 0:
		return _IOC(pick(r, 4), MLOS_ML_IOC_MAGIC, pick(r, 256), pick(r, 512));
	case 1:
		return (unsigned long)(uint32_t)rnd(r);
	default:
		return fuzz_cmds[pick(r, FUZZ_NCMDS)];
	}
}

/* Small, often valid, sometimes wild values for an argument field. */
static inline uint64_t plausible(struct rng *r)
{
	switch (pick(r, 8)) {
	case 0: return 0;
	case 1: return pick(r, 4);
	case 2: return pick(r, 64);
	case 3: return 4096 * (1 + pick(r, 64));
	case 4: return pick(r, 1 << 20) + 1;
	case 5: return (uint64_t)-1 - pick(r, 2);
	case 6: return 1ULL << pick(r, 64);
	default: return rnd(r);
	}
}

/* Writes a random but mostly plausible argument struct for cmd (size bytes) at p. */
static inline void fuzz_fill(struct rng *r, unsigned long cmd, void *p, size_t size,
			     int self_tid)
{
	union {
		struct mlos_ml_pool_create pc;
		struct mlos_ml_buf_alloc ba;
		struct mlos_ml_sched_register sr;
		struct mlos_ml_gpu_lease gl;
		struct mlos_ml_gpu_list gli;
		unsigned char raw[512];
	} u;
	size_t i;

	if (size > sizeof(u))
		size = sizeof(u);
	memset(&u, 0, sizeof(u));
	if (pick(r, 10) == 0) {		/* pure noise */
		for (i = 0; i < size; i++)
			u.raw[i] = rnd(r);
		memcpy(p, &u, size);
		return;
	}
	switch (cmd) {
	case MLOS_ML_IOC_POOL_CREATE:
		u.pc.size = pick(r, 4) ? 4096 * (1 + pick(r, 512)) : plausible(r);
		u.pc.numa_node = pick(r, 4) ? -1 : (int)plausible(r);
		break;
	case MLOS_ML_IOC_BUF_ALLOC:
		u.ba.pool_id = 1 + pick(r, 8);
		u.ba.size = pick(r, 4) ? 4096 * (1 + pick(r, 64)) - pick(r, 100) : plausible(r);
		u.ba.flags = pick(r, 4) ? 0 : pick(r, 4);
		break;
	case MLOS_ML_IOC_SCHED_REGISTER:
		u.sr.tid = pick(r, 3) == 0 ? self_tid : pick(r, 3) == 0 ? (int)pick(r, 300) : 0;
		u.sr.thread_class = pick(r, 5);
		u.sr.rt_priority = pick(r, 3) ? 0 : pick(r, 120);
		u.sr.cpu_mask = pick(r, 3) ? 0 : plausible(r);
		break;
	case MLOS_ML_IOC_GPU_LEASE:
		u.gl.size = pick(r, 2) ? (1 + pick(r, 32)) << 20 : plausible(r);
		u.gl.gpu = (int)pick(r, 6) - 2;
		break;
	case MLOS_ML_IOC_GPU_LIST:
		u.gli.count = pick(r, 3) ? pick(r, 20) : plausible(r);
		u.gli.gpus = 0;		/* the caller points it somewhere */
		break;
	default:
		for (i = 0; i < 8 && i * 4 < size; i++)
			((uint32_t *)u.raw)[i] = pick(r, 3) ? pick(r, 16) : plausible(r);
		break;
	}
	if (size && pick(r, 8) == 0)	/* a stray bit in a reserved or out field */
		u.raw[pick(r, size)] ^= 1 << pick(r, 8);
	memcpy(p, &u, size);
}

#endif
