# SPDX-License-Identifier: Apache-2.0
"""Build the mlos-ml module and a busybox initramfs, boot real Debian kernels in QEMU.

The one guest helper of the `kernel` pytest layer and of the kernel benchmarks
(benchmarks/kernel_bench.py, modes_bench.py). It lives with the test layer that owns
these guests; the benchmarks boot the same guests and put tests/kernel on their path, as
pytest does for the tests. Not in an installed package: the venv's editable install
points at one checkout, so a second checkout would boot guests with the first's helper.

Guests that run this checkout's Python (boot_host_root) see the host's root read-only
over 9p and chroot into it; the checkout and the venv stay at their host paths there,
wherever they lie (guest_hostroot.sh). Guest kernels come from .cache/kernels/<abi>/
(extracted by scripts/setup.d/30-kernel.sh); headers from /usr/src/linux-headers-<abi>.
Nothing here loads anything into the host's kernel.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KERNEL_SRC = REPO / "kernel"
KCACHE = REPO / ".cache" / "kernels"
HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "guest_init.sh"
HOST_ROOT_SCRIPT = HERE / "guest_hostroot.sh"
MODULE_SOURCES = ("Kbuild", "Makefile", "dkms.conf", "compat.h", "mlos_ml.h", "main.c", "pool.c",
                  "sched.c", "gpu.c", "include")
UBUNTU_HEADERS = REPO / ".cache" / "ubuntu-headers"
SELFTESTS = ("mlos_ml_test", "mlos_ml_race", "mlos_ml_fuzz", "mlos_ml_fuzz_mt")


def guest_kernels() -> list[str]:
    """ABI names of the extracted guest kernels, e.g. ['6.1.0-56-amd64', '6.12.95+deb12-amd64']."""
    abis = KCACHE / ".abis"
    if not abis.exists():
        return []
    return [line.strip() for line in abis.read_text().splitlines() if line.strip()]


def kernel_image(abi: str) -> Path:
    return KCACHE / abi / "boot" / f"vmlinuz-{abi}"


def kernel_modules_dir(abi: str) -> Path:
    return KCACHE / abi / "lib" / "modules" / abi


def headers_dir(abi: str) -> Path:
    return Path("/usr/src") / f"linux-headers-{abi}"


@dataclasses.dataclass
class ModuleBuild:
    ko: Path
    log: str

    @property
    def warnings(self) -> list[str]:
        # Kbuild's own note that the compiler differs from the kernel's is not about our code.
        return [ln for ln in self.log.splitlines() if re.search(r"\bwarning\b", ln, re.I)
                and "Skipping BTF" not in ln and "compiler differs" not in ln]


def copy_sources(dest: Path) -> Path:
    """A private copy of the module sources (builds for several kernels must not collide)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in MODULE_SOURCES:
        path = KERNEL_SRC / name
        if path.is_dir():
            shutil.copytree(path, dest / name)
        else:
            shutil.copy2(path, dest / name)
    return dest


def ubuntu_headers(release: str) -> Path | None:
    found = sorted((UBUNTU_HEADERS / release / "usr" / "src").glob("linux-headers-*-generic"))
    return found[-1] if found else None


def build_module(kdir: Path, workdir: Path, extra: Iterable[str] = ()) -> ModuleBuild:
    """Compile kernel/ out of tree against kdir, the way the image builder does."""
    src = copy_sources(workdir / "mlos_ml_src")
    proc = subprocess.run(["make", "-C", str(kdir), f"M={src}", "modules", *extra],
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"module build against {kdir} failed:\n{log[-4000:]}")
    return ModuleBuild(ko=src / "mlos_ml.ko", log=log)


def build_selftests(workdir: Path) -> dict[str, Path]:
    """Static selftest and fuzzer binaries (they run in a bare busybox guest)."""
    out = {}
    for prog in SELFTESTS:
        dst = workdir / prog
        src = KERNEL_SRC / "selftests" / f"{prog}.c"
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Wno-sign-compare",
                        "-Wno-unused-parameter", "-Werror", "-static", "-pthread", "-o",
                        str(dst), str(src)], check=True, capture_output=True, text=True)
        out[prog] = dst
    return out


