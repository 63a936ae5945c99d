# SPDX-License-Identifier: Apache-2.0
"""Boots images under QEMU with UEFI (OVMF): KVM when it works, TCG otherwise.

`test` attaches a virtio port named org.mlos.result; the image's smoke-test unit writes a
JSON verdict there and powers the guest off, so the host reads a status, not a console.
`validate` does the same with a port named org.mlos.validate: the image's validation unit
runs the E2E report suite against the guest's own service and sends its results back.
The image may also be a block device (a disk an image was flashed to).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_build.errors import BuildError
from mlos_build.runner import Progress, require_tools, run

QEMU = "qemu-system-x86_64"
RESULT_PORT = "org.mlos.result"
VALIDATE_PORT = "org.mlos.validate"
# The validation unit reads its suite options from the kernel command line under this key.
VALIDATE_CMDLINE_KEY = "mlos.validate"
# The validation unit prints each progress line of the suite to the console after this.
VALIDATE_PROGRESS_PREFIX = "mlos validate progress: "
# Under TCG on a busy host the kernel's IO-APIC timer check can fail and panic ("IO-APIC +
# timer doesn't work", seen with Ubuntu's 6.8 kernel while other guests ran): the check is
# for broken hardware, which QEMU's emulated chipset is not. Devices: emulated, a metal
# image's initrd (85 MiB) takes over a minute to unpack and udev is slow to link the root
# partition, so the initrd's default 90 s wait for /dev/gpt-auto-root ran out on a busy host.
TCG_CMDLINE = "no_timer_check systemd.default_device_timeout_sec=600"
# With this on the kernel command line the smoke test reports but leaves the guest running.
KEEP_RUNNING_CMDLINE = "mlos.keep-running"
QCOW2_MAGIC = b"QFI\xfb"


def disk_format(image: Path) -> str:
    """QEMU's name for the image's format: the release's .qcow2 boots like the .raw."""
    try:
        with open(image, "rb") as f:
            return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"
    except OSError:
        return "raw"
OVMF_CODE = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd")


def _first_existing(candidates: tuple[str, ...]) -> Path:
    for c in candidates:
        if Path(c).exists():
            return Path(c)
    raise BuildError(f"UEFI firmware not found ({candidates[0]})", hint="apt-get install ovmf")


def kvm_works() -> bool:
    """True when /dev/kvm is usable: a KVM guest with the host CPU starts and quits."""
    if os.environ.get("MLOS_BUILD_ACCEL") in ("tcg", "kvm"):
        return os.environ["MLOS_BUILD_ACCEL"] == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(QEMU) is None:
        return False
    # Some hosts expose a /dev/kvm that accepts a VM but fails or hangs on a vCPU:
    # run a real guest instruction stream (the firmware) for a moment and look for errors.
    try:
        result = subprocess.run(
            [QEMU, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "64",
             "-display", "none", "-nodefaults", "-no-reboot", "-monitor", "stdio"],
            input="info kvm\nquit\n", capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "kvm support: enabled" in result.stdout


@dataclass
class Machine:
    """A QEMU command line for one boot of an image."""

    image: Path
    memory_mib: int = 2048
    cpus: int = 2
    kvm: bool | None = None
    # Host port -> guest TCP port, on 127.0.0.1 through QEMU's user network.
    forwards: dict[int, int] = field(default_factory=dict)
    # The host name QEMU's DHCP server hands the guest.
    dhcp_hostname: str | None = None
    # Writes go to a throw-away overlay (False: to the image or device itself).
    snapshot: bool = True
    # More QEMU arguments (shared directories, firmware config).
    extra_args: tuple[str, ...] = ()

    def uses_kvm(self) -> bool:
        if self.kvm is None:
            self.kvm = kvm_works()
        return self.kvm

    def argv(self, vars_file: Path, *, interactive: bool, result_file: Path | None = None,
             console_log: Path | None = None, result_port: str = RESULT_PORT,
             cmdline_extra: str | None = None) -> list[str]:
        kvm = self.uses_kvm()
        # numpy 2.x needs instructions TCG's default CPU model lacks: -cpu max has them.
        accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]
        argv = [
            QEMU, "-machine", "q35", *accel, "-m", str(self.memory_mib),
            "-smp", str(self.cpus), "-nographic", "-nodefaults",
            "-drive", f"if=pflash,format=raw,readonly=on,file={_first_existing(OVMF_CODE)}",
            "-drive", f"if=pflash,format=raw,file={vars_file}",
            "-drive", f"if=virtio,format={disk_format(self.image)},file={self.image}"
            + ("" if interactive or not self.snapshot else ",snapshot=on"),
            "-netdev", self.netdev(), "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
        ]
        if interactive:
            argv += ["-serial", "mon:stdio"]
        else:
            argv += ["-serial", f"file:{console_log}", "-monitor", "none", "-no-reboot"]
        if result_file is not None:
            argv += ["-device", "virtio-serial-pci",
                     "-chardev", f"file,id=mlosresult,path={result_file}",
                     "-device", f"virtserialport,chardev=mlosresult,name={result_port}"]
        extra = [] if kvm else [TCG_CMDLINE]
        if cmdline_extra is not None:
            if "," in cmdline_extra:
                raise BuildError("a kernel command line addition must not contain commas")
            extra.append(cmdline_extra)
        if extra:
            # systemd-stub appends this to the kernel command line of the image's UKI.
            argv += ["-smbios", "type=11,value=io.systemd.stub.kernel-cmdline-extra="
                     + " ".join(extra)]
        return [*argv, *self.extra_args]


    def netdev(self) -> str:
        options = ["user", "id=net0"]
        if self.dhcp_hostname:
            options.append(f"hostname={self.dhcp_hostname}")
        options += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                    for host, guest in self.forwards.items()]
        return ",".join(options)


