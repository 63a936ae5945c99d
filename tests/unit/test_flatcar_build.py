# SPDX-License-Identifier: Apache-2.0
"""`mlos-build flatcar` against a real kernel build tree: this machine's Debian headers,
packed the way docs/flatcar.md has users pack a node's tree, stand in for a Flatcar
release's (their os-release names a stand-in release, TREE_VERSION).

Two builds with the same SOURCE_DATE_EPOCH run side by side (about a minute each on 2
cores: the module compiles twice), one from that tarball, one from the same headers in a
stand-in of Flatcar's production image file (USR-A's btrfs in a bzip2-compressed GPT
disk), and must give byte-identical extensions; the contents are checked with
unsquashfs, the config with ignition-validate and the real ignition.
"""

from __future__ import annotations

import json
import lzma
import os
import stat
import subprocess
import sys
from pathlib import Path

import ignition_root
import pytest
from flatcar_support import (
    TREE_VERSION,
    flatcar_os_release,
    headers_dir,
    stand_in_image,
    stand_in_tree,
)

from mlos_build.errors import BuildError
from mlos_build.kernel_tree import KernelTree, kernel_release, parse_config, sign

HEADERS = headers_dir()
pytestmark = [
    pytest.mark.skipif(HEADERS is None, reason="no Debian kernel headers in /usr/src "
                       "(scripts/setup.d/30-kernel.sh installs them)"),
    pytest.mark.timeout(900),
]
EPOCH = "1700000000"
VARIANT = "scheduler"
NAME = f"mlos-{VARIANT}-{TREE_VERSION}-x86-64"


def command(tree: Path, out: Path, archive: Path, *signing: str) -> list[str]:
    return [sys.executable, "-m", "mlos_build.cli", "flatcar", "--variant", VARIANT,
            "--flatcar-version", TREE_VERSION, "--kernel-build-tree", str(tree),
            "--container-archive", str(archive), "--output-dir", str(out), *signing]


