# SPDX-License-Identifier: Apache-2.0
"""MLOS Core: the inference service that runs on every MLOS image."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlos")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
