# SPDX-License-Identifier: Apache-2.0
"""QEMU command lines for boot and smoke test (the boots themselves are in tests/images)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mlos_build.qemu import (
    RESULT_PORT,
    TCG_CMDLINE,
    VALIDATE_PORT,
    VALIDATE_PROGRESS_PREFIX,
    Machine,
    encode_suite_args,
    follow_console,
    kvm_works,
)
from mlos_build.render import ImageSpec, render


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


def test_validate_attaches_its_port_and_passes_the_suite_options(tmp_path: Path) -> None:
    word = encode_suite_args(["--repetitions", "3", "--label", "noble full, TCG"])
    assert " " not in word and "," not in word
    argv = Machine(tmp_path / "x.raw", kvm=False).argv(
        tmp_path / "vars.fd", interactive=False, result_file=tmp_path / "v.json",
        console_log=tmp_path / "c.log", result_port=VALIDATE_PORT, cmdline_extra=word)
    joined = " ".join(argv)
    assert f"name={VALIDATE_PORT}" in joined and f"name={RESULT_PORT}" not in joined
    assert f"type=11,value=io.systemd.stub.kernel-cmdline-extra={TCG_CMDLINE} {word}" in joined
    assert "snapshot=on" in joined


def test_tcg_skips_the_timer_check_and_waits_longer_for_devices_kvm_adds_nothing(
        tmp_path: Path) -> None:
    # A busy host made the 6.8 kernel's IO-APIC timer check panic under TCG, and a metal
    # image's initrd ran out of the default 90 s wait for its root partition.
    tcg = Machine(tmp_path / "x.raw", kvm=False).argv(
        tmp_path / "vars.fd", interactive=False, console_log=tmp_path / "c.log")
    assert tcg[-2:] == ["-smbios", "type=11,value=io.systemd.stub.kernel-cmdline-extra="
                        "no_timer_check systemd.default_device_timeout_sec=600"]
    kvm = Machine(tmp_path / "x.raw", kvm=True).argv(
        tmp_path / "vars.fd", interactive=False, console_log=tmp_path / "c.log")
    assert "-smbios" not in kvm


def test_a_flashed_device_boots_writable_with_port_forwards(tmp_path: Path) -> None:
    machine = Machine(Path("/dev/loop7"), kvm=False, forwards={2222: 22, 18080: 8080},
                      dhcp_hostname="srv-1", snapshot=False)
    joined = " ".join(machine.argv(tmp_path / "vars.fd", interactive=False,
                                   console_log=tmp_path / "c.log"))
    assert "if=virtio,format=raw,file=/dev/loop7 " in joined  # no snapshot: growth sticks
    assert ("user,id=net0,hostname=srv-1,hostfwd=tcp:127.0.0.1:2222-:22,"
            "hostfwd=tcp:127.0.0.1:18080-:8080") in joined


def test_the_guest_decodes_what_the_host_encodes(tmp_path: Path) -> None:
    render(ImageSpec.create("ubuntu", "scheduler", cache_dir=tmp_path / "cache",
                            mlos_version="0.0.0-test"), tmp_path / "p")
    script = (tmp_path / "p" / "mkosi.extra/usr/libexec/mlos/validate").read_text()
    namespace: dict[str, Any] = {}
    exec(compile(script, "validate", "exec"), namespace)  # top level only; main is guarded
    assert namespace["PORT_NAME"] == VALIDATE_PORT
    assert namespace["PROGRESS_PREFIX"] == VALIDATE_PROGRESS_PREFIX
    assert namespace["VARIANT"] == "scheduler"
    for args in ([], ["--repetitions", "3"], ["--label", "ünïcode, with 'quotes' & = signs"]):
        cmdline = f"BOOT_IMAGE=/vmlinuz console=ttyS0 {encode_suite_args(args)} quiet\n"
        assert namespace["suite_args"](cmdline) == args
    assert namespace["suite_args"]("console=ttyS0") == []
    with pytest.raises(ValueError, match="mlos.validate"):
        namespace["suite_args"]("mlos.validate=%%%")
    command = namespace["suite_command"](["--repetitions", "3"], "/var/tmp/x")
    assert command[:4] == ["/opt/mlos/venv/bin/python", "-m", "mlos_build.report", "run"]
    assert "http://127.0.0.1:8080" in command and "127.0.0.1:8081" in command
    assert command[-2:] == ["--repetitions", "3"]


def test_the_guests_progress_is_shown_while_the_console_grows(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    seen: list[str] = []
    with follow_console(console, VALIDATE_PROGRESS_PREFIX, seen.append):
        time.sleep(0.5)  # no log yet: nothing to read, no error
        with open(console, "ab") as f:
            f.write(b"[   12.1] systemd[1]: Started mlos-validate.service\r\n")
            f.write(f"{VALIDATE_PROGRESS_PREFIX}[report] mlp/http/c1: 5 reps\r\n".encode())
            f.write(f"[  13.0] {VALIDATE_PROGRESS_PREFIX}[report] half a li".encode())
            f.flush()
            time.sleep(2.5)
            assert seen == ["guest: [report] mlp/http/c1: 5 reps"]
            f.write(b"ne\n\xff garbage\n")
        time.sleep(2.5)
    assert seen == ["guest: [report] mlp/http/c1: 5 reps", "guest: [report] half a line"]
