# SPDX-License-Identifier: Apache-2.0
"""The HTML report from results documents: mode card, sections, charts, computed verdicts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlos_build.report import main
from mlos_build.report.modes import MODE_CARDS, mode_card, versions_from_health
from mlos_build.report.render import render_html
from mlos_build.report.suite import SCHEMA

MODULE_PARAMS = {
    "userspace": None,
    "kernel_basic": {"debug_level": "0", "enable_tmm": "Y", "enable_scheduler": "N",
                     "enable_gpu_manager": "N"},
    "kernel_scheduler": {"debug_level": "0", "enable_tmm": "Y", "enable_scheduler": "Y",
                         "enable_gpu_manager": "N"},
    "kernel_full": {"debug_level": "0", "enable_tmm": "Y", "enable_scheduler": "Y",
                    "enable_gpu_manager": "Y"},
}


def _rep(rng: np.random.Generator, p50: float) -> dict[str, Any]:
    lat = rng.gamma(4.0, p50 / 4.0, 200)
    p = np.percentile(lat, [50, 95, 99])
    return {"requests": 200, "ok": 200, "errors": 0, "wall_s": float(lat.sum() / 1e3),
            "p50_ms": float(p[0]), "p95_ms": float(p[1]), "p99_ms": float(p[2]),
            "mean_ms": float(lat.mean()), "max_ms": float(lat.max()),
            "throughput_rps": float(1e3 / lat.mean())}


def sample_results(runtime_mode: str | None, slowdown: float = 1.0,
                   seed: int = 0) -> dict[str, Any]:
    """A results document shaped like `run_suite`'s, with made-up but plausible figures."""
    rng = np.random.default_rng(seed)
    health: dict[str, Any] = {"status": "ok", "version": "0.1.0",
                              "module": MODULE_PARAMS.get(runtime_mode or ""),
                              "models": {"total": 1, "ready": 1}}
    if runtime_mode is not None:
        health["runtime_mode"] = runtime_mode
    benchmarks = []
    for protocol in ("http", "grpc"):
        for conc in (1, 8):
            for contended in (False, True):
                base = (1.0 if protocol == "http" else 0.8) * conc ** 0.5
                base *= (3.0 if contended else 1.0) * slowdown
                benchmarks.append({"model": "mlp", "version": "1", "protocol": protocol,
                                   "concurrency": conc, "contention": contended,
                                   "repetitions": [_rep(rng, base) for _ in range(5)]})
    points = []
    for mib in (1.0, 4.0, 16.0):
        for transport, ms in (("shm", 0.2), ("rest_binary", 2.0), ("grpc", 2.5),
                              ("rest_json", 400.0)):
            samples = list(rng.normal(ms * mib * slowdown, 0.01 * ms, 5).clip(0.01))
            points.append({"transport": transport, "mib": mib, "bytes": int(mib * 2**20),
                           "p50_ms": float(np.median(samples)),
                           "p99_ms": float(max(samples)), "samples_ms": samples})
    return {
        "schema": SCHEMA, "label": runtime_mode or "run", "started_at": "2026-01-01T00:00:00",
        "finished_at": "2026-01-01T00:05:00",
        "target": {"rest_url": "http://127.0.0.1:18080", "grpc_url": "127.0.0.1:18081"},
        "client_host": {"hostname": "test", "cpus": 2, "kernel": "6.1", "loadavg": [0, 0, 0]},
        "health": health, "server_metadata": {"name": "mlos-core", "version": "0.1.0"},
        "runtime_mode": runtime_mode, "mode_card": mode_card(runtime_mode),
        "versions": versions_from_health(health),
        "settings": {"repetitions": 5, "requests": 200, "warmup": 20, "concurrency": [1, 8],
                     "protocols": ["http", "grpc"]},
        "contention": {"hogs": 2, "where": "local", "command": None},
        "models": [{"name": "mlp"}], "benchmarks": benchmarks,
        "tensor_series": {"model": "double", "points": points}, "llm": None, "notes": [],
    }


def mode_card_text(html: str) -> list[str]:
    return re.findall(r'<div class="card mode"[^>]*><div class="k">Runtime Mode</div>'
                      r'<div class="v">([^<]*)</div>', html)


def assert_self_contained(html: str) -> None:
    lowered = html.lower()
    for needle in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src=",
                   "href=", "https://"):
        assert needle not in lowered, needle
    # The only http:// is the target's own address, printed as text.
    assert set(re.findall(r"http://[^\s<\"]+", html)) <= {"http://127.0.0.1:18080"}


@pytest.mark.parametrize("runtime_mode", list(MODE_CARDS))
def test_the_mode_card_reads_the_text_for_health_runtime_mode(runtime_mode: str) -> None:
    html = render_html([sample_results(runtime_mode)])
    assert mode_card_text(html) == [MODE_CARDS[runtime_mode]]
    assert '<section id="release-versions"><h2>Release Versions</h2>' in html
    assert_self_contained(html)


