# SPDX-License-Identifier: Apache-2.0
"""A real Flatcar node under QEMU, provisioned by the config mlos-build writes (marked
`images`). Flatcar's images cannot be downloaded here, so it runs only when the files are
supplied; otherwise it is skipped and says so:

    MLOS_FLATCAR_IMAGE        flatcar_production_qemu_image.img (qcow2) of one release
    MLOS_FLATCAR_KERNEL_TREE  optional: that release's kernel tree (default: read out of
                              MLOS_FLATCAR_IMAGE, whose /usr carries it)
    MLOS_CONTAINER_ARCHIVE    optional: MLOS Core's image archive (else `mlos-build
                              container` builds one)
    MLOS_FLATCAR_VARIANT      optional: the variant (default full)

The config goes in as Flatcar's QEMU images take it (fw_cfg, first boot). The extension
is built with --container-image and inlined (a node under QEMU's user network reaches no
https server of ours); the image archive is then loaded over SSH. Checks, after Flatcar's
own harness: the system is running with no failed unit, os-release says flatcar, the
extension is merged, the module is loaded with the variant's parameters, /health reports
the variant's mode, the demo model answers, and the console shows no panic or oops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlos_build import __version__, flatcar_image
from mlos_build.data import load_variant
from mlos_build.demo_model import DEMO
from mlos_build.kernel_tree import parse_os_release
from mlos_build.qemu import kvm_works

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

IMAGE = os.environ.get("MLOS_FLATCAR_IMAGE")
TREE = os.environ.get("MLOS_FLATCAR_KERNEL_TREE") or IMAGE
VARIANT = os.environ.get("MLOS_FLATCAR_VARIANT", "full")
CONSOLE_FAILURES = re.compile(r"Kernel panic|Oops:|WARNING: CPU:|emergency mode|"
                              r"You are in emergency mode")
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"]

if not (IMAGE and TREE):
    pytest.skip("skipped: no real Flatcar here (set MLOS_FLATCAR_IMAGE to a Flatcar QEMU "
                "image to run it)", allow_module_level=True)


def mlos_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlos_build.cli", *args], text=True,
                          stdout=subprocess.PIPE, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_version(tree: Path, work: Path) -> str:
    """The release the tree comes from: its os-release (a directory, an image file or a
    tarball)."""
    if tree.is_dir():
        text = (tree / "os-release").read_text()
    elif flatcar_image.is_disk_image(tree):
        text = (flatcar_image.extract(tree, work, "X.Y.Z") / "os-release").read_text()
    else:
        text = subprocess.run(["tar", "-xOf", str(tree), "os-release"], capture_output=True,
                              text=True, check=True).stdout
    return parse_os_release(text)["VERSION_ID"]


class Node:
    def __init__(self, work: Path, key: Path, ssh_port: int, rest_port: int) -> None:
        self.work, self.key, self.ssh_port, self.rest_port = work, key, ssh_port, rest_port
        self.console = work / "console.log"

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *SSH_OPTS, "-i", str(self.key), "-p", str(self.ssh_port),
                               "core@127.0.0.1", command], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def wait_ssh(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.ssh("true", timeout=30).returncode == 0:
                return
            time.sleep(5)
        raise AssertionError(f"no SSH on the node (console: {self.console})")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    assert IMAGE and TREE
    work = tmp_path_factory.mktemp("flatcar-qemu")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    version = tree_version(Path(TREE), work)
    built = mlos_build("flatcar", "--variant", VARIANT, "--flatcar-version", version,
                       "--kernel-build-tree", TREE, "--container-image",
                       f"mlos-core:{__version__}", "--ssh-key", f"{key}.pub",
                       "--output-dir", str(work / "out"))
    assert built.returncode == 0, "mlos-build flatcar failed (see the captured stderr)"
    config = work / "out" / f"mlos-{VARIANT}-{version}-x86-64.ign"
    overlay = work / "node.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(Path(IMAGE).resolve()), str(overlay)], check=True)
    node = Node(work, key, free_port(), free_port())
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_works() else ["-accel", "tcg",
                                                                   "-cpu", "max"]
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", *accel, "-m", "3072", "-smp", "2", "-nographic",
         "-drive", f"if=virtio,file={overlay},format=qcow2",
         "-fw_cfg", f"name=opt/org.flatcar-linux/config,file={config}",
         "-nic", f"user,model=virtio,hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22,"
                 f"hostfwd=tcp:127.0.0.1:{node.rest_port}-:8080",
         "-serial", f"file:{node.console}", "-monitor", "none", "-display", "none"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        node.wait_ssh(time.monotonic() + 1200)
        archive = os.environ.get("MLOS_CONTAINER_ARCHIVE")
        if not archive:
            made = mlos_build("container", "--without-llm", "--output-dir", str(work / "c"))
            assert made.returncode == 0, "mlos-build container failed"
            archive = made.stdout.strip().splitlines()[-1]
        with open(archive, "rb") as f:
            loaded = subprocess.run(["ssh", *SSH_OPTS, "-i", str(key), "-p",
                                     str(node.ssh_port), "core@127.0.0.1",
                                     "sudo docker load"], stdin=f, capture_output=True,
                                    text=True, timeout=1800, check=False)
        assert loaded.returncode == 0, loaded.stderr
        tagged = re.findall(r"Loaded image(?: ID)?: (\S+)", loaded.stdout)
        if tagged and tagged[-1] != f"mlos-core:{__version__}":
            node.ssh(f"sudo docker tag {tagged[-1]} mlos-core:{__version__}")
        node.ssh("sudo systemctl restart mlos-core.service")
        yield node
    finally:
        qemu.terminate()
        try:
            qemu.wait(timeout=60)
        except subprocess.TimeoutExpired:
            qemu.kill()
        shutil.rmtree(work / "c", ignore_errors=True)


def wait_health(node: Node, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        out = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{node.rest_port}/health"],
                             capture_output=True, text=True, check=False)
        if out.returncode == 0:
            return dict(json.loads(out.stdout))
        time.sleep(5)
    raise AssertionError("MLOS Core never answered /health: "
                         + node.ssh("journalctl -u mlos-core -n 40 --no-pager").stdout)


def test_the_node_serves_in_the_variant_mode(node: Node) -> None:
    variant = load_variant(VARIANT)
    health = wait_health(node, time.monotonic() + 900)
    assert health.get("runtime_mode") == variant.runtime_mode
    request = json.dumps(DEMO["request"])
    answer = subprocess.run(["curl", "-sf", "-H", "Content-Type: application/json", "-d",
                             request, f"http://127.0.0.1:{node.rest_port}/v2/models/"
                             f"{DEMO['name']}/infer"], capture_output=True, text=True,
                            check=False)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["outputs"][0]["data"] == DEMO["expected"]

    os_release = parse_os_release(node.ssh("cat /etc/os-release").stdout)
    assert os_release["ID"] == "flatcar"
    merged = node.ssh("systemd-sysext status --json=short").stdout
    assert '"mlos"' in merged, merged
    if variant.module is not None:
        for key, value in variant.module.parameters.items():
            read = node.ssh(f"cat /sys/module/mlos_ml/parameters/{key}").stdout.strip()
            assert read in (str(value), "Y" if value else "N"), (key, read)
        assert node.ssh("stat -c %G /dev/mlos-ml").stdout.strip() == "mlos"
    state = node.ssh("systemctl is-system-running --wait", timeout=600).stdout.strip()
    failed = node.ssh("systemctl --failed --no-legend").stdout.strip()
    assert state == "running" and not failed, (state, failed)
    console = node.console.read_text(errors="replace")
    assert not CONSOLE_FAILURES.search(console), CONSOLE_FAILURES.search(console)
