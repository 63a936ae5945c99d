# SPDX-License-Identifier: Apache-2.0
"""mlos-build: renders and builds MLOS disk images (mkosi) and Flatcar configs (Ignition)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlos")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"
