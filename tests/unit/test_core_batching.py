# SPDX-License-Identifier: Apache-2.0
"""Dynamic batching with the real clients: concurrent requests become one model execution
(counted by the server: mlos_batch_executions_total), results go back to the right
request, a bad request fails alone, requests of different shapes are not merged, a
request that timed out while queued leaves its batch mates correct, and shared-memory
inputs and outputs pass through the batcher.

Batches are made deterministic, not lucky: the queue delay is long (seconds) and a batch
is taken as soon as the preferred batch size is queued, so the test decides the batch by
how many requests it sends, never by how fast they arrive."""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from core_fixtures import make_settings
from core_models import make_lookup, make_mlp, make_scale, mlp_reference
from tritonclient.utils import InferenceServerException

from mlos_core.kernel.pools import REQUEST
from mlos_core.server import MLOSServer

DELAY_US = 5_000_000  # far longer than any batch takes to arrive


def _pbtxt(preferred: int, max_batch: int = 8) -> str:
    return (f"max_batch_size: {max_batch}\n"
            f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] "
            f"max_queue_delay_microseconds: {DELAY_US} }}\n")


def _yaml(preferred: int, max_batch: int = 8) -> str:
    return (f"max_batch_size: {max_batch}\n"
            f"dynamic_batching: {{preferred_batch_size: [{preferred}], "
            f"max_queue_delay_microseconds: {DELAY_US}}}\n")


def _repository(root: Path, kind: str = "pbtxt") -> Path:
    write, name = (_pbtxt, "config.pbtxt") if kind == "pbtxt" else (_yaml, "config.yaml")
    make_mlp(root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / name).write_text(write(4))
    make_scale(root / "wide" / "1" / "model.onnx", ["w"])  # any width: shapes differ
    (root / "wide" / name).write_text(write(4))
    make_lookup(root / "lookup" / "1" / "model.onnx")
    (root / "lookup" / name).write_text(write(4))
    make_scale(root / "pair" / "1" / "model.onnx", [3])
    (root / "pair" / name).write_text(write(2))
    make_mlp(root / "nodelay" / "1" / "model.onnx")  # batches whatever queued meanwhile
    (root / "nodelay" / name).write_text(
        "max_batch_size: 4\ndynamic_batching {}\n" if kind == "pbtxt" else
        "max_batch_size: 4\ndynamic_batching: {}\n")
    return root


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., MLOSServer]]:
    servers: list[MLOSServer] = []

    def run(kind: str = "pbtxt", **settings: Any) -> MLOSServer:
        repo = _repository(tmp_path / f"models-{len(servers)}", kind)
        servers.append(MLOSServer(make_settings(repo, **settings)).start_background())
        return servers[-1]

    yield run
    for server in servers:
        server.stop_background()


def _batches(server: MLOSServer, model: str) -> tuple[int, int, int]:
    text = requests.get(f"http://{server.url}/metrics", timeout=10).text
    counts = []
    for metric in ("executions", "requests", "rows"):
        found = re.search(rf'^mlos_batch_{metric}_total{{model="{model}"}} (\d+)$', text, re.M)
        counts.append(int(found.group(1)) if found else 0)
    return counts[0], counts[1], counts[2]


