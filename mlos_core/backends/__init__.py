# SPDX-License-Identifier: Apache-2.0
"""Inference backends (plugins discovered through the `mlos.backends` entry-point group)."""
