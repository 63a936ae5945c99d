# SPDX-License-Identifier: Apache-2.0
"""The report's optional LLM part: completions through the service's OpenAI routes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_support import add_model, write_tiny_gguf
from test_report_e2e import ONE_PROTOCOL, Service, make_repository, make_sysfs

from mlos_build.report import main

pytestmark = pytest.mark.llm

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is the `llm` extra: scripts/setup.sh installs it")


def test_an_llm_listed_on_v1_models_is_measured(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_repository(repo)
    add_model(repo, "tiny", write_tiny_gguf(tmp_path / "tiny.gguf"), {"context_size": 256})
    svc = Service(repo, make_sysfs(tmp_path / "sys", None), tmp_path / "serve.log")
    try:
        rc = main(["run", "--url", svc.url, "--grpc-url", f"127.0.0.1:{svc.grpc}",
                   "--out", str(tmp_path / "out"), "--protocols", ONE_PROTOCOL,
                   "--concurrency", "1", "--repetitions", "2",
                   "--requests", "10", "--warmup", "2", "--hogs", "1",
                   "--tensor-sizes-mib", "", "--no-heavy-model"])
    finally:
        svc.stop()
    assert rc == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    # The GGUF model is not benchmarked as an ONNX model...
    assert sorted(m["name"] for m in results["models"]) == ["double", "mlp"]
    # ...but through /v1/completions, quiet and contended.
    llm = results["llm"]
    assert llm["model"] == "tiny"
    assert [r["contention"] for r in llm["runs"]] == [False, True]
    assert [len(r["repetitions"]) for r in llm["runs"]] == [2, 2]  # as for the ONNX models
    # /health was read during the warm-up completion; this host has no mlos_ml module,
    # so no llama.cpp thread can be registered, and the results say why.
    threads = llm["threads"]
    assert threads["health_polls"] >= 1 and "error" not in threads
    assert threads["scheduler_in_use"] is False and threads["registered"] == {}
    assert "not loaded" in threads["reason"]
    for run in llm["runs"]:
        for rep in run["repetitions"]:
            assert rep["errors"] == 0, rep.get("first_error")
            assert rep["completion_tokens"] > 0 and rep["tokens_per_s"] > 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert '<section id="llm">' in html and "tiny" in html
    assert "llama.cpp threads not registered (scheduler not in use" in html
    assert "LLM tiny over /v1/completions: median p99" in html  # contention's cost
