# SPDX-License-Identifier: Apache-2.0
"""The MLOS Core container image (marked `images`).

One session builds the oci-archive (`mlos-build container`) and a minimal QEMU guest
(Debian bookworm, its 6.1 kernel, systemd-sysext, podman, curl; no python3 and no
compiler, like a Flatcar node). Then:

- the archive's config (user, ports, volume, entrypoint) and `podman load` on this host;
- the container run by podman on this host answers tritonclient (runc and explicit
  ulimits: crun cannot set RLIMIT_NOFILE in this sandbox, docs/container.md);
- the guest loads the archive, starts MLOS Core from it and reports over the virtio port
  (builder/qemu.py's boot_for_verdict); userspace: tritonclient on the host reaches the
  container through QEMU's port forward; a kernel variant: the container is given
  /dev/mlos-ml and /health reports the module's mode, pools and threads registered from
  inside the container's PID namespace.

MLOS_BUILD_CACHE_DIR (default /var/cache/mlos-build) keeps packages and wheels; the
llama-cpp-python wheel is the one the Debian bookworm disk image uses (same cache).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlos_build.apt import load_distribution
from mlos_build.data import load_variant
from mlos_build.demo_model import DEMO
from mlos_build.qemu import Machine, boot_for_verdict
from mlos_build.runner import run, stderr_progress
from mlos_build.targets.common import SYSTEM_PATH, cache_lock
from mlos_build.targets.container import load_container, run_arguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
import mlos_guest as kernels  # noqa: E402

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
GUEST_PROJECT = Path(__file__).resolve().parent / "container_guest"
CACHE_DIR = Path(os.environ.get("MLOS_BUILD_CACHE_DIR", "/var/cache/mlos-build"))
SOURCE = os.environ.get("MLOS_SOURCE", str(REPO))
# Development runs may skip the llama.cpp compile; CI builds the default (with LLM).
WITH_LLM = os.environ.get("MLOS_TEST_CONTAINER_LLM", "1") != "0"
# This sandbox refuses the rlimits crun and podman's defaults set (docs/container.md).
HOST_PODMAN = ["podman", "--runtime", "runc"]
HOST_ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
# A guest boot, image load and service start take 2-4 minutes under TCG on an idle
# 2-core machine, and several times that when the machine is shared.
BOOT_TIMEOUT_S = 2400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The archive, the test guest and the loaded image are built once for this module and
# removed when it ends (module scope): several GiB that the image builds after it need.
@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    given = os.environ.get("MLOS_TEST_CONTAINER_ARCHIVE")
    if given:
        # Development: an archive `mlos-build container` built from this checkout.
        yield Path(given).resolve()
        return
    out = tmp_path_factory.mktemp("container")
    built = subprocess.run(
        [sys.executable, "-m", "mlos_build.cli", "container", "--output-dir", str(out),
         "--cache-dir", str(CACHE_DIR), "--mlos-source", SOURCE,
         *([] if WITH_LLM else ["--without-llm"])],
        text=True, stdout=subprocess.PIPE, check=False)
    assert built.returncode == 0, "mlos-build container failed (see the captured stderr)"
    path = Path(built.stdout.strip().splitlines()[-1])
    assert path.name.endswith(".oci.tar") and path.is_file()
    yield path
    path.unlink()


def oci_config(archive: Path) -> dict[str, Any]:
    result = run(["skopeo", "inspect", "--config", f"oci-archive:{archive}"],
                 what="skopeo inspect")
    return json.loads(result.stdout)


def test_archive_config(archive: Path) -> None:
    config = oci_config(archive)["config"]
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {"8080/tcp", "8081/tcp"}
    assert set(config["Volumes"]) == {"/var/lib/mlos/models"}
    assert config["Entrypoint"] == ["/opt/mlos/venv/bin/mlos-core", "serve"]
    assert "MLOS_HOST=0.0.0.0" in config["Env"]
    assert config["Labels"]["org.mlos.llm"] == ("yes" if WITH_LLM else "no")
    manifest = json.loads(archive.with_name(
        archive.name.replace(".oci.tar", ".manifest.json")).read_text())
    names = {p["name"].replace("-", "_").lower() for p in manifest["python_packages"]}
    assert {"mlos", "onnxruntime"} <= names
    assert ("llama_cpp_python" in names) is WITH_LLM
    packages = {p["name"] for p in manifest["packages"]}
    assert "python3" in packages and not {"systemd", "gcc", "apt"} & packages
    # Release artifacts of an archive: its SBOM, never a block map or qcow2 of a tar.
    stem = archive.name.removesuffix(".tar")
    assert (archive.parent / f"{stem}.spdx.json").is_file()
    assert not (archive.parent / f"{stem}.qcow2").exists()
    assert not (archive.parent / f"{stem}.bmap").exists()


@pytest.fixture(scope="module")
def host_image(archive: Path) -> Iterator[str]:
    loaded = run(["podman", "load", "-i", archive], what="podman load")
    version = archive.name.removeprefix("mlos-core-").removesuffix(".oci.tar")
    ref = f"localhost/mlos-core:{version}"
    assert ref in loaded.stdout + loaded.stderr
    yield ref
    subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, check=False)


def wait_ready(url: str, timeout_s: float,
               alive: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """The service's /health once a model is ready; fails at the deadline or as soon as
    `alive()` says the thing serving it (a guest) is gone."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        assert alive(), f"what serves {url} stopped before /health was ready"
        try:
            health = requests.get(f"{url}/health", timeout=5).json()
            if health["models"]["ready"] >= 1:
                return dict(health)
        except (requests.RequestException, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"no ready /health at {url} in {timeout_s}s"
        time.sleep(1)


def triton_demo(rest: str, grpc: str) -> None:
    """The demo model through both real Triton clients (y = 2x + 1)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.array([DEMO["request"]["inputs"][0]["data"]], dtype=np.float32)
    expected = np.array([DEMO["expected"]], dtype=np.float32)
    client = httpclient.InferenceServerClient(rest)
    assert client.is_model_ready(DEMO["name"])
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    np.testing.assert_allclose(client.infer(DEMO["name"], [inp]).as_numpy("output"), expected)
    gclient = grpcclient.InferenceServerClient(grpc)
    ginp = grpcclient.InferInput("input", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    np.testing.assert_allclose(gclient.infer(DEMO["name"], [ginp]).as_numpy("output"),
                               expected)


def test_podman_on_this_host_answers_tritonclient(host_image: str) -> None:
    rest, grpc = free_port(), free_port()
    name = f"mlos-core-test-{os.getpid()}"
    image, _, _ = load_container("container")
    argv = run_arguments(image, host_image, name=name, detach=True, models_volume=name,
                         publish={8080: f"127.0.0.1:{rest}", 8081: f"127.0.0.1:{grpc}"})
    # Nor may it raise RLIMIT_MEMLOCK past this host's hard limit (userspace pins nothing).
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != resource.RLIM_INFINITY and hard < image.memlock:
        argv[argv.index(f"memlock={image.memlock}:{image.memlock}")] = f"memlock={hard}:{hard}"
    started = run([*HOST_PODMAN, argv[0], *HOST_ULIMITS, *argv[1:]], what="podman run")
    try:
        health = wait_ready(f"http://127.0.0.1:{rest}", 180)
        assert health["runtime_mode"] == health["effective_mode"] == "userspace"
        triton_demo(f"127.0.0.1:{rest}", f"127.0.0.1:{grpc}")
        pid = run(["podman", "inspect", "--format", "{{.State.Pid}}", name],
                  what="podman inspect").stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["10001"] * 4, uid_line
    finally:
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True,
                              check=False)
        print(started.stdout, logs.stdout[-3000:], logs.stderr[-3000:])
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)
        subprocess.run(["podman", "volume", "rm", "-f", name], capture_output=True,
                       check=False)


# ---- the minimal guest ------------------------------------------------------------------


def guest_kernel() -> str:
    """The 6.1 guest kernel whose headers the host has (scripts/setup.d/30-kernel.sh)."""
    abi = next((k for k in kernels.guest_kernels() if k.startswith("6.1.")), None)
    if abi is None or not kernels.headers_dir(abi).is_dir():
        pytest.fail("no Debian 6.1 guest kernel with headers: run ./scripts/setup.sh")
    return abi


@pytest.fixture(scope="module")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built once for this module; each boot runs on a snapshot of it."""
    work = tmp_path_factory.mktemp("guest")
    project = work / "project"
    shutil.copytree(GUEST_PROJECT, project, symlinks=True)
    (project / "mkosi.conf.d").mkdir()
    (project / "mkosi.conf.d" / "10-kernel.conf").write_text(
        f"[Content]\nPackages=linux-image-{guest_kernel()}\n")
    debian = load_distribution("debian")
    sources = project / "mkosi.pkgmngr" / "etc" / "apt" / "sources.list.d" / "mkosi.sources"
    sources.parent.mkdir(parents=True)
    sources.write_text("".join(
        f"Types: deb\nURIs: {mirror}\nSuites: {' '.join(suites)}\n"
        f"Components: {' '.join(debian.components)}\nSigned-By: {debian.keyring}\n\n"
        for mirror, suites in ((debian.mirror, debian.suites_for("bookworm")),
                               ((debian.security or {}).get("mirror", debian.mirror),
                                debian.security_suites_for("bookworm")))))
    with cache_lock(CACHE_DIR, stderr_progress):
        run(["mkosi", "--directory", project, "--output-dir", work / "out",
             "--package-cache-dir", CACHE_DIR / "packages",
             "--cache-dir", CACHE_DIR / "mkosi-container-guest", "--incremental", "yes",
             "--force", "build"], what="mkosi build of the container test guest",
            env={"PATH": SYSTEM_PATH}, progress=stderr_progress,
            show=lambda line: line.startswith("‣"), log_file=work / "build.log")
    image = work / "out" / "mlos-container-guest.raw"
    yield image
    image.unlink()


def boot_guest(image: Path, share: Path, env: dict[str, str],
               forwards: dict[int, int] | None = None) -> dict[str, Any]:
    (share / "test.env").write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
    machine = Machine(image, memory_mib=3072, forwards=forwards or {}, extra_args=(
        "-virtfs", f"local,path={share},mount_tag=mlos-artifacts,security_model=none,"
        "readonly=on"))
    verdict, seconds, console = boot_for_verdict(
        machine, image, stderr_progress, "mlos-container-", "container check verdict",
        BOOT_TIMEOUT_S,
        "", work_dir=share.parent)
    print(f"guest answered after {seconds:.0f}s; console log: {console}")
    print(json.dumps(verdict, indent=1)[:6000])
    assert isinstance(verdict, dict)
    return verdict


def guest_env(archive: Path, variant: str) -> dict[str, str]:
    spec = load_variant(variant)
    version = archive.name.removeprefix("mlos-core-").removesuffix(".oci.tar")
    image, _, _ = load_container("container")
    argv = run_arguments(image, f"mlos-core:{version}", detach=True)
    return {"VARIANT": variant, "ARCHIVE": archive.name, "RUN_ARGS": " ".join(argv),
            "PARAMS": " ".join(spec.module.parameters) if spec.module else "",
            "DEMO_REQUEST": json.dumps(DEMO["request"]), "HOLD_S": "0"}


def check_common(verdict: dict[str, Any], variant: str) -> dict[str, Any]:
    assert verdict["missing_tools"].strip() == "", "python3 or a compiler in the guest"
    assert verdict["failed_units"].strip() == ""
    health = verdict["health"]
    assert isinstance(health, dict), verdict["started"]
    assert health["runtime_mode"] == load_variant(variant).runtime_mode
    outputs = {o["name"]: o["data"] for o in verdict["infer"]["outputs"]}
    assert outputs["output"] == DEMO["expected"]
    assert verdict["user"].split()[:2] == ["mlos", "mlos"], verdict["user"]
    return dict(health)


@pytest.fixture
def share(archive: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    # A hard link when the archive lies on the same file system, else a copy.
    try:
        os.link(archive, directory / archive.name)
    except OSError:
        shutil.copy2(archive, directory / archive.name)
    return directory


@pytest.mark.extended
def test_guest_userspace_answers_tritonclient_through_the_port_forward(
        guest_image: Path, archive: Path, share: Path) -> None:
    import threading

    rest, grpc = free_port(), free_port()
    env = {**guest_env(archive, "userspace"), "HOLD_S": "1200"}
    result: dict[str, Any] = {}

    def guest() -> None:
        try:
            result["verdict"] = boot_guest(guest_image, share, env, {rest: 8080, grpc: 8081})
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    boot = threading.Thread(target=guest)
    boot.start()
    try:
        wait_ready(f"http://127.0.0.1:{rest}", BOOT_TIMEOUT_S, boot.is_alive)
        triton_demo(f"127.0.0.1:{rest}", f"127.0.0.1:{grpc}")
        import tritonclient.http as httpclient

        # The guest's check waits for this unload before it reports and powers off.
        httpclient.InferenceServerClient(f"127.0.0.1:{rest}").unload_model(DEMO["name"])
    finally:
        boot.join(timeout=BOOT_TIMEOUT_S)
    if "error" in result:
        raise result["error"]
    verdict = result["verdict"]
    check_common(verdict, "userspace")
    assert verdict["host_client"].startswith("unloaded"), verdict["host_client"]
    assert verdict["device"] == "none"


# The Flatcar release the stand-in kernel tree claims; the extension is then re-labelled
# with the guest's ID and VERSION_ID (for the test only).
STAND_IN_FLATCAR = "9999.0.0"


# What the guest's /usr/lib/os-release says (Debian bookworm, container_guest/mkosi.conf).
GUEST_OS_RELEASE = ("ID=debian", "VERSION_ID=12")


def flatcar_sysext(archive: Path, variant: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """`mlos-build flatcar` for the guest: the guest's kernel headers stand in for a
    Flatcar kernel tree; the extension's release file then names the guest's OS."""
    tree = work / "tree"
    tree.mkdir()
    (tree / "build").symlink_to(kernels.headers_dir(guest_kernel()))
    (tree / "os-release").write_text(f"ID=flatcar\nVERSION_ID={STAND_IN_FLATCAR}\n")
    out = work / "flatcar"
    built = subprocess.run(
        [sys.executable, "-m", "mlos_build.cli", "flatcar", "--variant", variant,
         "--flatcar-version", STAND_IN_FLATCAR, "--kernel-build-tree", str(tree),
         "--container-archive", str(archive), "--sysext-url",
         "https://mlos.invalid/mlos.raw", "--output-dir", str(out), "--mlos-source", SOURCE],
        text=True, stdout=subprocess.PIPE, check=False)
    assert built.returncode == 0, "mlos-build flatcar failed (see the captured stderr)"
    image = Path(built.stdout.strip().splitlines()[-1])
    ignition = json.loads(next(out.glob("*.ign")).read_text())
    root = work / "sysext-root"
    run(["unsquashfs", "-no-xattrs", "-d", root, image], what="unsquashfs")
    release = next((root / "usr/lib/extension-release.d").glob("extension-release.*"))
    lines = [line for line in release.read_text().splitlines()
             if not line.startswith(("ID=", "VERSION_ID="))]
    release.write_text("\n".join([*GUEST_OS_RELEASE, *lines]) + "\n")
    relabelled = work / image.name
    run(["mksquashfs", root, relabelled, "-all-root", "-noappend", "-no-xattrs", "-quiet"],
        what="mksquashfs")
    return relabelled, ignition


def ignition_files(ignition: dict[str, Any], dest: Path, prefix: str = "/etc/mlos/") -> None:
    """The files under prefix that the Ignition config writes inline (data: URLs), as
    Ignition writes them (gzip-compressed contents inflated)."""
    import base64
    import gzip
    import urllib.parse

    for entry in ignition["storage"]["files"]:
        contents = entry.get("contents") or {}
        source = contents.get("source", "")
        if not entry["path"].startswith(prefix) or not source.startswith("data:"):
            continue
        meta, _, data = source[5:].partition(",")
        body = base64.b64decode(data) if meta.endswith(";base64") else \
            urllib.parse.unquote_to_bytes(data)
        if contents.get("compression") == "gzip":
            body = gzip.decompress(body)
        elif contents.get("compression"):
            raise AssertionError(f"{entry['path']}: compression {contents['compression']!r}")
        path = dest / entry["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


@pytest.mark.parametrize("variant", ["full"])
def test_guest_merges_the_sysext_and_runs_the_container_with_the_module(
        guest_image: Path, archive: Path, share: Path, tmp_path: Path, variant: str) -> None:
    spec = load_variant(variant)
    assert spec.module is not None
    sysext, ignition = flatcar_sysext(archive, variant, tmp_path)
    os.link(sysext, share / sysext.name)
    ignition_files(ignition, share / "ignition-files")
    # The service's own config, as Ignition leaves it on the node (YAML, not gzip).
    assert "model_repository" in (share / "ignition-files/etc/mlos/core.yaml").read_text()
    env = {**guest_env(archive, variant), "SYSEXT": sysext.name, "SYSEXT_NAME": "mlos",
           "SERVICE": "mlos-core.service"}
    verdict = boot_guest(guest_image, share, env)
    assert "mlos" in verdict["sysext"], verdict["sysext"]
    health = check_common(verdict, variant)
    expected = {k: ("Y" if v else "N") if k.startswith("enable_") else str(v)
                for k, v in spec.module.parameters.items()}
    assert dict(p.split("=", 1) for p in verdict["params"].split()) == expected
    assert verdict["device"] == "root:mlos 660"
    after = verdict["health_after"]
    assert after["effective_mode"] == spec.runtime_mode
    assert set(after["features_in_use"]) == {"memory_manager", "scheduler", "gpu_manager"}
    scheduler = after["features"]["scheduler"]
    # Registered from inside the container's PID namespace: the tids the service sees
    # are namespaced, and the module looks them up in the caller's namespace.
    assert scheduler["threads"]["latency"] >= 1 and scheduler["threads"]["throughput"] >= 1
    assert scheduler["register_failures"] == 0
    assert after["features"]["memory_manager"]["pool_bytes"] > 0
    assert health["module"]["enable_tmm"] is True
