# SPDX-License-Identifier: Apache-2.0
"""Registration by path (`POST /models/register` with `"path"`): the files of a model
version opened from a directory the administrator allows (the `import_roots` setting).

The service may be able to read far more than its clients should (the model repository,
/etc, other users' files), so a path is imported only when its resolved form lies inside
an import root. The open itself walks from the root one component at a time with
O_NOFOLLOW, so a symlink swapped in after the check cannot lead out of the root, and the
files are copied from the descriptors opened here. A path outside every root gets one
message whether it exists or not: the answer must not tell a client what is on the disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from .errors import InvalidInputError, PayloadTooLargeError
from .registry import ImportedFile

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a root must not hang the request.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _refused(path: str) -> InvalidInputError:
    return InvalidInputError(
        f"path {path!r} is not inside an import root: the server imports only from the "
        "directories in its import_roots setting (or upload the file as multipart)")


def _inside(path: str, roots: Sequence[Path]) -> tuple[str, list[str]]:
    """(the root's resolved form, the path's components below it), or _refused."""
    if not os.path.isabs(path) or "\0" in path:
        raise InvalidInputError(f"path {path!r} must be absolute")
    resolved = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if resolved == base or resolved.startswith(base.rstrip("/") + "/"):
            rel = os.path.relpath(resolved, base)
            return base, [] if rel == "." else rel.split("/")
    raise _refused(path)


def _open_below(base: str, parts: list[str], path: str) -> int:
    """Open base/parts... without following any symlink on the way."""
    fd = os.open(base, _DIR_FLAGS)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            try:
                child = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # inside a root, saying so reveals nothing new
                    raise InvalidInputError(f"path {path!r} does not exist") from None
                raise InvalidInputError(
                    f"cannot open {path!r}: {exc.strerror} (symlinks are resolved once, "
                    "before the open; was the path changed meanwhile?)") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _regular(fd: int) -> ImportedFile | None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return ImportedFile(fd, info.st_size)


def open_import(path: str, roots: Sequence[Path], max_bytes: int,
                formats: tuple[str, ...]) -> list[tuple[str, ImportedFile]]:
    """The files to register from `path`: one model file, or the regular visible files at
    the top of a directory that holds at least one file in a served format. The caller
    closes them (ImportedFile.close) once registration is done."""
    if not roots:
        raise InvalidInputError(
            "registration by path is off: list the directories it may read in the "
            "import_roots setting (YAML import_roots, MLOS_IMPORT_ROOTS or --import-roots), "
            "or upload the model file as multipart (field 'file')")
    base, parts = _inside(path, roots)
    fd = _open_below(base, parts, path)
    files: list[tuple[str, ImportedFile]] = []
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            try:
                names = sorted(e.name for e in os.scandir(fd)
                               if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot read directory {path!r}: {exc.strerror}") from None
            for name in names:
                with contextlib.suppress(OSError):  # vanished or unreadable: not a model file
                    opened = _regular(os.open(name, _FILE_FLAGS, dir_fd=fd))
                    if opened is not None:
                        files.append((name, opened))
            if not any(name.endswith(formats) for name, _ in files):
                raise InvalidInputError(
                    f"directory {path!r} holds no model file ({', '.join(formats)})")
        else:
            name = parts[-1] if parts else os.path.basename(base)
            opened = _regular(fd)
            fd = -1  # _regular owns it now
            if opened is None:
                raise InvalidInputError(f"path {path!r} is not a regular file or directory")
            files.append((name, opened))
            if not name.endswith(formats):
                raise InvalidInputError(
                    f"{name!r} is not in a format an installed backend serves "
                    f"({', '.join(formats)})")
        total = sum(f.size for _, f in files)
        if total > max_bytes:
            raise PayloadTooLargeError(
                f"{path!r} holds {total} bytes, over the import_max_bytes limit of "
                f"{max_bytes}")
        return files
    except BaseException:
        for _, opened in files:
            opened.close()
        raise
    finally:
        if fd >= 0 and not any(f.fd == fd for _, f in files):
            with contextlib.suppress(OSError):
                os.close(fd)