def _together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Runs the calls at once, one thread each; returns results or exceptions in order."""
    out: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return out


def _infer(server: MLOSServer, protocol: str, model: str, name: str, x: np.ndarray,
           out: str) -> Callable[[], np.ndarray]:
    mod: Any = httpclient if protocol == "http" else grpcclient
    url = server.url if protocol == "http" else f"127.0.0.1:{server.grpc_port}"
    client = mod.InferenceServerClient(url)
    datatype = "INT64" if x.dtype == np.int64 else "FP32" if x.dtype == np.float32 else "FP64"
    inp = mod.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return lambda: client.infer(model, [inp]).as_numpy(out)


@pytest.mark.parametrize("kind", ["pbtxt", "yaml"])
def test_concurrent_requests_run_as_one_execution(start: Callable[..., MLOSServer],
                                                   kind: str) -> None:
    server = start(kind)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((rows, 64), dtype=np.float32) for rows in (1, 2, 1)]
    calls = [_infer(server, p, "mlp", "input", x, "output")
             for p, x in zip(("http", "grpc", "http"), xs, strict=True)]
    results = _together(calls)  # 4 rows: the preferred batch size
    for x, y in zip(xs, results, strict=True):
        assert isinstance(y, np.ndarray), y
        np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
    assert _batches(server, "mlp") == (1, 3, 4)


def test_different_shapes_are_not_merged(start: Callable[..., MLOSServer]) -> None:
    server = start()
    xs = [np.full((1, w), i, np.float32) for i, w in enumerate((3, 5, 3, 5))]
    results = _together([_infer(server, "http", "wide", "x", x, "y") for x in xs])
    for x, y in zip(xs, results, strict=True):
        np.testing.assert_array_equal(y, 2 * x)
    assert _batches(server, "wide") == (2, 4, 4)  # one batch taken, two executions


def test_a_bad_request_fails_alone(start: Callable[..., MLOSServer]) -> None:
    server = start()
    rng = np.random.default_rng(3)
    good = [rng.standard_normal((1, 64), dtype=np.float32) for _ in range(4)]
    bad = np.zeros((1, 64), np.float64)  # FP64 for an FP32 input: refused before it queues
    calls = [_infer(server, "http", "mlp", "input", x, "output") for x in (*good[:2], bad)]
    calls += [_infer(server, "grpc", "mlp", "input", x, "output") for x in good[2:]]
    results = _together(calls)
    assert isinstance(results[2], InferenceServerException) and "FP32" in str(results[2])
    for x, y in zip(good, (*results[:2], *results[3:]), strict=True):
        np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
    assert _batches(server, "mlp") == (1, 4, 4)

    # A value the model itself rejects (an index out of range) fails only its request:
    # the batch is rerun one request at a time.
    xs = [np.array([[i]], np.int64) for i in (1, 99, 2, 3)]
    results = _together([_infer(server, "grpc", "lookup", "x", x, "y") for x in xs])
    assert isinstance(results[1], InferenceServerException)
    for x, y in zip(xs, results, strict=True):
        if int(x[0, 0]) != 99:
            np.testing.assert_array_equal(y, 10.0 * x)
    assert _batches(server, "lookup") == (3, 3, 3)  # the three good ones, alone each


def test_a_request_timed_out_in_the_queue_leaves_its_batch_mates_correct(
        start: Callable[..., MLOSServer]) -> None:
    server = start(request_timeout_s=1.0)
    alone = _infer(server, "http", "pair", "x", np.ones((1, 3), np.float32), "y")
    with pytest.raises(InferenceServerException, match="longer than"):
        alone()  # the batch needs two rows: this one waits, then times out
    xs = [np.full((1, 3), v, np.float32) for v in (5, 7)]
    results = _together([_infer(server, p, "pair", "x", x, "y")
                         for p, x in zip(("http", "grpc"), xs, strict=True)])
    for x, y in zip(xs, results, strict=True):
        np.testing.assert_array_equal(y, 2 * x)
    assert _batches(server, "pair") == (1, 2, 2)  # the timed-out one never ran


def test_shared_memory_through_the_batcher(start: Callable[..., MLOSServer]) -> None:
    server = start()
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((1, 64), dtype=np.float32) for _ in range(4)]
    tag = f"{os.getpid()}_{os.urandom(3).hex()}"
    handles = []

    def shm_call(i: int, protocol: str) -> Callable[[], np.ndarray]:
        mod: Any = httpclient if protocol == "http" else grpcclient
        url = server.url if protocol == "http" else f"127.0.0.1:{server.grpc_port}"
        setup = mod.InferenceServerClient(url)
        # A fresh client for the call: geventhttpclient ties a used connection to its thread.
        client = mod.InferenceServerClient(url)
        h_in = shm.create_shared_memory_region(f"in{i}_{tag}", f"/in{i}_{tag}", 256)
        h_out = shm.create_shared_memory_region(f"out{i}_{tag}", f"/out{i}_{tag}", 40)
        handles.extend([h_in, h_out])
        shm.set_shared_memory_region(h_in, [xs[i]])
        setup.register_system_shared_memory(f"in{i}_{tag}", f"/in{i}_{tag}", 256)
        setup.register_system_shared_memory(f"out{i}_{tag}", f"/out{i}_{tag}", 40)
        inp = mod.InferInput("input", [1, 64], "FP32")
        inp.set_shared_memory(f"in{i}_{tag}", 256)
        out = mod.InferRequestedOutput("output")
        out.set_shared_memory(f"out{i}_{tag}", 40)

        def call() -> np.ndarray:
            client.infer("mlp", [inp], outputs=[out])
            return shm.get_contents_as_numpy(h_out, np.float32, [1, 10]).copy()

        return call

    try:
        calls = [shm_call(0, "http"), shm_call(1, "grpc"),
                 _infer(server, "http", "mlp", "input", xs[2], "output"),
                 _infer(server, "grpc", "mlp", "input", xs[3], "output")]
        results = _together(calls)
        for x, y in zip(xs, results, strict=True):
            assert isinstance(y, np.ndarray), y
            np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
        assert _batches(server, "mlp") == (1, 4, 4)
    finally:
        requests.post(f"http://{server.url}/v2/systemsharedmemory/unregister", timeout=10)
        for handle in handles:
            shm.destroy_shared_memory_region(handle)


def test_unloading_fails_queued_requests_instead_of_leaving_them(
        start: Callable[..., MLOSServer]) -> None:
    server = start()
    waiting = _infer(server, "http", "pair", "x", np.ones((1, 3), np.float32), "y")
    unload = httpclient.InferenceServerClient(server.url).unload_model

    def unload_soon() -> None:
        threading.Event().wait(0.5)  # the request is queued by then (it waits seconds)
        unload("pair")

    results = _together([waiting, unload_soon])
    assert isinstance(results[0], InferenceServerException)
    assert "unloaded" in str(results[0])
    assert _batches(server, "pair") == (0, 0, 0)


def test_pooled_bodies_come_back_after_a_batch(start: Callable[..., MLOSServer]) -> None:
    """Binary REST bodies are read into pool buffers and the batch holds views of them:
    every buffer is back once the batch is answered, by reference counting alone (the
    garbage collector is off: a reference cycle would keep one out)."""
    server = start()
    pool = server.plane.kernel.request_pool
    assert pool is not None
    gc.disable()
    try:
        rng = np.random.default_rng(5)
        xs = [rng.standard_normal((1, 64), dtype=np.float32) for _ in range(4)]
        calls = [_infer(server, "http", "mlp", "input", x, "output") for x in xs]
        calls.append(_infer(server, "http", "mlp", "input", np.zeros((1, 64)), "output"))
        results = _together(calls)
        assert isinstance(results[4], InferenceServerException)  # FP64: failed alone
        for x, y in zip(xs, results[:4], strict=True):
            np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
        assert _batches(server, "mlp") == (1, 4, 4)
        assert pool.purpose_stats(REQUEST)["acquired"] == 5
        deadline = time.monotonic() + 5  # the batch thread lets go just after answering
        while pool.in_use_bytes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.in_use_bytes == 0
    finally:
        gc.enable()


def test_without_a_queue_delay(start: Callable[..., MLOSServer]) -> None:
    """No delay: a batch is what queued (or reached the event loop together) meanwhile,
    run on the loop itself once the model is measured tiny. How requests group is up to
    their timing; that every one is answered right, and alone when malformed, is not."""
    server = start()
    rng = np.random.default_rng(13)
    for round_ in range(3):  # the first rounds measure the model; later ones run inline
        xs = [rng.standard_normal((1 + i % 2, 64), dtype=np.float32) for i in range(10)]
        calls = [_infer(server, "http" if i % 3 else "grpc", "nodelay", "input", x, "output")
                 for i, x in enumerate(xs)]
        calls.append(_infer(server, "http", "nodelay", "input", np.zeros((1, 63), np.float32),
                            "output"))
        results = _together(calls)
        assert isinstance(results[-1], InferenceServerException)  # [1, 63]: alone
        for x, y in zip(xs, results[:-1], strict=True):
            assert isinstance(y, np.ndarray), y
            np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
        executions, requests_run, rows = _batches(server, "nodelay")
        assert requests_run == 10 * (round_ + 1) and rows == 15 * (round_ + 1)
        assert executions <= requests_run


def test_queued_requests_hold_their_admission_slots(start: Callable[..., MLOSServer]) -> None:
    """max_concurrency counts requests waiting in a batch queue: with two queued (the batch
    wants four rows), a third is refused at once (503), and both slots come back when the
    queued ones are answered (here: the model unloads under them)."""
    server = start(max_concurrency=2)
    ones = np.ones((1, 64), np.float32)
    waiting = [_infer(server, "http", "mlp", "input", ones, "output") for _ in range(2)]
    out: list[Any] = []
    threads = [threading.Thread(target=lambda c=c: out.append(_catch(c))) for c in waiting]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while server.plane.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.plane.in_flight == 2
    with pytest.raises(InferenceServerException, match="max_concurrency"):
        _infer(server, "grpc", "mlp", "input", ones, "output")()
    httpclient.InferenceServerClient(server.url).unload_model("mlp")
    for thread in threads:
        thread.join(30)
    assert len(out) == 2 and all(isinstance(r, InferenceServerException) for r in out)
    assert server.plane.in_flight == 0


def _catch(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc


def test_statistics_count_a_batched_execution_once(start: Callable[..., MLOSServer]) -> None:
    """Triton's statistics through tritonclient: three requests (four rows) batched into
    one execution are one execution of batch size 4, four inferences and three successes,
    each with the time it waited in the batch queue; a request the model rejects in a
    batch is one failure, its batch mates rerun alone."""
    server = start()
    http = httpclient.InferenceServerClient(server.url)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((rows, 64), dtype=np.float32) for rows in (1, 2, 1)]
    results = _together([_infer(server, p, "mlp", "input", x, "output")
                         for p, x in zip(("http", "grpc", "http"), xs, strict=True)])
    assert all(isinstance(y, np.ndarray) for y in results), results
    for stats in (http.get_inference_statistics("mlp"),
                  grpc.get_inference_statistics("mlp", as_json=True)):
        (entry,) = stats["model_stats"]
        assert int(entry["execution_count"]) == 1
        assert int(entry["inference_count"]) == 4  # batch elements, as Triton counts
        phases = entry["inference_stats"]
        for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            assert int(phases[phase]["count"]) == 3, phase
        assert int(phases["queue"]["ns"]) > 0  # the first waited for the fourth row
        assert int(phases.get("fail", {}).get("count", 0)) == 0
        (batch,) = entry["batch_stats"]
        assert int(batch["batch_size"]) == 4
        assert int(batch["compute_infer"]["count"]) == 1
        assert int(batch["compute_infer"]["ns"]) > 0

    xs = [np.array([[i]], np.int64) for i in (1, 99, 2, 3)]
    results = _together([_infer(server, "grpc", "lookup", "x", x, "y") for x in xs])
    assert isinstance(results[1], InferenceServerException)
    (entry,) = grpc.get_inference_statistics("lookup", as_json=True)["model_stats"]
    assert int(entry["execution_count"]) == 3  # the rerun, one request each
    assert int(entry["inference_stats"]["success"]["count"]) == 3
    assert int(entry["inference_stats"]["fail"]["count"]) == 1
    assert [int(b["batch_size"]) for b in entry["batch_stats"]] == [1]


def test_rest_and_grpc_answer_one_model_config(start: Callable[..., MLOSServer]) -> None:
    server = start()
    rest = httpclient.InferenceServerClient(server.url).get_model_config("mlp")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    wire = grpc.get_model_config("mlp", as_json=True)["config"]
    assert rest["dynamic_batching"] == {"preferred_batch_size": [4],
                                        "max_queue_delay_microseconds": str(DELAY_US)}
    assert wire["dynamic_batching"] == rest["dynamic_batching"]
    for key in ("name", "platform", "backend"):
        assert wire[key] == rest[key], key
    assert int(wire["max_batch_size"]) == rest["max_batch_size"] == 8
    assert [(t["name"], [int(d) for d in t["dims"]]) for t in wire["input"]] == \
        [(t["name"], t["dims"]) for t in rest["input"]] == [("input", [64])]
