# SPDX-License-Identifier: Apache-2.0
"""Scheduler thread registration on the host (no mlos_ml module here: the kernel layer
registers for real in QEMU guests). Thread discovery runs against real libraries: ONNX
Runtime's intra-op pool of a real tiny model, gRPC's own threads; the registration
bookkeeping runs against a recording stand-in for the device, since this host's kernel
cannot load the module."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_models import make_mlp

from mlos_core.backends.base import ModelSource
from mlos_core.backends.capabilities import GenerationParams
from mlos_core.backends.onnx_runtime import OnnxRuntimeBackend
from mlos_core.dataplane import DataPlane, InferRequest, InputTensor
from mlos_core.kernel import mlos_ml
from mlos_core.kernel import native_threads as nt
from mlos_core.kernel.modes import SCHEDULER, Feature
from mlos_core.kernel.thread_registry import LATENCY, THROUGHPUT, ThreadRegistry


def ort_backend(path: Path, intra: int) -> OnnxRuntimeBackend:
    model = make_mlp(path / "1" / "model.onnx")
    return OnnxRuntimeBackend(ModelSource("mlp", "1", model.parent, {"intra_op_threads": intra}))


def gone(threads: list[nt.NativeThread], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(nt.alive(t) for t in threads):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# Model configs may ask for at most this machine's CPUs (backends.base.thread_count).
INTRA_OP = sorted({min(n, os.cpu_count() or 1) for n in (1, 2, 3)})


@pytest.mark.parametrize("intra", INTRA_OP)
def test_ort_intra_op_pool_found_and_ended_by_unload(tmp_path: Path, intra: int) -> None:
    backend = ort_backend(tmp_path, intra)
    me = threading.get_native_id()
    name = nt.name_of(me)
    with nt.spawn_scope() as started:
        backend.load()
    assert nt.name_of(me) == name  # the temporary name is given back
    # ORT runs one share of the work on the calling thread: intra - 1 pool threads.
    assert len(started) == intra - 1, started
    assert all(nt.alive(t) and t.tid != me for t in started)
    out = backend.infer({"input": np.ones((2, 64), np.float32)})
    assert out["output"].shape == (2, 10)
    backend.unload()
    gc.collect()
    assert gone(started)


def test_threads_of_others_are_not_taken() -> None:
    # gRPC's C core names its threads (grpc_global_tim, event_engine...), and Python
    # threads started meanwhile register themselves: neither is a native thread of ours.
    with nt.spawn_scope() as started:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        server.add_insecure_port("127.0.0.1:0")
        server.start()
        helper = threading.Thread(target=time.sleep, args=(0.5,))
        helper.start()
    try:
        assert started == []
        assert len(nt.task_ids()) > len(nt.python_ids())  # gRPC's threads were there
    finally:
        server.stop(0)
        helper.join()


def test_tid_reuse_is_not_mistaken_for_the_thread() -> None:
    me = nt.identify(threading.get_native_id())
    assert me is not None and nt.alive(me)
    assert not nt.alive(nt.NativeThread(me.tid, me.start + 1))
    assert nt.identify(2**22 + 12345) is None
    # Registered where /proc could not tell its start: alive while its task is listed.
    assert nt.alive(nt.NativeThread(me.tid, None))
    assert not nt.alive(nt.NativeThread(2**22 + 12345, None))
    assert nt.unique_name("mlos-load", 1234567) == "mlos-lo-1234567"  # 15 bytes


class RecordingDevice:
    """Stands in for mlos_ml.Device where the module cannot be loaded: records what the
    service asks the scheduler for (the module itself is tested in QEMU guests)."""

    def __init__(self) -> None:
        self.registered: dict[int, tuple[mlos_ml.ThreadClass, list[int] | None]] = {}
        self.calls: list[tuple[str, int]] = []

    def register_thread(self, klass: mlos_ml.ThreadClass, tid: int = 0,
                        cpus: list[int] | None = None) -> None:
        tid = tid or threading.get_native_id()
        if tid in self.registered:
            raise mlos_ml.BusyError(16, "busy")
        self.registered[tid] = (klass, list(cpus) if cpus else None)
        self.calls.append(("register", tid))

    def unregister_thread(self, tid: int = 0) -> None:
        self.calls.append(("unregister", tid))
        if self.registered.pop(tid, None) is None:
            raise mlos_ml.MlosMlError(2, "not registered")

    def thread_stats(self, tid: int = 0) -> mlos_ml.ThreadStats:
        klass, _ = self.registered[tid]
        return mlos_ml.ThreadStats(klass, 0, 1)


def with_scheduler(plane: DataPlane) -> RecordingDevice:
    device = RecordingDevice()
    plane.kernel.threads = ThreadRegistry(device, [1])  # type: ignore[arg-type]
    plane.kernel.features[SCHEDULER] = Feature(True)
    return device


def test_model_threads_registered_per_model_and_dropped_at_unload(
        repo: Path, tmp_path: Path) -> None:
    ort_backend(repo / "wide", 2)
    (repo / "wide" / "config.json").write_text('{"intra_op_threads": 2}')
    plane = DataPlane(make_settings(repo, load_models_at_start=False))  # noqa: F405
    device = with_scheduler(plane)
    try:
        before = set(device.registered)
        plane.load_model("mlp")  # one intra-op thread: nothing of its own
        assert set(device.registered) == before
        plane.load_model("wide")
        native = [tid for tid in device.registered if tid not in before]
        assert len(native) == 1, device.registered
        tid = native[0]
        assert device.registered[tid] == (mlos_ml.ThreadClass.LATENCY, [1])
        assert nt.name_of(tid) == "wide"  # `top -H` shows whose thread it is
        health = plane.health()["features"][SCHEDULER]
        assert health["models"] == {"wide": {LATENCY: 1}} and health["native_threads"] == 1
        text = plane.kernel.render_metrics()
        assert 'mlos_sched_model_threads{model="wide",class="latency"} 1' in text
        assert 'mlos_sched_threads{class="latency"} 1' in text
        thread = nt.identify(tid)
        assert thread is not None
        plane.unload_model("wide")
        assert ("unregister", tid) in device.calls and tid not in device.registered
        gc.collect()
        assert gone([thread])
        text = plane.kernel.render_metrics()
        assert "wide" not in text and 'mlos_sched_threads{class="latency"} 0' in text
        assert plane.health()["features"][SCHEDULER]["models"] == {}
    finally:
        plane.close()


def test_threads_that_exit_are_dropped_once(caplog: pytest.LogCaptureFixture) -> None:
    device = RecordingDevice()
    registry = ThreadRegistry(device, [1])  # type: ignore[arg-type]
    tids: list[int] = []
    threads: list[nt.NativeThread] = []

    def worker() -> None:
        registry.register_current(THROUGHPUT, "aux")
        tids.append(threading.get_native_id())
        threads.append(nt.identify(tids[0]))  # type: ignore[arg-type]
        assert nt.name_of(tids[0]) == f"aux-{tids[0]}"

    with caplog.at_level(logging.DEBUG):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert tids and tids[0] in device.registered
        assert gone(threads)  # join() returns just before the thread ends
        # The module would keep a dead thread's entry (and its class count) until told.
        assert registry.health()["threads"] == {LATENCY: 0, THROUGHPUT: 0}
        assert tids[0] not in device.registered and registry.ended == 1
        for _ in range(3):  # later scrapes: nothing more to drop, nothing logged
            assert registry.figures() == ({}, {})
    assert registry.ended == 1 and registry.failures == 0
    assert not [r for r in caplog.records if r.name.startswith("mlos_core")]


def test_compute_thread_adopts_what_it_starts_and_drops_it_at_the_end() -> None:
    # llama.cpp's OpenMP team works this way: started by the decoding thread at its first
    # decode, named after it; os.fork-free stand-in: a native thread started with ctypes.
    import ctypes

    libc = ctypes.CDLL(None)
    device = RecordingDevice()
    registry = ThreadRegistry(device, [1])  # type: ignore[arg-type]
    seen: dict[str, Any] = {}

    def compute() -> None:
        me = threading.get_native_id()
        registry.register_current(LATENCY, "llm")
        # A native thread (pthread_create of sleep(1)), unknown to Python.
        thread = ctypes.c_ulong()
        fn = ctypes.cast(libc.sleep, ctypes.c_void_p)
        assert libc.pthread_create(ctypes.byref(thread), None, fn, ctypes.c_void_p(1)) == 0
        time.sleep(0.05)
        seen["adopted"] = registry.adopt_started("m", "m")
        seen["again"] = registry.adopt_started("m", "m")  # once per thread and model
        seen["registered"] = dict(device.registered)
        # The model unloads: its share of the team is dropped; the thread stays.
        seen["unloaded"] = registry.release_owner("m"), list(device.registered)
        seen["readopted"] = registry.adopt_started("m2", "m2")  # the next model's first run
        registry.release_owner(me)
        seen["after"] = dict(device.registered)
        libc.pthread_join(thread, None)

    t = threading.Thread(target=compute)
    t.start()
    t.join()
    assert seen["adopted"] == 1 and seen["again"] == 0
    assert len(seen["registered"]) == 2
    assert all(v == (mlos_ml.ThreadClass.LATENCY, [1]) for v in seen["registered"].values())
    assert seen["unloaded"][0] == 1 and seen["unloaded"][1] == [t.native_id]
    assert seen["readopted"] == 1
    assert seen["after"] == {}


def test_userspace_registers_nothing_and_names_nothing(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    assert server.plane.kernel.threads is None
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    assert client.infer("mlp", [inp]).as_numpy("output").shape == (1, 10)
    # The gRPC workers ran their initializer: no scheduler, so no registration, no name.
    names = [nt.name_of(tid) or "" for tid in nt.task_ids()]
    assert not [n for n in names if n.startswith(("grpc-", "inf-", "aux-", "mlos-load"))]
    health = requests.get(f"http://{server.url}/health", timeout=5).json()
    assert health["features"][SCHEDULER]["in_use"] is False
    assert "threads" not in health["features"][SCHEDULER]
    assert "mlos_sched_threads" not in requests.get(f"http://{server.url}/metrics",
                                                    timeout=5).text
    assert os.getpid() in nt.task_ids()


@pytest.mark.llm
def test_llama_engine_thread_and_its_openmp_team_registered_while_loaded(
        repo: Path, tmp_path: Path) -> None:
    # Real llama.cpp (the installed wheel links libgomp): the OpenMP worker starts at the
    # first decode on a thread and carries that thread's name.
    pytest.importorskip("llama_cpp")
    from llm_support import add_model, write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=128)
    add_model(repo, "tiny", gguf, {"threads": 2, "context_size": 128, "max_tokens": 2})
    plane = DataPlane(make_settings(repo, load_models_at_start=False,  # noqa: F405
                                    inference_threads=1))
    device = with_scheduler(plane)
    try:
        plane.load_model("tiny")
        assert plane.health()["features"][SCHEDULER]["models"] == {}  # none at load
        prompt = np.array([b"the"], dtype=object)
        request = InferRequest("tiny", None, [InputTensor("text_input", "BYTES", (1,), prompt)])
        assert plane.infer_blocking(request).outputs[0].data is not None
        # llama.cpp decodes on the model's engine thread (backends/llama_cpp_batch.py):
        # it and the OpenMP team it started at its first decode are latency-critical for
        # as long as the model is loaded.
        engine = dict(device.registered)
        assert len(engine) == 2, engine
        assert {klass for klass, _ in engine.values()} == {mlos_ml.ThreadClass.LATENCY}

        # A generation's own thread (the OpenAI routes' Pump) is registered while it runs,
        # then dropped; the engine's stay.
        backend: Any = plane.backend("tiny")
        seen: dict[str, Any] = {}

        def generate() -> None:
            with plane.kernel.compute_thread("tiny") as first_step_done:
                stream = backend.start(backend.tokenize("the"),
                                       GenerationParams(max_tokens=3, temperature=0.0))
                for i, _chunk in enumerate(stream):
                    if i == 0:
                        first_step_done()
                        seen["during"] = len(device.registered)
            seen["after"] = dict(device.registered)

        t = threading.Thread(target=generate)
        t.start()
        t.join()
        assert seen["during"] == 3 and seen["after"] == engine, seen

        plane.unload_model("tiny")
        assert device.registered == {}  # the engine thread ended, its team was dropped
        assert plane.health()["features"][SCHEDULER]["models"] == {}
        assert "mlos_sched_model_threads{" not in plane.kernel.render_metrics()
    finally:
        plane.close()
