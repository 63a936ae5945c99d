# SPDX-License-Identifier: Apache-2.0
"""Full image builds booted under QEMU (marked `images`; 25-30 min cold under TCG: llama.cpp
compiles once per release, then its wheel is cached).

CI builds the two images the project promises, each once per session: Ubuntu noble with
the full module as a `metal` (server) image, and Debian bookworm userspace as a `vm` image.
The in-guest check reports its verdict to the host over a virtio port (no console
scraping). The metal image is flashed (mlos-build flash) to a loop device larger than
itself and booted from that device, then reached the way an operator reaches a server:
the real `ssh` client with the key baked in at build time, and `curl` against MLOS Core
with the API key the image made on first boot. The same image then runs the validation
suite (mlos-build validate) behind its API key.
MLOS_BUILD_CACHE_DIR (default /var/cache/mlos-build) keeps packages and pip wheels between
runs; MLOS_SOURCE builds another MLOS checkout than this one.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlos_build.data import load_variant
from mlos_build.demo_model import DEMO
from mlos_build.qemu import Machine, RunningGuest, smoke_test
from mlos_build.runner import stderr_progress

pytestmark = [pytest.mark.images, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = os.environ.get("MLOS_BUILD_CACHE_DIR", "/var/cache/mlos-build")
SOURCE = os.environ.get("MLOS_SOURCE", str(REPO))
ADMIN = "admin"
# The loop device is this much larger than the image: first boot must grow into it.
EXTRA_DISK_BYTES = 2 * 1024**3
SERVER_DRIVERS = ("nvme", "ahci", "megaraid_sas", "ixgbe", "i40e", "ice", "mlx5_core",
                  "bnxt_en")
SMOKE_CHECKS = ("health", "units", "module", "dkms", "inference", "llm", "profile")


def mlos_build(*args: str) -> subprocess.CompletedProcess[str]:
    # Progress goes to stderr: shown live with `pytest -s`, and in the report on failure.
    return subprocess.run([sys.executable, "-m", "mlos_build.cli", *args], text=True,
                          stdout=subprocess.PIPE, check=False)


@pytest.fixture(scope="session")
def admin_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key pair made for this session; its public half is baked into the metal image."""
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlos-images-test",
                    "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def built_image(tmp_path_factory: pytest.TempPathFactory,
                admin_key: Path) -> Iterator[Callable[[str, str, str, str], Path]]:
    """Builds each distribution x release x variant x profile once for this module.

    Only the latest image stays on disk (a raw image and its qcow2 are 2-3 GiB, and CI
    machines have been seen with under 10 GiB free): asking for another drops the one
    before, so the tests ask for each image in one run of consecutive tests."""
    output_dir = tmp_path_factory.mktemp("images")
    images: dict[tuple[str, str, str, str], Path] = {}

    def drop_images() -> None:
        for image in images.values():
            for disk in (image, image.with_suffix(".qcow2")):
                disk.unlink(missing_ok=True)
        images.clear()

    def build(distribution: str, release: str, variant: str, profile: str) -> Path:
        key = (distribution, release, variant, profile)
        if key not in images:
            drop_images()
            # The metal image is flashed and booted raw: its qcow2 (1.7 GiB) would only
            # take disk space (the vm image's is what test_vm_image_... boots).
            access = (["--ssh-key", f"{admin_key}.pub", "--no-qcow2"] if profile == "metal"
                      else [])
            built = mlos_build(distribution, "--variant", variant, "--release", release,
                               "--profile", profile, *access, "--output-dir", str(output_dir),
                               "--cache-dir", CACHE_DIR, "--mlos-source", SOURCE)
            assert built.returncode == 0, "build failed (see the captured stderr)"
            images[key] = Path(built.stdout.strip().splitlines()[-1])
            check_build_outputs(images[key], *key)
        return images[key]

    yield build
    drop_images()


