# SPDX-License-Identifier: Apache-2.0
"""Image checks marked `extended` run only with MLOS_IMAGES_EXTENDED=1.

They are the checks of session 3's work that have not yet passed end to end on this
project's CI machine (the metal image flashed and reached over SSH, its validation run,
the container in a sysext guest, the installed-wheel build): until they have, CI runs the
smoke tests of the same images, and a developer runs these by hand. The skip says so.
"""

from __future__ import annotations

import os

import pytest

ENABLED = bool(os.environ.get("MLOS_IMAGES_EXTENDED"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="extended image check: set MLOS_IMAGES_EXTENDED=1 to run "
                            "it (not yet in CI; see tests/images/conftest.py)")
    for item in items:
        if item.get_closest_marker("extended"):
            item.add_marker(skip)