def make_initramfs(workdir: Path, files: Mapping[str, Path], init: Path = INIT_SCRIPT) -> Path:
    """A newc cpio with busybox, /init and the given files (guest path -> host path)."""
    root = workdir / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "tmp", "mnt"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    shutil.copy2(init, root / "init")
    (root / "init").chmod(0o755)
    for guest_path, host_path in files.items():
        dst = root / guest_path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if str(host_path).endswith(".xz"):
            data = subprocess.run(["xz", "-dc", str(host_path)], check=True,
                                  capture_output=True).stdout
            dst.write_bytes(data)
        elif str(host_path).endswith(".zst"):
            data = subprocess.run(["zstd", "-dc", str(host_path)], check=True,
                                  capture_output=True).stdout
            dst.write_bytes(data)
        else:
            shutil.copy2(host_path, dst)
    cpio = workdir / "initramfs.cpio"
    names = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    with open(cpio, "wb") as fh:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names,
                       stdout=fh, check=True)
    return cpio


@dataclasses.dataclass
class GuestRun:
    output: str
    seconds: float
    returncode: int

    def results(self) -> list[list[str]]:
        """The MLOS-RESULT lines, split into words (the marker dropped)."""
        out = []
        for line in self.output.splitlines():
            # The console may glue terminal escapes to the first line: search, not match.
            at = line.find("MLOS-RESULT ")
            if at >= 0:
                out.append(line[at:].split()[1:])
        return out

    def result(self, *prefix: str) -> list[str] | None:
        for words in self.results():
            if words[: len(prefix)] == list(prefix):
                return words[len(prefix):]
        return None

    def prefixed(self, marker: str, mode: str | None = None) -> list[str]:
        lines = []
        for line in self.output.splitlines():
            line = line.strip()
            if line.startswith(marker + " "):
                rest = line[len(marker) + 1:]
                if mode is not None:
                    if not rest.startswith(mode + " "):
                        continue
                    rest = rest[len(mode) + 1:]
                lines.append(rest)
        return lines


def module_closure(abi: str, names: Iterable[str]) -> list[tuple[str, Path]]:
    """The distribution's modules `names` plus their dependencies, in load order, as
    (guest path, host path) pairs (from the kernel package's modules.dep)."""
    mdir = kernel_modules_dir(abi)
    deps: dict[str, list[str]] = {}
    for line in (mdir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", Path(m).name).replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps.get(mod, []):
            visit(dep)
        order.append(mod)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:  # absent: built into this kernel
            visit(by_name[key])
    return [(f"/modules/{i:02d}-{Path(m).name.split('.ko')[0]}.ko", mdir / m)
            for i, m in enumerate(order)]


NINEP_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
# This host's root, read-only over 9p with the tag guest_hostroot.sh mounts. multidevs=remap:
# without it 9p gives the host's /proc and /sys (two filesystems' root inodes) one qid, and
# the guest's sysfs mount covers its procfs as well.
HOST_ROOT_VIRTFS = ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                    "readonly=on,multidevs=remap"]


def kvm_usable() -> bool:
    return os.environ.get("MLOS_QEMU_KVM") == "1" and os.access("/dev/kvm", os.R_OK | os.W_OK)


def run_guest(kernel: Path, initrd: Path, append: str = "", devices: Iterable[str] = (),
              memory_mb: int = 768, cpus: int = 2, timeout: float = 300,
              extra_args: Iterable[str] = ()) -> GuestRun:
    """Boot kernel + initrd under QEMU (TCG; KVM only when MLOS_QEMU_KVM=1 says it works)."""
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else ["-accel", "tcg", "-cpu", "max"]
    cmd = ["qemu-system-x86_64", *accel, "-m", str(memory_mb), "-smp", str(cpus),
           "-nographic", "-no-reboot", "-vga", "none", "-nodefaults", "-serial", "stdio",
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", f"console=ttyS0 panic=-1 quiet loglevel=3 {append}".strip()]
    for dev in devices:
        cmd += ["-device", dev]
    cmd += list(extra_args)
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        out = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw) + "\n[timeout]"
        rc = -1
    log_dir = os.environ.get("MLOS_GUEST_LOG_DIR")
    if log_dir:  # keep every console for post-mortems (CI uploads it)
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        name = f"{kernel.name}-{int(time.time())}.log"
        (Path(log_dir) / name).write_text(out)
    return GuestRun(output=out, seconds=time.monotonic() - start, returncode=rc)


