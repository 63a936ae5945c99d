# SPDX-License-Identifier: Apache-2.0
"""`mlos-build flatcar` and `render flatcar`: every bad flag value is one line plus a hint,
before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest
from flatcar_support import SHA512, SSH_KEY, VERSION, flatcar_os_release
from test_build_cli import error_lines, mlos_build

RENDER = ("render", "flatcar", "--flatcar-version", VERSION)


def render_error(tmp_path: Path, *args: str) -> list[str]:
    return error_lines(mlos_build(*RENDER, "--output-dir", str(tmp_path / "r"), *args))


def test_unknown_variant_lists_the_valid_ones(tmp_path: Path) -> None:
    lines = render_error(tmp_path, "--variant", "turbo")
    assert "unknown variant 'turbo'" in lines[0]
    assert "userspace, basic, scheduler, full" in lines[1]


def test_a_version_that_is_no_release(tmp_path: Path) -> None:
    lines = error_lines(mlos_build("render", "flatcar", "--flatcar-version", "stable"))
    assert "'stable' is not a Flatcar release" in lines[0] and "VERSION_ID" in lines[1]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read it"),
    ("", "holds no public key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\n", "is a private key"),
])
def test_bad_ssh_keys(tmp_path: Path, content: str | None, message: str) -> None:
    key = tmp_path / "key.pub"
    if content is not None:
        key.write_text(content)
    lines = render_error(tmp_path, "--ssh-key", str(key))
    assert message in lines[0] and ".pub" in lines[1]


def test_an_ssh_key_file_may_hold_several_keys_and_comments(tmp_path: Path) -> None:
    key = tmp_path / "keys.pub"
    key.write_text(f"# ops\n{SSH_KEY}\n\n{SSH_KEY.replace('ops@', 'dev@')}\n")
    result = mlos_build(*RENDER, "--output-dir", str(tmp_path / "r"), "--ssh-key", str(key))
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "r" / f"mlos-full-{VERSION}-x86-64.bu").read_text()
    assert "ops@example" in config and "dev@example" in config


@pytest.mark.parametrize(("args", "message", "hint"), [
    (("--sysext-url", "https://x.example/a.raw"), "render cannot compute", "--sysext-sha512"),
    (("--sysext-url", "http://x.example/a.raw", "--sysext-sha512", SHA512),
     "is not an https URL", "sha512"),
    (("--sysext-sha512", SHA512), "without --sysext-url", "URL"),
    (("--sysext-url", "https://x.example/a.raw", "--sysext-sha512", "abc"),
     "not a SHA-512 digest", "sha512sum"),
])
def test_a_url_needs_its_hash(tmp_path: Path, args: tuple[str, ...], message: str,
                              hint: str) -> None:
    lines = render_error(tmp_path, *args)
    assert message in lines[0] and hint in lines[1]


@pytest.mark.parametrize(("value", "message"), [
    ("no-colon", "is not SRC:DEST"),
    ("{src}:etc/x", "is not a plain absolute path"),
    ("{src}:/etc/../x", "is not a plain absolute path"),
    ("{src}:/usr/bin/x", "/usr is read-only"),
    ("{src}:/etc/mlos/core.yaml", "writes /etc/mlos/core.yaml itself"),
    ("{missing}:/etc/x", "cannot read"),
    ("{dir}:/etc/x", "is not a file"),
])
def test_bad_extra_files(tmp_path: Path, value: str, message: str) -> None:
    src = tmp_path / "src.conf"
    src.write_text("x\n")
    value = value.format(src=src, missing=tmp_path / "missing", dir=tmp_path)
    lines = render_error(tmp_path, "--extra-file", value)
    assert message in lines[0]


def test_an_extra_file_too_big_to_inline(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (2 * 1024 * 1024 + 1))
    lines = render_error(tmp_path, "--extra-file", f"{big}:/opt/big.bin")
    assert "too big to inline" in lines[0]


def test_a_bad_api_key(tmp_path: Path) -> None:
    key = tmp_path / "api"
    key.write_text("short\n")
    lines = render_error(tmp_path, "--api-key-file", str(key))
    assert "does not hold one usable key" in lines[0] and "openssl rand" in lines[1]


def test_a_kernel_variant_needs_the_tree(tmp_path: Path) -> None:
    lines = error_lines(mlos_build("flatcar", "--variant", "basic", "--flatcar-version", VERSION,
                                   "--container-image", "x:1", "--output-dir", str(tmp_path)))
    assert "needs --kernel-build-tree" in lines[0]
    assert "tar -chzf - -C /usr/lib/modules/$(uname -r) build" in lines[1]


@pytest.mark.parametrize(("layout", "message"), [
    ("missing", "does not exist"),
    ("no-os-release", "has no os-release"),
    ("no-build", "has no build/"),
    ("other-release", "is from flatcar 3975.2.0, not flatcar"),
    ("not-a-tarball", "is neither a readable tarball"),
])
def test_bad_kernel_trees(tmp_path: Path, layout: str, message: str) -> None:
    tree = tmp_path / "tree"
    if layout == "not-a-tarball":
        tree = tmp_path / "tree.tar.gz"
        tree.write_text("not a tarball")
    elif layout != "missing":
        (tree / "build").mkdir(parents=True)
        if layout != "no-build":
            (tree / "build" / "Makefile").write_text("")
            (tree / "build" / ".config").write_text("CONFIG_MODULES=y\n")
        if layout != "no-os-release":
            release = "3975.2.0" if layout == "other-release" else VERSION
            (tree / "os-release").write_text(flatcar_os_release(release))
    lines = error_lines(mlos_build("flatcar", "--variant", "basic", "--flatcar-version", VERSION,
                                   "--kernel-build-tree", str(tree), "--container-image", "x:1",
                                   "--output-dir", str(tmp_path / "out")))
    assert message in lines[0]
    assert f"flatcar-{VERSION}-kernel-tree.tar.gz" in lines[1]


def test_a_build_without_a_container_image_says_how_to_get_one(tmp_path: Path) -> None:
    lines = error_lines(mlos_build("flatcar", "--variant", "userspace", "--flatcar-version",
                                   VERSION, "--output-dir", str(tmp_path)))
    assert "no MLOS Core container image archive" in lines[0]
    assert "mlos-build container" in lines[1] and "--container-image" in lines[1]


def test_sign_key_and_cert_go_together(tmp_path: Path) -> None:
    lines = error_lines(mlos_build("flatcar", "--variant", "userspace", "--flatcar-version",
                                   VERSION, "--container-image", "x:1", "--sign-key",
                                   str(tmp_path / "k.pem"), "--output-dir", str(tmp_path)))
    assert "--sign-key and --sign-cert go together" in lines[0]


def test_a_userspace_build_needs_no_tree_and_inlines_its_small_extension(
        tmp_path: Path) -> None:
    result = mlos_build("flatcar", "--variant", "userspace", "--flatcar-version", VERSION,
                        "--container-image", "registry.example/mlos-core:1",
                        "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    name = f"mlos-userspace-{VERSION}-x86-64"
    assert result.stdout.strip() == str(tmp_path / f"{name}.raw")
    config = (tmp_path / f"{name}.ign").read_text()
    assert '"path": "/opt/extensions/mlos/' in config and "data:;base64," in config
    assert not list(tmp_path.glob(".*.work"))
