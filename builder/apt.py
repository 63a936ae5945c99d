# SPDX-License-Identifier: Apache-2.0
"""The apt distributions' data (Ubuntu, Debian: mirrors, suites, keyrings, packages), from
the images/distributions/*.yaml files whose target is the mkosi disk image. Only that
target reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlos_build import data
from mlos_build.data import distribution_data
from mlos_build.errors import BuildError

# The target that builds apt distributions (the registry key of MkosiDiskTarget).
APT_TARGET = "mkosi-disk"


def distribution_names() -> list[str]:
    return [d for d in data.distribution_names() if data.distribution_target(d) == APT_TARGET]


@dataclass(frozen=True)
class Release:
    name: str
    packages: tuple[str, ...] = ()
    glibc: str | None = None  # its C library's version: which prebuilt wheels run there


@dataclass(frozen=True)
class Distribution:
    name: str
    default_release: str
    mirror: str
    keyring: str
    keyring_package: str
    components: tuple[str, ...]
    suites: tuple[str, ...]
    kernel_packages: tuple[str, ...]
    headers_packages: tuple[str, ...]
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

    def suites_for(self, release: str) -> list[str]:
        return [s.format(release=release) for s in self.suites]

    def security_suites_for(self, release: str) -> list[str]:
        return [s.format(release=release) for s in (self.security or {}).get("suites", [])]


def load_distribution(name: str) -> Distribution:
    if name not in distribution_names():
        raise BuildError(f"unknown distribution '{name}'",
                         hint="valid distributions: " + ", ".join(distribution_names()))
    data = distribution_data(name)
    releases = {
        rel: Release(rel, tuple((spec or {}).get("packages", [])),
                     str((spec or {})["glibc"]) if (spec or {}).get("glibc") else None)
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
        kernel_packages=tuple(data["kernel_packages"]),
        headers_packages=tuple(data["headers_packages"]),
        dkms_packages=tuple(data["dkms_packages"]),
        llm_packages=tuple(data["llm_packages"]),
        base_packages=tuple(data["base_packages"]),
        releases=releases,
        security=data.get("security"),
    )
