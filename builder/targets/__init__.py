# SPDX-License-Identifier: Apache-2.0
"""Build targets, one module each, found through one registry (base.TARGETS).

Importing this package registers every target; a new target is a module here that
decorates its class with @register and is imported below.
"""

from mlos_build.targets import mkosi_disk  # noqa: F401  (registers mkosi-disk)
from mlos_build.targets.base import TARGETS, BuildResult, Target, commands, target_class

__all__ = ["TARGETS", "BuildResult", "Target", "commands", "target_class"]
