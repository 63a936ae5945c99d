# SPDX-License-Identifier: Apache-2.0
"""Profiles (images/profiles/): `metal` makes a server image that boots on real hardware
and can be reached, `vm` keeps the small image; the access options are checked before
anything is built."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

import mlos_build.render as render_module
from mlos_build.apt import load_distribution
from mlos_build.cli import main
from mlos_build.data import profile_names
from mlos_build.errors import BuildError
from mlos_build.render import ImageSpec, render

FIXED = {"cache_dir": Path("/var/cache/mlos-build"), "mlos_version": "0.0.0-test"}
ADMIN_KEY = Path(__file__).parent / "golden" / "ssh" / "admin.pub"


def extra(root: Path, path: str) -> Path:
    return root / "mkosi.extra" / path


def test_metal_is_the_default_and_vm_the_other() -> None:
    assert profile_names() == ["metal", "vm"]
    assert ImageSpec.create("ubuntu", "full", **FIXED).profile.name == "metal"
    assert ImageSpec.create("ubuntu", "full", **FIXED).name == "mlos-ubuntu-noble-full"
    assert (ImageSpec.create("ubuntu", "full", profile="vm", **FIXED).name
            == "mlos-ubuntu-noble-full-vm")
    with pytest.raises(BuildError) as exc:
        ImageSpec.create("ubuntu", "full", profile="laptop", **FIXED)
    assert exc.value.hint == "valid profiles: metal, vm"


@pytest.mark.parametrize(("distribution", "kernel", "firmware"), [
    ("ubuntu", "linux-image-generic", "linux-firmware"),
    ("debian", "linux-image-amd64", "firmware-bnx2x"),
])
def test_metal_takes_the_general_kernel_and_firmware(tmp_path: Path, distribution: str,
                                                     kernel: str, firmware: str) -> None:
    metal = ImageSpec.create(distribution, "full", **FIXED)
    vm = ImageSpec.create(distribution, "full", profile="vm", **FIXED)
    assert {kernel, firmware, "openssh-server", "sudo", "polkitd"} <= set(metal.packages())
    assert kernel not in vm.packages() and firmware not in vm.packages()
    assert "openssh-server" not in vm.packages()
    # The module is built against the kernel the image boots: the matching headers.
    headers = metal.distribution_profile.headers_packages
    assert set(headers) <= set(metal.build_packages()) and set(headers) <= set(metal.packages())
    assert not set(headers) & set(vm.packages())
    render(metal, tmp_path)
    sources = (tmp_path / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    if distribution == "debian":
        # Debian's firmware is in its own archive component; every suite needs it.
        assert sources.count("Components: main non-free-firmware\n") == 2
    else:
        assert "non-free-firmware" not in sources


def test_vm_profile_is_todays_small_image(tmp_path: Path) -> None:
    spec = ImageSpec.create("debian", "userspace", profile="vm", **FIXED)
    assert "linux-image-cloud-amd64" in spec.packages()
    files = {p.as_posix() for p in render(spec, tmp_path)}
    for absent in ("etc/ssh/sshd_config.d/10-mlos.conf", "usr/lib/repart.d/50-root.conf",
                   "usr/lib/systemd/network/80-mlos-wired.network",
                   "usr/lib/systemd/system/mlos-api-key.service",
                   "usr/lib/systemd/system/mlos-core.service.d/50-profile.conf"):
        assert f"mkosi.extra/{absent}" not in files
    assert "Hostname=mlos\n" in (tmp_path / "mkosi.conf").read_text()
    assert "KernelModulesInitrd" not in (tmp_path / "mkosi.conf").read_text()
    postinst = (tmp_path / "mkosi.postinst.chroot").read_text()
    assert "useradd" not in postinst and "networkd" not in postinst


def test_metal_network_ssh_key_and_growth(tmp_path: Path) -> None:
    spec = ImageSpec.create("ubuntu", "full", ssh_keys=[ADMIN_KEY], **FIXED)
    render(spec, tmp_path)
    network = extra(tmp_path, "usr/lib/systemd/network/80-mlos-wired.network").read_text()
    assert "Type=ether" in network and "DHCP=yes" in network
    assert "Name=en* eth*" in network
    # No fixed host name: the DHCP server's applies.
    assert "\nHostname=" not in (tmp_path / "mkosi.conf").read_text()
    sshd = extra(tmp_path, "etc/ssh/sshd_config.d/10-mlos.conf").read_text()
    for line in ("PasswordAuthentication no", "KbdInteractiveAuthentication no",
                 "PermitRootLogin no", "AllowUsers admin"):
        assert line + "\n" in sshd
    postinst = (tmp_path / "mkosi.postinst.chroot").read_text()
    assert ADMIN_KEY.read_text().strip() + "\n" in postinst
    assert "/home/admin/.ssh/authorized_keys" in postinst
    # Host keys: none baked, made on first boot.
    assert "rm -f /etc/ssh/ssh_host_*" in postinst
    keygen = extra(tmp_path, "usr/lib/systemd/system/mlos-ssh-host-keys.service").read_text()
    assert "ssh-keygen -A" in keygen and "Before=ssh.service" in keygen
    assert "Type=root" in extra(tmp_path, "usr/lib/repart.d/50-root.conf").read_text()
    grow = extra(tmp_path, "usr/lib/systemd/system/sysinit.target.d/50-mlos-grow-root.conf")
    assert "systemd-growfs-root.service" in grow.read_text()
    dropin = extra(tmp_path, "usr/lib/systemd/system/mlos-core.service.d/50-profile.conf")
    assert "Environment=MLOS_HOST=0.0.0.0" in dropin.read_text()
    assert "LoadCredential=api-key:/etc/mlos/api-key" in dropin.read_text()
    assert spec.warnings() == []
    # The initrd: the storage drivers that find the root disk, not every module.
    conf = (tmp_path / "mkosi.conf").read_text()
    assert "KernelModulesInitrdExclude=.*\n" in conf
    assert "KernelModulesInitrdInclude=default,/drivers/(ata|nvme|scsi|" in conf


def test_hostname_and_admin_user_options(tmp_path: Path) -> None:
    spec = ImageSpec.create("debian", "userspace", hostname="gpu-07.lab", admin_user="ops",
                            ssh_keys=[ADMIN_KEY], **FIXED)
    render(spec, tmp_path)
    assert "Hostname=gpu-07.lab\n" in (tmp_path / "mkosi.conf").read_text()
    assert "useradd --create-home --shell /bin/bash --groups sudo --comment \"MLOS admin\" ops" \
        in (tmp_path / "mkosi.postinst.chroot").read_text()


def test_no_ssh_key_warns_that_there_is_no_remote_login(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = ImageSpec.create("ubuntu", "full", **FIXED)
    assert len(spec.warnings()) == 1 and "no remote login" in spec.warnings()[0]
    assert ImageSpec.create("ubuntu", "full", profile="vm", **FIXED).warnings() == []
    assert main(["render", "ubuntu", "--output-dir", str(tmp_path / "p")]) == 0
    assert "mlos-build: warning: no --ssh-key given: this image has no remote login" in (
        capsys.readouterr().err)


@pytest.mark.parametrize(("content", "message"), [
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n", "is a private key"),
    ("hello world\n", "not an OpenSSH public key"),
    ("# only a comment\n\n", "holds no public key"),
])
def test_bad_ssh_keys_are_refused(tmp_path: Path, content: str, message: str) -> None:
    key = tmp_path / "key"
    key.write_text(content)
    with pytest.raises(BuildError, match=message):
        ImageSpec.create("ubuntu", "full", ssh_keys=[key], **FIXED)
    with pytest.raises(BuildError, match="cannot read"):
        ImageSpec.create("ubuntu", "full", ssh_keys=[tmp_path / "missing.pub"], **FIXED)


def test_options_check_their_values(tmp_path: Path) -> None:
    for user in ("root", "mlos", "Admin", "1x", "a" * 40):
        with pytest.raises(BuildError, match="--admin-user"):
            ImageSpec.create("ubuntu", "full", admin_user=user, **FIXED)
    for name in ("-bad", "a..b", "under_score", "x" * 64):
        with pytest.raises(BuildError, match="--hostname"):
            ImageSpec.create("ubuntu", "full", hostname=name, **FIXED)
    key = tmp_path / "api"
    key.write_text("short\n")
    with pytest.raises(BuildError, match="does not hold one usable key"):
        ImageSpec.create("ubuntu", "full", api_key_file=key, **FIXED)
    key.write_text("k" * 32 + "\n")
    assert ImageSpec.create("ubuntu", "full", api_key_file=key, **FIXED).api_key_file == key
    # vm images have neither SSH nor an API key: such options are mistakes, said so.
    with pytest.raises(BuildError, match="--admin-user and --ssh-key need SSH"):
        ImageSpec.create("ubuntu", "full", profile="vm", ssh_keys=[ADMIN_KEY], **FIXED)
    with pytest.raises(BuildError, match="--api-key-file"):
        ImageSpec.create("ubuntu", "full", profile="vm", api_key_file=key, **FIXED)


def test_cli_errors_are_one_line_with_a_hint(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert main(["render", "ubuntu", "--ssh-key", str(tmp_path / "id"),
                 "--output-dir", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"mlos-build: error: --ssh-key {tmp_path / 'id'} is a private key"
    assert err[1].startswith("  hint: give the public key")


def test_api_key_made_on_first_boot_is_root_only_and_shown_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run the image's own first-boot script here, with the key written under tmp_path.
    key_path = tmp_path / "etc-mlos" / "api-key"
    key_path.parent.mkdir()
    monkeypatch.setattr(render_module, "API_KEY_PATH", str(key_path))
    render(ImageSpec.create("ubuntu", "full", **FIXED), tmp_path / "p")
    script = extra(tmp_path / "p", "usr/libexec/mlos/make-api-key")
    assert os.access(script, os.X_OK)
    screen = tmp_path / "tty1"
    screen.touch()
    done = subprocess.run([script], capture_output=True, text=True, check=True,
                          env={**os.environ, "MLOS_KEY_SCREEN": str(screen)})
    key = key_path.read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert f"    {key}\n" in done.stdout  # the console
    assert f"    {key}\n" in screen.read_text()  # the screen
    unit = extra(tmp_path / "p", "usr/lib/systemd/system/mlos-api-key.service").read_text()
    assert f"ConditionPathExists=!{key_path}" in unit  # once: never replaced at a reboot
    assert "StandardOutput=tty" in unit  # the console, not the journal
    # A second machine flashed from the same image makes another key.
    key_path.unlink()
    subprocess.run([script], capture_output=True, check=True,
                   env={**os.environ, "MLOS_KEY_SCREEN": str(screen)})
    assert key_path.read_text().strip() != key


def test_guest_check_sees_what_listens(tmp_path: Path) -> None:
    render(ImageSpec.create("debian", "userspace", **FIXED), tmp_path)
    script = extra(tmp_path, "usr/libexec/mlos/smoke-test").read_text()
    namespace: dict[str, object] = {}
    exec(compile(script, "smoke-test", "exec"), namespace)
    assert namespace["LISTEN_HOST"] == "0.0.0.0" and namespace["SSH"] is True
    assert namespace["API_KEY_FILE"] == "/etc/mlos/api-key"
    listening = namespace["listening"]
    assert callable(listening)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert not listening("127.0.0.1", port)  # bound, not yet listening
        sock.listen()
        assert listening("127.0.0.1", port)
        assert not listening("0.0.0.0", port)


def test_every_distribution_has_every_profile() -> None:
    for name in ("ubuntu", "debian"):
        assert set(load_distribution(name).profiles) == set(profile_names())


@pytest.mark.parametrize(("distribution", "release", "split"), [
    ("debian", "bookworm", False), ("debian", "trixie", True),
    ("ubuntu", "jammy", False), ("ubuntu", "noble", True),
])
def test_systemd_repart_is_asked_for_only_where_it_is_a_package(
        distribution: str, release: str, split: bool) -> None:
    # bookworm's and jammy's systemd carry systemd-repart; apt has no package of that name
    # there ("Unable to locate package systemd-repart" failed every bookworm metal build).
    metal = ImageSpec.create(distribution, "full", release=release, **FIXED)
    assert ("systemd-repart" in metal.packages()) is split
