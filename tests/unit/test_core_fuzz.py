# SPDX-License-Identifier: Apache-2.0
"""Schema-driven fuzzing (schemathesis) of every REST operation in the service's OpenAPI:
whatever it generates, the service answers without a 5xx."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_fixtures import make_settings
from core_models import make_repository
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from mlos_core.app import create_app

_ROOT = Path(__import__("tempfile").mkdtemp(prefix="mlos-fuzz-"))
_APP = create_app(make_settings(make_repository(_ROOT / "models"), max_request_bytes=1 << 20))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():  # type: ignore[no-untyped-def]
    yield
    _APP.state.dataplane.close()
    shutil.rmtree(_ROOT, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
