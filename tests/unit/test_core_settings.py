# SPDX-License-Identifier: Apache-2.0
"""Settings precedence, the generated CLI, packaged config and systemd unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mlos_core.cli import build_parser, main
from mlos_core.settings import Settings, load_settings


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "core.yaml"
    config.write_text("rest_port: 9000\ngrpc_port: 9001\nmodel_repository: /srv/models\n")
    monkeypatch.setenv("MLOS_GRPC_PORT", "9101")
    monkeypatch.setenv("MLOS_API_KEY", "secret")
    settings = load_settings(config, grpc_port=None, host="0.0.0.0")
    assert settings.rest_port == 9000  # file
    assert settings.grpc_port == 9101  # env beats file
    assert settings.host == "0.0.0.0"  # flag
    assert settings.model_repository == Path("/srv/models")
    assert settings.api_key == "secret"
    assert load_settings(config, grpc_port=7).grpc_port == 7  # flag beats env


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "core.yaml"
    config.write_text("rest_prot: 1\n")
    with pytest.raises(ValidationError):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ValidationError):
        load_settings(None, rest_port=70000)
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_serve_help_lists_every_setting() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "mlos_core", "serve", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
    assert "--model-repository" in help_text and "--rest-port" in help_text
    args = build_parser().parse_args(["serve", "--no-grpc-enabled", "--rest-port", "1"])
    assert args.grpc_enabled is False and args.rest_port == 1


def test_packaged_default_config_matches_defaults() -> None:
    text = resources.files("mlos_core").joinpath("data/core.yaml").read_text()
    data = yaml.safe_load(text)
    defaults = Settings().model_dump(mode="json")
    assert set(data) <= set(defaults)
    for key, value in data.items():
        assert defaults[key] == value, key
    assert (data["host"], data["rest_port"], data["grpc_port"]) == ("127.0.0.1", 8080, 8081)


def test_systemd_unit_is_hardened_and_valid(tmp_path: Path) -> None:
    unit = resources.files("mlos_core").joinpath("data/mlos-core.service").read_text()
    for line in ("User=mlos", "ProtectSystem=strict", "ReadWritePaths=/var/lib/mlos",
                 "NoNewPrivileges=yes", "DeviceAllow=/dev/mlos-ml rw",
                 "After=network.target systemd-modules-load.service",
                 "ExecStart=/opt/mlos/venv/bin/mlos-core serve --config /etc/mlos/core.yaml"):
        assert line in unit.splitlines(), line
    # The pinned tensor pool is charged to RLIMIT_MEMLOCK: the unit's limit must cover it.
    limit = next(v for k, _, v in (ln.partition("=") for ln in unit.splitlines())
                 if k == "LimitMEMLOCK")
    assert limit.endswith("M") and int(limit[:-1]) >= Settings().tensor_pool_mb
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / "mlos-core.service"
    copy.write_text(unit.replace("/opt/mlos/venv/bin/mlos-core", "/bin/true"))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_api_key_file_gives_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A metal image hands the service its root-only key as a systemd credential file.
    key_file = tmp_path / "api-key"
    key_file.write_text("0123456789abcdef0123\n")
    monkeypatch.setenv("MLOS_API_KEY_FILE", str(key_file))
    assert load_settings(None).api_key == "0123456789abcdef0123"
    with pytest.raises(ValidationError, match="both set"):
        load_settings(None, api_key="other")
    key_file.write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        load_settings(None)
    key_file.unlink()
    assert main(["config"]) == 2
    assert f"api_key_file {key_file}" in capsys.readouterr().err