def guest_visible_paths() -> list[Path]:
    """The host directories a chrooted guest needs at their own paths: the checkout, the
    venv and the interpreter it links to (scripts, pyvenv.cfg and the editable install name
    them by absolute path). Nested ones are dropped: the outer bind carries them."""
    wanted = sorted({REPO, *(Path(p) for p in (sys.prefix, sys.base_prefix)),
                     *(Path(p).resolve() for p in (sys.prefix, sys.base_prefix))})
    return [p for p in wanted if not any(o != p and p.is_relative_to(o) for o in wanted)]


def host_root_append() -> str:
    """Kernel command line words for guest_hostroot.sh: where the checkout is, which python
    runs there and with which PYTHONPATH (the checkout first, then the host's own)."""
    paths = [str(REPO), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    keep = ",".join(str(p) for p in guest_visible_paths())
    # The guest scripts read each value up to the next space; mlos.keep splits at commas.
    if any(c.isspace() or c == "," for c in pythonpath + sys.executable + keep.replace(",", "")):
        raise RuntimeError(f"guests cannot reach {REPO}: its path, the venv's or PYTHONPATH "
                           "has a space or a comma (use paths without)")
    return (f"mlos.repo={REPO} mlos.python={sys.executable} mlos.pythonpath={pythonpath} "
            f"mlos.keep={keep}")


def boot_host_root(abi: str, work: Path, files: Mapping[str, Path], init: Path = INIT_SCRIPT,
                   append: str = "", modules: Iterable[str] = NINEP_MODULES,
                   **run: Any) -> GuestRun:
    """Boot kernel abi with this host's root shared read-only over 9p: files (guest path ->
    host path), /hostroot.sh and the distribution's modules (9p first) in the initramfs;
    run's keywords (timeout, memory_mb, ...) go to run_guest."""
    files = {**files, "/hostroot.sh": HOST_ROOT_SCRIPT, **dict(module_closure(abi, modules))}
    return run_guest(kernel_image(abi), make_initramfs(work, files, init),
                     append=f"{append} {host_root_append()}", extra_args=HOST_ROOT_VIRTFS,
                     **run)


def run_host_root_guest(work: Path, selftest_binaries: Mapping[str, Path], extra_script: Path,
                        append: str, timeout: float, devices: Iterable[str] = (),
                        memory_mb: int = 1536, cpus: int = 2) -> GuestRun:
    """Boot the newest guest kernel with the module built for it, the selftests and
    extra_script (/extra.sh, which guest_init.sh runs once per mode) and this host's root
    over 9p (boot_host_root), for extra scripts that run the checkout's Python there."""
    kernels = guest_kernels()
    if not kernels:
        raise RuntimeError("no guest kernels: run ./scripts/setup.sh")
    abi = kernels[-1]
    build = build_module(headers_dir(abi), work)
    files = {"/mlos_ml.ko": build.ko, "/extra.sh": extra_script,
             **{f"/{k}": v for k, v in selftest_binaries.items()}}
    return boot_host_root(abi, work, files, append=append, timeout=timeout, devices=devices,
                          memory_mb=memory_mb, cpus=cpus)


def modes_report(run: GuestRun, mode: str) -> dict[str, Any]:
    """The MLOS-MODES-JSON result a guest check script printed for mode; without one, an
    AssertionError with the script's log lines and the console's end."""
    for line in run.output.splitlines():
        at = line.find("MLOS-MODES-JSON ")
        if at >= 0:
            _, got, body = line[at:].split(" ", 2)
            if got == mode:
                return json.loads(body)  # type: ignore[no-any-return]
    raise AssertionError(f"no result for {mode}: {run.prefixed('MLOS-MODESLOG', mode)} "
                         f"{run.output[-3000:]}")


def scratch_dir(prefix: str = "mlos-kernel-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
