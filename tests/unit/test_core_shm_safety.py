# SPDX-License-Identifier: Apache-2.0
"""System shared memory against hostile clients and local users (docs/security.md): keys
are opened the way shm_open opens them (no symlinks, regular files in /dev/shm only), a
region truncated after registration fails that request with a 4xx instead of killing the
server with SIGBUS, and the mlos-ml key form fails closed without /proc.

The truncation tests run a real `mlos-core serve` process: a SIGBUS there would be exit
135, which an in-process server would turn into a dead test run."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_models import make_double
from core_process import ServeProcess
from tritonclient.utils import InferenceServerException

from mlos_core.server import MLOSServer

N = 16
SECRET = b"the target's bytes, which no client may read"


def _tag() -> str:
    return f"{os.getpid()}_{os.urandom(3).hex()}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    repo = tmp_path_factory.mktemp("shm") / "models"
    make_double(repo / "double" / "1" / "model.onnx")
    proc = ServeProcess(repo).start()
    yield proc
    proc.stop()


def _client(served: ServeProcess, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(f"127.0.0.1:{served.rest_port}")
    return grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A symlink in /dev/shm to a file with known bytes."""
    target = tmp_path / "target"
    target.write_bytes(SECRET.ljust(N * 4, b"."))
    key = f"mlos_link_{_tag()}"
    link = Path("/dev/shm") / key
    link.symlink_to(target)
    yield "/" + key, target
    link.unlink(missing_ok=True)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_symlink_in_dev_shm_is_refused(server: MLOSServer, planted: tuple[str, Path],
                                         protocol: str) -> None:
    key, target = planted
    mod = httpclient if protocol == "http" else grpcclient
    url = server.url if protocol == "http" else f"127.0.0.1:{server.grpc_port}"
    client = mod.InferenceServerClient(url)
    with pytest.raises(InferenceServerException, match="symlink"):
        client.register_system_shared_memory("stolen", key, N * 4)
    assert target.read_bytes().startswith(SECRET)


@pytest.mark.parametrize("key", ["/", "//", "/a/b", "/..", "/.", "x/", "/" + "k" * 256,
                                 "/nul\0byte"])
def test_keys_shm_open_would_refuse_are_refused(server: MLOSServer, key: str) -> None:
    r = requests.post(f"http://{server.url}/v2/systemsharedmemory/region/r/register",
                      json={"key": key, "byte_size": 4}, timeout=10)
    assert r.status_code == 400 and "shared memory key" in r.json()["error"]


def test_a_fifo_in_dev_shm_is_refused_without_hanging(server: MLOSServer) -> None:
    fifo = Path("/dev/shm") / f"mlos_fifo_{_tag()}"
    os.mkfifo(fifo)
    try:
        r = requests.post(f"http://{server.url}/v2/systemsharedmemory/region/f/register",
                          json={"key": "/" + fifo.name, "byte_size": 4}, timeout=10)
        assert r.status_code == 400 and "not a regular file" in r.json()["error"]
    finally:
        fifo.unlink()


def _second_user() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second local user (useradd)")
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("useradd/runuser (passwd, util-linux) are not installed")
    name = f"mlosshm{os.urandom(3).hex()}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True)
    return name


def test_a_second_user_planting_a_symlink_cannot_reach_its_target(
        server: MLOSServer, tmp_path: Path) -> None:
    """The attack of issue 12, finding 1: another local user links a file the service can
    read and write into /dev/shm; an API client registers the key and would read the file
    through an input region, or overwrite it through an output region."""
    user = _second_user()
    try:
        target = tmp_path / "service-owned"
        target.write_bytes(SECRET.ljust(N * 4, b"."))
        key = f"mlos_evil_{_tag()}"
        subprocess.run(["runuser", "-u", user, "--", "ln", "-s", str(target),
                        f"/dev/shm/{key}"], check=True)
        assert pwd.getpwuid(os.lstat(f"/dev/shm/{key}").st_uid).pw_name == user
        client = httpclient.InferenceServerClient(server.url)
        for region in ("in", "out"):
            with pytest.raises(InferenceServerException, match="symlink"):
                client.register_system_shared_memory(region, "/" + key, N * 4)
        out = httpclient.InferRequestedOutput("y")
        out.set_shared_memory("out", N * 4)
        x = httpclient.InferInput("x", [N], "FP32")
        x.set_data_from_numpy(np.ones(N, dtype=np.float32))
        with pytest.raises(InferenceServerException, match="not registered"):
            client.infer("double", [x], outputs=[out])
        assert target.read_bytes() == SECRET.ljust(N * 4, b".")
    finally:
        Path(f"/dev/shm/{key}").unlink(missing_ok=True)
        subprocess.run(["userdel", user], check=False)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("side", ["input", "output"])