def _check_image(image: Path) -> None:
    if not (image.is_file() or image.is_block_device()):
        raise BuildError(f"image {image} not found", hint="build one with mlos-build ubuntu "
                         "--variant full, or give the path of a .raw or .qcow2 image")
    require_tools([QEMU])


def boot(image: Path, memory_mib: int = 2048) -> int:
    """Boots the image with its serial console on this terminal (Ctrl-A X quits)."""
    _check_image(image)
    with tempfile.TemporaryDirectory(prefix="mlos-boot-") as tmp:
        vars_file = Path(tmp) / "OVMF_VARS.fd"
        shutil.copy(_first_existing(OVMF_VARS), vars_file)
        argv = Machine(image, memory_mib).argv(vars_file, interactive=True)
        print("booting under QEMU; the serial console follows (Ctrl-A X quits)", flush=True)
        try:
            return subprocess.call(argv)
        except FileNotFoundError:
            require_tools([QEMU])
            raise


@dataclass
class RunningGuest:
    """A guest booted for a verdict, while the host tests it (see smoke_test's `during`)."""

    process: subprocess.Popen[bytes]
    result_file: Path
    console_log: Path

    def verdict(self, timeout_s: float) -> Any:
        """Waits for the guest's JSON verdict line on the result port and returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.result_file.read_text() if self.result_file.exists() else ""
            if text.endswith("\n"):
                return json.loads(text.splitlines()[-1])
            if self.process.poll() is not None:
                raise BuildError("the guest stopped before its verdict",
                                 hint=f"read the console log {self.console_log}")
            time.sleep(1)
        raise BuildError(f"no verdict from the guest within {timeout_s:.0f}s",
                         hint=f"read the console log {self.console_log}")


@dataclass
class TestResult:
    verdict: dict[str, Any]
    seconds: float
    console_log: Path

    @property
    def ok(self) -> bool:
        return bool(self.verdict.get("ok"))


def _run_during(argv: list[str], result_file: Path, console: Path,
                during: Callable[[RunningGuest], None], timeout_s: float,
                progress: Progress) -> None:
    """Runs QEMU in the background while `during` tests the guest; `during` ends by
    powering the guest off, and QEMU must then exit within what is left of timeout_s."""
    progress("$ " + " ".join(argv))
    deadline = time.monotonic() + timeout_s
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        during(RunningGuest(process, result_file, console))
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"the guest did not power off within {timeout_s:.0f}s",
                         hint=f"read the console log {console}") from exc
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def boot_for_verdict(machine: Machine, image: Path, progress: Progress, prefix: str,
                      what: str, timeout_s: float, missing_hint: str,
                      during: Callable[[RunningGuest], None] | None = None,
                      follow_prefix: str | None = None,
                      **argv_options: Any) -> tuple[Any, float, Path]:
    """Boots the image (a snapshot unless machine.snapshot is False) until the guest powers
    off, and returns the last JSON line the guest wrote to its result port, the boot's wall
    time and the console log. With `during`, QEMU runs in the background while
    during(guest) tests the running guest, which it must power off at the end. With
    `follow_prefix`, console lines carrying it are shown as progress while the guest runs."""
    _check_image(image)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=argv_options.pop("work_dir", None)))
    vars_file = work / "OVMF_VARS.fd"
    shutil.copy(_first_existing(OVMF_VARS), vars_file)
    result_file = work / "result.json"
    console = work / "console.log"
    argv = machine.argv(vars_file, interactive=False, result_file=result_file,
                        console_log=console, **argv_options)
    progress(f"booting {image.name} under QEMU ({'KVM' if machine.uses_kvm() else 'TCG'}, "
             f"{machine.cpus} vCPUs); console log: {console}")
    start = time.monotonic()
    with follow_console(console, follow_prefix, progress):
        if during is not None:
            _run_during(argv, result_file, console, during, timeout_s, progress)
        else:
            try:
                run(argv, what=f"QEMU boot of {image.name}", timeout=timeout_s, check=False)
            except BuildError as exc:
                raise BuildError(f"{exc.message}; no {what} from the guest",
                                 hint=f"read the console log {console}") from exc
    seconds = time.monotonic() - start
    text = result_file.read_text().strip() if result_file.exists() else ""
    if not text:
        raise BuildError(f"the guest powered off without its {what} ({seconds:.0f}s)",
                         hint=f"{missing_hint}read the console log {console}")
    try:
        verdict = json.loads(text.splitlines()[-1])
    except ValueError as exc:
        raise BuildError(f"could not parse the guest's {what} as JSON",
                         hint=f"it said: {text[:200]}") from exc
    return verdict, seconds, console


def smoke_test(image: Path, progress: Progress, timeout_s: float = 900,
               memory_mib: int = 2048, work_dir: Path | None = None,
               machine: Machine | None = None,
               during: Callable[[RunningGuest], None] | None = None) -> TestResult:
    """Boots the image (snapshot: the image is not changed), waits for the in-guest smoke
    test's verdict on the result port and the guest's power-off, and returns it.

    With `during`, the guest keeps running after its verdict (mlos.keep-running) while
    during(guest) tests it from the host (through machine.forwards, say), and powers it off.
    """
    machine = machine or Machine(image, memory_mib)
    options: dict[str, Any] = {"work_dir": work_dir}
    if during is not None:
        options["cmdline_extra"] = KEEP_RUNNING_CMDLINE
    verdict, seconds, console = boot_for_verdict(
        machine, image, progress, "mlos-test-", "smoke-test verdict", timeout_s, "",
        during=during, **options)
    return TestResult(verdict, seconds, console)


def encode_suite_args(args: list[str]) -> str:
    """The kernel command line word that carries the suite options into the guest
    (URL-safe base64 of a JSON list, unpadded: no spaces, commas or quotes)."""
    encoded = base64.urlsafe_b64encode(json.dumps(args).encode()).decode().rstrip("=")
    return f"{VALIDATE_CMDLINE_KEY}={encoded}"


@contextlib.contextmanager
def follow_console(console: Path, prefix: str | None, progress: Progress) -> Iterator[None]:
    """While the block runs, passes what follows `prefix` on each console line to
    progress: the guest's own progress, read as QEMU writes the log (nothing without a
    prefix)."""
    if prefix is None:
        yield
        return
    stop = threading.Event()

    def follow() -> None:
        offset, partial = 0, b""
        while not stop.is_set():
            stop.wait(2.0)
            try:
                with open(console, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").strip("\r")
                at = line.find(prefix)
                if at >= 0:
                    progress("guest: " + line[at + len(prefix):])

    thread = threading.Thread(target=follow, name="console-follow", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass
class ValidateResult:
    report: dict[str, Any]
    seconds: float
    console_log: Path

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok")) and isinstance(self.report.get("results"), dict)


def validate(image: Path, progress: Progress, suite_args: list[str], timeout_s: float = 3600,
             memory_mib: int = 2048, cpus: int = 2,
             work_dir: Path | None = None) -> ValidateResult:
    """Boots the image (snapshot: the image is not changed) with the validation port, lets
    the guest run the report suite against its own service and returns what it sent."""
    report, seconds, console = boot_for_verdict(
        Machine(image, memory_mib, cpus), image, progress, "mlos-validate-",
        "validation results", timeout_s, "is this image built with mlos-validate.service? ",
        work_dir=work_dir, result_port=VALIDATE_PORT, follow_prefix=VALIDATE_PROGRESS_PREFIX,
        cmdline_extra=encode_suite_args(suite_args))
    if not isinstance(report, dict):
        raise BuildError("the guest's validation results are not a JSON object")
    return ValidateResult(report, seconds, console)