def check_build_outputs(image: Path, distribution: str, release: str, variant: str,
                        profile: str) -> None:
    suffix = "" if profile == "metal" else f"-{profile}"
    name = f"mlos-{distribution}-{release}-{variant}{suffix}"
    assert image == image.parent / f"{name}.raw"
    manifest = json.loads((image.parent / f"{name}.manifest.json").read_text())
    assert (manifest["distribution"], manifest["release"], manifest["variant"],
            manifest["profile"]) == (distribution, release, variant, profile)
    assert manifest["kernel_version"]
    package_names = {p["name"] for p in manifest["packages"]}
    assert {"systemd", "python3"} <= package_names
    if profile == "metal":
        # (systemd-repart, which grows the root, is a package of its own only on some
        # releases: the flashed-boot check sees the root grow instead.)
        assert {"openssh-server", "polkitd"} <= package_names
    else:
        assert "openssh-server" not in package_names
    python_packages = {p["name"].replace("-", "_").lower() for p in manifest["python_packages"]}
    assert "onnxruntime" in python_packages
    # LLM support is in every image by default.
    assert manifest["with_llm"] is True and "llama_cpp_python" in python_packages
    spec = load_variant(variant)
    if spec.module:
        assert manifest["module_vermagic"].split()[0] == manifest["kernel_version"]
        assert manifest["module_parameters"] == spec.module.parameters
        assert "dkms" in package_names
    else:
        assert manifest["module_vermagic"] is None
    sums = subprocess.run(["sha256sum", "--check", "--ignore-missing", "SHA256SUMS"],
                          cwd=image.parent, capture_output=True, text=True, check=False)
    assert sums.returncode == 0 and f"{name}.raw: OK" in sums.stdout


def check_verdict(verdict: dict[str, Any], variant: str, profile: str) -> None:
    checks = verdict.get("checks", {})
    failed = {n: c["detail"] for n, c in checks.items() if not c.get("ok")}
    assert verdict.get("ok") and not failed, failed
    assert set(SMOKE_CHECKS) <= set(checks)
    assert f"runtime_mode={load_variant(variant).runtime_mode}" in checks["health"]["detail"]
    assert checks["llm"]["detail"].startswith("llama-cpp-python")
    assert checks["profile"]["detail"].startswith(f"{profile}: REST on ")


def test_vm_image_builds_boots_and_serves(
        built_image: Callable[[str, str, str, str], Path]) -> None:
    image = built_image("debian", "bookworm", "userspace", "vm")
    # The release's qcow2 (made beside the raw image by the build) boots like the raw one.
    tested = mlos_build("test", str(image.with_suffix(".qcow2")))
    print(tested.stdout)
    assert tested.returncode == 0, tested.stdout
    assert "smoke test passed" in tested.stdout
    for check in SMOKE_CHECKS:
        assert f"ok   {check}:" in tested.stdout
    assert "ok   llm: llama-cpp-python" in tested.stdout
    assert "runtime_mode=userspace" in tested.stdout
    assert "ok   profile: vm: REST on 127.0.0.1" in tested.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A loop device over a sparse scratch file (never a disk of this machine)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root (CI runs the images layer as root)")
    attached: list[str] = []

    def attach(size: int) -> Path:
        backing = tmp_path / f"disk{len(attached)}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        device = subprocess.run(["losetup", "--find", "--show", str(backing)],
                                capture_output=True, text=True, check=True).stdout.strip()
        attached.append(device)
        return Path(device)

    yield attach
    for device in attached:
        subprocess.run(["losetup", "--detach", device], check=False)


