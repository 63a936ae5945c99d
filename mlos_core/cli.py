# SPDX-License-Identifier: Apache-2.0
"""`mlos-core` command line (placeholder until the service lands)."""

import sys


def main() -> int:
    print("mlos-core: the service is not implemented yet", file=sys.stderr)
    return 1
