# SPDX-License-Identifier: Apache-2.0
import sys

from mlos_build.report.cli import main

sys.exit(main(sys.argv[1:]))
