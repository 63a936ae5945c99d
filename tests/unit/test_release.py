# SPDX-License-Identifier: Apache-2.0
"""Release artifacts of a small real raw disk image (made with sfdisk + mkfs): the block
map, qcow2 (compared with the raw image by qemu-img), the SPDX 2.3 SBOM (validated by
spdx-tools), SHA256SUMS and a real gpg signature from a throwaway key; `mlos-build
verify` catches a changed byte and a bad signature."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_support import make_raw_image, sh

from mlos_build import bmap, sbom

CLI = [sys.executable, "-m", "mlos_build.cli"]

MANIFEST = {
    "distribution": "debian", "release": "bookworm", "variant": "userspace",
    "runtime_mode": "userspace", "kernel_version": "6.1.0-41-cloud-amd64",
    "mlos_build_version": "0.1.0",
    "packages": [
        {"name": "base-files", "version": "12.4+deb12u12", "architecture": "amd64"},
        {"name": "libstdc++6", "version": "12.2.0-14+deb12u1", "architecture": "amd64"},
        {"name": "util-linux", "version": "2.38.1-5+deb12u3", "architecture": "amd64"},
        {"name": "libpam-runtime", "version": "1.5.2-6+deb12u1", "architecture": "all"},
        {"name": "e2fsprogs", "version": "1:1.47.0-2", "architecture": "amd64"},
    ],
    "python_packages": [
        {"name": "mlos", "version": "0.1.0"},
        {"name": "onnxruntime", "version": "1.22.0"},
        {"name": "typing_extensions", "version": "4.14.1"},
        {"name": "PyYAML", "version": "6.0.2"},
    ],
}


def mlos_build(*args: str | Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture
def release_dir(tmp_path: Path) -> Path:
    out = tmp_path / "release"
    out.mkdir()
    make_raw_image(out / "mlos-test.raw", size_mib=40)
    (out / "mlos-test.manifest.json").write_text(json.dumps(MANIFEST))
    return out


@pytest.fixture
def gnupg(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A throwaway GNUPGHOME with one passphrase-less signing key."""
    if not shutil.which("gpg"):
        pytest.fail("gpg missing: run ./scripts/setup.sh")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                    "--quick-gen-key", "MLOS Release Test <release@mlos.invalid>", "ed25519",
                    "sign", "never"], env={**os.environ, **env}, check=True,
                   capture_output=True)
    try:
        yield env
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, **env},
                       capture_output=True)


