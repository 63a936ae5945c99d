# SPDX-License-Identifier: Apache-2.0
"""Release artifacts beside a raw disk image, and checking them.

    X.raw           the image (the build's)
    X.manifest.json what it contains (the build's)
    X.bmap          its block map (bmap-tools format 2.0; `mlos-build flash` and bmaptool)
    X.qcow2         the same disk for QEMU/libvirt/OpenStack (qemu-img convert)
    X.spdx.json     SPDX 2.3 SBOM: Debian/Ubuntu packages and the Python environment
    SHA256SUMS      sums of all of the above (one file per output directory)
    SHA256SUMS.asc  detached GPG signature of SHA256SUMS (with --sign-key)

make_artifacts() runs after every disk-image build and as `mlos-build release IMAGE` on
an existing image; verify() is `mlos-build verify DIR`.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlos_build import bmap as bmaplib
from mlos_build import sbom
from mlos_build.errors import BuildError
from mlos_build.runner import require_tools, run
from mlos_build.targets.common import sha256, update_checksums

SUMS = "SHA256SUMS"
SIGNATURES = ("SHA256SUMS.asc", "SHA256SUMS.gpg", "SHA256SUMS.sig")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    qcow2: bool = True
    sign_key: str | None = None


def stem(image: Path) -> str:
    return image.name[:-len(image.suffix)] if image.suffix else image.name


def artifact(image: Path, suffix: str) -> Path:
    return image.with_name(stem(image) + suffix)


def make_artifacts(image: Path, progress: Progress, options: Options = Options(),
                   manifest: Path | None = None, disk: bool = True) -> list[Path]:
    """Writes X.bmap, X.qcow2 (disk images only) and X.spdx.json beside image X.raw, adds
    them (and the image and manifest) to SHA256SUMS, and signs it when asked. Returns the
    files made."""
    if not image.is_file():
        raise BuildError(f"no image at {image}", hint="give the path of a raw disk image")
    made: list[Path] = []
    if disk:
        progress(f"block map of {image.name}")
        made.append(bmaplib.write(bmaplib.create(image), artifact(image, ".bmap")))
    if disk and options.qcow2:
        require_tools(["qemu-img"])
        qcow2 = artifact(image, ".qcow2")
        tmp = qcow2.with_name(qcow2.name + ".tmp")
        progress(f"converting to {qcow2.name}")
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", image, tmp],
            what=f"qemu-img convert of {image.name}")
        tmp.replace(qcow2)
        made.append(qcow2)
    manifest = manifest or artifact(image, ".manifest.json")
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise BuildError(f"{manifest} is not a build manifest: {exc}",
                             hint="pass --manifest with the .manifest.json of the build") from exc
        doc = sbom.document(data, image.name, sha256(image))
        made.append(_write_json(artifact(image, ".spdx.json"), doc))
    else:
        progress(f"no manifest at {manifest}: no SBOM (pass --manifest FILE)")
    sums = image.parent / SUMS
    update_checksums(sums, [image, *([manifest] if manifest.is_file() else []), *made])
    made.append(sums)
    if options.sign_key:
        made.append(sign(sums, options.sign_key))
    return made


def _write_json(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def sign(sums: Path, key: str) -> Path:
    """A detached, ASCII-armoured signature of SHA256SUMS with the user's gpg key."""
    require_tools(["gpg"])
    out = sums.with_name(SIGNATURES[0])
    for stale in SIGNATURES:
        sums.with_name(stale).unlink(missing_ok=True)
    run(["gpg", "--batch", "--yes", "--armor", "--detach-sign", "--local-user", key,
         "--output", out, sums], what=f"signing {sums.name} with gpg key {key}")
    return out


# --- verify -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verified:
    files: list[str]
    signature: str | None  # the signing key's fingerprint, None when unsigned


def parse_sums(sums: Path) -> list[tuple[str, str]]:
    entries = []
    for n, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line)
        if match is None:
            raise BuildError(f"{sums}:{n} is not a SHA256SUMS line: {line[:60]!r}",
                             hint="remake it with `mlos-build release IMAGE`")
        entries.append((match.group(1).lower(), match.group(2)))
    return entries


def verify(directory: Path, keyring: Path | None = None,
           require_signature: bool = False) -> Verified:
    """Checks the signature of DIR/SHA256SUMS (when there is one) and then every file it
    lists; the first bad file fails with its name."""
    sums = directory / SUMS
    if not sums.is_file():
        raise BuildError(f"no {SUMS} in {directory}",
                         hint="give the output directory of a build, or run "
                         "`mlos-build release IMAGE` first")
    signature = next((sums.with_name(s) for s in SIGNATURES if sums.with_name(s).is_file()),
                     None)
    fingerprint = None
    if signature is not None:
        fingerprint = check_signature(sums, signature, keyring)
    elif require_signature or keyring is not None:
        raise BuildError(f"{directory} has no signature ({' or '.join(SIGNATURES)})",
                         hint="sign it with `mlos-build release IMAGE --sign-key KEY`")
    checked = []
    for digest, name in parse_sums(sums):
        path = directory / name
        if not path.is_file():
            raise BuildError(f"{name}: MISSING (listed in {SUMS})",
                             hint="download it again, or remake the release")
        if sha256(path) != digest:
            raise BuildError(f"{name}: checksum MISMATCH, the file differs from what "
                             f"{SUMS} lists (the first bad file)",
                             hint="download it again; do not flash or boot it")
        checked.append(name)
    return Verified(checked, fingerprint)


