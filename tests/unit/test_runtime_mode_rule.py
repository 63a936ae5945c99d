# SPDX-License-Identifier: Apache-2.0
"""One rule from module parameters to the runtime mode (mlos_core.kernel.mlos_ml.mode_for): what
/health reports from sysfs, what the binding reads, what the service's features add up
to, and what every variant file under images/variants declares all agree, and mlos-build
refuses a variant whose declared mode contradicts its parameters."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlos_build.data import images_dir, implied_runtime_mode, load_variant, variant_names
from mlos_core.kernel import mlos_ml
from mlos_core.kernel.modes import KernelModes
from mlos_core.kernel.runtime_mode import detect

# README's table, plus what the combinations it leaves out make: every kernel mode stands
# on the memory manager (tmm), and the GPU manager counts only with the scheduler.
EXPECTED = {(1, 0, 0): "kernel_basic", (1, 1, 0): "kernel_scheduler",
            (1, 1, 1): "kernel_full", (1, 0, 1): "kernel_basic",
            **{(0, s, g): "userspace" for s in (0, 1) for g in (0, 1)}}


def _sysfs(root: Path, tmm: int, sched: int, gpu: int) -> Path:
    pdir = root / "module" / "mlos_ml" / "parameters"
    pdir.mkdir(parents=True)
    for name, value in (("enable_tmm", tmm), ("enable_scheduler", sched),
                        ("enable_gpu_manager", gpu), ("debug_level", 0)):
        (pdir / name).write_text(("Y" if value else "N") if name != "debug_level" else "0")
    return root


@pytest.mark.parametrize("flags", list(itertools.product((0, 1), repeat=3)))
def test_every_reader_applies_the_one_rule(tmp_path: Path, flags: tuple[int, int, int]) -> None:
    root = _sysfs(tmp_path, *flags)
    expected = EXPECTED[flags]
    assert mlos_ml.mode_for(*map(bool, flags)) == expected
    assert detect(root).mode == expected                      # /health
    params = mlos_ml.read_parameters(root)
    assert params is not None and params.runtime_mode == expected  # the binding
    assert mlos_ml.runtime_mode(root) == expected


def test_the_module_loaded_with_enable_tmm_0_is_userspace(tmp_path: Path) -> None:
    """Issue 12, finding 13: detect said kernel_basic, the binding userspace."""
    root = _sysfs(tmp_path, 0, 0, 0)
    assert detect(root).mode == "userspace"
    assert mlos_ml.read_parameters(root).runtime_mode == "userspace"  # type: ignore[union-attr]


def test_the_effective_mode_uses_the_same_rule(tmp_path: Path) -> None:
    # No device node: every feature unavailable, whatever the parameters say.
    modes = KernelModes(detect(_sysfs(tmp_path, 1, 1, 1)), str(tmp_path / "absent")).start()
    assert modes.effective_mode() == mlos_ml.mode_for(False, False, False) == "userspace"


@pytest.mark.parametrize("path", sorted((images_dir() / "variants").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_variant_declares_the_mode_its_parameters_make(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    params = (data.get("module") or {}).get("parameters")
    expected = "userspace" if params is None else mlos_ml.mode_for(
        *(bool(int(params[k])) for k in ("enable_tmm", "enable_scheduler",
                                         "enable_gpu_manager")))
    assert data["runtime_mode"] == expected
    assert load_variant(path.stem).runtime_mode == expected
    assert implied_runtime_mode(load_variant(path.stem).module) == expected
    assert path.stem in variant_names()


def test_mlos_build_refuses_a_variant_whose_mode_disagrees(tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(images_dir(), images)
    bad = images / "variants" / "basic.yaml"
    bad.write_text(bad.read_text().replace("runtime_mode: kernel_basic",
                                           "runtime_mode: kernel_full"))
    result = subprocess.run(
        [sys.executable, "-m", "mlos_build.cli", "render", "ubuntu", "--variant", "basic",
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin", "MLOS_IMAGES_DIR": str(images),
             "PYTHONPATH": ":".join(sys.path)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "runtime_mode 'kernel_full' disagrees with its module parameters, which make " \
           "'kernel_basic'" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
