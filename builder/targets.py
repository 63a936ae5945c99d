# SPDX-License-Identifier: Apache-2.0
"""Build targets. A Target turns an ImageSpec into artifacts in an output directory.

MkosiDiskTarget builds a raw UEFI disk image with mkosi; a Flatcar target (sysext +
Ignition config) is the other planned implementation of the same contract.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlos_build import demo_model
from mlos_build.access import read_api_key
from mlos_build.errors import BuildError
from mlos_build.render import ImageSpec, render
from mlos_build.runner import Progress, require_tools, run

MKOSI_TOOLS = ["mkosi", "bootctl", "systemd-repart", "mcopy", "mkfs.vfat", "mkfs.ext4"]
SYSTEM_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_FREE_BYTES = 8 * 1024**3
KERNEL_SOURCE_SKIP = ("*.o", "*.ko", "*.mod", "*.mod.c", "*.cmd", "Module.symvers",
                      "modules.order", ".tmp_versions")


@dataclass(frozen=True)
class BuildResult:
    image: Path
    manifest: Path
    checksums: Path
    seconds: float


class Target(abc.ABC):
    """One kind of artifact mlos-build produces for an ImageSpec."""

    def __init__(self, spec: ImageSpec, mlos_source: Path, progress: Progress) -> None:
        self.spec = spec
        self.mlos_source = mlos_source
        self.progress = progress

    @abc.abstractmethod
    def render(self, dest: Path) -> list[Path]:
        """Writes the target's configuration tree (no build)."""

    @abc.abstractmethod
    def build(self, output_dir: Path) -> BuildResult:
        """Builds the artifacts into output_dir."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def update_checksums(sums: Path, files: list[Path]) -> None:
    """Adds or replaces the entries for files in a SHA256SUMS beside them."""
    entries: dict[str, str] = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name:
                entries[name] = digest
    for path in files:
        entries[path.name] = sha256(path)
    sums.write_text("".join(f"{d}  {n}\n" for n, d in sorted(entries.items())))


def check_free_space(dirs: list[Path], need: int = MIN_FREE_BYTES) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(d).free
        if free < need:
            raise BuildError(f"no space: only {free / 1024**3:.1f} GiB free under {d}",
                             hint=f"an image build needs {need / 1024**3:.0f} GiB there: "
                             "free space or pass --output-dir/--cache-dir elsewhere")


def check_mirror(url: str, suite: str) -> None:
    probe = f"{url}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(probe, method="HEAD"), timeout=20):
            pass
    except urllib.error.HTTPError as exc:
        raise BuildError(f"mirror {url} has no {suite} (HTTP {exc.code} for {probe})",
                         hint="pass --mirror with a mirror of this distribution") from exc
    except (OSError, ValueError) as exc:
        raise BuildError(f"mirror {url} is unreachable: {getattr(exc, 'reason', exc)}",
                         hint="check the network or pass --mirror URL") from exc


@contextlib.contextmanager
def cache_lock(cache_dir: Path, progress: Progress) -> Iterator[None]:
    """One build per cache directory at a time: two mkosi runs sharing a package cache
    rewrite each other's apt metadata (seen as "Unable to locate package base-files")."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".mlos-build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another mlos-build using {cache_dir} (builds that should "
                     "run side by side need separate --cache-dir)")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def pinned_llm_requirement(wheel: Path) -> str:
    """The llama-cpp-python requirement of the MLOS wheel's `llm` extra, which must pin one
    version: images compile that version once per release and reuse the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")),
                        None)
        text = archive.read(metadata).decode() if metadata else ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        requirement, _, marker = value.partition(";")
        if (key == "Requires-Dist" and "llm" in marker
                and requirement.strip().startswith("llama-cpp-python==")):
            return requirement.strip().replace(" ", "")
    raise BuildError(f"{wheel.name} does not pin llama-cpp-python in its llm extra",
                     hint='pyproject.toml needs llm = ["llama-cpp-python==X.Y.Z"], or build '
                     "with --without-llm")


class MkosiDiskTarget(Target):
    """A raw UEFI disk image (systemd-boot, ext4 root) built by mkosi 24.3."""

    def render(self, dest: Path) -> list[Path]:
        return render(self.spec, dest)

    def stage_assets(self, assets: Path) -> None:
        """Puts what the build scripts install into assets/ (mounted at $SRCDIR/assets)."""
        src = self.mlos_source
        needed = [src / "mlos_core" / "data" / "mlos-core.service",
                  src / "mlos_core" / "data" / "core.yaml"]
        if self.spec.variant.module:
            needed += [src / "kernel" / "Kbuild", src / "kernel" / "udev" / "99-mlos-ml.rules"]
        for path in needed:
            if not path.exists():
                raise BuildError(f"{path} is missing from the MLOS source tree",
                                 hint="use a checkout that has MLOS Core and the kernel "
                                 "module, or pass --mlos-source DIR")
        assets.mkdir(parents=True)
        self.progress(f"building the MLOS wheel from {src}")
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", assets, src],
            what="building the MLOS wheel")
        if self.spec.with_llm:
            wheel = next(assets.glob("mlos-*.whl"))
            (assets / "llm-requirement.txt").write_text(pinned_llm_requirement(wheel) + "\n")
        shutil.copy2(needed[0], assets / "mlos-core.service")
        shutil.copy2(needed[1], assets / "core.yaml")
        if self.spec.variant.module:
            shutil.copytree(src / "kernel", assets / "kernel",
                            ignore=shutil.ignore_patterns(*KERNEL_SOURCE_SKIP))
            shutil.copy2(needed[3], assets / "99-mlos-ml.rules")
        demo_model.write_model(assets / "demo" / "1" / "model.onnx")
        if self.spec.api_key_file is not None:
            # A secret: staged for the post-install script, never rendered into the project.
            key = assets / "api-key"
            key.touch(mode=0o600)
            key.write_text(read_api_key(self.spec.api_key_file) + "\n")

    def build(self, output_dir: Path) -> BuildResult:
        spec = self.spec
        require_tools(MKOSI_TOOLS)
        check_free_space([output_dir, spec.cache_dir])
        check_mirror(spec.mirror, spec.release)
        start = time.monotonic()
        work = output_dir / f".{spec.name}.work"
        if work.exists():
            shutil.rmtree(work)
        project = work / "project"
        self.progress(f"rendering the mkosi project into {project}")
        self.render(project)
        self.stage_assets(project / "assets")
        spec.pip_cache_dir.mkdir(parents=True, exist_ok=True)
        mkosi_out = work / "out"
        log = output_dir / f"{spec.name}.build.log"
        log.unlink(missing_ok=True)
        with cache_lock(spec.cache_dir, self.progress):
            self.progress(f"running mkosi (full log: {log})")
            self._mkosi(project, mkosi_out, log)
        image = output_dir / f"{spec.name}.raw"
        shutil.move(mkosi_out / f"{spec.name}.raw", image)
        manifest = output_dir / f"{spec.name}.manifest.json"
        manifest.write_text(json.dumps(self.manifest(mkosi_out), indent=2) + "\n")
        checksums = output_dir / "SHA256SUMS"
        update_checksums(checksums, [image, manifest])
        shutil.rmtree(work)
        return BuildResult(image, manifest, checksums, time.monotonic() - start)

    def _mkosi(self, project: Path, mkosi_out: Path, log: Path) -> None:
        spec = self.spec
        run(
            ["mkosi", "--directory", project,
             "--output-dir", mkosi_out,
             "--package-cache-dir", spec.cache_dir / "packages",
             "--cache-dir", spec.cache_dir / "mkosi",
             "--incremental", "yes",
             "--force", "build"],
            what=f"mkosi build of {spec.name}",
            # mkosi runs helpers such as ukify with `python3` from PATH: it must be the
            # system's (with python3-pefile), not a pyenv or venv python that shadows it.
            env={"PATH": SYSTEM_PATH},
            progress=self.progress,
            show=lambda line: line.startswith("‣"),
            log_file=log,
        )

    def manifest(self, mkosi_out: Path) -> dict[str, Any]:
        spec = self.spec

        def read(name: str) -> str | None:
            path = mkosi_out / name
            return path.read_text().strip() or None if path.exists() else None

        packages: list[dict[str, str]] = []
        mkosi_manifest = mkosi_out / f"{spec.name}.manifest"
        if mkosi_manifest.exists():
            for pkg in json.loads(mkosi_manifest.read_text()).get("packages", []):
                packages.append({"name": pkg["name"], "version": pkg["version"]})
        python_packages = json.loads(read("mlos-python-packages.json") or "[]")
        installed = {p["name"].lower(): p["version"] for p in python_packages}
        return {
            "distribution": spec.distribution.name,
            "release": spec.release,
            "variant": spec.variant.name,
            "profile": spec.profile.name,
            "runtime_mode": spec.variant.runtime_mode,
            "kernel_version": read("mlos-kernel-version"),
            "module_vermagic": read("mlos-module-vermagic"),
            "module_parameters": spec.variant.module.parameters if spec.variant.module else None,
            "mlos_build_version": spec.mlos_version,
            # The MLOS Core wheel installed in /opt/mlos/venv (from --mlos-source).
            "mlos_core_version": installed.get("mlos"),
            "mirror": spec.mirror,
            "with_llm": spec.with_llm,
            "packages": packages,
            "python_packages": python_packages,
        }
