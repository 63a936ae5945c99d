# SPDX-License-Identifier: Apache-2.0
"""What every build target is asked to build, independent of how: the variant (module
parameters, runtime mode) and the MLOS version. Each target's spec adds its own fields."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from mlos_build import __version__
from mlos_build.data import Variant


@dataclass(frozen=True, kw_only=True)
class BuildSpec(abc.ABC):
    variant: Variant
    mlos_version: str = __version__

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The artifact's base name (file names derive from it)."""
