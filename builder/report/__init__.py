# SPDX-License-Identifier: Apache-2.0
"""The E2E validation report: benchmark a running MLOS Core and render what it measured.

`python -m mlos_build.report run ...` drives a benchmark suite against a running service
(local, or inside a booted image through a forwarded port) and writes `results.json` plus
a self-contained `report.html`; `python -m mlos_build.report render A.json B.json ...`
renders several runs (one per runtime mode) side by side.
"""

from mlos_build.report.cli import main

__all__ = ["main"]