def test_a_truncated_region_fails_the_request_not_the_server(
        served: ServeProcess, protocol: str, side: str) -> None:
    mod = httpclient if protocol == "http" else grpcclient
    client = _client(served, protocol)
    key = f"/mlos_trunc_{_tag()}"
    handle = shm.create_shared_memory_region("victim", key, N * 4)
    try:
        shm.set_shared_memory_region(handle, [np.arange(N, dtype=np.float32)])
        client.register_system_shared_memory("victim", key, N * 4)
        os.truncate(f"/dev/shm{key}", 0)  # any client sharing the region can do this
        x = mod.InferInput("x", [N], "FP32")
        outputs = None
        if side == "input":
            x.set_shared_memory("victim", N * 4)
        else:
            x.set_data_from_numpy(np.ones(N, dtype=np.float32))
            out = mod.InferRequestedOutput("y")
            out.set_shared_memory("victim", N * 4)
            outputs = [out]
        with pytest.raises(InferenceServerException, match="truncated") as err:
            client.infer("double", [x], outputs=outputs)
        status = err.value.status()
        assert status in ("400", "StatusCode.INVALID_ARGUMENT"), status
        assert served.proc.poll() is None, f"the server died: exit {served.proc.poll()}"
        assert client.is_server_live()
        # Registered again at its new size, the same key works.
        os.truncate(f"/dev/shm{key}", N * 4)
        client.unregister_system_shared_memory("victim")
        client.register_system_shared_memory("victim", key, N * 4)
        ok = mod.InferInput("x", [N], "FP32")
        ok.set_shared_memory("victim", N * 4)
        result = client.infer("double", [ok])
        np.testing.assert_array_equal(result.as_numpy("y"), np.zeros(N, dtype=np.float32))
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


MLOS_ML_KEY_WITHOUT_PROC = textwrap.dedent("""
    import os
    from mlos_core.errors import InvalidInputError
    from mlos_core.dataplane.system_shm import SharedMemoryRegistry
    fd = os.memfd_create("not-an-mlos-ml-buffer")
    os.ftruncate(fd, 4096)
    assert not os.path.exists("/proc/self/fd"), "/proc is still mounted"
    try:
        SharedMemoryRegistry().register("r", f"mlos-ml:{os.getpid()}:{fd}", 0, 4096)
    except InvalidInputError as exc:
        print("REFUSED", exc)
    else:
        print("ACCEPTED")
""")


def test_the_mlos_ml_key_fails_closed_without_proc(tmp_path: Path) -> None:
    """Without /proc the service cannot tell an mlos-ml buffer from any other descriptor
    the client passes (a memfd here): it must refuse, not map it unchecked."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to hide /proc in a private mount namespace")
    script = tmp_path / "probe.py"
    script.write_text(MLOS_ML_KEY_WITHOUT_PROC)
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs none /proc && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    if "mount" in run.stderr and run.returncode:
        pytest.skip(f"cannot mount over /proc here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("REFUSED") and "/proc" in run.stdout, run.stdout


def test_the_server_survives_a_truncated_region_in_a_burst(served: ServeProcess) -> None:
    """Several clients at once while the region shrinks: every answer is a 200 or a 400."""
    client = _client(served, "http")
    key = f"/mlos_burst_{_tag()}"
    handle = shm.create_shared_memory_region("burst", key, N * 4)
    try:
        client.register_system_shared_memory("burst", key, N * 4)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [N], "parameters": {
            "shared_memory_region": "burst", "shared_memory_byte_size": N * 4}}]}
        codes = set()
        url = f"http://127.0.0.1:{served.rest_port}/v2/models/double/infer"
        for i in range(40):
            if i == 20:
                os.truncate(f"/dev/shm{key}", 0)
            codes.add(requests.post(url, json=body, timeout=10).status_code)
        assert codes == {200, 400}
        time.sleep(0.1)
        assert served.proc.poll() is None
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)
