# SPDX-License-Identifier: Apache-2.0
from importlib.metadata import version
from pathlib import Path

import tomllib

import mlos_build
import mlos_core

REPO = Path(__file__).resolve().parents[2]


def test_packages_report_the_installed_version() -> None:
    assert mlos_core.__version__ == version("mlos")
    assert mlos_build.__version__ == version("mlos")


def test_every_python_package_travels_in_the_wheel() -> None:
    # pyproject lists packages explicitly (the builder/ -> mlos_build mapping): a package
    # missing there imports from a checkout but is absent from an installed image.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    for top, name in ((REPO / "mlos_core", "mlos_core"), (REPO / "builder", "mlos_build")):
        for init in top.rglob("__init__.py"):
            parts = init.parent.relative_to(top).parts
            assert ".".join((name, *parts)) in listed, init.parent
