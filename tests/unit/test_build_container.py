# SPDX-License-Identifier: Apache-2.0
"""The container target: its render (an mkosi OCI project), its data and its run command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlos_build import __version__, cli
from mlos_build.errors import BuildError
from mlos_build.targets import commands
from mlos_build.targets.container import ContainerTarget, load_container, run_arguments

REPO = Path(__file__).resolve().parents[2]


def render(tmp_path: Path, *args: str) -> Path:
    dest = tmp_path / "project"
    assert cli.main(["render", "container", "--output-dir", str(dest), *args]) == 0
    return dest


def test_container_is_a_registered_target() -> None:
    assert commands()["container"] is ContainerTarget


def test_render_is_an_oci_project_of_the_base_distribution(tmp_path: Path) -> None:
    dest = render(tmp_path)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["mkosi.build.chroot", "mkosi.conf",
                     "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources",
                     "mkosi.postinst.chroot"]
    conf = (dest / "mkosi.conf").read_text()
    assert "Format=oci" in conf and "Distribution=debian" in conf
    assert "Release=bookworm" in conf and f"Output=mlos-core-{__version__}" in conf
    assert "libgomp1" in conf and "cmake" in conf  # LLM support by default
    post = (dest / "mkosi.postinst.chroot").read_text()
    assert "useradd --system --uid 10001 --gid 10001" in post
    assert '[llm]"' in post and "mlos-wheels/debian-bookworm" in post
    # One llama.cpp wheel recipe, shared with the disk images' build script.
    build = (dest / "mkosi.build.chroot").read_text()
    disk = tmp_path / "disk"
    assert cli.main(["render", "debian", "--variant", "userspace", "--profile", "vm",
                     "--output-dir", str(disk)]) == 0
    assert build.split("set -eu\n", 1)[1].strip() in (disk / "mkosi.build.chroot").read_text()
    sources = (dest / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    assert sources == (disk / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    for script in ("mkosi.build.chroot", "mkosi.postinst.chroot"):
        assert os.access(dest / script, os.X_OK)


def test_without_llm_drops_the_compile(tmp_path: Path) -> None:
    dest = render(tmp_path, "--without-llm")
    assert not (dest / "mkosi.build.chroot").exists()
    conf = (dest / "mkosi.conf").read_text()
    assert "BuildPackages" not in conf and "libgomp1" not in conf
    assert "[llm]" not in (dest / "mkosi.postinst.chroot").read_text()


@pytest.mark.skipif(shutil.which("mkosi") is None, reason="mkosi is not installed")
def test_mkosi_reads_the_render(tmp_path: Path) -> None:
    dest = render(tmp_path)
    out = subprocess.run(["mkosi", "--json", "summary"], cwd=dest, capture_output=True,
                         text=True, check=True)
    image = json.loads(out.stdout)["Images"][-1]
    assert image["Format"] == "oci" and image["Bootable"] == "disabled"
    assert "python3" in image["Packages"] and "systemd" not in image["Packages"]


def test_variant_is_not_an_option(capsys: pytest.CaptureFixture[str]) -> None:
    # One image for every variant: the host's module decides the mode.
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["container", "--variant", "full"])
    assert "unrecognized arguments: --variant" in capsys.readouterr().err


def test_run_arguments() -> None:
    image, base, release = load_container("container")
    assert (base, release) == ("debian", "bookworm")
    assert run_arguments(image, "mlos-core:1") == [
        "run", "--rm", "--name", "mlos-core", "-p", "8080:8080", "-p", "8081:8081",
        "-v", "mlos-models:/var/lib/mlos/models",
        "--ulimit", "memlock=268435456:268435456", "mlos-core:1"]
    argv = run_arguments(image, "x", device_gid=10001, detach=True,
                         publish={8080: "127.0.0.1:18080"})
    assert argv[:2] == ["run", "-d"] and "127.0.0.1:18080:8080" in argv
    assert argv[-5:] == ["--device", "/dev/mlos-ml", "--group-add", "10001", "x"]


def test_bad_container_data_is_one_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    path = images / "distributions" / "container.yaml"
    path.write_text(path.read_text().replace("uid: 10001", "uid: ten"))
    result = subprocess.run([sys.executable, "-m", "mlos_build.cli", "render", "container",
                             "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "MLOS_IMAGES_DIR": str(images)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith(
        "mlos-build: error: images/distributions/container.yaml lacks or mistypes")


def test_missing_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    args = cli.build_parser().parse_args(["container", "--output-dir", str(tmp_path)])
    target = ContainerTarget(ContainerTarget.spec_from_args("container", args, build=True),
                             REPO, lambda line: None)
    with pytest.raises(BuildError, match="host tool 'mkosi' not found"):
        target.build(tmp_path)