class Remote:
    """The guest as an operator reaches it: ssh and curl through QEMU's port forwards."""

    def __init__(self, key: Path, ssh_port: int, rest_port: int) -> None:
        self.key, self.ssh_port, self.rest_port = key, ssh_port, rest_port

    def ssh_argv(self, user: str, *options: str) -> list[str]:
        return ["ssh", "-p", str(self.ssh_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", *options,
                f"{user}@127.0.0.1"]

    def ssh(self, command: str, user: str = ADMIN, *options: str,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ssh_argv(user, "-i", str(self.key),
                                              "-o", "IdentitiesOnly=yes", *options), command],
                              input=stdin, capture_output=True, text=True, timeout=120,
                              check=False)

    def curl(self, method: str, path: str, body: object = None,
             key: str | None = None) -> tuple[int, str]:
        argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method,
                "-H", "Content-Type: application/json",
                f"http://127.0.0.1:{self.rest_port}{path}"]
        if body is not None:
            argv += ["--data", json.dumps(body)]
        if key is not None:
            argv += ["-H", f"Authorization: Bearer {key}"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        text, _, status = out.stdout.rpartition("\n")
        return int(status), text


# Runs in the guest (python3 over ssh): disk and root file system sizes, the DHCP lease,
# and which of the server drivers and firmware the image carries.
GUEST_FACTS = r"""
import glob, json, os, socket, subprocess
root = os.statvfs("/")
part = "/sys/dev/block/%d:%d/" % (os.major(os.stat("/").st_dev), os.minor(os.stat("/").st_dev))
leases = {}
for path in glob.glob("/run/systemd/netif/leases/*"):
    leases[path] = dict(l.split("=", 1) for l in open(path).read().splitlines() if "=" in l)
drivers = {}
for name in DRIVERS:
    out = subprocess.run(["modinfo", "-F", "filename", name], capture_output=True, text=True)
    drivers[name] = out.stdout.strip()
firmware = "/usr/lib/firmware"
print(json.dumps({
    "disk_bytes": int(open("/sys/block/vda/size").read()) * 512,
    "root_fs_bytes": root.f_blocks * root.f_frsize,
    "root_part_start": int(open(part + "start").read()) * 512,
    "root_part_bytes": int(open(part + "size").read()) * 512,
    "hostname": socket.gethostname(),
    "leases": leases,
    "networkctl": subprocess.run(["networkctl", "list", "--no-legend"], capture_output=True,
                                 text=True).stdout,
    "drivers": drivers,
    "firmware_files": sum(len(files) for _, _, files in os.walk(firmware)),
    "ice_ddp": glob.glob(firmware + "/intel/ice/ddp/ice*.pkg*"),
    "host_keys": sorted(glob.glob("/etc/ssh/ssh_host_*_key.pub")),
}))
"""

API_KEY_ON_CONSOLE = re.compile(r"MLOS Core API key \(shown once[^\n]*\n\s*([0-9a-f]{64})")


def test_metal_image_flashed_to_a_loop_device_boots_and_is_reachable(
        built_image: Callable[[str, str, str, str], Path], admin_key: Path,
        loop_device: Callable[[int], Path]) -> None:
    image = built_image("ubuntu", "noble", "full", "metal")
    device = loop_device(image.stat().st_size + EXTRA_DISK_BYTES)
    # The way an operator flashes a server's disk: checks, block map, read-back.
    flashed = mlos_build("flash", "--yes", str(image), str(device))
    assert flashed.returncode == 0, "flash failed (see the captured stderr)"
    remote = Remote(admin_key, free_port(), free_port())
    machine = Machine(device, forwards={remote.ssh_port: 22, remote.rest_port: 8080},
                      dhcp_hostname="mlos-flashed", snapshot=False)
    seen: dict[str, Any] = {}

    def operate(guest: RunningGuest) -> None:
        # The smoke test's verdict first (the service is up), then the operator's view.
        seen["verdict"] = guest.verdict(timeout_s=1500)
        facts = remote.ssh("python3 -", stdin=f"DRIVERS = {SERVER_DRIVERS!r}\n" + GUEST_FACTS)
        assert facts.returncode == 0, facts.stderr
        seen["facts"] = json.loads(facts.stdout)
        seen["hostname"] = hostname_from_dhcp(remote, seen["facts"]["hostname"])
        seen["sudo"] = remote.ssh("sudo -n cat /etc/mlos/api-key")
        # Only keys: a password or keyboard-interactive login is not even offered.
        seen["password"] = subprocess.run(
            [*remote.ssh_argv(ADMIN, "-o", "PubkeyAuthentication=no",
                              "-o", "PreferredAuthentications=password,keyboard-interactive"),
             "true"], capture_output=True, text=True, timeout=60, check=False)
        seen["root"] = remote.ssh("true", "root")
        key = seen["sudo"].stdout.strip()
        seen["health"] = remote.curl("GET", "/health")
        seen["no_key"] = remote.curl("POST", f"/v2/models/{DEMO['name']}/infer", DEMO["request"])
        seen["wrong_key"] = remote.curl("POST", f"/v2/models/{DEMO['name']}/infer",
                                        DEMO["request"], key="0" * 64)
        seen["with_key"] = remote.curl("POST", f"/v2/models/{DEMO['name']}/infer",
                                       DEMO["request"], key=key)
        remote.ssh("sudo -n systemctl poweroff")

    result = smoke_test(device, stderr_progress, timeout_s=2000, machine=machine,
                        during=operate)
    check_verdict(result.verdict, "full", "metal")
    assert "DHCP: " in result.verdict["checks"]["profile"]["detail"]
    facts = seen["facts"]
    # The root partition grew to the end of the device (less the backup GPT) and its file
    # system with it: it now holds more than the whole image did.
    assert facts["disk_bytes"] == device_size(device)
    part_end = facts["root_part_start"] + facts["root_part_bytes"]
    assert facts["disk_bytes"] - 2 * 1024**2 <= part_end <= facts["disk_bytes"], facts
    assert facts["root_fs_bytes"] >= 0.95 * facts["root_part_bytes"], facts
    assert facts["root_fs_bytes"] > image.stat().st_size, facts
    # DHCP: QEMU's server leased the address and named the machine.
    assert any(lease.get("ADDRESS") == "10.0.2.15" for lease in facts["leases"].values()), facts
    assert seen["hostname"] == "mlos-flashed", facts["leases"]
    assert re.search(r"\bether\s+routable\s+configured\b", facts["networkctl"])
    # Host keys were made on this machine's first boot.
    assert facts["host_keys"]
    # SSH: the baked key logs in as the admin user, with sudo; nothing else gets in.
    assert seen["sudo"].returncode == 0, seen["sudo"].stderr
    assert seen["password"].returncode == 255
    assert "Permission denied (publickey)" in seen["password"].stderr
    assert seen["root"].returncode == 255 and "Permission denied" in seen["root"].stderr
    # The API key was made on first boot, shown on the console, and guards inference.
    key = seen["sudo"].stdout.strip()
    console = API_KEY_ON_CONSOLE.findall(result.console_log.read_text(errors="replace"))
    assert console == [key]
    assert seen["health"][0] == 200 and json.loads(seen["health"][1])["runtime_mode"] == (
        "kernel_full")
    assert seen["no_key"][0] == 401 and seen["wrong_key"][0] == 401
    status, body = seen["with_key"]
    assert status == 200, body
    assert [round(x, 4) for x in json.loads(body)["outputs"][0]["data"]] == DEMO["expected"]
    # The drivers a server needs, and firmware for the NICs and GPUs that load it.
    assert all(facts["drivers"][name] for name in SERVER_DRIVERS), facts["drivers"]
    assert facts["firmware_files"] > 500 and facts["ice_ddp"], facts


def hostname_from_dhcp(remote: Remote, hostname: str) -> str:
    """The host name once networkd has handed DHCP's name to hostnamed.

    networkd asks once, over D-Bus, and does not retry; under TCG on a busy host, starting
    hostnamed and polkitd can outlast D-Bus's 25 s call timeout (a real server answers in
    milliseconds). Then networkd is restarted once, so it takes the lease again and asks
    again; without polkitd it is refused again, and the check fails as it should."""
    if hostname == "mlos-flashed":
        return hostname
    print(f"host name {hostname!r} after first boot; restarting networkd once")
    remote.ssh("sudo -n systemd-run --no-block systemctl restart systemd-networkd")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(10)
        answer = remote.ssh("hostname")
        if answer.returncode == 0 and (hostname := answer.stdout.strip()) == "mlos-flashed":
            break
    return hostname


def device_size(device: Path) -> int:
    return int(subprocess.run(["blockdev", "--getsize64", str(device)], capture_output=True,
                              text=True, check=True).stdout)


def test_metal_image_validates_behind_its_api_key(
        built_image: Callable[[str, str, str, str], Path], tmp_path: Path) -> None:
    # The in-guest E2E report suite, tiny settings (about 5 min under TCG): results come
    # back over the validation port and the card comes from the guest's own /health. The
    # suite authenticates with the key the image made on first boot.
    image = built_image("ubuntu", "noble", "full", "metal")
    out = tmp_path / "validate"
    validated = mlos_build("validate", str(image), "--out", str(out), "--suite-args",
                           "--repetitions 1 --requests 5 --warmup 1 --concurrency 1 "
                           "--protocols http --tensor-sizes-mib 1 --tensor-requests 2 "
                           "--json-requests 1 --json-max-mib 1 --no-llm")
    assert validated.returncode == 0, (out / "guest.json").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["runtime_mode"] == "kernel_full"
    shm = [p for p in results["tensor_series"]["points"] if p["transport"] == "shm"]
    assert shm and shm[0]["errors"] == 0 and shm[0]["ok"] == 2
    assert "Kernel Module (Full: Memory, Scheduler, GPU)" in (out / "report.html").read_text()