def test_release_artifacts_and_verify(release_dir: Path) -> None:
    image = release_dir / "mlos-test.raw"
    made = mlos_build("release", image)
    assert made.returncode == 0, made.stderr
    names = sorted(p.name for p in release_dir.iterdir())
    assert names == ["SHA256SUMS", "mlos-test.bmap", "mlos-test.manifest.json",
                     "mlos-test.qcow2", "mlos-test.raw", "mlos-test.spdx.json"]
    assert bmap.load(release_dir / "mlos-test.bmap") == bmap.create(image)
    info = json.loads(sh("qemu-img", "info", "--output", "json",
                         release_dir / "mlos-test.qcow2").stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == image.stat().st_size
    assert sh("qemu-img", "compare", "-f", "raw", "-F", "qcow2", image,
              release_dir / "mlos-test.qcow2", check=False).returncode == 0
    listed = [line.split("  ")[1] for line in
              (release_dir / "SHA256SUMS").read_text().splitlines()]
    assert sorted(listed) == [n for n in names if n != "SHA256SUMS"]
    ok = mlos_build("verify", release_dir)
    assert ok.returncode == 0, ok.stderr
    assert "verified 5 files" in ok.stderr and "not signed" in ok.stderr
    # One changed byte in one artifact: verify names that file.
    qcow2 = release_dir / "mlos-test.qcow2"
    data = bytearray(qcow2.read_bytes())
    data[len(data) // 2] ^= 0x01
    qcow2.write_bytes(bytes(data))
    bad = mlos_build("verify", release_dir)
    assert bad.returncode == 1
    assert "mlos-test.qcow2: checksum MISMATCH" in bad.stderr
    (release_dir / "mlos-test.bmap").unlink()
    gone = mlos_build("verify", release_dir)
    assert gone.returncode == 1 and "mlos-test.bmap: MISSING" in gone.stderr


def test_sbom_is_valid_spdx_2_3(release_dir: Path) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    image = release_dir / "mlos-test.raw"
    assert mlos_build("release", image, "--no-qcow2").returncode == 0
    path = release_dir / "mlos-test.spdx.json"
    document = parse_file(str(path))
    problems = validate_full_spdx_document(document, "SPDX-2.3")
    assert problems == [], [p.validation_message for p in problems]
    doc = json.loads(path.read_text())
    purls = {ref["referenceLocator"] for pkg in doc["packages"]
             for ref in pkg.get("externalRefs", [])}
    assert "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-bookworm" \
        in purls
    assert "pkg:deb/debian/e2fsprogs@1%3A1.47.0-2?arch=amd64&distro=debian-bookworm" in purls
    assert "pkg:pypi/typing-extensions@4.14.1" in purls and "pkg:pypi/pyyaml@6.0.2" in purls
    described = [r for r in doc["relationships"] if r["relationshipType"] == "DESCRIBES"]
    contained = [r for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(described) == 1 and len(contained) == 9
    image_pkg = next(p for p in doc["packages"] if p["SPDXID"] == described[0][
        "relatedSpdxElement"])
    assert image_pkg["checksums"][0]["checksumValue"] == sh("sha256sum", image).stdout[:64]


def test_sbom_is_reproducible_with_source_date_epoch() -> None:
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    try:
        first = sbom.document(MANIFEST, "x.raw", "0" * 64)
        second = sbom.document(MANIFEST, "x.raw", "0" * 64)
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    assert first == second and first["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    assert sbom.document(MANIFEST, "x.raw", "1" * 64)["documentNamespace"] != \
        first["documentNamespace"]


def test_signed_release_and_a_bad_signature(release_dir: Path, gnupg: dict[str, str],
                                            tmp_path: Path) -> None:
    image = release_dir / "mlos-test.raw"
    made = mlos_build("release", image, "--no-qcow2", "--sign-key", "release@mlos.invalid",
                      env=gnupg)
    assert made.returncode == 0, made.stderr
    assert (release_dir / "SHA256SUMS.asc").read_text().startswith(
        "-----BEGIN PGP SIGNATURE-----")
    good = mlos_build("verify", release_dir, "--require-signature", env=gnupg)
    assert good.returncode == 0, good.stderr
    assert "signature good (key " in good.stderr
    # With only the exported public key, from an empty GNUPGHOME.
    public = tmp_path / "release-key.asc"
    public.write_text(subprocess.run(["gpg", "--armor", "--export", "release@mlos.invalid"],
                                     env={**os.environ, **gnupg}, capture_output=True,
                                     text=True, check=True).stdout)
    empty = tmp_path / "empty-gnupg"
    empty.mkdir(mode=0o700)
    other = {"GNUPGHOME": str(empty)}
    with_key = mlos_build("verify", release_dir, "--keyring", public, env=other)
    assert with_key.returncode == 0, with_key.stderr
    unknown = mlos_build("verify", release_dir, env=other)
    assert unknown.returncode == 1 and "not in the keyring" in unknown.stderr
    # SHA256SUMS changed after signing (its entry for the image made to match a new image).
    sums = release_dir / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("mlos-test.raw", "mlos-test.raw ", 1))
    bad = mlos_build("verify", release_dir, "--keyring", public, env=other)
    assert bad.returncode == 1 and "BAD signature" in bad.stderr
    subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, **other},
                   capture_output=True)


def test_verify_without_sums_says_what_to_do(tmp_path: Path) -> None:
    result = mlos_build("verify", tmp_path)
    assert result.returncode == 1 and "no SHA256SUMS" in result.stderr
    assert "mlos-build release IMAGE" in result.stderr


def test_an_archive_that_is_not_a_disk_gets_its_sbom_and_no_disk_artifacts(
        tmp_path: Path) -> None:
    # The container target's OCI archive: a block map or a qcow2 of a tar is no artifact.
    from mlos_build import release

    archive = tmp_path / "mlos-core-0.1.0.oci.tar"
    archive.write_bytes(os.urandom(1 << 16))
    manifest = tmp_path / "mlos-core-0.1.0.manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    made = release.make_artifacts(archive, lambda line: None, manifest=manifest, disk=False)
    assert sorted(p.name for p in made) == ["SHA256SUMS", "mlos-core-0.1.0.oci.spdx.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "SHA256SUMS", "mlos-core-0.1.0.manifest.json", "mlos-core-0.1.0.oci.spdx.json",
        "mlos-core-0.1.0.oci.tar"]
