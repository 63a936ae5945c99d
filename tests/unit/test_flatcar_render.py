# SPDX-License-Identifier: Apache-2.0
"""`mlos-build render flatcar`: golden Butane, Ignition and sysext trees for every variant;
every config passes ignition-validate, and the real ignition binary applies each one to a
scratch root (files, modes, links, presets, users, SSH keys).

After an intended change, refresh the goldens with
`MLOS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_flatcar_render.py` and review the diff.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import stat
import subprocess
import urllib.parse
from pathlib import Path

import ignition_root
import pytest
import yaml
from flatcar_support import API_KEY, REPO, SHA512, SSH_KEY, VERSION, inputs, pin_version, spec

from mlos_build.data import variant_names
from mlos_build.ignition import SysextSource, butane, data_url, ignition_text, to_ignition
from mlos_build.runner import Progress
from mlos_build.targets.flatcar import FlatcarTarget

GOLDEN = Path(__file__).parent / "golden" / "flatcar"
NEEDS_VALIDATE = pytest.mark.skipif(shutil.which(ignition_root.VALIDATE) is None,
                                    reason="ignition-validate is not installed "
                                    "(scripts/setup.d/45-flatcar.sh installs Debian's ignition)")
NEEDS_IGNITION = pytest.mark.skipif(not ignition_root.available(),
                                    reason="Debian's ignition binary is not installed "
                                    "(scripts/setup.d/45-flatcar.sh)")


def quiet() -> Progress:
    return lambda line: None


def text_tree(root: Path) -> dict[str, str]:
    # The demo model is generated binary (onnx); test_build_* cover it.
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".onnx"}


def validate(config: Path) -> None:
    result = subprocess.run([ignition_root.VALIDATE, str(config)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def render(tmp_path: Path, *args: str) -> Path:
    target = FlatcarTarget(spec(*args), REPO, quiet())
    dest = tmp_path / "render"
    target.render(dest)
    return dest


@NEEDS_VALIDATE
@pytest.mark.parametrize("variant", variant_names())
def test_render_matches_golden_and_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             variant: str) -> None:
    pin_version(monkeypatch)
    name = f"mlos-{variant}-{VERSION}-x86-64"
    dest = render(tmp_path, "--variant", variant, "--sysext-url",
                  f"https://downloads.example/mlos/{name}.raw", "--sysext-sha512", SHA512,
                  *inputs(tmp_path))
    validate(dest / f"{name}.ign")
    golden = GOLDEN / variant
    if os.environ.get("MLOS_UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(dest, golden, ignore=shutil.ignore_patterns("*.onnx"))
    assert text_tree(dest) == text_tree(golden)
    assert (dest / "sysext/usr/share/mlos/models/demo/1/model.onnx").is_file()


@pytest.mark.parametrize("variant", variant_names())
def test_the_ignition_config_is_the_butane_source_translated(tmp_path: Path,
                                                              variant: str) -> None:
    dest = render(tmp_path, "--variant", variant, *inputs(tmp_path))
    name = f"mlos-{variant}-{VERSION}-x86-64"
    source = yaml.safe_load((dest / f"{name}.bu").read_text())
    assert (source["variant"], source["version"]) == ("flatcar", "1.0.0")
    ignition = json.loads((dest / f"{name}.ign").read_text())
    assert ignition == to_ignition(source)
    assert ignition["ignition"]["version"] == "3.3.0"
    files = {f["path"]: f for f in ignition["storage"]["files"]}
    # Without --sysext-url a render places no extension (it has no bytes or hash to give).
    assert f"/opt/extensions/mlos/{name}.raw" not in files
    assert "links" not in ignition["storage"]
    core = files["/etc/mlos/core.yaml"]["contents"]
    assert decode(core) == (REPO / "mlos_core/data/core.yaml").read_bytes()


def decode(contents: dict[str, str]) -> bytes:
    """What Ignition writes for a data: URL (RFC 2397, then the compression)."""
    header, _, payload = contents["source"].removeprefix("data:").partition(",")
    data = (base64.b64decode(payload) if header.endswith(";base64")
            else urllib.parse.unquote_to_bytes(payload))
    return gzip.decompress(data) if contents.get("compression") == "gzip" else data


def test_data_urls_pick_the_shortest_encoding_as_butane_does() -> None:
    text = b"host: 0.0.0.0\n"
    assert data_url(text) == ("data:,host%3A%200.0.0.0%0A", "")
    binary = bytes(range(256))
    source, compression = data_url(binary)
    assert source.startswith("data:;base64,") and compression == ""
    repetitive = b"options mlos_ml enable_tmm=1\n" * 200
    source, compression = data_url(repetitive)
    assert compression == "gzip"
    assert decode({"source": source, "compression": compression}) == repetitive
    # Deterministic: the same contents, the same URL (gzip without a timestamp).
    assert data_url(repetitive) == (source, compression)


@NEEDS_IGNITION
@NEEDS_VALIDATE
@pytest.mark.parametrize("variant", variant_names())
def test_ignition_applies_the_config_to_a_root(tmp_path: Path, variant: str) -> None:
    flatcar_spec = spec("--variant", variant, *inputs(tmp_path))
    image = b"sysext bytes stand in here; a build places the real squashfs\n" * 64
    config = to_ignition(butane(flatcar_spec, (REPO / "mlos_core/data/core.yaml").read_text(),
                                SysextSource(data=image)))
    path = tmp_path / "config.ign"
    path.write_text(ignition_text(config))
    validate(path)
    with ignition_root.scratch() as work:
        applied = ignition_root.apply(path, work)

        def mode(node_path: str) -> int:
            return stat.S_IMODE(applied.path(node_path).lstat().st_mode)

        sysext = f"/opt/extensions/mlos/mlos-{variant}-{VERSION}-x86-64.raw"
        assert applied.path(sysext).read_bytes() == image and mode(sysext) == 0o644
        link = applied.path("/etc/extensions/mlos.raw")
        assert link.is_symlink() and os.readlink(link) == sysext
        core = applied.path("/etc/mlos/core.yaml")
        assert core.read_bytes() == (REPO / "mlos_core/data/core.yaml").read_bytes()
        assert mode("/etc/mlos/core.yaml") == 0o644
        api = applied.path("/etc/mlos/api-key.env")
        assert api.read_text() == f"MLOS_API_KEY={API_KEY}\n"
        assert mode("/etc/mlos/api-key.env") == 0o600 and api.stat().st_uid == 0
        assert applied.path("/etc/chrony.conf").read_text() == "server time.example iburst\n"
        assert mode("/etc/chrony.conf") == 0o640

        user = applied.passwd()["mlos"]
        assert (user[2], user[3], user[5], user[6]) == ("10001", "10001", "/var/lib/mlos",
                                                        "/usr/sbin/nologin")
        assert applied.group()["mlos"][2] == "10001"
        assert not applied.path("/var/lib/mlos").exists()  # the extension's tmpfiles make it
        keys = applied.path("/home/core/.ssh/authorized_keys.d/ignition").read_text()
        assert SSH_KEY in keys
        expected = ["enable mlos-core.service"]
        if variant != "userspace":
            expected.append("enable mlos-ml.service")
        # ignition writes the preset file from a Go map: its line order varies between runs.
        assert sorted(applied.presets()) == sorted(expected)
        # The units ship in the extension; Ignition only enables them.
        assert not applied.path("/etc/systemd/system/mlos-core.service").exists()


@NEEDS_VALIDATE
def test_a_url_config_validates_and_names_the_hash(tmp_path: Path) -> None:
    dest = render(tmp_path, "--variant", "basic", "--sysext-url",
                  "https://downloads.example/x.raw", "--sysext-sha512", SHA512.upper())
    path = dest / f"mlos-basic-{VERSION}-x86-64.ign"
    validate(path)
    files = {f["path"]: f for f in json.loads(path.read_text())["storage"]["files"]}
    sysext = files[f"/opt/extensions/mlos/mlos-basic-{VERSION}-x86-64.raw"]["contents"]
    assert sysext == {"source": "https://downloads.example/x.raw",
                      "verification": {"hash": f"sha512-{SHA512}"}}


def test_the_sysext_tree_follows_the_variant(tmp_path: Path) -> None:
    full = render(tmp_path / "full", "--variant", "full") / "sysext"
    options = (full / "usr/lib/modprobe.d/mlos-ml.conf").read_text()
    assert ("options mlos_ml debug_level=1 enable_tmm=1 enable_scheduler=1 "
            "enable_gpu_manager=1\n") in options
    assert (full / "usr/lib/udev/rules.d/99-mlos-ml.rules").read_bytes() == (
        REPO / "kernel/udev/99-mlos-ml.rules").read_bytes()
    unit = (full / "usr/lib/systemd/system/mlos-ml.service").read_text()
    assert "After=systemd-sysext.service" in unit
    core = (full / "usr/lib/systemd/system/mlos-core.service").read_text()
    assert "--device /dev/mlos-ml" in core and "mlos-core:" in core
    assert os.access(full / "usr/libexec/mlos/mlos-ml-load", os.X_OK)
    release = (full / "usr/lib/extension-release.d/extension-release.mlos").read_text()
    assert release.splitlines()[:3] == ["ID=flatcar", f"VERSION_ID={VERSION}",
                                        "ARCHITECTURE=x86-64"]
    assert "SYSEXT_LEVEL" not in release
    assert not [p for p in full.rglob("modules.*")]

    user = render(tmp_path / "user", "--variant", "userspace", "--container-image",
                  "registry.example/mlos/core:7") / "sysext"
    files = {p.relative_to(user).as_posix() for p in user.rglob("*") if p.is_file()}
    assert not [f for f in files if "mlos-ml" in f or "modprobe" in f or "udev" in f]
    assert "usr/lib/systemd/system/mlos-core-image.service" not in files  # pulled, not shipped
    core = (user / "usr/lib/systemd/system/mlos-core.service").read_text()
    assert "--device" not in core and "registry.example/mlos/core:7" in core


def test_render_replaces_only_an_earlier_render(tmp_path: Path) -> None:
    (tmp_path / "render").mkdir()
    (tmp_path / "render" / "precious.txt").write_text("keep me")
    from mlos_build.errors import BuildError

    with pytest.raises(BuildError, match="not a Flatcar render"):
        render(tmp_path)
    assert (tmp_path / "render" / "precious.txt").read_text() == "keep me"
    (tmp_path / "render" / "precious.txt").unlink()
    render(tmp_path)
    render(tmp_path, "--variant", "basic")  # over an earlier render: fine