def test_the_card_follows_health_not_the_label() -> None:
    run = sample_results("userspace")
    run["label"] = "kernel_full"  # how the run was invoked must not matter
    html = render_html([run])
    assert mode_card_text(html) == ["Userspace Only (No Kernel Optimizations)"]


def test_an_unreported_mode_is_called_unknown() -> None:
    html = render_html([sample_results(None)])
    (card,) = mode_card_text(html)
    assert card.startswith("Unknown")
    assert card not in MODE_CARDS.values()


def test_sections_tables_and_charts_are_present() -> None:
    html = render_html([sample_results("kernel_scheduler")])
    for section in ("release-versions", "findings", "latency", "tensors", "method"):
        assert f'<section id="{section}">' in html
    assert html.count("<table>") >= 2
    # p99, p50 and throughput charts for the model, plus the tensor-size line chart.
    assert html.count("<svg") == 4
    assert "<polyline" in html and "<rect" in html
    assert "enable_scheduler=Y" in html
    # Spread is shown: median with [min–max] in table cells.
    assert re.search(r"<td>[0-9.]+ <span class=\"spread\">\[[0-9.]+–[0-9.]+\]</span></td>", html)
    assert "zero-copy is" in html and "x faster" in html
    assert_self_contained(html)


def test_a_kernel_mode_that_does_not_win_is_told_in_words() -> None:
    runs = [sample_results("userspace", 1.0, seed=1),
            sample_results("kernel_scheduler", 1.5, seed=2)]
    html = render_html(runs)
    assert mode_card_text(html) == [MODE_CARDS["userspace"], MODE_CARDS["kernel_scheduler"]]
    assert ("kernel_scheduler vs userspace, p99 latency under CPU contention: better in 0 of 4"
            in html)
    assert "kernel_scheduler is worse than userspace" in html
    assert "kernel_scheduler is slower than userspace" in html  # shared-memory series


def test_a_kernel_mode_that_wins_everywhere_is_reported_as_such() -> None:
    runs = [sample_results("userspace", 1.0, seed=1),
            sample_results("kernel_full", 0.5, seed=2)]
    html = render_html(runs)
    assert ("kernel_full vs userspace, p99 latency under CPU contention: better in 4 of 4 "
            "configurations" in html)
    assert "is worse than" not in html


def test_without_a_userspace_run_nothing_is_claimed() -> None:
    html = render_html([sample_results("kernel_basic"), sample_results("kernel_full")])
    assert "No run reports runtime_mode &#x27;userspace&#x27;" in html


def test_versions_are_read_from_health_fields() -> None:
    versions = versions_from_health({
        "version": "0.1.0", "kernel": "6.8.0-51-generic",
        "module": {"parameters": {"enable_tmm": "Y"}, "version": "0.1"},
        "versions": {"onnxruntime": "1.20.1", "llama_cpp": "0.3.5"},
        "features": ["memory_manager"]})
    assert versions["mlos"] == "0.1.0"
    assert versions["kernel"] == "6.8.0-51-generic"
    assert versions["module_version"] == "0.1"
    assert versions["onnxruntime"] == "1.20.1"
    assert versions["llama_cpp"] == "0.3.5"
    missing = versions_from_health({"version": "0.1.0"})
    assert missing["kernel"] == missing["onnxruntime"] == missing["llama_cpp"] == "unknown"
    assert missing["module"] is None


def test_render_command_writes_one_page_from_several_files(tmp_path: Path) -> None:
    paths = []
    for mode in MODE_CARDS:
        p = tmp_path / f"{mode}.json"
        p.write_text(json.dumps(sample_results(mode, seed=len(paths))))
        paths.append(str(p))
    out = tmp_path / "out" / "report.html"
    assert main(["render", *paths, "--out", str(out)]) == 0
    html = out.read_text()
    assert mode_card_text(html) == list(MODE_CARDS.values())
    assert_self_contained(html)


def test_render_refuses_a_file_that_is_not_results(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(SystemExit, match="not an MLOS results file"):
        main(["render", str(bad), "--out", str(tmp_path / "r.html")])


def test_only_features_in_use_are_listed() -> None:
    # MLOS Core reports each feature as an object with `in_use` and the reason when not.
    results = sample_results("kernel_full")
    results["versions"]["features"] = {
        "memory_manager": {"in_use": True, "reason": None},
        "scheduler": {"in_use": True, "reason": None},
        "gpu_manager": {"in_use": False, "reason": "no GPU found"},
    }
    html = render_html([results])
    card = re.search(r'Features in use</div><div class="v">([^<]*)<', html)
    assert card is not None and card.group(1) == "memory_manager, scheduler"


def test_notes_are_shown_under_the_verdict_escaped() -> None:
    runs = [sample_results("userspace"), sample_results("kernel_scheduler", seed=1)]
    html = render_html(runs, notes=["Diagnosis: docs/kernel-modes.md <measured>"])
    verdict_part = html[html.index('id="verdict"'):html.index("</section>")]
    assert '<p class="note">Diagnosis: docs/kernel-modes.md &lt;measured&gt;</p>' in verdict_part
