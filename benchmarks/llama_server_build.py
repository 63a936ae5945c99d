# SPDX-License-Identifier: Apache-2.0
"""Builds llama.cpp's own `llama-server` from the llama-cpp-python sdist pinned in
pyproject.toml (it vendors llama.cpp, server included, at the exact commit the wheel
was compiled from), once, into ~/.cache/mlos/llama-server/<version>/bin/llama-server.

The machine is shared: one compile job at a time, at the lowest priority, portable code
(-DGGML_NATIVE=OFF, as the wheel), only the server target. 15-25 minutes on 2 cores.

    .venv/bin/python benchmarks/llama_server_build.py      # prints the binary's path
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MLOS_LLAMA_SERVER_CACHE",
                            Path.home() / ".cache" / "mlos" / "llama-server"))


def pinned_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"llama-cpp-python==([^"]+)"', text)
    if not found:
        raise SystemExit("no llama-cpp-python pin in pyproject.toml")
    return found.group(1)


def binary(version: str | None = None) -> Path:
    return CACHE / (version or pinned_version()) / "bin" / "llama-server"


def _run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def sdist(version: str) -> Path:
    """The sdist from pip's cache or the registry, kept next to the build."""
    where = CACHE / version / "sdist"
    found = sorted(where.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    where.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
          f"llama-cpp-python=={version}", "-d", str(where)])
    return next(where.glob(f"llama_cpp_python-{version}.tar.gz"))


def build(version: str | None = None) -> Path:
    version = version or pinned_version()
    out = binary(version)
    if out.exists():
        return out
    if shutil.which("cmake") is None:
        raise SystemExit("building llama-server needs cmake and a C++ compiler: "
                         "apt-get install cmake build-essential")
    src_root = CACHE / version / "src"
    if not (src_root / "vendor" / "llama.cpp" / "tools" / "server").is_dir():
        shutil.rmtree(src_root, ignore_errors=True)
        with tarfile.open(sdist(version)) as tar:
            tar.extractall(CACHE / version, filter="data")
        (CACHE / version / f"llama_cpp_python-{version}").rename(src_root)
    source = src_root / "vendor" / "llama.cpp"
    build_dir = CACHE / version / "build"
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "1"}
    nice = ["nice", "-n", "19"]
    _run(nice + ["cmake", "-S", str(source), "-B", str(build_dir),
                 "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
                 "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF",
                 "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DBUILD_SHARED_LIBS=OFF"], env=env)
    _run(nice + ["cmake", "--build", str(build_dir), "--target", "llama-server",
                 "--config", "Release"], env=env)
    built = build_dir / "bin" / "llama-server"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, out)
    return out


if __name__ == "__main__":
    print(build())
