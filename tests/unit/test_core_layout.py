# SPDX-License-Identifier: Apache-2.0
"""The layers, checked on the source: transports never import one another (only their
shared HTTP plumbing and their own helpers), and the data plane imports no web or gRPC
framework."""

from __future__ import annotations

import ast
from pathlib import Path

import mlos_core

ROOT = Path(mlos_core.__file__).parent
PROTOCOLS = ROOT / "protocols"
#: Transport -> the protocols/ modules it may import besides the shared plumbing.
TRANSPORTS = {
    "rest_kserve.py": set(),
    "rest_mlos.py": set(),
    "openai.py": {"openai_schemas"},
    "grpc/server.py": {"grpc.generated"},
}
SHARED = {"http", "bodies", "shm"}


def _imports(path: Path) -> set[str]:
    """Absolute names of the mlos_core modules a file imports."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names.add(name)
            names.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_transport_imports_another() -> None:
    for file, own in TRANSPORTS.items():
        allowed = {f"mlos_core.protocols.{m}" for m in SHARED | own}
        for name in _imports(PROTOCOLS / file):
            if not name.startswith("mlos_core.protocols.") or name == "mlos_core.protocols":
                continue
            assert any(name == a or name.startswith(a + ".") for a in allowed), (file, name)


def test_the_data_plane_knows_no_transport_framework() -> None:
    for path in (ROOT / "dataplane").glob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in ("fastapi", "starlette", "grpc", "uvicorn"), (path.name, name)
