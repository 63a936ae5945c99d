# SPDX-License-Identifier: Apache-2.0
"""The Butane source (variant flatcar, version 1.0.0) that provisions a node with MLOS,
and its Ignition config (spec 3.3.0), both built as Python data and serialised.

to_ignition() translates the part of Butane this module writes the way Butane does:
snake_case keys become camelCase, `contents.inline` becomes a data: URL (the shortest of
URL-escaped, base64 and gzip+base64, with `compression` set explicitly), the rest is
copied. Butane itself has no Debian package; ignition-validate (Debian's ignition) checks
the result in the tests.
"""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import yaml

from mlos_build.errors import BuildError
from mlos_build.flatcar import FlatcarSpec

BUTANE_VARIANT = "flatcar"
BUTANE_VERSION = "1.0.0"
IGNITION_VERSION = "3.3.0"
# Characters RFC 2397 data URLs keep as they are (Butane's escaping: letters, digits and
# these); everything else becomes %XX.
URL_SAFE = "-_.!~*'()"


@dataclass(frozen=True)
class SysextSource:
    """Where the node gets the sysext: an https URL with its sha512, or inline bytes."""

    url: str | None = None
    sha512: str | None = None
    data: bytes | None = None


def butane(spec: FlatcarSpec, core_yaml: str, sysext: SysextSource | None) -> dict[str, Any]:
    """The Butane config for spec. Without a sysext source (a render without
    --sysext-url), the config places no sysext: the rest stands alone."""
    provision = spec.provision
    user = provision.service_user
    users: list[dict[str, Any]] = []
    if spec.ssh_keys:
        users.append({"name": provision.ssh_user, "ssh_authorized_keys": list(spec.ssh_keys)})
    # Ignition's passwd makes the user on first boot; a sysusers.d file in the extension
    # would only apply once the extension is merged, if at all.
    users.append({"name": user["name"], "uid": user["id"], "primary_group": user["name"],
                  "gecos": user["gecos"], "home_dir": provision.state_dir,
                  "no_create_home": True, "shell": user["shell"], "system": True})
    groups = [{"name": user["name"], "gid": user["id"], "system": True}]

    files: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    if sysext is not None:
        contents: dict[str, Any]
        if sysext.url is not None:
            contents = {"source": sysext.url,
                        "verification": {"hash": f"sha512-{sysext.sha512}"}}
        else:
            assert sysext.data is not None
            source, compression = data_url(sysext.data)
            contents = {"source": source, "compression": compression}
        files.append({"path": spec.sysext_path, "mode": 0o644, "contents": contents})
        links.append({"path": spec.sysext_link, "target": spec.sysext_path, "hard": False})
    files.append({"path": f"{provision.config_dir}/core.yaml", "mode": 0o644,
                  "contents": {"inline": core_yaml}})
    if spec.api_key is not None:
        # Root-only: the service unit reads it as root (EnvironmentFile=) and hands the
        # key to the container by name.
        files.append({"path": f"{provision.config_dir}/api-key.env", "mode": 0o600,
                      "contents": {"inline": f"MLOS_API_KEY={spec.api_key}\n"}})
    for extra in spec.extra_files:
        try:
            contents = {"inline": extra.data.decode("utf-8")}
        except UnicodeDecodeError:
            source, compression = data_url(extra.data)
            contents = {"source": source, "compression": compression}
        files.append({"path": extra.dest, "mode": extra.mode, "overwrite": True,
                      "contents": contents})

    units = [{"name": "mlos-core.service", "enabled": True}]
    if spec.variant.module is not None:
        units.append({"name": "mlos-ml.service", "enabled": True})
    storage: dict[str, Any] = {"files": files}
    if links:
        storage["links"] = links
    return {"variant": BUTANE_VARIANT, "version": BUTANE_VERSION,
            "passwd": {"users": users, "groups": groups},
            "storage": storage,
            "systemd": {"units": units}}


def data_url(contents: bytes) -> tuple[str, str]:
    """(data URL, compression) the way Butane encodes inline contents: the shortest of
    URL-escaped, base64 and gzip+base64 ("gzip" has to pay for its own name)."""
    opaque = "," + urllib.parse.quote(contents, safe=URL_SAFE)
    b64 = ";base64," + base64.b64encode(contents).decode()
    if len(b64) < len(opaque):
        opaque = b64
    compression = ""
    # mtime=0: the same contents give the same config.
    gz = ";base64," + base64.b64encode(gzip.compress(contents, compresslevel=9,
                                                     mtime=0)).decode()
    if len(gz) + len("gzip") < len(opaque):
        opaque, compression = gz, "gzip"
    return "data:" + opaque, compression


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _translate(node: Any) -> Any:
    if isinstance(node, list):
        return [_translate(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "inline":
            source, compression = data_url(value.encode())
            out["source"] = source
            out["compression"] = compression
        else:
            out[_camel(key)] = _translate(value)
    return out


def to_ignition(config: dict[str, Any]) -> dict[str, Any]:
    """The Ignition 3.3.0 config Butane flatcar 1.0.0 makes of config."""
    if (config.get("variant"), config.get("version")) != (BUTANE_VARIANT, BUTANE_VERSION):
        raise BuildError(f"not a Butane {BUTANE_VARIANT} {BUTANE_VERSION} config",
                         hint="mlos-build writes and translates that version only")
    body = {k: v for k, v in config.items() if k not in ("variant", "version")}
    return {"ignition": {"version": IGNITION_VERSION}, **_translate(body)}


def butane_text(config: dict[str, Any]) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    def literal(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # Multi-line contents read as written (block scalars), as people write Butane.
        style = "|" if "\n" in value.rstrip("\n") or value.endswith("\n") else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, literal)
    header = ("# Butane config for Flatcar (written by mlos-build). Translate with\n"
              "# `butane --strict` to get the .ign beside it, or use that one directly.\n")
    return header + yaml.dump(config, Dumper=Dumper, sort_keys=False, width=100)


def ignition_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
