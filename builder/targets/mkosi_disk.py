# SPDX-License-Identifier: Apache-2.0
"""The mkosi disk target: a raw UEFI disk image of an apt distribution (Ubuntu, Debian),
built by mkosi 24.3 from the project render.py writes."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any

from mlos_build import demo_model, release
from mlos_build.access import DEFAULT_ADMIN_USER, read_api_key
from mlos_build.data import profile_names, variant_names
from mlos_build.errors import BuildError
from mlos_build.llm_wheel import seed_release_wheels
from mlos_build.render import DEFAULT_CACHE_DIR, DEFAULT_PROFILE, ImageSpec, render
from mlos_build.runner import require_tools, run
from mlos_build.source import MlosSource
from mlos_build.targets.base import BuildResult, Target, register
from mlos_build.targets.common import (
    DEFAULT_OUTPUT_DIR,
    KERNEL_SOURCE_SKIP,
    MIN_FREE_BYTES,
    SYSTEM_PATH,
    cache_lock,
    check_free_space,
    make_room,
    update_checksums,
)

MKOSI_TOOLS = ["mkosi", "bootctl", "systemd-repart", "mcopy", "mkfs.vfat", "mkfs.ext4"]


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


def pinned_llm_requirement(wheel: Path) -> str:
    """The llama-cpp-python requirement of the MLOS wheel's `llm` extra, which must pin one
    version: images compile that version once per release and reuse the wheel."""
    for line in wheel_requirements(wheel):
        requirement, _, marker = line.partition(":")[2].partition(";")
        if "llm" in marker and requirement.strip().startswith("llama-cpp-python=="):
            return requirement.strip().replace(" ", "")
    raise BuildError(f"{wheel.name} does not pin llama-cpp-python in its llm extra",
                     hint='pyproject.toml needs llm = ["llama-cpp-python==X.Y.Z"], or build '
                     "with --without-llm")


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines (its dependencies and extras, as pip reads them)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")),
                        None)
        text = archive.read(metadata).decode() if metadata else ""
    return sorted(line for line in text.splitlines() if line.startswith("Requires-Dist:"))


def venv_key(wheel: Path, distribution: str, release: str, extras: str) -> str:
    """Names the image's cached Python environment (mkosi.postinst.chroot): the same
    release, extras and declared dependencies give the same environment, whatever changed
    in MLOS's own code, so a rebuild installs only the new MLOS wheel into it. Versions
    stay as first resolved until a dependency declaration changes or the cache is cleared
    (docs/builder.md)."""
    digest = hashlib.sha256(json.dumps(
        {"format": 1, "requires": wheel_requirements(wheel)}, sort_keys=True).encode())
    return f"{distribution}-{release}-{extras.replace(',', '+')}-{digest.hexdigest()[:16]}"


def reproducible_seed(name: str) -> list[str]:
    """With SOURCE_DATE_EPOCH set (a reproducible build), a fixed systemd-repart seed, so
    partition and file-system UUIDs are the same in every build of this image; without
    it mkosi picks a random one (docs/reproducibility.md)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return []
    return ["--seed", str(uuid.uuid5(uuid.NAMESPACE_URL, f"mlos-build:{name}:{epoch}"))]


