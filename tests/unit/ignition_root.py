# SPDX-License-Identifier: Apache-2.0
"""Applies an Ignition config to a scratch root with the real ignition binary (Debian's
package): the fetch-offline and files stages, as a Flatcar initrd runs them.

The root starts like a Flatcar /etc (root, and core with uid 500); ignition insists on
relabelling what it wrote, so the root has an SELinux config and an (empty) file context
list for setfiles.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IGNITION = Path("/usr/lib/dracut/modules.d/30ignition/ignition")
VALIDATE = "ignition-validate"

BASE_ETC = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500:Flatcar Admin:/home/core:"
              "/bin/bash\n",
    "group": "root:x:0:\ncore:x:500:\ndocker:x:233:core\n",
    "shadow": "root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n",
    "gshadow": "root:*::\ncore:!::\ndocker:!::core\n",
}


@dataclass(frozen=True)
class Applied:
    root: Path
    log: str

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def passwd(self) -> dict[str, list[str]]:
        return _table(self.path("/etc/passwd"))

    def group(self) -> dict[str, list[str]]:
        return _table(self.path("/etc/group"))

    def presets(self) -> list[str]:
        preset = self.path("/etc/systemd/system-preset/20-ignition.preset")
        return preset.read_text().splitlines() if preset.exists() else []


def _table(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()
            if line}


def available() -> bool:
    return IGNITION.is_file() and os.access(IGNITION, os.X_OK)


def make_root(root: Path) -> None:
    etc = root / "etc"
    (etc / "selinux" / "mcs" / "contexts" / "files").mkdir(parents=True)
    (etc / "selinux" / "config").write_text("SELINUX=permissive\nSELINUXTYPE=mcs\n")
    (etc / "selinux" / "mcs" / "contexts" / "files" / "file_contexts").write_text("")
    for name, text in BASE_ETC.items():
        (etc / name).write_text(text)
    (etc / "shadow").chmod(0o600)
    (etc / "gshadow").chmod(0o600)
    # Ignition writes a user's keys as that user: core owns its home, as on Flatcar.
    (root / "home" / "core").mkdir(parents=True)
    os.chown(root / "home" / "core", 500, 500)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A work directory that users of the root can reach: ignition writes core's SSH keys
    as core, and pytest's own temporary directories are closed to all but root."""
    work = Path(tempfile.mkdtemp(prefix="mlos-ignition-"))
    work.chmod(0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apply(config: Path, work: Path) -> Applied:
    """Runs both stages on a fresh root under work (from scratch()); raises with
    ignition's errors on failure."""
    root = work / "root"
    make_root(root)
    env = {**os.environ, "IGNITION_CONFIG_FILE": str(config)}
    logs = []
    for stage in ("fetch-offline", "files"):
        result = subprocess.run(
            [str(IGNITION), "-platform", "file", "-stage", stage, "-root", str(root),
             "-config-cache", str(work / "ignition.json"), "-state-file", str(work / "state"),
             "-neednet", str(work / "neednet"), "-log-to-stdout"],
            capture_output=True, text=True, env=env, check=False)
        log = result.stdout + result.stderr
        logs.append(log)
        if result.returncode != 0:
            # The log ends with the whole config: show what went wrong.
            errors = [line for line in log.splitlines()
                      if line.startswith(("CRITICAL", "ERROR", "WARNING"))]
            raise AssertionError(f"ignition {stage} failed:\n" + "\n".join(errors[-20:]))
    return Applied(root=root, log="\n".join(logs))
