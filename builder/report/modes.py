# SPDX-License-Identifier: Apache-2.0
"""What the service says about itself: its runtime mode card and the versions it runs.

Everything here is read from the service's own `GET /health` (and KServe server
metadata), never from how the benchmark was invoked: a report must not be able to claim
a kernel mode that the service did not detect.
"""

from __future__ import annotations

from typing import Any

# The Runtime Mode card's text, keyed by /health's `runtime_mode`.
MODE_CARDS: dict[str, str] = {
    "userspace": "Userspace Only (No Kernel Optimizations)",
    "kernel_basic": "Kernel Module (Memory Manager)",
    "kernel_scheduler": "Kernel Module (Memory + Scheduler)",
    "kernel_full": "Kernel Module (Full: Memory, Scheduler, GPU)",
}
# Order used wherever modes are listed side by side; userspace is the baseline.
MODE_ORDER = list(MODE_CARDS)
BASELINE_MODE = "userspace"

UNKNOWN = "unknown"


def mode_card(runtime_mode: str | None) -> str:
    """The card text for a runtime mode; an unreported or unknown mode says so plainly."""
    if runtime_mode in MODE_CARDS:
        return MODE_CARDS[runtime_mode]
    if not runtime_mode:
        return "Unknown (the service's /health did not report runtime_mode)"
    return f"Unknown runtime mode {runtime_mode!r} reported by /health"


def _first(health: dict[str, Any], *paths: str) -> Any:
    """The first present, non-empty value among dotted paths into the /health document."""
    for path in paths:
        node: Any = health
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                node = None
                break
            node = node[key]
        if node not in (None, "", {}):
            return node
    return None


def versions_from_health(health: dict[str, Any],
                         server_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Release Versions the report shows, each from the fields the service reports.

    Read from /health: `version` (MLOS), `kernel` (uname -r of the service's machine),
    `module` (mlos_ml parameters, null when not loaded), `onnxruntime`, `llama_cpp`; each
    also accepted under a `versions` object. Missing fields read "unknown", never a guess.
    """
    meta = server_metadata or {}
    module = health.get("module")
    module_version = None
    if isinstance(module, dict):
        module_version = module.get("version") or module.get("srcversion")
    return {
        "mlos": _first(health, "version", "versions.mlos") or meta.get("version") or UNKNOWN,
        "kernel": _first(health, "kernel", "kernel_release", "versions.kernel",
                         "system.kernel") or UNKNOWN,
        "module": module if module is not None else None,
        "module_version": module_version,
        "onnxruntime": _first(health, "onnxruntime", "versions.onnxruntime",
                              "backends.onnxruntime.version") or UNKNOWN,
        "llama_cpp": _first(health, "llama_cpp", "versions.llama_cpp",
                            "versions.llama_cpp_python", "backends.llama_cpp.version")
        or UNKNOWN,
        "features": _first(health, "features", "features_in_use"),
    }
