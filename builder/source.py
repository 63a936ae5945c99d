# SPDX-License-Identifier: Apache-2.0
"""Where the MLOS that goes into an image comes from.

With `--mlos-source DIR`, a source tree: pip builds the wheel from it. Without it, the
checkout mlos-build runs from; and when mlos-build was installed from a wheel (pip,
pipx: no checkout anywhere), the installed `mlos` distribution itself, packed back into
a wheel from the files its RECORD lists. The image then carries exactly the MLOS that
is installed, and the kernel sources and service files come from its package data.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mlos_build import data
from mlos_build.errors import BuildError
from mlos_build.runner import run

DISTRIBUTION = "mlos"
# Written by the installer, not part of the wheel (RECORD is rewritten).
_INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


@dataclass(frozen=True)
class MlosSource:
    """A source tree (root) or, with root None, the installed distribution."""

    root: Path | None

    @classmethod
    def default(cls) -> MlosSource:
        return cls(data.checkout())

    def describe(self) -> str:
        return str(self.root) if self.root else f"the installed {DISTRIBUTION} package"

    def kernel_dir(self) -> Path:
        return self.root / "kernel" if self.root else data.kernel_dir()

    def core_data_dir(self) -> Path:
        if self.root:
            return self.root / "mlos_core" / "data"
        import mlos_core

        return Path(mlos_core.__file__).resolve().parent / "data"

    def wheel(self, dest: Path) -> Path:
        """The MLOS wheel to install into the image, written into dest."""
        dest.mkdir(parents=True, exist_ok=True)
        if self.root is not None:
            run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dest,
                 self.root], what=f"building the MLOS wheel from {self.root}")
            return next(dest.glob("mlos-*.whl"))
        return repack_installed(dest)


def _record_hash(payload: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def repack_installed(dest: Path) -> Path:
    """Packs the installed (non-editable) mlos distribution back into a wheel."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BuildError(f"the {DISTRIBUTION} package is not installed",
                         hint="pass --mlos-source with an MLOS source tree") from exc
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        raise BuildError("the installed mlos package is an editable install whose source "
                         "tree is gone", hint="pass --mlos-source with the MLOS source tree")
    version = dist.version
    wheel = dest / f"{DISTRIBUTION}-{version}-py3-none-any.whl"
    record: list[str] = []
    record_name = ""
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in sorted(dist.files or [], key=str):
            parts = entry.parts
            if parts[0] == ".." or "__pycache__" in parts or entry.suffix == ".pyc":
                continue  # console scripts (bin/) and byte code are made by the installer
            if parts[0].endswith(".dist-info") and entry.name in _INSTALLER_FILES:
                if entry.name == "RECORD":
                    record_name = entry.as_posix()
                continue
            payload = Path(str(dist.locate_file(entry))).read_bytes()
            archive.writestr(entry.as_posix(), payload)
            record.append(f"{entry.as_posix()},{_record_hash(payload)},{len(payload)}")
        if not record_name:
            raise BuildError(f"the installed {DISTRIBUTION} package has no RECORD",
                             hint="reinstall it with pip, or pass --mlos-source")
        record.append(f"{record_name},,")
        archive.writestr(record_name, "\n".join(record) + "\n")
    return wheel
