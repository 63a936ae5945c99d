# SPDX-License-Identifier: Apache-2.0
"""How a `metal` image is reached: its host name, admin user, SSH keys and MLOS Core API
key, checked when the image is specified so a bad value fails before any build."""

from __future__ import annotations

import re
from pathlib import Path

from mlos_build.errors import BuildError

DEFAULT_ADMIN_USER = "admin"
# `mlos` is MLOS Core's own system user (no shell, no login); root never logs in remotely.
RESERVED_USERS = ("root", "mlos", "nobody", "daemon", "bin", "sys", "sshd")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# An authorized_keys line: optional options, then a key type and its base64 blob.
_KEY_TYPE = re.compile(
    r"(?:^|\s)(ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)|"
    r"sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)\s+[A-Za-z0-9+/]+={0,3}(?:\s|$)")
# What an API key may hold: it travels in an HTTP header and gRPC metadata.
_API_KEY = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


def check_admin_user(name: str) -> str:
    if not _USER.fullmatch(name):
        raise BuildError(f"--admin-user {name!r} is not a valid user name",
                         hint="use lower-case letters, digits, '_' or '-', starting with a "
                         "letter, at most 32 characters")
    if name in RESERVED_USERS:
        raise BuildError(f"--admin-user {name} is reserved",
                         hint=f"pick another name (default: {DEFAULT_ADMIN_USER}); 'mlos' "
                         "is the service's own user and root never logs in remotely")
    return name


def check_hostname(name: str) -> str:
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise BuildError(f"--hostname {name!r} is not a valid host name",
                         hint="use letters, digits and '-' (not at either end), labels "
                         "separated by dots")
    return name


def read_ssh_keys(paths: list[Path]) -> tuple[str, ...]:
    """The public keys in the given files, one authorized_keys line each."""
    keys: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BuildError(f"--ssh-key {path}: cannot read it ({exc})",
                             hint="give the path of a public key file such as "
                             "~/.ssh/id_ed25519.pub") from exc
        if "PRIVATE KEY" in text:
            raise BuildError(f"--ssh-key {path} is a private key",
                             hint=f"give the public key ({path}.pub); a private key must "
                             "never go into an image")
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        for number, line in enumerate(lines, 1):
            if not _KEY_TYPE.search(line):
                raise BuildError(f"--ssh-key {path}, line {number}: not an OpenSSH public key",
                                 hint="each line must look like 'ssh-ed25519 AAAA... comment' "
                                 "(ssh-keygen writes such a .pub file)")
        if not lines:
            raise BuildError(f"--ssh-key {path} holds no public key",
                             hint="give a file such as ~/.ssh/id_ed25519.pub")
        keys += lines
    return tuple(dict.fromkeys(keys))


def read_api_key(path: Path) -> str:
    """The key in an --api-key-file (its one line, without the line end)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"--api-key-file {path}: cannot read it ({exc})",
                         hint="give a file that holds the key on one line") from exc
    key = text.strip()
    if not _API_KEY.fullmatch(key):
        raise BuildError(f"--api-key-file {path} does not hold one usable key",
                         hint="one line of 16 to 256 characters from A-Z a-z 0-9 . _ ~ + / = -"
                         " (for example: openssl rand -hex 32)")
    return key