def signing_key(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-subj", "/CN=mlos test signing", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return key, cert


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two output directories built from the same inputs, and the tree's build/ dir."""
    assert HEADERS is not None
    work = tmp_path_factory.mktemp("flatcar-build")
    trees = [stand_in_tree(work, HEADERS, flatcar_os_release(TREE_VERSION)),
             stand_in_image(work, HEADERS, flatcar_os_release(TREE_VERSION))]
    # A stand-in for `mlos-build container`'s archive: the extension carries it as it is.
    archive = work / "mlos-core.oci.tar"
    archive.write_bytes(b"an image archive stands in here\n" * 128)
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    outs = [work / "a", work / "b"]
    # Both sign the module (signatures with one key are deterministic): --sign-key is the
    # module's key here, never a gpg key for SHA256SUMS as on disk images.
    key, cert = signing_key(work)
    signing = ("--sign-key", str(key), "--sign-cert", str(cert))
    procs = [subprocess.Popen(command(tree, out, archive, *signing), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tree, out in zip(trees, outs, strict=True)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=840)
        assert proc.returncode == 0, stderr
        assert stdout.strip().endswith(f"{NAME}.raw")
    return outs[0], outs[1], HEADERS


def listing(image: Path) -> list[str]:
    out = subprocess.run(["unsquashfs", "-lls", "-d", "", str(image)], capture_output=True,
                         text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
    return [line for line in out.splitlines() if line[:1] in "-dl"]


def test_the_two_builds_are_byte_identical(builds: tuple[Path, Path, Path]) -> None:
    a, b, _ = builds
    for name in (f"{NAME}.raw", f"{NAME}.ign", f"{NAME}.bu", f"{NAME}.manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_the_extension_holds_what_the_issue_lists(builds: tuple[Path, Path, Path],
                                                 tmp_path: Path) -> None:
    out, _, headers = builds
    release = kernel_release(headers)
    lines = listing(out / f"{NAME}.raw")
    # mode owner size date time path (the root's path is empty)
    paths = {line.split(maxsplit=5)[5] for line in lines[1:]}
    module = f"/usr/lib/modules/{release}/extra/mlos_ml.ko.xz"
    for path in (module, "/usr/lib/extension-release.d/extension-release.mlos",
                 "/usr/lib/modprobe.d/mlos-ml.conf", "/usr/lib/udev/rules.d/99-mlos-ml.rules",
                 "/usr/lib/systemd/system/mlos-ml.service",
                 "/usr/lib/systemd/system/mlos-core.service",
                 "/usr/lib/systemd/system/mlos-core-image.service",
                 "/usr/share/mlos/mlos-core.oci.tar",
                 "/usr/share/mlos/models/demo/1/model.onnx"):
        assert path in paths, path
    assert not [p for p in paths if Path(p).name.startswith("modules.")]
    assert all(p.startswith("/usr") for p in paths)
    # Root-owned, and every file dated SOURCE_DATE_EPOCH (1700000000: 2023-11-14 22:13).
    assert all(" root/root " in line and "2023-11-14 22:13" in line for line in lines)

    unpacked = tmp_path / "x"
    subprocess.run(["unsquashfs", "-d", str(unpacked), str(out / f"{NAME}.raw")], check=True,
                   capture_output=True)
    text = (unpacked / "usr/lib/extension-release.d/extension-release.mlos").read_text()
    assert text.splitlines()[:3] == ["ID=flatcar", f"VERSION_ID={TREE_VERSION}",
                                     "ARCHITECTURE=x86-64"]
    assert "SYSEXT_LEVEL" not in text
    ko = lzma.decompress((unpacked / module.lstrip("/")).read_bytes())
    vermagic = ko[ko.index(b"vermagic=") + 9:].split(b"\0")[0].decode()
    assert vermagic.split()[0] == release
    assert b".debug_info" not in ko  # stripped, as modules_install does
    assert ko.endswith(b"~Module signature appended~\n")
    # An extension is no disk: no block map, qcow2 or gpg signature beside it.
    assert not [p.name for p in out.iterdir() if p.suffix in (".bmap", ".qcow2", ".asc")]
    assert stat.S_IMODE((unpacked / "usr/libexec/mlos/mlos-ml-load").stat().st_mode) == 0o755

    manifest = json.loads((out / f"{NAME}.manifest.json").read_text())
    assert manifest["module"]["kernel_release"] == release
    assert manifest["module"]["vermagic"] == vermagic
    assert manifest["flatcar_version"] == TREE_VERSION
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout


@pytest.mark.skipif(not ignition_root.available(), reason="Debian's ignition is not installed")
def test_ignition_places_the_built_extension(builds: tuple[Path, Path, Path]) -> None:
    out = builds[0]
    config = out / f"{NAME}.ign"
    validated = subprocess.run(["ignition-validate", str(config)], capture_output=True,
                               text=True, check=False)
    assert validated.returncode == 0, validated.stdout
    with ignition_root.scratch() as work:
        applied = ignition_root.apply(config, work)
        placed = applied.path(f"/opt/extensions/mlos/{NAME}.raw")
        # Inlined (it is small): what ignition wrote is the image, byte for byte.
        assert placed.read_bytes() == (out / f"{NAME}.raw").read_bytes()
        assert os.readlink(applied.path("/etc/extensions/mlos.raw")) == (
            f"/opt/extensions/mlos/{NAME}.raw")


def test_a_tree_of_another_release_is_refused_before_compiling(tmp_path: Path) -> None:
    assert HEADERS is not None
    tree = stand_in_tree(tmp_path, HEADERS, flatcar_os_release("3975.2.0"))
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x")
    result = subprocess.run(command(tree, tmp_path / "out", archive), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[mlos")]
    assert lines == [
        f"mlos-build: error: --kernel-build-tree {tree} is from flatcar 3975.2.0, not "
        f"flatcar {TREE_VERSION}",
        "  hint: make it on a node of that release: ssh core@NODE 'tar -chzf - -C "
        "/usr/lib/modules/$(uname -r) build -C /usr/lib os-release' > "
        f"flatcar-{TREE_VERSION}-kernel-tree.tar.gz"]
    assert not (tmp_path / "out" / f"{NAME}.raw").exists()


def test_sign_key_signs_the_module_with_the_trees_sign_file(
        builds: tuple[Path, Path, Path], tmp_path: Path) -> None:
    # The built module, signed as --sign-key does (a whole build more would compile again).
    out, _, headers = builds
    unpacked = tmp_path / "x"
    subprocess.run(["unsquashfs", "-d", str(unpacked), str(out / f"{NAME}.raw")], check=True,
                   capture_output=True)
    ko = tmp_path / "mlos_ml.ko"
    release = kernel_release(headers)
    ko.write_bytes(lzma.decompress(
        (unpacked / f"usr/lib/modules/{release}/extra/mlos_ml.ko.xz").read_bytes()))
    key, cert = signing_key(tmp_path)
    tree = KernelTree(build=headers, release=str(release), os_release={},
                      config=parse_config((headers / ".config").read_text()))
    unsigned = ko.read_bytes()
    sign(tree, ko, key, cert)
    signed = ko.read_bytes()
    assert signed.startswith(unsigned) and signed.endswith(b"~Module signature appended~\n")
    with pytest.raises(BuildError, match="does not exist"):
        sign(tree, ko, tmp_path / "missing.pem", cert)
