# SPDX-License-Identifier: Apache-2.0
"""Benchmark: an MLOS image beside a plain mkosi minimal image of the same distribution,
built and booted in the same run on the same machine.

For each: cold build (empty package/image cache), warm build (same cache again), image
size (apparent and allocated), and one boot under QEMU (the accelerator mlos-build picks):
seconds from QEMU start to the serial login prompt, for MLOS also to a healthy service
(the smoke test's guest uptime when /health answered) and to its power-off, and for both
the boot's milestones and longest units read from the console (builder/boot_timeline.py).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_build.boot_timeline import LOGIN, MILESTONES, StampedConsole, Timeline
from mlos_build.qemu import OVMF_VARS, Machine, _first_existing, kvm_works
from mlos_build.render import ImageSpec, render
from mlos_build.runner import run
from mlos_build.targets.common import SYSTEM_PATH
from mlos_build.targets.mkosi_disk import MkosiDiskTarget

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "build-benchmarks.md"
# This benchmark's part of the page; the rest (flash_throughput.py's section, the notes
# written by hand) is kept.
START, END = "<!-- build-benchmark:start -->", "<!-- build-benchmark:end -->"


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


@dataclass
class BootRun:
    """One boot: its console timeline, and host seconds from QEMU's start to the login
    prompt and to the power-off (None when not seen); an MLOS image's smoke verdict."""

    timeline: Timeline
    login_s: float | None
    poweroff_s: float | None
    verdict: dict[str, Any] | None


