# SPDX-License-Identifier: Apache-2.0
"""Admission: the one gate every request kind (tensors, text generation, embeddings)
passes. A concurrency limit (503 when full), drain on shutdown (503 while draining, and a
wait until nothing admitted is left), and slots that a request gives back exactly once:
when it finishes, or at its timeout, whichever comes first.

A slot given back at the timeout does not wait for the work to stop: the work is
cancelled (queued tensor work never starts, a generation stops within one token) and a
backend that cannot be interrupted finishes on its thread, so such "zombie" work is
bounded by the inference threads, not by the admission limit."""

from __future__ import annotations

import threading
import time

from ..errors import ServerBusyError


class Slot:
    """One admitted request. `release()` is idempotent and thread-safe."""

    __slots__ = ("_admission", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self, _future: object = None) -> None:
        with self._admission._lock:
            if self._released:
                return
            self._released = True
            self._admission._in_flight -= 1
            if not self._admission._in_flight:
                self._admission._idle.notify_all()

    @property
    def released(self) -> bool:
        return self._released


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self) -> Slot:
        with self._lock:
            if self.draining:
                raise ServerBusyError("the server is shutting down; retry on another instance")
            if self._in_flight >= self.limit:
                raise ServerBusyError(
                    f"{self._in_flight} requests in flight (max_concurrency); retry later"
                )
            self._in_flight += 1
        return Slot(self)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing admitted is in flight (graceful shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True
