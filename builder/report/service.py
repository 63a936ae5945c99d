# SPDX-License-Identifier: Apache-2.0
"""Probing the target service over plain HTTP: health, server metadata, models.

Uses only the standard library so a probe works wherever the package imports; load is
driven with tritonclient elsewhere.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any


class ServiceError(RuntimeError):
    """The target service could not be reached or answered something unusable."""


@dataclass
class Target:
    """Where the service is: REST base URL, gRPC host:port, optional API key."""

    rest_url: str
    grpc_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 30.0
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rest_url = self.rest_url.rstrip("/")
        if "://" not in self.rest_url:
            self.rest_url = "http://" + self.rest_url
        if self.api_key:
            self.headers.setdefault("Authorization", f"Bearer {self.api_key}")

    @property
    def rest_hostport(self) -> str:
        """host:port as tritonclient.http wants it (no scheme)."""
        return urllib.parse.urlsplit(self.rest_url).netloc

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; returns the decoded body (None for an empty one)."""
        data = json.dumps(body).encode() if body is not None else None
        return self.request_raw(method, path, data, "application/json")

    def request_raw(self, method: str, path: str, data: bytes | None,
                    content_type: str) -> Any:
        """One request with a ready-made body; returns the decoded JSON answer."""
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.rest_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise ServiceError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceError(f"{method} {path}: cannot reach {self.rest_url}: {exc}") from exc
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ServiceError(f"{method} {path}: not JSON: {raw[:200]!r}") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def wait_healthy(self, timeout_s: float) -> dict[str, Any]:
        """Poll /health until it answers (a booting guest takes a while)."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while True:
            try:
                health = self.get("/health")
                if isinstance(health, dict):
                    return health
                last = ServiceError(f"/health returned {health!r}, not an object")
            except ServiceError as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise ServiceError(f"service not healthy after {timeout_s:.0f} s: {last}")
            time.sleep(0.5)


def onnx_models(target: Target) -> list[dict[str, Any]]:
    """Ready models from the repository index, with their KServe metadata."""
    index = target.request("POST", "/v2/repository/index", {"ready": True}) or []
    models = []
    for entry in index:
        name = entry.get("name")
        state = entry.get("state", "READY")
        if not name or state not in ("READY", "", None):
            continue
        version = str(entry.get("version") or "")
        path = f"/v2/models/{urllib.parse.quote(name)}"
        if version:
            path += f"/versions/{urllib.parse.quote(version)}"
        meta = target.get(path)
        platform = str(meta.get("platform", ""))
        if platform and "onnx" not in platform.lower():
            continue
        models.append({"name": name, "version": version, "platform": platform,
                       "inputs": meta.get("inputs", []), "outputs": meta.get("outputs", [])})
    return models


def llm_models(target: Target) -> list[str]:
    """Model ids from the OpenAI-compatible /v1/models, or none if the route is absent."""
    try:
        listing = target.get("/v1/models")
    except ServiceError:
        return []
    if not isinstance(listing, dict):
        return []
    return [m["id"] for m in listing.get("data", []) if isinstance(m, dict) and "id" in m]
