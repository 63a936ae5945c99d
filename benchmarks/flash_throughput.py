# SPDX-License-Identifier: Apache-2.0
"""Benchmark: `mlos-build flash` to a loop device against `dd bs=4M conv=fsync` (and
`bmaptool copy` when installed), in the same run, same image, same kind of target.

Each tool writes the image to a fresh loop device over a scratch file (on the file system
of --scratch, default /var/tmp), REPEAT times; the median wall time is reported, and for
flash also its write and read-back phases. dd and bmaptool do not read back.

    sudo .venv/bin/python benchmarks/flash_throughput.py [--image X.raw] [--repeat 3]

Without --image it makes a 1 GiB GPT image whose ext4 root holds 320 MiB of files (the
rest holes, like a built image). Writes its section of docs/build-benchmarks.md (between
the flash-benchmark markers, the rest of the file is kept) and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlos_build import bmap

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "build-benchmarks.md"
START, END = "<!-- flash-benchmark:start -->", "<!-- flash-benchmark:end -->"
MiB = 1 << 20


def sh(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True,
                          **kw)  # type: ignore[call-overload]


def make_image(path: Path, size_mib: int = 1024, data_mib: int = 320) -> Path:
    sh("truncate", "-s", f"{size_mib}M", path)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\nstart=2048, type=L\n",
                   text=True, check=True, capture_output=True)
    content = path.parent / "content"
    content.mkdir()
    for i in range(data_mib // 32):
        (content / f"blob{i}.bin").write_bytes(os.urandom(32 * MiB))
    sh("mkfs.ext4", "-q", "-F", "-E", f"offset={2048 * 512}", "-d", content, path,
       f"{(size_mib - 2) * 1024}k")
    shutil.rmtree(content)
    return path


def fresh_loop(scratch: Path, size: int) -> tuple[Path, Path]:
    backing = scratch / "target.img"
    backing.unlink(missing_ok=True)
    with open(backing, "wb") as f:
        f.truncate(size)
    return Path(sh("losetup", "--find", "--show", backing).stdout.strip()), backing


def timed(argv: list[str | Path], image: Path, scratch: Path) -> tuple[float, str]:
    dev, backing = fresh_loop(scratch, image.stat().st_size)
    try:
        sh("sync")
        argv = [str(a).replace("{dev}", str(dev)) for a in argv]
        start = time.monotonic()
        done = sh(*argv)
        seconds = time.monotonic() - start
        # The tool really wrote the device: its partition table is the image's.
        with open(image, "rb") as want, open(backing, "rb") as have:
            if want.read(MiB) != have.read(MiB):
                raise SystemExit(f"flash_throughput: {argv[0]} did not write {dev}")
        return seconds, done.stdout + done.stderr
    finally:
        subprocess.run(["losetup", "--detach", str(dev)], check=False)
        backing.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, help="a raw disk image (default: make one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("flash_throughput: run as root (loop devices)")
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="mlos-flash-bench-") as tmp:
        scratch = Path(tmp)
        image = args.image or make_image(scratch / "bench.raw")
        if bmap.beside(image) is None:
            bmap.write(bmap.create(image), scratch / "bench.bmap" if args.image is None
                       else image.with_suffix(".bmap"))
        size = image.stat().st_size
        blockmap = bmap.load(bmap.beside(image) or image)
        tools: dict[str, list[str | Path]] = {
            "mlos-build flash (write + read-back)": [
                sys.executable, "-m", "mlos_build.cli", "flash", image, "{dev}", "--yes"],
            "dd bs=4M conv=fsync": ["dd", f"if={image}", "of={dev}", "bs=4M", "conv=fsync",
                                    "status=none"],
        }
        map_file = bmap.beside(image)
        if shutil.which("bmaptool") and map_file is not None:
            tools["bmaptool copy"] = ["bmaptool", "copy", "--bmap", map_file, image, "{dev}"]
        results: dict[str, list[float]] = {name: [] for name in tools}
        phases: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            for name, argv in tools.items():  # interleaved, so drift hits every tool alike
                seconds, output = timed(argv, image, scratch)
                results[name].append(seconds)
                found = re.search(r"written in ([\d.]+)s, verified in ([\d.]+)s", output)
                if found:
                    phases.append((float(found.group(1)), float(found.group(2))))
        load = os.getloadavg()[0]
    lines = report(image if args.image else None, size, blockmap, results, phases, load)
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        write_section(text)


def report(image: Path | None, size: int, blockmap: bmap.BlockMap,
           results: dict[str, list[float]], phases: list[tuple[float, float]],
           load: float) -> list[str]:
    mapped = blockmap.mapped_bytes
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = (f"`{image.name}`" if image else "a generated GPT image with an ext4 root holding "
            "320 MiB of random files")
    lines = [
        START,
        "## Flashing: mlos-build flash against dd",
        "",
        f"{what}: {size / MiB:.0f} MiB raw, {mapped / MiB:.0f} MiB mapped "
        f"({100 * mapped / size:.0f}%). Target: a fresh loop device over a scratch file on "
        f"this machine's disk, each tool {len(next(iter(results.values())))} times, "
        "interleaved; median wall time, including the final fsync.",
        f"Host: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, load "
        f"average {load:.1f} at the end; run finished {when}.",
        "",
        "| tool | wall time (median) | image bytes per second | reads back |",
        "|---|---|---|---|",
    ]
    for name, times in results.items():
        median = statistics.median(times)
        lines.append(f"| {name} | {median:.2f} s | {size / median / MiB:.0f} MiB/s | "
                     f"{'yes' if 'flash' in name else 'no'} |")
    if phases:
        write_s = statistics.median(p[0] for p in phases)
        verify_s = statistics.median(p[1] for p in phases)
        lines += ["", f"mlos-build flash's phases (median): writing {write_s:.2f} s "
                  f"({mapped / write_s / MiB:.0f} MiB/s of mapped data), reading back "
                  f"{verify_s:.2f} s ({mapped / verify_s / MiB:.0f} MiB/s)."]
    lines += [
        "",
        "flash and bmaptool write only the mapped blocks (flash also the first and last "
        "MiB), with O_DIRECT in flash's case; dd writes every byte of the image through the "
        "page cache. flash then reads every written block back through O_DIRECT, which dd "
        "and bmaptool do not do.",
        "",
        "Reproduce: `sudo .venv/bin/python benchmarks/flash_throughput.py` (add `--image "
        "output/X.raw` for a built image).",
        END,
    ]
    return lines


def write_section(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Image build benchmarks\n"
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        doc = before + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


if __name__ == "__main__":
    main()
