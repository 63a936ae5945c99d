# SPDX-License-Identifier: Apache-2.0
"""Renders the mkosi project for one distribution x release x variant from images/mkosi/.

The template tree mirrors the tree it produces: `X.j2` renders to `X` (StrictUndefined,
so a missing value is an error), other files are copied, and a template that renders to
nothing but whitespace produces no file (that is how variant-only files are left out).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from mlos_build import __version__
from mlos_build.apt import Distribution, load_distribution
from mlos_build.data import images_dir, load_variant
from mlos_build.demo_model import DEMO
from mlos_build.errors import BuildError
from mlos_build.spec import BuildSpec

DEFAULT_CACHE_DIR = Path("/var/cache/mlos-build")
REST_PORT = 8080


@dataclass(frozen=True, kw_only=True)
class ImageSpec(BuildSpec):
    """Everything that decides what an apt distribution's disk image contains."""

    distribution: Distribution
    release: str
    mirror: str
    cache_dir: Path = DEFAULT_CACHE_DIR
    with_llm: bool = True
    autologin: bool = False

    @classmethod
    def create(cls, distribution: str, variant: str, release: str | None = None,
               mirror: str | None = None, cache_dir: Path | None = None,
               with_llm: bool = True, autologin: bool = False,
               mlos_version: str | None = None) -> ImageSpec:
        dist = load_distribution(distribution)
        rel = dist.release(release)
        return cls(distribution=dist, release=rel.name, variant=load_variant(variant),
                   mirror=(mirror or dist.mirror).rstrip("/"),
                   cache_dir=(cache_dir or DEFAULT_CACHE_DIR).absolute(),
                   with_llm=with_llm, autologin=autologin,
                   mlos_version=mlos_version or __version__)

    @property
    def name(self) -> str:
        return f"mlos-{self.distribution.name}-{self.release}-{self.variant.name}"

    @property
    def pip_cache_dir(self) -> Path:
        return self.cache_dir / "pip"

    def packages(self) -> list[str]:
        dist = self.distribution
        packages = [*dist.base_packages, *dist.releases[self.release].packages,
                    *dist.kernel_packages]
        if self.variant.module is not None:
            # DKMS and the kernel's headers stay in the image, so that a kernel upgrade
            # rebuilds mlos-ml (dkms pulls in the compiler).
            packages += [*dist.dkms_packages, *dist.headers_packages]
        if self.with_llm:
            packages += dist.llm_packages
        return list(dict.fromkeys(packages))

    def build_packages(self) -> list[str]:
        packages: list[str] = []
        if self.variant.module is not None:
            packages += [*self.distribution.headers_packages, "gcc", "make", "kmod"]
        if self.with_llm:
            packages += ["g++", "cmake", "python3-dev", "python3-venv"]
        return list(dict.fromkeys(packages))

    def context(self) -> dict[str, Any]:
        dist = self.distribution
        security = dist.security or {}
        return {
            "mlos_version": self.mlos_version,
            "module_version": self.mlos_version,
            "distribution": dist,
            "release": self.release,
            "variant": self.variant,
            "image_name": self.name,
            "mirror": self.mirror,
            "suites": dist.suites_for(self.release),
            "security_mirror": security.get("mirror", ""),
            "security_suites": dist.security_suites_for(self.release),
            "packages": self.packages(),
            "build_packages": self.build_packages(),
            "pip_cache_mount": str(self.pip_cache_dir),
            "with_llm": self.with_llm,
            "autologin": self.autologin,
            "rest_port": REST_PORT,
            "demo": DEMO,
        }


def template_root() -> Path:
    return images_dir() / "mkosi"


def render(spec: ImageSpec, dest: Path) -> list[Path]:
    """Writes the mkosi project for spec into dest (created or emptied); returns the files
    written, relative to dest."""
    root = template_root()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # `py` writes a value as a Python literal (for the in-guest Python check script).
    env.filters["py"] = repr
    context = spec.context()
    if dest.exists():
        # Replace an earlier render, never a directory that holds something else.
        if any(dest.iterdir()) and not (dest / "mkosi.conf").exists():
            raise BuildError(f"{dest} exists and is not an mkosi project",
                             hint="pass --output-dir with a new or empty directory")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    written: list[Path] = []
    for source in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = source.relative_to(root)
        if rel.suffix == ".j2":
            target = dest / rel.with_suffix("")
            try:
                text = env.get_template(rel.as_posix()).render(context)
            except jinja2.UndefinedError as exc:
                raise BuildError(f"template {rel} uses an undefined value: {exc}",
                                 hint="fix the template or the data files under images/") from exc
            if not text.strip():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            shutil.copymode(source, target)
        else:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        written.append(target.relative_to(dest))
    return written
