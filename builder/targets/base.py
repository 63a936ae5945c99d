# SPDX-License-Identifier: Apache-2.0
"""The build-target contract and the one registry of targets.

A target turns a BuildSpec into artifacts. Which target builds what is data: every
images/distributions/*.yaml names its `target:`, and the command line gets one build
subcommand (and one `render` subcommand) per name a target serves. A target adds its own
options and makes its own spec from them, so cli.py knows no target by name.
"""

from __future__ import annotations

import abc
import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mlos_build.data import distribution_names, distribution_target
from mlos_build.errors import BuildError
from mlos_build.runner import Progress
from mlos_build.spec import BuildSpec


@dataclass(frozen=True)
class BuildResult:
    image: Path
    manifest: Path
    checksums: Path
    seconds: float
    # Other artifacts written beside the image (configs, archives), in the order made.
    others: tuple[Path, ...] = field(default=())


class Target(abc.ABC):
    """One kind of artifact mlos-build produces for a spec."""

    # The registry key: the value of `target:` in the distribution data.
    name: ClassVar[str]
    # What `mlos-build COMMAND` builds, for --help ({command} is the subcommand).
    summary: ClassVar[str]
    # Whether its image gets the release artifacts (SBOM, SHA256SUMS, signature:
    # builder/release.py), and whether it is a disk, which also gets a block map and a qcow2.
    release_artifacts: ClassVar[bool] = False
    disk_image: ClassVar[bool] = False

    # mlos_source None: the checkout mlos-build runs from, else the installed package
    # (mlos_build.source.MlosSource.default()).
    def __init__(self, spec: BuildSpec, mlos_source: Path | None,
                 progress: Progress) -> None:
        self.spec = spec
        self.mlos_source = mlos_source
        self.progress = progress

    @classmethod
    def commands(cls) -> list[str]:
        """The subcommands this target serves: the distributions whose data names it."""
        return [d for d in distribution_names() if distribution_target(d) == cls.name]

    @classmethod
    @abc.abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, command: str, *,
                      build: bool) -> None:
        """Adds this target's options to `mlos-build COMMAND` (build=True) or
        `mlos-build render COMMAND` (build=False)."""

    @classmethod
    @abc.abstractmethod
    def spec_from_args(cls, command: str, args: argparse.Namespace, *,
                       build: bool) -> BuildSpec:
        """The spec the parsed options describe (raises BuildError for bad values)."""

    @abc.abstractmethod
    def render(self, dest: Path) -> list[Path]:
        """Writes the target's configuration tree (no build); returns the files written,
        relative to dest."""

    @abc.abstractmethod
    def default_render_dir(self) -> Path:
        """Where `render` writes without --output-dir."""

    @abc.abstractmethod
    def build(self, output_dir: Path) -> BuildResult:
        """Builds the artifacts into output_dir."""


TARGETS: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: makes a target findable by its name."""
    if cls.name in TARGETS:
        raise RuntimeError(f"two build targets are named {cls.name!r}")
    TARGETS[cls.name] = cls
    return cls


def target_class(name: str) -> type[Target]:
    if name not in TARGETS:
        raise BuildError(f"unknown build target '{name}'",
                         hint="valid targets: " + ", ".join(sorted(TARGETS)) +
                         " (the `target:` key of images/distributions/*.yaml)")
    return TARGETS[name]


def commands() -> dict[str, type[Target]]:
    """Every build subcommand and the target that serves it, in a stable order."""
    for name in distribution_names():
        target = distribution_target(name)
        if target not in TARGETS:
            raise BuildError(f"images/distributions/{name}.yaml names an unknown build "
                             f"target '{target}'",
                             hint="valid targets: " + ", ".join(sorted(TARGETS)))
    served: dict[str, type[Target]] = {}
    for cls in TARGETS.values():
        for command in cls.commands():
            if command in served:
                raise RuntimeError(f"targets {served[command].name} and {cls.name} both "
                                   f"serve '{command}'")
            served[command] = cls
    return dict(sorted(served.items()))
