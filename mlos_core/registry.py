# SPDX-License-Identifier: Apache-2.0
"""The model repository on disk, laid out like Triton's:

    <repository>/<model>/<version>/<model file(s)>
    <repository>/<model>/config.pbtxt                   (optional: Triton's, protobuf text)
    <repository>/<model>/config.yaml | config.json      (optional: MLOS's)

When both kinds exist, config.pbtxt is read first and each top-level key of
config.yaml|json replaces the same key (MLOS's own file wins, key by key). A model whose
config cannot be read is listed with the reason (its load fails), never hiding the others.

Versions are positive integers. Every write is staged in a hidden directory inside the
repository (same filesystem), load-checked there, and only then renamed into place, so a
crash mid-registration leaves only a hidden staging directory that the next start removes,
never a half model nor one that cannot load.

Registration by path (mlos_core.model_import) reads only below the directories the administrator
lists in the `import_roots` setting (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from .repository import pbtxt

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # always fullmatch
_STAGING_PREFIX = ".staging-"
_TRASH_PREFIX = ".trash-"
CONFIG_FILES = ("config.yaml", "config.yml", "config.json")


def is_model_name(name: str) -> bool:
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and name not in (".", "..")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidInputError(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.' (max 128)"
        )
    return name


#: Upstream MLOS model ids: `namespace/name@version` (Axon's), or any plain name.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@/-]{0,199}")


def check_model_id(model_id: str) -> str:
    """An upstream MLOS model id, kept as given (e.g. `hf/bert-base-uncased@latest`)."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id) or any(
            part in ("", ".", "..") for part in model_id.split("/")):
        raise InvalidInputError(
            f"invalid model name {model_id!r}: letters, digits, '_', '-', '.', or an id "
            "namespace/name@version of those and '@' and '/' (max 200)")
    return model_id


def repository_name_for(model_id: str) -> str:
    """The repository directory a model id is stored under: the id itself when it is a
    plain name, else the id with each run of other characters as '_' ("hf/mlp@latest" ->
    "hf_mlp_latest"); the id itself is kept in the model's config (`model_id`)."""
    check_model_id(model_id)
    if _NAME.fullmatch(model_id):
        return model_id
    return check_model_name(re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)[:128])


def is_version(name: str) -> bool:
    """A version directory's name: ASCII digits only (str.isdigit also accepts '²')."""
    return name.isascii() and name.isdigit() and len(name) <= 18 and int(name) > 0


def check_version(version: str) -> str:
    if not isinstance(version, str) or not is_version(version):
        raise InvalidInputError(f"invalid model version {version!r}: use a positive integer")
    return str(int(version))


#: The longest file name (bytes) most Linux filesystems store.
_MAX_FILE_NAME = 255


def check_file_name(filename: str) -> str:
    """A model file name as registration stores it: plain, visible, storable."""
    if not isinstance(filename, str) or not filename or "/" in filename \
            or "\0" in filename or filename.startswith(".") \
            or len(filename.encode("utf-8", "surrogateescape")) > _MAX_FILE_NAME:
        raise InvalidInputError(
            f"invalid model file name {filename!r}: a plain name (no '/', not starting "
            f"with '.') of at most {_MAX_FILE_NAME} bytes")
    return filename


@dataclass(frozen=True)
class ImportedFile:
    """A file opened for registration by path (read-only, no symlink followed), copied
    from its descriptor so that nothing can swap it between the check and the copy."""

    fd: int
    size: int

    def close(self) -> None:
        os.close(self.fd)


#: A load check run on a staged model version before it is renamed into place: it gets
#: a RepositoryModel whose path is the staging copy and raises if no backend loads it.
LoadCheck = Callable[["RepositoryModel"], None]


