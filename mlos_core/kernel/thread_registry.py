# SPDX-License-Identifier: Apache-2.0
"""The service's threads registered with the mlos_ml scheduler, and what ends each one.

Classes: the threads that compute inference are latency-critical (SCHED_FIFO on the
reserved CPUs): the data plane's inference threads, the thread running an LLM generation,
ONNX Runtime's intra-op pool and llama.cpp's OpenMP team. Threads that serve HTTP or gRPC
or run housekeeping (model loads, the asyncio helpers) are throughput.

A registration lives until what owns it ends: a model's native threads (ONNX Runtime's
pool) are dropped when the model unloads; native threads a compute thread started
(libgomp keeps one team per thread that decodes) when that thread's work ends; and any
registration whose thread has exited is dropped at the next look (/health, /metrics), so
neither shows stale entries. The module restores a live thread's policy on unregister.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from . import mlos_ml
from . import native_threads as nt

log = logging.getLogger(__name__)

LATENCY = "latency"
THROUGHPUT = "throughput"
BACKGROUND = "background"
CLASSES = {LATENCY: mlos_ml.ThreadClass.LATENCY, THROUGHPUT: mlos_ml.ThreadClass.THROUGHPUT,
           BACKGROUND: mlos_ml.ThreadClass.BACKGROUND}


@dataclass
class Registration:
    thread: nt.NativeThread
    klass: str
    name: str | None = None  # the unique name given to a service thread
    model: str | None = None  # the model whose backend started it (native threads)
    owner: Hashable | None = None  # what ends it: a model key, or the starting thread's tid
    key: Hashable | None = None  # the model key it was adopted for (its unload drops it)


class ThreadRegistry:
    """Registrations made through one mlos_ml descriptor. Never raises: a refusal is
    logged once, counted and shown on /health; the thread keeps its normal policy."""

    def __init__(self, device: mlos_ml.Device, reserved_cpus: list[int]) -> None:
        self.device = device
        self.reserved_cpus = reserved_cpus
        self._lock = threading.RLock()
        self._regs: dict[int, Registration] = {}
        self._warm: set[tuple[int, Hashable]] = set()
        self.failures = 0
        self.ended = 0
        self.last_error: str | None = None

    # ---- registering -----------------------------------------------------------------
    def _register(self, reg: Registration) -> bool:
        tid = reg.thread.tid
        cpus = self.reserved_cpus if reg.klass == LATENCY else None
        try:
            # 0 is the caller: no tid lookup, and no doubt about the pid namespace.
            self.device.register_thread(
                CLASSES[reg.klass], tid=0 if tid == threading.get_native_id() else tid,
                cpus=cpus)
        except mlos_ml.BusyError:
            return False  # registered already (a restarted loop) or SCHED_DEADLINE
        except (mlos_ml.MlosMlError, ValueError) as exc:
            self.failures += 1
            self.last_error = str(exc)
            if self.failures == 1:
                log.warning("mlos_ml: cannot register thread %d as %s: %s", tid, reg.klass, exc)
            return False
        self._regs[tid] = reg
        return True

    def register_current(self, klass: str, prefix: str | None = None) -> bool:
        """Register the calling thread. With `prefix` it is also given a unique name
        (prefix-tid), which native threads it starts inherit: how they are found later."""
        tid = threading.get_native_id()
        # Without /proc the thread is still registered; only its end goes unnoticed.
        thread = nt.identify(tid) or nt.NativeThread(tid, None)
        name = None
        if prefix is not None:
            name = nt.unique_name(prefix, tid)
            if not nt.rename(tid, name):
                name = None
        with self._lock:
            current = self._regs.get(tid)
            if current is not None and current.thread == thread:
                return True
            return self._register(Registration(thread, klass, name))

    def adopt(self, threads: Iterable[nt.NativeThread], klass: str, model: str | None,
              owner: Hashable, name: str | None = None, key: Hashable | None = None) -> int:
        """Register native threads on behalf of `owner` (and of the model `key`);
        renamed `name` when given (so `top -H` tells them apart). Returns how many were
        registered."""
        count = 0
        with self._lock:
            for thread in threads:
                if thread.tid in self._regs or not nt.alive(thread):
                    continue
                if name is not None:
                    nt.rename(thread.tid, name)
                reg = Registration(thread, klass, None, model, owner, key)
                count += self._register(reg)
        return count

    def adopt_started(self, key: Hashable, model: str | None) -> int:
        """After the calling thread ran `key`'s compute for the first time: register the
        native threads it started (llama.cpp's OpenMP team) in its own class. Once per
        thread and model. They live as long as this thread (libgomp keeps the team for
        the next decode), but are registered for the model: its unload drops them, and
        the next model that runs here adopts them again."""
        tid = threading.get_native_id()
        with self._lock:
            if (tid, key) in self._warm:
                return 0
            self._warm.add((tid, key))
            reg = self._regs.get(tid)
            if reg is None or reg.name is None:
                return 0
            found = nt.started_by(reg.name, exclude=(*self._regs, tid))
            return self.adopt(found, reg.klass, model, owner=tid, key=key)

    # ---- dropping --------------------------------------------------------------------
    def _drop(self, regs: list[Registration]) -> None:
        for reg in regs:
            self._regs.pop(reg.thread.tid, None)
            # ENOENT: the module no longer has it (the descriptor closed); nothing left.
            with contextlib.suppress(mlos_ml.MlosMlError):
                self.device.unregister_thread(reg.thread.tid)

    def release_owner(self, owner: Hashable) -> int:
        """Drop what `owner` (a model key, a thread's tid) started or was adopted for,
        and the owning thread itself when it is registered."""
        with self._lock:
            regs = [r for r in self._regs.values() if owner in (r.owner, r.key)]
            if isinstance(owner, int) and owner in self._regs and \
                    self._regs[owner].owner is None:
                regs.append(self._regs[owner])
            # A thread whose team was dropped adopts it again at its next run.
            masters = {r.owner for r in regs} | {owner}
            self._warm = {w for w in self._warm if w[1] != owner and w[0] not in masters}
            self._drop(regs)
        return len(regs)

    def prune(self) -> int:
        """Drop the registrations of threads that have exited."""
        with self._lock:
            dead = [r for r in self._regs.values() if not nt.alive(r.thread)]
            if dead:
                self._drop(dead)
                self.ended += len(dead)
                gone = {r.thread.tid for r in dead}
                self._warm = {w for w in self._warm if w[0] not in gone}
        return len(dead)

    # ---- reporting -------------------------------------------------------------------
    def snapshot(self) -> list[Registration]:
        self.prune()
        with self._lock:
            return list(self._regs.values())

    def health(self) -> dict[str, Any]:
        regs = self.snapshot()
        models: dict[str, dict[str, int]] = {}
        for r in regs:
            if r.model is not None:
                row = models.setdefault(r.model, {})
                row[r.klass] = row.get(r.klass, 0) + 1
        out: dict[str, Any] = {
            "threads": {k: sum(1 for r in regs if r.klass == k) for k in (LATENCY, THROUGHPUT)},
            "native_threads": sum(1 for r in regs if r.model is not None),
            "models": models,
            "register_failures": self.failures,
            "threads_ended": self.ended,
        }
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def figures(self) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], int]]:
        """Per class: registered threads, their preemptions and voluntary switches; and
        per (model, class): the native threads registered for a model."""
        per_class: dict[str, dict[str, int]] = {}
        per_model: dict[tuple[str, str], int] = {}
        for reg in self.snapshot():
            row = per_class.setdefault(reg.klass, {"threads": 0, "preemptions": 0,
                                                   "voluntary": 0})
            try:
                stats = self.device.thread_stats(reg.thread.tid)
            except mlos_ml.MlosMlError:
                continue
            row["threads"] += 1
            row["preemptions"] += stats.preemptions
            row["voluntary"] += stats.voluntary
            if reg.model is not None:
                per_model[reg.model, reg.klass] = per_model.get((reg.model, reg.klass), 0) + 1
        return per_class, per_model
