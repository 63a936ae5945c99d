# SPDX-License-Identifier: Apache-2.0
"""Renders the mkosi project for one distribution x release x variant x profile from
images/mkosi/.

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
from mlos_build.access import (
    DEFAULT_ADMIN_USER,
    check_admin_user,
    check_hostname,
    read_api_key,
    read_ssh_keys,
)
from mlos_build.apt import Distribution, DistributionProfile, load_distribution
from mlos_build.data import Profile, images_dir, load_profile, load_variant
from mlos_build.demo_model import DEMO, DEMO_LLM
from mlos_build.errors import BuildError
from mlos_build.qemu import VALIDATE_CMDLINE_KEY, VALIDATE_PORT, VALIDATE_PROGRESS_PREFIX
from mlos_build.spec import BuildSpec

DEFAULT_CACHE_DIR = Path("/var/cache/mlos-build")
DEFAULT_PROFILE = "metal"
REST_PORT = 8080
# Where a metal image keeps MLOS Core's API key (root only; made on first boot).
API_KEY_PATH = "/etc/mlos/api-key"


@dataclass(frozen=True, kw_only=True)
class ImageSpec(BuildSpec):
    """Everything that decides what an apt distribution's disk image contains."""

    distribution: Distribution
    release: str
    mirror: str
    profile: Profile
    cache_dir: Path = DEFAULT_CACHE_DIR
    with_llm: bool = True
    with_demo_llm: bool = False
    autologin: bool = False
    # Profiles with ssh / api_key only (checked in create).
    hostname: str | None = None
    admin_user: str = DEFAULT_ADMIN_USER
    ssh_keys: tuple[str, ...] = ()
    api_key_file: Path | None = None

    @classmethod
    def create(cls, distribution: str, variant: str, release: str | None = None,
               mirror: str | None = None, cache_dir: Path | None = None,
               with_llm: bool = True, with_demo_llm: bool = False,
               autologin: bool = False, mlos_version: str | None = None,
               profile: str = DEFAULT_PROFILE,
               hostname: str | None = None, admin_user: str | None = None,
               ssh_keys: list[Path] | None = None,
               api_key_file: Path | None = None) -> ImageSpec:
        dist = load_distribution(distribution)
        rel = dist.release(release)
        prof = load_profile(profile)
        dist.profile(prof.name)
        if not prof.ssh and (admin_user is not None or ssh_keys):
            raise BuildError(f"--admin-user and --ssh-key need SSH, which the {prof.name} "
                             "profile leaves out", hint="build with --profile metal")
        if not prof.api_key and api_key_file is not None:
            raise BuildError(f"--api-key-file: the {prof.name} profile serves on "
                             f"{prof.listen_host} without an API key",
                             hint="build with --profile metal")
        if api_key_file is not None:
            read_api_key(api_key_file)
        if with_demo_llm and not with_llm:
            raise BuildError("--with-demo-llm needs llama-cpp-python, which --without-llm "
                             "leaves out", hint="drop one of the two")
        return cls(distribution=dist, release=rel.name, variant=load_variant(variant),
                   mirror=(mirror or dist.mirror).rstrip("/"), profile=prof,
                   cache_dir=(cache_dir or DEFAULT_CACHE_DIR).absolute(),
                   with_llm=with_llm, with_demo_llm=with_demo_llm, autologin=autologin,
                   mlos_version=mlos_version or __version__,
                   hostname=check_hostname(hostname) if hostname else None,
                   admin_user=check_admin_user(admin_user or DEFAULT_ADMIN_USER),
                   ssh_keys=read_ssh_keys(ssh_keys or []),
                   api_key_file=api_key_file.absolute() if api_key_file else None)

    @property
    def name(self) -> str:
        # The default profile keeps the plain name; others say theirs.
        suffix = "" if self.profile.name == DEFAULT_PROFILE else f"-{self.profile.name}"
        return f"mlos-{self.distribution.name}-{self.release}-{self.variant.name}{suffix}"

    @property
    def distribution_profile(self) -> DistributionProfile:
        return self.distribution.profile(self.profile.name)

    def warnings(self) -> list[str]:
        """What the user should know before booting the image on a server."""
        if self.profile.ssh and not self.ssh_keys:
            return [f"no --ssh-key given: this image has no remote login (SSH accepts keys "
                    f"only; {self.admin_user} has none); log in on the console or rebuild "
                    "with --ssh-key FILE.pub"]
        return []

    @property
    def pip_cache_dir(self) -> Path:
        return self.cache_dir / "pip"

    def packages(self) -> list[str]:
        dist = self.distribution
        prof = self.distribution_profile
        packages = [*dist.base_packages, *dist.releases[self.release].packages,
                    *prof.kernel_packages, *prof.packages]
        if self.variant.module is not None:
            # DKMS and the kernel's headers stay in the image, so that a kernel upgrade
            # rebuilds mlos-ml (dkms pulls in the compiler).
            packages += [*dist.dkms_packages, *prof.headers_packages]
        if self.with_llm:
            packages += dist.llm_packages
        return list(dict.fromkeys(packages))

    def build_packages(self) -> list[str]:
        packages: list[str] = []
        if self.variant.module is not None:
            packages += [*self.distribution_profile.headers_packages, "gcc", "make", "kmod"]
        if self.with_llm:
            packages += ["g++", "cmake", "python3-dev", "python3-venv"]
        return list(dict.fromkeys(packages))

    @property
    def venv_extras(self) -> str:
        """The MLOS wheel's extras the image's environment installs: the LLM's when built
        with it, and always the report extra (the Triton client `mlos-build validate`
        runs in the guest)."""
        return "llm,report" if self.with_llm else "report"

    def context(self) -> dict[str, Any]:
        dist = self.distribution
        security = dist.security or {}
        return {
            "mlos_version": self.mlos_version,
            "module_version": self.mlos_version,
            "distribution": dist,
            "release": self.release,
            "variant": self.variant,
            "profile": self.profile,
            "image_name": self.name,
            "components": list(dict.fromkeys([*dist.components,
                                              *self.distribution_profile.components])),
            "hostname": self.hostname,
            "admin_user": self.admin_user,
            "ssh_keys": list(self.ssh_keys),
            "api_key_path": API_KEY_PATH,
            "mirror": self.mirror,
            "suites": dist.suites_for(self.release),
            "security_mirror": security.get("mirror", ""),
            "security_suites": dist.security_suites_for(self.release),
            "packages": self.packages(),
            "build_packages": self.build_packages(),
            "pip_cache_mount": str(self.pip_cache_dir),
            "with_llm": self.with_llm,
            "venv_extras": self.venv_extras,
            "autologin": self.autologin,
            "rest_port": REST_PORT,
            "validate_port": VALIDATE_PORT,
            "validate_cmdline_key": VALIDATE_CMDLINE_KEY,
            "validate_progress_prefix": VALIDATE_PROGRESS_PREFIX,
            "demo": DEMO,
            "demo_llm": DEMO_LLM,
            "with_demo_llm": self.with_demo_llm,
        }


def template_root() -> Path:
    return images_dir() / "mkosi"


def render(spec: ImageSpec, dest: Path, root: Path | None = None) -> list[Path]:
    """Writes the mkosi project for spec into dest (created or emptied) from the template
    tree root (default: images/mkosi); returns the files written, relative to dest.
    Templates of every tree can include images/shared/X as "shared/X" and the disk
    image's templates as "mkosi/X" (one copy of what the trees have in common)."""
    root = root or template_root()
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([
            jinja2.FileSystemLoader(str(root)),
            jinja2.PrefixLoader({"shared": jinja2.FileSystemLoader(str(images_dir() / "shared")),
                                 "mkosi": jinja2.FileSystemLoader(str(template_root()))}),
        ]),
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
