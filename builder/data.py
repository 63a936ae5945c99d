# SPDX-License-Identifier: Apache-2.0
"""Distributions, variants and profiles are data files under images/; this module reads
what every target shares (variants, profiles, which target builds a distribution).
apt.py reads the rest of the apt distributions' data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlos_build.errors import BuildError

# The service's own rule; mlos_core.kernel.runtime_mode imports nothing heavy (no numpy).
from mlos_core.kernel.runtime_mode import mode_for

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout() -> Path | None:
    """The source tree this mlos-build runs from (an editable install or a clone), or None
    when it was installed from a wheel."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "images").is_dir() else None


def data_tree(name: str) -> Path:
    """A top-level data tree the builder needs (images/, kernel/): the checkout's, or the
    copy the wheel ships as package data (mlos_build/<name>/)."""
    root = checkout()
    return root / name if root is not None else PACKAGE_DIR / name


def images_dir() -> Path:
    """The images/ tree (templates and data); MLOS_IMAGES_DIR overrides it."""
    return Path(os.environ.get("MLOS_IMAGES_DIR", data_tree("images")))


def kernel_dir() -> Path:
    """The mlos-ml sources (Kbuild, C files, dkms.conf, the udev rule)."""
    return data_tree("kernel")


@dataclass(frozen=True)
class ModuleSpec:
    parameters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """What an image is for (images/profiles/): a VM, or a physical server."""

    name: str
    description: str
    listen_host: str
    wired_dhcp: bool
    ssh: bool
    api_key: bool
    grow_root: bool
    initrd_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    runtime_mode: str
    module: ModuleSpec | None


def _load_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise BuildError(f"{path} is not a mapping", hint="see the other files beside it")
    return data


def _names(kind: str) -> list[str]:
    return sorted(p.stem for p in (images_dir() / kind).glob("*.yaml"))


def distribution_names() -> list[str]:
    return _names("distributions")


def variant_names() -> list[str]:
    # The order users read: from least to most of the module.
    order = ["userspace", "basic", "scheduler", "full"]
    names = _names("variants")
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def profile_names() -> list[str]:
    # The default first.
    return sorted(_names("profiles"), key=lambda n: (n != "metal", n))


def distribution_data(name: str) -> dict[str, Any]:
    """The raw data of one images/distributions/NAME.yaml (each target reads its part)."""
    if name not in distribution_names():
        raise BuildError(f"unknown distribution '{name}'",
                         hint="valid distributions: " + ", ".join(distribution_names()))
    return _load_yaml(images_dir() / "distributions" / f"{name}.yaml")


def distribution_target(name: str) -> str:
    """The build target (a key of the target registry) that builds this distribution."""
    target = distribution_data(name).get("target")
    if not isinstance(target, str):
        raise BuildError(f"images/distributions/{name}.yaml has no `target:`",
                         hint="name the build target, e.g. `target: mkosi-disk`")
    return target


def load_variant(name: str) -> Variant:
    if name not in variant_names():
        raise BuildError(f"unknown variant '{name}'",
                         hint="valid variants: " + ", ".join(variant_names()))
    path = images_dir() / "variants" / f"{name}.yaml"
    data = _load_yaml(path)
    module = data.get("module")
    variant = Variant(
        name=data["name"],
        description=data["description"],
        runtime_mode=data["runtime_mode"],
        module=ModuleSpec(dict(module["parameters"])) if module else None,
    )
    implied = implied_runtime_mode(variant.module)
    if variant.runtime_mode != implied:
        raise BuildError(
            f"{path}: runtime_mode {variant.runtime_mode!r} disagrees with its module "
            f"parameters, which make {implied!r}",
            hint="fix runtime_mode or the parameters (the rule: "
            "mlos_core.kernel.runtime_mode.mode_for, README's runtime-mode table)")
    return variant


def implied_runtime_mode(module: ModuleSpec | None) -> str:
    """The runtime mode the service will report for an image with these module parameters
    (no module: userspace), by the service's own rule."""
    if module is None:
        return "userspace"
    p = module.parameters
    return mode_for(*(bool(int(p.get(flag, 0))) for flag in
                      ("enable_tmm", "enable_scheduler", "enable_gpu_manager")))


def load_profile(name: str) -> Profile:
    if name not in profile_names():
        raise BuildError(f"unknown profile '{name}'",
                         hint="valid profiles: " + ", ".join(profile_names()))
    data = _load_yaml(images_dir() / "profiles" / f"{name}.yaml")
    return Profile(
        name=data["name"],
        description=data["description"],
        listen_host=data["listen_host"],
        wired_dhcp=bool(data["wired_dhcp"]),
        ssh=bool(data["ssh"]),
        api_key=bool(data["api_key"]),
        grow_root=bool(data["grow_root"]),
        initrd_modules=tuple(data.get("initrd_modules") or ()),
    )
