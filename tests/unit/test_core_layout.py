# SPDX-License-Identifier: Apache-2.0
"""The layers, checked on the source: protocol modules never import one another (only
their shared HTTP plumbing and their own helpers) and reach shared memory through the
data plane; the data plane and the backends import no web or gRPC framework; only
mlos_core/kernel/ imports the mlos-ml device binding; one table maps domain errors to
HTTP and one to gRPC; no hand-written file grows past about 800 lines."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import mlos_build
import mlos_core
from mlos_core import errors

ROOT = Path(mlos_core.__file__).parent
BUILDER = Path(mlos_build.__file__).parent
PROTOCOLS = ROOT / "protocols"
#: Every protocols/ module -> the protocols/ modules it may import. A new module must be
#: listed here: a transport imports only the shared plumbing and its own helpers.
PLUMBING = {"http", "bodies"}
PROTOCOL_IMPORTS = {
    "http.py": set(),
    "bodies.py": set(),
    "rest_kserve.py": PLUMBING,
    "rest_mlos.py": PLUMBING,
    "openai.py": PLUMBING | {"openai_schemas"},
    "openai_schemas.py": set(),
    "grpc/server.py": {"grpc.generated"},
    "grpc/generate.py": set(),
}
FRAMEWORKS = ("fastapi", "starlette", "grpc", "uvicorn", "google")
BINDING = "mlos_core.kernel.mlos_ml"
#: Files that are two ideas once past this (docs/STYLE: keep files under about 800 lines).
MAX_LINES = 800


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "generated" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    if path.is_relative_to(BUILDER):  # the builder's directory imports as mlos_build
        parts = ("mlos_build", *path.relative_to(BUILDER).parts)
    else:
        parts = path.relative_to(ROOT.parent).parts
    package = ".".join(Path(*parts).with_suffix("").parts[:-1])
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


def _is(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_the_import_resolver_sees_relative_imports() -> None:
    # The checks below are only as good as this: a relative import must resolve.
    assert "mlos_core.kernel.mlos_ml" in _imports(ROOT / "kernel" / "pools.py")
    assert "mlos_core.protocols.http.read_json" in _imports(PROTOCOLS / "rest_kserve.py")
    assert "mlos_core.dataplane.DataPlane" in _imports(PROTOCOLS / "grpc" / "server.py")
    assert "mlos_core.kernel.runtime_mode.mode_for" in _imports(BUILDER / "data.py")


def test_every_protocol_module_is_declared() -> None:
    found = {str(p.relative_to(PROTOCOLS)) for p in _sources(PROTOCOLS)
             if p.name != "__init__.py"}
    assert found == set(PROTOCOL_IMPORTS)


def test_no_protocol_module_imports_another() -> None:
    for file, allowed_modules in PROTOCOL_IMPORTS.items():
        allowed = {f"mlos_core.protocols.{m}" for m in allowed_modules}
        for name in _imports(PROTOCOLS / file):
            if not name.startswith("mlos_core.protocols.") or name == "mlos_core.protocols":
                continue
            assert any(_is(name, a) for a in allowed), (file, name)


def test_transports_reach_shared_memory_through_the_data_plane() -> None:
    # The data plane owns the regions (DataPlane.shm / .cuda_shm); no transport opens them.
    for path in _sources(PROTOCOLS):
        for name in _imports(path):
            assert not _is(name, "mlos_core.dataplane.system_shm"), (path.name, name)
            assert not _is(name, "mlos_core.dataplane.cuda_shm"), (path.name, name)


def test_the_data_plane_knows_no_transport() -> None:
    for path in _sources(ROOT / "dataplane"):
        for name in _imports(path):
            assert name.split(".")[0] not in FRAMEWORKS, (path.name, name)
            assert not _is(name, "mlos_core.protocols"), (path.name, name)


def test_backends_import_no_web_grpc_or_service_layer() -> None:
    for path in _sources(ROOT / "backends"):
        for name in _imports(path):
            assert name.split(".")[0] not in FRAMEWORKS, (path.name, name)
            for layer in ("protocols", "dataplane", "kernel"):
                assert not _is(name, f"mlos_core.{layer}"), (path.name, name)


def test_only_the_kernel_package_imports_the_device_binding() -> None:
    kernel = ROOT / "kernel"
    for path in _sources(ROOT) + _sources(BUILDER):
        if path.is_relative_to(kernel):
            continue
        for name in _imports(path):
            assert not _is(name, BINDING), (str(path), name)


def test_one_table_maps_domain_errors_to_http_and_one_to_grpc() -> None:
    from mlos_core.protocols import http
    from mlos_core.protocols.grpc import server

    domain = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
              if issubclass(cls, errors.MLOSError) and cls is not errors.MLOSError]
    assert domain
    for table in (http.HTTP_ERRORS, server.GRPC_STATUS):
        for cls in domain:  # every domain error has an entry, its own or its base's
            assert any(base in table for base in cls.__mro__[: cls.__mro__.index(
                errors.MLOSError)]), cls.__name__
    assert set(http.HTTP_ERRORS) == set(server.GRPC_STATUS)
    # No other protocol module keeps its own table: they call status_for / code_for.
    for path in _sources(PROTOCOLS):
        if path.name in ("http.py", "server.py"):
            continue
        text = path.read_text()
        assert "HTTP_ERRORS" not in text and "StatusCode." not in text, path.name


def test_no_hand_written_module_is_two_ideas() -> None:
    for path in _sources(ROOT) + _sources(BUILDER):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path}: {lines} lines"