def boot(image: Path, smoke: bool, timeout_s: float = 900) -> BootRun:
    """Boots the image once under QEMU, stamping its console as it grows. A plain image
    is stopped at its login prompt; an MLOS image (`smoke`) gets the result port, runs its
    smoke test and powers itself off, so its login, health and power-off are one boot."""
    with tempfile.TemporaryDirectory() as tmp:
        vars_file = Path(tmp) / "vars.fd"
        shutil.copy(_first_existing(OVMF_VARS), vars_file)
        console = Path(tmp) / "console.log"
        result = Path(tmp) / "result.json" if smoke else None
        argv = Machine(image).argv(vars_file, interactive=False, console_log=console,
                                   result_file=result)
        start = time.monotonic()
        poweroff = None
        with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as q, \
                StampedConsole(console, start) as stamped:
            try:
                login = stamped.wait_for(LOGIN, timeout_s, lambda: q.poll() is None)
                if smoke:
                    q.wait(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
                    poweroff = time.monotonic() - start
                elif login is None:
                    raise RuntimeError(f"{image.name}: no login prompt within {timeout_s}s")
            finally:
                if q.poll() is None:
                    q.kill()
        text = result.read_text().strip() if result is not None and result.exists() else ""
        verdict = json.loads(text.splitlines()[-1]) if text else None
        return BootRun(Timeline.read(stamped.stamped()), login, poweroff, verdict)


def healthy_uptime(booted: BootRun) -> float | None:
    """Guest seconds at which the smoke test found /health answering."""
    detail = ((booted.verdict or {}).get("checks", {}).get("health") or {}).get("detail", "")
    match = re.search(r"at uptime ([0-9.]+)s", str(detail))
    return float(match.group(1)) if match else None


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


@dataclass
class Measured:
    """One column of the page: its table cells, its boot, its build seconds ("cold",
    "warm") and, for MLOS, the longest mkosi steps of its warm build."""

    row: dict[str, str]
    boot: BootRun
    seconds: dict[str, float]
    warm_steps: list[tuple[str, float]] = field(default_factory=list)


def measure_plain(spec: ImageSpec, work: Path) -> Measured:
    """A plain mkosi image with `spec`'s kernel packages: cold and warm build, size, boot."""
    plain_project(spec, work / "projects")
    out = work / "out"
    row: dict[str, str] = {}
    secs: dict[str, float] = {}
    for label in ("cold", "warm"):
        secs[label] = build_plain(work / "projects" / "plain", out, work / "cache")
        row[f"{label} build"] = f"{secs[label]:.0f} s"
    image = out / "plain.raw"
    row["image size"] = size(image)
    booted = boot(image, smoke=False)
    row["boot to login prompt"] = f"{booted.login_s:.0f} s"
    return Measured(row, booted, secs)


def measure_mlos(spec: ImageSpec, source: Path, out: Path) -> Measured:
    """The MLOS image: cold and warm build, size, and one boot with its smoke test."""
    row: dict[str, str] = {}
    secs: dict[str, float] = {}
    for label in ("cold", "warm"):
        secs[label], image = build_mlos(spec, source, out)
        row[f"{label} build"] = f"{secs[label]:.0f} s"
    # The warm build's log (each line stamped with mkosi's seconds): where it went.
    steps = mkosi_steps(image.with_suffix(".build.log"), top=6)
    row["image size"] = size(image)
    booted = boot(image, smoke=True)
    row["boot to login prompt"] = f"{booted.login_s:.0f} s" if booted.login_s else "not seen"
    healthy = healthy_uptime(booted)
    row["boot to healthy service"] = (
        f"{healthy + (booted.timeline.kernel_start_s or 0):.0f} s ({healthy:.0f} s guest uptime)"
        if healthy is not None else "not healthy")
    ok = bool((booted.verdict or {}).get("ok"))
    row["smoke test (boot to power-off)"] = (
        f"{booted.poweroff_s:.0f} s, {'passed' if ok else 'FAILED'}" if booted.poweroff_s
        else "no power-off")
    return Measured(row, booted, secs, steps)


def timeline_table(boots: dict[str, BootRun]) -> list[str]:
    """Host seconds since QEMU started at each milestone, one column per image."""
    names = ["kernel starts (firmware, systemd-boot, loading the UKI)",
             *(name for name, _, _ in MILESTONES), "service healthy (smoke test)"]
    cells: dict[str, list[str]] = {}
    for column, booted in boots.items():
        at = dict(booted.timeline.milestones)
        kernel = booted.timeline.kernel_start_s
        if kernel is not None:
            at[names[0]] = kernel
        healthy = healthy_uptime(booted)
        if healthy is not None and kernel is not None:
            at[names[-1]] = kernel + healthy
        cells[column] = [f"{at[n]:.1f} s" if n in at else "-" for n in names]
    lines = ["| milestone (seconds since QEMU started) | " + " | ".join(boots) + " |",
             "|---" * (len(boots) + 1) + "|"]
    lines += ["| " + " | ".join([n, *(cells[c][i] for c in boots)]) + " |"
              for i, n in enumerate(names)]
    lines += ["", "Longest units (from systemd's \"Starting\" to its \"Started\"/\"Finished\" "
              "line on the console, host time; initrd and root file system together):", ""]
    for column, booted in boots.items():
        units = ", ".join(f"{name} {secs:.1f} s" for name, secs in booted.timeline.slowest_units)
        lines.append(f"- {column}: {units or 'none seen'}")
    return lines


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
    measured: dict[str, Measured] = {}
    # Each MLOS profile beside a plain image with that profile's kernel packages (metal's
    # general kernel and firmware are most of a plain image's size and build time).
    for profile, profile_spec in specs.items():
        plain = measured[f"plain mkosi, {profile} kernel"] = measure_plain(
            profile_spec, args.work_dir / f"plain-{profile}")
        mlos = measured[f"MLOS {profile}"] = measure_mlos(
            profile_spec, args.mlos_source, args.work_dir / f"mlos-out-{profile}")
        for label in ("cold", "warm"):
            mlos.row[f"{label} build against plain's"] = \
                f"{mlos.seconds[label] / plain.seconds[label]:.2f}x"
    rows = {column: m.row for column, m in measured.items()}
    columns = list(rows)
    metrics = list(rows[columns[-1]])
    spec = specs[profiles[0]]
    kernels = "; ".join(f"{p}: {' '.join(s.distribution_profile.kernel_packages)}"
                        for p, s in specs.items())
    accel = "KVM" if kvm_works() else "TCG (-cpu max)"
    lines = [
        START,
        f"`{spec.name}` ({', '.join(profiles)} profile{'s' if len(profiles) > 1 else ''}) "
        f"each beside a plain mkosi minimal image of {spec.distribution.name} "
        f"{spec.release} with the same profile's kernel packages ({kernels}; plus systemd "
        "and systemd-boot), built and booted in the same run by "
        "`benchmarks/build_images.py`.",
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
        "Each image booted once for these rows; its console, stamped with host time as "
        "QEMU wrote it (builder/boot_timeline.py), gives where the boot went:",
        "",
        *timeline_table({column: m.boot for column, m in measured.items()}),
        "",
        "The MLOS warm builds' longest mkosi steps (from the build log's timestamps):",
        "",
        *(f"- {profile_spec.name}: " + ", ".join(
            f"{step} {secs:.1f} s" for step, secs in measured[f"MLOS {profile}"].warm_steps)
          for profile, profile_spec in specs.items()),
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
        END,
    ]
    section = "\n".join(lines)
    old = DOC.read_text() if DOC.exists() else ""
    if START in old and END in old:
        new = old[:old.index(START)] + section + old[old.index(END) + len(END):]
    else:
        new = ("<!-- SPDX-License-Identifier: Apache-2.0 -->\n# Image build benchmarks\n\n"
               + section + "\n" + old)
    DOC.write_text(new)
    print(section)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
