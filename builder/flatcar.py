# SPDX-License-Identifier: Apache-2.0
"""What a Flatcar build is made of: the Flatcar data (images/distributions/flatcar.yaml),
the provisioning data (ignition/provision.yaml) and the spec of one build. sysext.py,
kernel_tree.py and ignition.py build from these; targets/flatcar.py wires them to the CLI.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mlos_build.data import data_tree, distribution_data
from mlos_build.errors import BuildError
from mlos_build.spec import BuildSpec

VERSION_RE = re.compile(r"\d+\.\d+\.\d+")
SHA512_RE = re.compile(r"[0-9a-f]{128}")


def ignition_dir() -> Path:
    """The ignition/ tree (provisioning data, sysext layout); MLOS_IGNITION_DIR overrides."""
    return Path(os.environ.get("MLOS_IGNITION_DIR", data_tree("ignition")))


@dataclass(frozen=True)
class FlatcarData:
    """images/distributions/flatcar.yaml: what Flatcar is."""

    os_release_id: str
    architecture: str
    required_kernel_config: tuple[str, ...]
    kernel_architecture_config: str
    container_runtime: str
    container_runtime_unit: str

    @classmethod
    def load(cls) -> FlatcarData:
        data = distribution_data("flatcar")
        return cls(os_release_id=data["os_release_id"], architecture=data["architecture"],
                   required_kernel_config=tuple(data["required_kernel_config"]),
                   kernel_architecture_config=data["kernel_architecture_config"],
                   container_runtime=data["container_runtime"],
                   container_runtime_unit=data["container_runtime_unit"])


@dataclass(frozen=True)
class Provision:
    """ignition/provision.yaml: what MLOS puts on a node."""

    extension: str
    extensions_dir: str
    link_dir: str
    config_dir: str
    state_dir: str
    models_dir: str
    ssh_user: str
    service_user: dict[str, Any]
    container: dict[str, str]
    ports: dict[str, int]
    memlock_bytes: int
    inline_max_bytes: int

    @classmethod
    def load(cls) -> Provision:
        path = ignition_dir() / "provision.yaml"
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        return cls(**data)


@dataclass(frozen=True)
class ExtraFile:
    """--extra-file SRC:DEST: a small file Ignition writes on the node."""

    source: Path
    dest: str
    mode: int
    data: bytes


@dataclass(frozen=True, kw_only=True)
class FlatcarSpec(BuildSpec):
    """One Flatcar build: the variant, the release its sysext is bound to, and what the
    Ignition config adds (keys, files, where the sysext comes from)."""

    flatcar_version: str
    flatcar: FlatcarData
    provision: Provision
    # The container image the service runs; archive: shipped in the sysext and loaded
    # there, else pulled by the runtime from the registry the reference names.
    container_image: str
    container_archive: Path | None = None
    sysext_url: str | None = None
    sysext_sha512: str | None = None
    ssh_keys: tuple[str, ...] = ()
    api_key: str | None = None
    extra_files: tuple[ExtraFile, ...] = ()
    kernel_build_tree: Path | None = None
    sign_key: Path | None = None
    sign_cert: Path | None = None
    source_date_epoch: int = 0

    @property
    def name(self) -> str:
        return f"mlos-{self.variant.name}-{self.flatcar_version}-{self.flatcar.architecture}"

    @property
    def sysext_file(self) -> str:
        return f"{self.name}.raw"

    @property
    def sysext_path(self) -> str:
        """Where Ignition places the sysext on the node."""
        return str(PurePosixPath(self.provision.extensions_dir) / self.sysext_file)

    @property
    def sysext_link(self) -> str:
        return str(PurePosixPath(self.provision.link_dir) / f"{self.provision.extension}.raw")


def check_flatcar_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise BuildError(f"--flatcar-version {version!r} is not a Flatcar release",
                         hint="give MAJOR.MINOR.PATCH as in the node's /etc/os-release "
                         "VERSION_ID, e.g. 4152.2.3")
    return version


def parse_extra_file(value: str, provision: Provision, reserved: set[str]) -> ExtraFile:
    src, sep, dest = value.partition(":")
    if not sep or not src or not dest:
        raise BuildError(f"--extra-file {value!r} is not SRC:DEST",
                         hint="e.g. --extra-file ./chrony.conf:/etc/chrony.conf")
    target = PurePosixPath(dest)
    if not target.is_absolute() or ".." in target.parts or str(target) != dest:
        raise BuildError(f"--extra-file {value}: {dest} is not a plain absolute path",
                         hint="give the node path in full, e.g. /etc/chrony.conf")
    if target.parts[1] == "usr":
        raise BuildError(f"--extra-file {value}: Flatcar's /usr is read-only",
                         hint="put it under /etc, /opt or /var (or into a system extension)")
    if dest in reserved:
        raise BuildError(f"--extra-file {value}: mlos-build writes {dest} itself",
                         hint="change it through its own option, or pick another path")
    path = Path(src)
    if path.exists() and not path.is_file():
        raise BuildError(f"--extra-file {value}: {src} is not a file",
                         hint="give one file per --extra-file")
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"--extra-file {value}: cannot read {src} ({exc.strerror})",
                         hint="give a readable file on this machine") from exc
    if len(data) > provision.inline_max_bytes:
        raise BuildError(f"--extra-file {value}: {len(data)} bytes is too big to inline in "
                         "the Ignition config",
                         hint=f"keep extra files under {provision.inline_max_bytes} bytes; "
                         "ship bigger ones in a system extension or fetch them at boot")
    return ExtraFile(source=path, dest=dest, mode=stat.S_IMODE(info.st_mode), data=data)


def check_sysext_url(url: str | None, sha512: str | None) -> tuple[str | None, str | None]:
    if sha512 is not None:
        sha512 = sha512.lower().removeprefix("sha512-")
        if not SHA512_RE.fullmatch(sha512):
            raise BuildError("--sysext-sha512 is not a SHA-512 digest",
                             hint="give the 128 hex digits that sha512sum prints for the .raw")
    if url is not None and not url.startswith("https://"):
        raise BuildError(f"--sysext-url {url} is not an https URL",
                         hint="serve the .raw over https; Ignition checks it against the "
                         "sha512 in the config")
    if sha512 is not None and url is None:
        raise BuildError("--sysext-sha512 without --sysext-url",
                         hint="the digest verifies a download: give the URL too")
    return url, sha512
