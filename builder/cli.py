# SPDX-License-Identifier: Apache-2.0
"""`mlos-build` command line (placeholder until the builder lands)."""

import sys


def main() -> int:
    print("mlos-build: the builder is not implemented yet", file=sys.stderr)
    return 1