@dataclass
class RepositoryModel:
    """One model directory: its versions (ascending) and parsed config. `error` says why
    the config could not be read (the model then fails to load with that reason)."""

    name: str
    path: Path
    versions: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def latest(self) -> str | None:
        return self.versions[-1] if self.versions else None


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        """Create the repository if needed and remove leftovers of interrupted writes."""
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if entry.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)

    # ---- reading -------------------------------------------------------------------------
    def scan(self) -> list[RepositoryModel]:
        if not self.root.is_dir():
            return []
        models = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir() \
                    or not _NAME.fullmatch(entry.name):
                continue
            models.append(self._read_model(entry))
        return models

    def get(self, name: str) -> RepositoryModel:
        path = self.root / check_model_name(name)
        if not path.is_dir():
            raise ModelNotFoundError(f"model {name!r} is not in the repository")
        return self._read_model(path)

    def _read_model(self, path: Path) -> RepositoryModel:
        versions = sorted(
            (p.name for p in path.iterdir() if p.is_dir() and is_version(p.name)),
            key=int,
        )
        try:
            config = self._read_config(path)
        except ModelLoadError as exc:
            return RepositoryModel(path.name, path, versions, {}, str(exc))
        return RepositoryModel(path.name, path, versions, config)

    @staticmethod
    def _read_config(model_dir: Path) -> dict[str, Any]:
        """config.pbtxt, then config.yaml|json over it (key by key)."""
        triton: dict[str, Any] = {}
        file = model_dir / pbtxt.FILE_NAME
        if file.is_file():
            triton = pbtxt.read(file)
            named = triton.get("name")
            if named and named != model_dir.name:
                raise ModelLoadError(
                    f"{file}: name {named!r} does not match the model directory "
                    f"{model_dir.name!r} (Triton requires them equal)")
        return {**triton, **ModelRepository._read_mlos_config(model_dir)}

    @staticmethod
    def _read_mlos_config(model_dir: Path) -> dict[str, Any]:
        for name in CONFIG_FILES:
            file = model_dir / name
            if file.is_file():
                try:
                    text = file.read_text()
                    data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
                except (OSError, ValueError, yaml.YAMLError) as exc:
                    raise ModelLoadError(f"{file}: unreadable model config: {exc}") from exc
                if data is None:
                    return {}
                if not isinstance(data, dict):
                    raise ModelLoadError(f"{file}: model config must be a mapping")
                return data
        return {}

    # ---- writing -------------------------------------------------------------------------
    def _staging_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))

    def add_version(
        self,
        name: str,
        files: Iterable[tuple[str, Path | bytes | ImportedFile]],
        version: str | None = None,
        config: dict[str, Any] | None = None,
        check: LoadCheck | None = None,
    ) -> tuple[str, str]:
        """Add a version made of `files` ((filename, source path, bytes or ImportedFile)
        pairs).

        Returns (name, version). Without `version` the next integer is used. The version
        directory appears atomically (rename of a fully written staging directory), after
        `check` accepted the staged copy.
        """
        check_model_name(name)
        model_dir = self.root / name
        existing = self._read_model(model_dir).versions if model_dir.is_dir() else []
        if version is None:
            version = str(int(existing[-1]) + 1 if existing else 1)
        version = check_version(version)
        if version in existing:
            raise InvalidInputError(f"model {name!r} already has version {version}")
        staging = self._staging_dir()
        try:
            staged_model = staging / name
            staged_version = staged_model / version
            staged_version.mkdir(parents=True)
            count = 0
            for filename, source in files:
                target = staged_version / check_file_name(filename)
                if target.exists():
                    raise InvalidInputError(f"model file name {filename!r} given twice")
                if isinstance(source, bytes):
                    target.write_bytes(source)
                elif isinstance(source, ImportedFile):
                    _copy_fd(source, target)
                elif source.is_dir():
                    shutil.copytree(source, target)
                else:
                    shutil.copyfile(source, target)
                count += 1
            if not count:
                raise InvalidInputError("a model version needs at least one file")
            if config:
                (staged_model / "config.json").write_text(json.dumps(config, indent=2))
            for path in staged_model.rglob("*"):
                if path.is_file():
                    _fsync(path)
            if check is not None:
                effective = self._read_config(model_dir) if model_dir.is_dir() else {}
                check(RepositoryModel(name, staged_model, [version],
                                      effective or dict(config or {})))
            if not model_dir.exists():
                os.rename(staged_model, model_dir)  # the whole model appears at once
            else:
                os.rename(staged_version, model_dir / version)
                if config and not any((model_dir / c).exists() for c in CONFIG_FILES):
                    os.rename(staged_model / "config.json", model_dir / "config.json")
            _fsync_dir(self.root)
            _fsync_dir(model_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return name, version

    def delete(self, name: str, version: str | None = None) -> None:
        """Remove a model (or one version): renamed away first, so it vanishes atomically."""
        model = self.get(name)
        target = model.path if version is None else model.path / check_version(version)
        if not target.is_dir():
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        trash = self.root / (_TRASH_PREFIX + os.urandom(8).hex())
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _copy_fd(source: ImportedFile, target: Path) -> None:
    """Copy `source.size` bytes (its size when opened: a file growing meanwhile cannot make
    the copy exceed what the size check allowed)."""
    with open(target, "wb") as out:
        offset = 0
        while offset < source.size:
            chunk = os.pread(source.fd, min(1 << 20, source.size - offset), offset)
            if not chunk:
                raise InvalidInputError(f"{target.name}: the file shrank while it was copied")
            out.write(chunk)
            offset += len(chunk)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Some filesystems refuse fsync on directories; the rename still holds.
    with contextlib.suppress(OSError):
        _fsync(path)
