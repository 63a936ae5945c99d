# SPDX-License-Identifier: Apache-2.0
"""Operations: API key, body limit (413), bounded concurrency (503), per-request timeout,
graceful SIGTERM (not ready, then drain) on the real `mlos-core serve` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_fixtures import add_sleepy_model
from tritonclient.utils import InferenceServerException

SLEEPY_BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
)


def test_api_key(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(api_key="s3cret")
    base = f"http://{server.url}"
    assert requests.get(f"{base}/health", timeout=5).status_code == 200
    assert requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{base}/v2/models/mlp", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(f"{base}/models", headers=wrong, timeout=5).status_code == 401
    http = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException):
        http.get_model_metadata("mlp")
    good = {"Authorization": "Bearer s3cret"}
    assert http.get_model_metadata("mlp", headers=good)["name"] == "mlp"
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert grpc.is_server_live()
    with pytest.raises(InferenceServerException) as info:
        grpc.get_model_metadata("mlp")
    assert "UNAUTHENTICATED" in info.value.status()
    assert grpc.get_model_metadata("mlp", headers={"authorization": "Bearer s3cret"}).name == "mlp"


def test_body_limit(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(max_request_bytes=1024)
    url = f"http://{server.url}/v2/models/double/infer"
    big = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [400],
                                  "data": [1.5] * 400}]})
    assert requests.post(url, data=big, timeout=5).status_code == 413

    def chunks():  # type: ignore[no-untyped-def]
        yield big.encode()  # no Content-Length: chunked transfer

    response = requests.post(url, data=chunks(), timeout=5)
    assert response.status_code == 413, response.text
    small = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
    assert requests.post(url, data=small, timeout=5).json()["outputs"][0]["data"] == [2.0]


def test_busy_and_timeout(with_plugin: Path, repo: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    add_sleepy_model(repo, delay=1.0)
    server = server_factory(max_concurrency=1, request_timeout_s=0.3, inference_threads=2)
    url = f"http://{server.url}/v2/models/sleepy/infer"
    statuses: list[int] = []

    def call() -> None:
        statuses.append(requests.post(url, data=SLEEPY_BODY, timeout=10).status_code)

    first = threading.Thread(target=call)
    first.start()
    _wait_until(lambda: server.plane.in_flight == 1)
    busy = requests.post(url, data=SLEEPY_BODY, timeout=10)
    first.join()
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    assert statuses == [504]  # the slow request itself hit the 0.3 s timeout
    time.sleep(1.0)  # the backend thread finishes; its slot is freed


def _wait_until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_sigterm_drains_in_flight(with_plugin: Path, repo: Path, tmp_path: Path) -> None:
    add_sleepy_model(repo, delay=3.0)
    rest, grpc_port = _free_port(), _free_port()
    config = tmp_path / "core.yaml"
    config.write_text(
        f"rest_port: {rest}\ngrpc_port: {grpc_port}\nmodel_repository: {repo}\n"
        f"sysfs_root: {tmp_path}\nlog_level: warning\n"
    )
    env = dict(os.environ, PYTHONPATH=str(with_plugin))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlos_core", "serve", "--config", str(config)], env=env
    )
    base = f"http://127.0.0.1:{rest}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("mlos-core serve did not become ready")
        results: list[requests.Response] = []
        slow = threading.Thread(target=lambda: results.append(
            requests.post(f"{base}/v2/models/sleepy/infer", data=SLEEPY_BODY, timeout=30)))
        slow.start()
        _wait_until(lambda: "mlos_inference_in_flight 1" in
                    requests.get(f"{base}/metrics", timeout=5).text)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 503
        refused = requests.post(f"{base}/v2/models/sleepy/infer", data=SLEEPY_BODY, timeout=5)
        assert refused.status_code == 503
        slow.join()
        assert results[0].status_code == 200
        assert results[0].json()["outputs"][0]["data"] == [2.0, 3.0]
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_grpc_corrupt_raw_tensor_is_invalid_argument(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inp = grpcclient.InferInput("x", [3], "FP32")
    inp.set_data_from_numpy(np.ones(3, dtype=np.float32))
    inp._raw_content = b"\x00" * 5  # a corrupt raw buffer sent by a broken client
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [inp])
    assert "INVALID_ARGUMENT" in info.value.status()
