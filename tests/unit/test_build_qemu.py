# SPDX-License-Identifier: Apache-2.0
"""QEMU command lines for boot and smoke test (the boots themselves are in tests/images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlos_build.qemu import RESULT_PORT, Machine, kvm_works


def test_tcg_uses_cpu_max_and_the_test_attaches_the_result_port(tmp_path: Path) -> None:
    argv = Machine(tmp_path / "x.raw", kvm=False).argv(
        tmp_path / "vars.fd", interactive=False, result_file=tmp_path / "r.json",
        console_log=tmp_path / "c.log")
    joined = " ".join(argv)
    assert "-accel tcg -cpu max" in joined
    assert f"name={RESULT_PORT}" in joined
    assert f"file,id=mlosresult,path={tmp_path / 'r.json'}" in joined
    assert "snapshot=on" in joined  # a test never changes the image
    assert f"-serial file:{tmp_path / 'c.log'}" in joined


def test_kvm_uses_the_host_cpu_and_boot_is_interactive(tmp_path: Path) -> None:
    argv = Machine(tmp_path / "x.raw", kvm=True).argv(tmp_path / "vars.fd", interactive=True)
    joined = " ".join(argv)
    assert "-accel kvm -cpu host" in joined
    assert "-serial mon:stdio" in joined
    assert "snapshot=on" not in joined and RESULT_PORT not in joined


def test_accelerator_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOS_BUILD_ACCEL", "tcg")
    assert kvm_works() is False
    monkeypatch.setenv("MLOS_BUILD_ACCEL", "kvm")
    assert kvm_works() is True
