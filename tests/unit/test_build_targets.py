# SPDX-License-Identifier: Apache-2.0
"""The target registry: which target builds a distribution is data, not code in cli.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlos_build import apt, cli
from mlos_build.data import distribution_target
from mlos_build.errors import BuildError
from mlos_build.targets import TARGETS, commands, target_class
from mlos_build.targets.mkosi_disk import MkosiDiskTarget

REPO = Path(__file__).resolve().parents[2]


def test_every_distribution_names_a_registered_target() -> None:
    served = commands()
    assert served["ubuntu"] is MkosiDiskTarget and served["debian"] is MkosiDiskTarget
    for name, cls in served.items():
        assert TARGETS[distribution_target(name)] is cls
    assert set(apt.distribution_names()) == {"ubuntu", "debian"}


def test_the_command_line_follows_the_data(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A new apt distribution file is a new build and render subcommand, without code.
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    text = (images / "distributions" / "debian.yaml").read_text()
    (images / "distributions" / "devuan.yaml").write_text(text.replace("name: debian",
                                                                       "name: devuan"))
    monkeypatch.setenv("MLOS_IMAGES_DIR", str(images))
    assert commands()["devuan"] is MkosiDiskTarget
    args = cli.build_parser().parse_args(["render", "devuan", "--variant", "basic"])
    assert args.target is MkosiDiskTarget and args.target_command == "devuan"
    spec = MkosiDiskTarget.spec_from_args("devuan", args, build=False)
    assert spec.name == "mlos-devuan-bookworm-basic"


def test_an_unknown_target_in_the_data_is_one_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    path = images / "distributions" / "debian.yaml"
    path.write_text(path.read_text().replace("target: mkosi-disk", "target: nosuch"))
    with pytest.raises(BuildError, match="unknown build target 'nosuch'") as exc:
        target_class("nosuch")
    assert "mkosi-disk" in exc.value.hint
    result = subprocess.run([sys.executable, "-m", "mlos_build.cli", "render", "--help"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "MLOS_IMAGES_DIR": str(images)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines == ["mlos-build: error: images/distributions/debian.yaml names an unknown "
                     "build target 'nosuch'", "  hint: valid targets: mkosi-disk"]