@register
class MkosiDiskTarget(Target):
    """A raw UEFI disk image (systemd-boot, ext4 root) built by mkosi 24.3."""

    name = "mkosi-disk"
    summary = "a {command} image (raw UEFI disk)"
    release_artifacts = True
    disk_image = True
    spec: ImageSpec
    # mkosi 24.3 names its incremental cache by distribution, release and architecture
    # only, and drops it when the package set differs: targets of the same distribution
    # keep theirs apart, and so do this target's package sets (mkosi_cache_dir).
    mkosi_cache = "mkosi"
    tools = MKOSI_TOOLS

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, command: str, *,
                      build: bool) -> None:
        # Variants and releases are validated against the data files (so the error can
        # list them), not with argparse choices.
        parser.add_argument("--variant", default="full",
                            help=f"what the image carries: {', '.join(variant_names())} "
                            "(default: full)")
        parser.add_argument("--release",
                            help="distribution release (default: the distribution's)")
        parser.add_argument("--profile", default=DEFAULT_PROFILE,
                            help=f"what the image boots on: {', '.join(profile_names())} "
                            f"(default: {DEFAULT_PROFILE}: a server's kernel and firmware, "
                            "DHCP, SSH, the service on the network behind an API key; vm: the "
                            "small image for QEMU and CI; see docs/bare-metal.md)")
        parser.add_argument("--hostname", help="fixed host name (default: mlos for vm, the "
                            "DHCP server's for metal)")
        parser.add_argument("--admin-user", help="metal: the SSH and sudo user (default: "
                            f"{DEFAULT_ADMIN_USER})")
        parser.add_argument("--ssh-key", type=Path, action="append", metavar="FILE.pub",
                            help="metal: a public key the admin user logs in with "
                            "(repeatable); without one the image has no remote login")
        parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                            help="metal: MLOS Core's API key, one line (default: made on "
                            "first boot, shown once on the console)")
        parser.add_argument("--mirror", help="package mirror URL (default: the distribution's)")
        parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                            help=f"package, image and pip caches reused by rebuilds "
                            f"(default: {DEFAULT_CACHE_DIR})")
        parser.add_argument("--with-llm", dest="with_llm", action="store_true", default=True,
                            help="install llama-cpp-python for LLMs, compiled once per release "
                            "and then cached (the default)")
        parser.add_argument("--without-llm", dest="with_llm", action="store_false",
                            help="leave llama-cpp-python out (smaller image, no compile)")
        parser.add_argument("--with-demo-llm", action="store_true",
                            help="also put the demo LLM (gemma3-270m, about 250 MB, from this "
                            "machine's package) in the model repository, for `mlos-build "
                            "validate` and trying the OpenAI routes")
        parser.add_argument("--autologin", action="store_true",
                            help="log root in on the consoles without a password (development "
                            "only; otherwise root is locked)")
        if build:
            release.add_build_options(parser)

    @classmethod
    def spec_from_args(cls, command: str, args: argparse.Namespace, *,
                       build: bool) -> ImageSpec:
        spec = ImageSpec.create(command, args.variant, release=args.release,
                                mirror=args.mirror, cache_dir=args.cache_dir,
                                with_llm=args.with_llm, with_demo_llm=args.with_demo_llm,
                                autologin=args.autologin,
                                profile=args.profile, hostname=args.hostname,
                                admin_user=args.admin_user, ssh_keys=args.ssh_key,
                                api_key_file=args.api_key_file)
        for warning in spec.warnings():
            print(f"mlos-build: warning: {warning}", file=sys.stderr)
        return spec

    def render(self, dest: Path) -> list[Path]:
        return render(self.spec, dest)

    def default_render_dir(self) -> Path:
        return DEFAULT_OUTPUT_DIR / f"{self.spec.name}.mkosi"

    def stage_assets(self, assets: Path) -> None:
        """Puts what the build scripts install into assets/ (mounted at $SRCDIR/assets)."""
        src = MlosSource(self.mlos_source) if self.mlos_source else MlosSource.default()
        core, kernel = src.core_data_dir(), src.kernel_dir()
        needed = [core / "mlos-core.service", core / "core.yaml"]
        if self.spec.variant.module:
            needed += [kernel / "Kbuild", kernel / "udev" / "99-mlos-ml.rules"]
        for path in needed:
            if not path.exists():
                raise BuildError(f"{path} is missing from the MLOS source ({src.describe()})",
                                 hint="use a checkout that has MLOS Core and the kernel "
                                 "module, or pass --mlos-source DIR")
        assets.mkdir(parents=True)
        self.progress(f"building the MLOS wheel from {src.describe()}")
        wheel = src.wheel(assets)
        if self.spec.with_llm:
            (assets / "llm-requirement.txt").write_text(pinned_llm_requirement(wheel) + "\n")
        (assets / "venv-key").write_text(venv_key(
            wheel, self.spec.distribution.name, self.spec.release,
            self.spec.venv_extras) + "\n")
        shutil.copy2(needed[0], assets / "mlos-core.service")
        shutil.copy2(needed[1], assets / "core.yaml")
        if self.spec.variant.module:
            shutil.copytree(kernel, assets / "kernel",
                            ignore=shutil.ignore_patterns(*KERNEL_SOURCE_SKIP))
            shutil.copy2(needed[3], assets / "99-mlos-ml.rules")
        demo_model.write_model(assets / "demo" / "1" / "model.onnx")
        if self.spec.with_demo_llm:
            demo_model.write_llm(assets / "demo-llm" / "model.gguf")
        if self.spec.api_key_file is not None:
            # A secret: staged for the post-install script, never rendered into the project.
            key = assets / "api-key"
            key.touch(mode=0o600)
            key.write_text(read_api_key(self.spec.api_key_file) + "\n")

    def run_mkosi(self, output_dir: Path) -> tuple[Path, Path, Path]:
        """Renders the project, stages its assets and runs mkosi; returns the work
        directory (removed by the caller when done), mkosi's output directory and the log."""
        spec = self.spec
        require_tools(self.tools)
        check_mirror(spec.mirror, spec.release)
        work = output_dir / f".{spec.name}.work"
        if work.exists():
            shutil.rmtree(work)
        project = work / "project"
        self.progress(f"rendering the mkosi project into {project}")
        self.render(project)
        self.stage_assets(project / "assets")
        spec.pip_cache_dir.mkdir(parents=True, exist_ok=True)
        if spec.with_llm:
            self.seed_llm_wheel(project / "assets" / "llm-requirement.txt")
        mkosi_out = work / "out"
        log = output_dir / f"{spec.name}.build.log"
        log.unlink(missing_ok=True)
        with cache_lock(spec.cache_dir, self.progress):
            self.make_room(output_dir)
            check_free_space([output_dir, spec.cache_dir])
            self.progress(f"running mkosi (full log: {log})")
            self._mkosi(project, mkosi_out, log)
        return work, mkosi_out, log

    def make_room(self, output_dir: Path) -> None:
        """Short of space, drops other package sets' mkosi caches, least recently used
        first (one per package set accumulates: mkosi_cache_dir). This build's own cache is
        marked used now, so it is the last to go."""
        current = self.mkosi_cache_dir()
        current.mkdir(parents=True, exist_ok=True)
        os.utime(current)
        others = [d for d in current.parent.iterdir() if d.is_dir() and d != current
                  and len(d.name) == len(current.name) and d.name.isalnum()]
        for where in dict.fromkeys([output_dir, self.spec.cache_dir]):
            make_room(where, MIN_FREE_BYTES, others, self.progress)

    def build(self, output_dir: Path) -> BuildResult:
        spec = self.spec
        start = time.monotonic()
        work, mkosi_out, _ = self.run_mkosi(output_dir)
        image = output_dir / f"{spec.name}.raw"
        shutil.move(mkosi_out / f"{spec.name}.raw", image)
        manifest = output_dir / f"{spec.name}.manifest.json"
        manifest.write_text(json.dumps(self.manifest(mkosi_out), indent=2) + "\n")
        checksums = output_dir / "SHA256SUMS"
        update_checksums(checksums, [image, manifest])
        shutil.rmtree(work)
        return BuildResult(image, manifest, checksums, time.monotonic() - start)

    def seed_llm_wheel(self, requirement_file: Path) -> None:
        """Reuses the host's portable llama.cpp build where the release's C library allows,
        so the image build does not compile it again."""
        spec = self.spec
        glibc = spec.distribution.releases[spec.release].glibc
        release_dir = (spec.pip_cache_dir / "mlos-wheels"
                       / f"{spec.distribution.name}-{spec.release}")
        seeded = seed_release_wheels(requirement_file.read_text().strip(), release_dir, glibc)
        if seeded:
            self.progress(f"reusing the host's llama.cpp build {seeded.name} (its glibc is "
                          f"not newer than {spec.release}'s {glibc})")

    def mkosi_cache_dir(self) -> Path:
        """One incremental cache per package set (what mkosi's cache manifest compares):
        profiles, kernel variants and images with or without the LLM install different
        packages, and alternating builds in one directory would each find the other's
        cache, drop it and install every package again."""
        packages = "\n".join([*sorted(self.spec.packages()), "--",
                              *sorted(self.spec.build_packages())])
        return (self.spec.cache_dir / self.mkosi_cache
                / hashlib.sha256(packages.encode()).hexdigest()[:12])

    def _mkosi(self, project: Path, mkosi_out: Path, log: Path) -> None:
        spec = self.spec
        run(
            ["mkosi", "--directory", project,
             "--output-dir", mkosi_out,
             "--package-cache-dir", spec.cache_dir / "packages",
             "--cache-dir", self.mkosi_cache_dir(),
             "--incremental", "yes",
             *reproducible_seed(spec.name),
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
                packages.append({"name": pkg["name"], "version": pkg["version"],
                                 "architecture": pkg.get("architecture", "")})
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
