# SPDX-License-Identifier: Apache-2.0
"""A real `mlos-core serve` process for tests where the server's death is the point (a
signal, a crash, a kill -9): an in-process server would take the test run down with it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServeProcess:
    """`python [wrapper] -m mlos_core serve` over `repo`; `settings` become core.yaml."""

    proc: subprocess.Popen[bytes]  # set by start()

    def __init__(self, repo: Path, wrapper: Path | None = None, **settings: Any) -> None:
        self.repo = repo
        self.wrapper = wrapper
        self.settings = settings
        self.rest_port = free_port()
        self.grpc_port = free_port()

    @property
    def url(self) -> str:
        """host:port, like MLOSServer.url."""
        return f"127.0.0.1:{self.rest_port}"

    def start(self, timeout: float = 60.0) -> ServeProcess:
        repo = self.repo
        config = repo.parent / f"core-{self.rest_port}.yaml"
        lines = [f"rest_port: {self.rest_port}", f"grpc_port: {self.grpc_port}",
                 f"model_repository: {repo}", f"sysfs_root: {repo.parent / 'no-sysfs'}",
                 "log_level: warning"]
        for key, value in self.settings.items():
            lines.append(f"{key}: {value!r}" if not isinstance(value, list)
                         else f"{key}: [{', '.join(repr(str(v)) for v in value)}]")
        config.write_text("\n".join(lines) + "\n")
        entry = [str(self.wrapper)] if self.wrapper else ["-m", "mlos_core"]
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "serve", "--config", str(config)],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlos-core serve exited {self.proc.returncode} at start")
            try:
                if requests.get(f"http://{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("mlos-core serve did not become ready")

    def stop(self) -> int | None:
        if not hasattr(self, "proc"):
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
