# SPDX-License-Identifier: Apache-2.0
"""Benchmark: an MLOS image beside a plain mkosi minimal image of the same distribution,
built and booted in the same run on the same machine.

For each: cold build (empty package/image cache), warm build (same cache again), image
size (apparent and allocated), and boot time under QEMU (the accelerator mlos-build picks):
seconds from QEMU start to the serial login prompt, and for MLOS also to a healthy service
(guest uptime when /health answered, from the smoke-test verdict).

    .venv/bin/python benchmarks/build_images.py [--distribution ubuntu] [--variant full]
        [--profiles metal,vm]

Writes docs/build-benchmarks.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mlos_build.qemu import OVMF_VARS, Machine, _first_existing, kvm_works, smoke_test
from mlos_build.render import ImageSpec, render
from mlos_build.runner import run
from mlos_build.targets.common import SYSTEM_PATH
from mlos_build.targets.mkosi_disk import MkosiDiskTarget

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "build-benchmarks.md"
FLASH_START = "<!-- flash-benchmark:start -->"


def plain_project(spec: ImageSpec, dest: Path) -> None:
    """A minimal bootable mkosi image: systemd, kernel, boot loader; same apt sources."""
    render(spec, dest / "mlos")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dest / "mlos" / "mkosi.pkgmngr", dest / "plain" / "mkosi.pkgmngr")
    release = spec.distribution.releases[spec.release]
    packages = ["systemd", "systemd-sysv", "udev", *release.packages,
                *spec.distribution_profile.kernel_packages]
    (dest / "plain" / "mkosi.conf").write_text(
        "[Distribution]\n"
        f"Distribution={spec.distribution.name}\nRelease={spec.release}\n"
        "[Output]\nFormat=disk\nOutput=plain\n"
        "[Content]\nBootable=yes\nBootloader=systemd-boot\n"
        "KernelCommandLine=console=tty0 console=ttyS0,115200 systemd.firstboot=off\n"
        "Locale=C.UTF-8\nTimezone=UTC\nHostname=plain\n"
        "Packages=" + ",".join(packages) + "\n")


def build_plain(project: Path, out: Path, cache: Path) -> float:
    start = time.monotonic()
    run(["mkosi", "--directory", project, "--output-dir", out,
         "--package-cache-dir", cache / "packages", "--cache-dir", cache / "mkosi",
         "--incremental", "yes", "--force", "build"], what="plain mkosi build",
        env={"PATH": SYSTEM_PATH})
    return time.monotonic() - start


def build_mlos(spec: ImageSpec, source: Path, out: Path) -> tuple[float, Path]:
    start = time.monotonic()
    result = MkosiDiskTarget(spec, source, lambda line: None).build(out)
    return time.monotonic() - start, result.image


def seconds_to_login(image: Path, timeout: float = 600) -> float:
    """Wall seconds from QEMU start until the serial console shows a login prompt."""
    with tempfile.TemporaryDirectory() as tmp:
        vars_file = Path(tmp) / "vars.fd"
        shutil.copy(_first_existing(OVMF_VARS), vars_file)
        console = Path(tmp) / "console.log"
        argv = Machine(image).argv(vars_file, interactive=False, console_log=console)
        start = time.monotonic()
        with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as q:
            try:
                while time.monotonic() - start < timeout:
                    if console.exists() and re.search(rb"login: ", console.read_bytes()):
                        return time.monotonic() - start
                    time.sleep(0.5)
                raise RuntimeError(f"{image.name}: no login prompt within {timeout}s")
            finally:
                q.kill()


# A line of mlos-build's build log: seconds since mkosi started, then mkosi's output.
LOG_LINE = re.compile(r"^\[\s*([0-9.]+)s\] (.*)$")


def mkosi_steps(log: Path, top: int = 8) -> list[tuple[str, float]]:
    """The longest of mkosi's steps in a build log: each "‣" line at the image's own level
    (sub-images such as the default initrd count as one step) lasts until the next one."""
    marks: list[tuple[float, str]] = []
    last = 0.0
    for line in log.read_text(errors="replace").splitlines():
        found = LOG_LINE.match(line)
        if not found:
            continue
        last, text = float(found.group(1)), found.group(2)
        step = re.match(r"‣( {1,2})(\S.*)$", text)
        if step:
            marks.append((last, step.group(2).rstrip("…. ")))
    steps: dict[str, float] = {}
    for (start, name), end in zip(marks, [m[0] for m in marks[1:]] + [last], strict=True):
        # One name per kind of step (paths vary): its first words.
        key = " ".join(name.split()[:3])
        steps[key] = steps.get(key, 0.0) + end - start
    return sorted(steps.items(), key=lambda kv: -kv[1])[:top]


def size(image: Path) -> str:
    st = image.stat()
    return f"{st.st_size / 1024**3:.2f} GiB raw, {st.st_blocks * 512 / 1024**3:.2f} GiB allocated"


def measure_mlos(spec: ImageSpec, source: Path, out: Path) -> dict[str, str]:
    row: dict[str, str] = {}
    for label in ("cold", "warm"):
        secs, image = build_mlos(spec, source, out)
        row[f"{label} build"] = f"{secs:.0f} s"
    row["image size"] = size(image)
    row["boot to login prompt"] = f"{seconds_to_login(image):.0f} s"
    result = smoke_test(image, lambda line: None)
    detail = result.verdict["checks"]["health"]["detail"]
    match = re.search(r"at uptime ([0-9.]+)s", detail)
    row["boot to healthy service"] = (
        f"{float(match.group(1)):.0f} s guest uptime" if match else detail)
    row["smoke test (boot to power-off)"] = (
        f"{result.seconds:.0f} s, {'passed' if result.ok else 'FAILED'}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distribution", default="ubuntu")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--profiles", default="metal",
                        help="comma list of MLOS image profiles to measure, one column each, "
                        "e.g. metal,vm (default: metal)")
    parser.add_argument("--without-llm", dest="with_llm", action="store_false",
                        help="build the MLOS image without llama-cpp-python (its cold build "
                        "otherwise includes the llama.cpp compile, about 10 minutes)")
    parser.add_argument("--mlos-source", type=Path, default=REPO)
    parser.add_argument("--work-dir", type=Path, default=Path("/var/tmp/mlos-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    profiles = [p for p in args.profiles.split(",") if p]
    specs = {p: ImageSpec.create(args.distribution, args.variant, profile=p,
                                 cache_dir=args.work_dir / f"mlos-cache-{p}",
                                 with_llm=args.with_llm)
             for p in profiles}
    rows: dict[str, dict[str, str]] = {"plain mkosi": {}}

    # The plain image uses the first profile's kernel.
    spec = specs[profiles[0]]
    plain_cache = args.work_dir / "plain-cache"
    plain_project(spec, args.work_dir / "projects")
    plain_out = args.work_dir / "plain-out"
    for label in ("cold", "warm"):
        secs = build_plain(args.work_dir / "projects" / "plain", plain_out, plain_cache)
        rows["plain mkosi"][f"{label} build"] = f"{secs:.0f} s"
    plain_image = plain_out / "plain.raw"
    rows["plain mkosi"]["image size"] = size(plain_image)
    rows["plain mkosi"]["boot to login prompt"] = f"{seconds_to_login(plain_image):.0f} s"
    for profile, profile_spec in specs.items():
        rows[f"MLOS {profile}"] = measure_mlos(profile_spec, args.mlos_source,
                                               args.work_dir / f"mlos-out-{profile}")

    columns = list(rows)
    metrics = list(rows[columns[-1]])
    accel = "KVM" if kvm_works() else "TCG (-cpu max)"
    lines = [
        "<!-- SPDX-License-Identifier: Apache-2.0 -->",
        "# Image build benchmarks",
        "",
        f"`{spec.name}` ({', '.join(profiles)} profile{'s' if len(profiles) > 1 else ''}) "
        f"beside a plain mkosi minimal image of {spec.distribution.name} "
        f"{spec.release} (systemd, {' '.join(spec.distribution_profile.kernel_packages)}, "
        "systemd-boot), built and booted in the same run by `benchmarks/build_images.py`.",
        "Cold: empty package and image caches; warm: the same build again with them. "
        f"Boots under QEMU with {accel}, 2 vCPUs, 2 GiB.",
        f"Host: {platform.node()}, {platform.machine()}, "
        f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs; "
        f"run finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| metric | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *["| " + " | ".join([m, *(rows[c].get(m, "-") for c in columns)]) + " |"
          for m in metrics],
        "",
        f"Load average at the end: {os.getloadavg()[0]:.1f} (boots and builds are CPU bound: "
        "compare rows of one run, and rerun on a busy machine).",
        "",
        "What the MLOS image adds: " + (
            "llama-cpp-python (the cold build compiles llama.cpp once; warm builds reuse the "
            "cached wheel), " if spec.with_llm else "") + "MLOS Core's venv (onnxruntime, numpy, "
        "grpcio, FastAPI) and python3" + (
            ", the mlos-ml build and DKMS with the kernel headers and compiler (kept so kernel "
            "upgrades rebuild the module)" if spec.variant.module else "") + ". The metal "
        "profile adds the general kernel's full module set, firmware, OpenSSH and "
        "networkd/resolved (docs/bare-metal.md).",
        "",
        "Reproduce: `.venv/bin/python benchmarks/build_images.py --distribution "
        f"{args.distribution} --variant {args.variant} --profiles {','.join(profiles)}"
        + ("" if spec.with_llm else " --without-llm")
        + "` (10-20 minutes per profile on 2 cores, TCG).",
        "",
    ]
    # Other benchmarks' sections of the same page (flash_throughput.py's) are kept.
    old = DOC.read_text() if DOC.exists() else ""
    kept = old[old.index(FLASH_START):] if FLASH_START in old else ""
    DOC.write_text("\n".join(lines) + ("\n\n" + kept if kept else ""))
    print("\n".join(lines))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