def _keyring_file(keyring: Path, tmp: Path) -> Path:
    """gpgv reads binary keyrings: dearmour an exported .asc key first."""
    if not keyring.is_file():
        raise BuildError(f"no keyring at {keyring}", hint="export the public key with "
                         "`gpg --export KEYID > release.gpg` and pass it with --keyring")
    if keyring.read_bytes()[:10] != b"-----BEGIN":
        return keyring.resolve()
    out = tmp / "keyring.gpg"
    run(["gpg", "--batch", "--yes", "--dearmor", "--output", out, keyring],
        what=f"reading the armoured key {keyring}")
    return out


def check_signature(sums: Path, signature: Path, keyring: Path | None) -> str:
    """The fingerprint of the key that made a good signature; BuildError otherwise."""
    with tempfile.TemporaryDirectory(prefix="mlos-verify-") as tmp:
        if keyring is not None:
            require_tools(["gpgv"])
            argv: list[str | Path] = ["gpgv", "--status-fd", "1", "--keyring",
                                      _keyring_file(keyring, Path(tmp)), signature, sums]
        else:
            require_tools(["gpg"])
            argv = ["gpg", "--batch", "--status-fd", "1", "--verify", signature, sums]
        result = run(argv, what=f"checking {signature.name}", check=False)
    status = result.stdout
    valid = re.search(r"^\[GNUPG:\] VALIDSIG ([0-9A-F]+)", status, re.M)
    if result.returncode == 0 and "[GNUPG:] GOODSIG" in status and valid:
        return valid.group(1)
    if "[GNUPG:] BADSIG" in status:
        raise BuildError(f"{signature.name}: BAD signature: {SUMS} was changed after signing "
                         "(or the signature belongs to another file)",
                         hint="download the release again; do not trust these files")
    if "NO_PUBKEY" in status:
        raise BuildError(f"{signature.name}: signed by a key that is not in the keyring",
                         hint="pass --keyring with the publisher's public key")
    last = (result.stderr or status).strip().splitlines()[-1:] or ["no output"]
    raise BuildError(f"{signature.name}: the signature does not verify ({last[0]})",
                     hint="pass --keyring with the publisher's public key")


# --- the command line ---------------------------------------------------------------------

def add_build_options(parser: argparse.ArgumentParser) -> None:
    """Release options of every disk-image build (and of `mlos-build release`)."""
    parser.add_argument("--sign-key", "--gpg-key", dest="sign_key", metavar="KEYID",
                        help="sign SHA256SUMS with this gpg key (SHA256SUMS.asc)")
    parser.add_argument("--no-qcow2", dest="qcow2", action="store_false",
                        help="do not write the .qcow2 copy of the image")


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(qcow2=getattr(args, "qcow2", True), sign_key=getattr(args, "sign_key", None))


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("release", help="write the release artifacts of an existing image "
                       "(.bmap, .qcow2, .spdx.json, SHA256SUMS, signature)")
    p.add_argument("image", type=Path, help="the raw disk image")
    p.add_argument("--manifest", type=Path, help="the build's manifest (default: "
                   "X.manifest.json beside X.raw)")
    add_build_options(p)
    p.set_defaults(handler=run_release)
    p = sub.add_parser("verify", help="check a release directory's SHA256SUMS and its "
                       "signature")
    p.add_argument("directory", type=Path, help="the directory with SHA256SUMS")
    p.add_argument("--keyring", type=Path, help="public key(s) to trust (a keyring or an "
                   "exported .asc); default: your gpg keyring")
    p.add_argument("--require-signature", action="store_true",
                   help="fail when SHA256SUMS is not signed")
    p.set_defaults(handler=run_verify)


def run_release(args: argparse.Namespace, progress: Progress) -> int:
    for path in make_artifacts(args.image, progress, options_from_args(args), args.manifest):
        print(path)
    return 0


def run_verify(args: argparse.Namespace, progress: Progress) -> int:
    result = verify(args.directory, args.keyring, args.require_signature)
    for name in result.files:
        print(f"OK  {name}")
    signed = (f"signature good (key {result.signature})" if result.signature
              else "not signed")
    progress(f"verified {len(result.files)} files in {args.directory}; {signed}")
    return 0

