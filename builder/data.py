# SPDX-License-Identifier: Apache-2.0
"""Distributions, variants and profiles are data files under images/; this module reads
them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlos_build.errors import BuildError

REPO_ROOT = Path(__file__).resolve().parent.parent


def images_dir() -> Path:
    """The images/ tree (templates and data); MLOS_IMAGES_DIR overrides it."""
    return Path(os.environ.get("MLOS_IMAGES_DIR", REPO_ROOT / "images"))


@dataclass(frozen=True)
class Release:
    name: str
    packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class DistributionProfile:
    """What one profile takes from one distribution: its kernel, headers, extra packages
    and archive components."""

    kernel_packages: tuple[str, ...]
    headers_packages: tuple[str, ...]
    packages: tuple[str, ...] = ()
    components: tuple[str, ...] = ()


@dataclass(frozen=True)
class Distribution:
    name: str
    default_release: str
    mirror: str
    keyring: str
    keyring_package: str
    components: tuple[str, ...]
    suites: tuple[str, ...]
    profiles: dict[str, DistributionProfile]
    dkms_packages: tuple[str, ...]
    llm_packages: tuple[str, ...]
    base_packages: tuple[str, ...]
    releases: dict[str, Release]
    security: dict[str, Any] | None = None

    def release(self, name: str | None) -> Release:
        chosen = name or self.default_release
        if chosen not in self.releases:
            raise BuildError(f"unknown {self.name} release '{chosen}'",
                             hint="valid releases: " + ", ".join(self.releases))
        return self.releases[chosen]

    def profile(self, name: str) -> DistributionProfile:
        if name not in self.profiles:
            raise BuildError(f"{self.name} has no '{name}' profile",
                             hint=f"images/distributions/{self.name}.yaml names: "
                             + ", ".join(self.profiles))
        return self.profiles[name]

    def suites_for(self, release: str) -> list[str]:
        return [s.format(release=release) for s in self.suites]

    def security_suites_for(self, release: str) -> list[str]:
        return [s.format(release=release) for s in (self.security or {}).get("suites", [])]


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


def load_distribution(name: str) -> Distribution:
    if name not in distribution_names():
        raise BuildError(f"unknown distribution '{name}'",
                         hint="valid distributions: " + ", ".join(distribution_names()))
    data = _load_yaml(images_dir() / "distributions" / f"{name}.yaml")
    releases = {
        rel: Release(rel, tuple((spec or {}).get("packages", [])))
        for rel, spec in data["releases"].items()
    }
    return Distribution(
        name=data["name"],
        default_release=data["default_release"],
        mirror=data["mirror"],
        keyring=data["keyring"],
        keyring_package=data["keyring_package"],
        components=tuple(data["components"]),
        suites=tuple(data["suites"]),
        profiles={
            prof: DistributionProfile(
                kernel_packages=tuple(spec["kernel_packages"]),
                headers_packages=tuple(spec["headers_packages"]),
                packages=tuple(spec.get("packages", [])),
                components=tuple(spec.get("components", [])),
            )
            for prof, spec in data["profiles"].items()
        },
        dkms_packages=tuple(data["dkms_packages"]),
        llm_packages=tuple(data["llm_packages"]),
        base_packages=tuple(data["base_packages"]),
        releases=releases,
        security=data.get("security"),
    )


def load_variant(name: str) -> Variant:
    if name not in variant_names():
        raise BuildError(f"unknown variant '{name}'",
                         hint="valid variants: " + ", ".join(variant_names()))
    data = _load_yaml(images_dir() / "variants" / f"{name}.yaml")
    module = data.get("module")
    return Variant(
        name=data["name"],
        description=data["description"],
        runtime_mode=data["runtime_mode"],
        module=ModuleSpec(dict(module["parameters"])) if module else None,
    )


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
    )
