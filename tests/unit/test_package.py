# SPDX-License-Identifier: Apache-2.0
from importlib.metadata import version

import mlos_build
import mlos_core


def test_packages_report_the_installed_version() -> None:
    assert mlos_core.__version__ == version("mlos")
    assert mlos_build.__version__ == version("mlos")
