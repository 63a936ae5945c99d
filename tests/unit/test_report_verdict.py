# SPDX-License-Identifier: Apache-2.0
"""The verdict table: each kernel mode's change against userspace, its range and a word."""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest
from test_report_render import sample_results

from mlos_build.report import heavy
from mlos_build.report.render import render_html
from mlos_build.report.stats import spread
from mlos_build.report.verdict import COLUMNS, NOT_MEASURED, cell, headline, verdict_table

P99_CONTENDED, P99_QUIET, THROUGHPUT, SHM, LLM_CONTENDED, LLM_QUIET = range(6)


def _llm(rng: np.random.Generator, p99: float) -> dict[str, Any]:
    def reps(scale: float) -> list[dict[str, Any]]:
        return [{"p50_ms": p99 * scale * 0.8, "errors": 0, "tokens_per_s": 60.0,
                 "p99_ms": float(p99 * scale * rng.uniform(0.97, 1.03))} for _ in range(5)]
    return {"model": "gemma", "route": "/v1/completions", "max_tokens": 16,
            "threads": {"scheduler_in_use": True, "registered": {"latency": 3}},
            "runs": [{"contention": False, "repetitions": reps(1.0)},
                     {"contention": True, "repetitions": reps(2.0)}]}


def _bench(run: dict[str, Any], model: str, protocol: str, conc: int,
           contended: bool) -> dict[str, Any]:
    return next(b for b in run["benchmarks"] if (b["model"], b["protocol"], b["concurrency"],
                                                 b["contention"]) == (model, protocol, conc,
                                                                      contended))


def test_a_clearly_faster_mode_is_better_and_the_change_is_computed() -> None:
    base, fast = sample_results("userspace", 1.0, seed=1), sample_results("kernel_full", 0.5,
                                                                            seed=2)
    table = verdict_table([base, fast])
    assert table.base_name == "userspace" and [r[0] for r in table.rows] == ["kernel_full"]
    cells = table.rows[0][1]
    assert cells[P99_CONTENDED].word == cells[P99_QUIET].word == "better"
    assert cells[THROUGHPUT].word == "better"  # higher is better there
    assert cells[SHM].word == "better"
    # The change is the medians' over repetitions of the headline configuration.
    head = table.headline
    assert head is not None and (head.model, head.protocol) == ("mlp", "http")
    b = [r["p99_ms"] for r in _bench(base, "mlp", "http", 1, True)["repetitions"]]
    c = [r["p99_ms"] for r in _bench(fast, "mlp", "http", 1, True)["repetitions"]]
    ref = float(np.median(b))
    assert cells[P99_CONTENDED].change_pct == pytest.approx((np.median(c) - ref) / ref * 100)
    assert cells[P99_CONTENDED].low_pct == pytest.approx((min(c) - ref) / ref * 100)
    assert cells[P99_CONTENDED].high_pct == pytest.approx((max(c) - ref) / ref * 100)
    assert cells[P99_CONTENDED].change_pct < -30
    # Throughput reads the highest concurrency.
    assert head.throughput_concurrency == 8 and head.p99_concurrency == 1
    # No LLM in either run: said so, never guessed.
    assert cells[LLM_CONTENDED].word == cells[LLM_QUIET].word == NOT_MEASURED


def test_a_clearly_slower_mode_is_worse() -> None:
    table = verdict_table([sample_results("userspace", 1.0, seed=1),
                           sample_results("kernel_scheduler", 1.6, seed=2)])
    cells = table.rows[0][1]
    assert [cells[i].word for i in (P99_CONTENDED, P99_QUIET, THROUGHPUT, SHM)] == ["worse"] * 4
    assert cells[THROUGHPUT].change_pct is not None and cells[THROUGHPUT].change_pct < 0


def test_overlapping_ranges_are_never_better() -> None:
    # The same distribution measured twice: medians differ by chance, ranges overlap.
    table = verdict_table([sample_results("userspace", 1.0, seed=1),
                           sample_results("kernel_basic", 1.0, seed=7)])
    cells = table.rows[0][1]
    for i in (P99_CONTENDED, P99_QUIET, THROUGHPUT):
        assert cells[i].word == "no clear difference", (COLUMNS[i].title, cells[i])
    # Random ranges: the word must follow from the ranges alone, whatever the medians.
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(2000):
        a, b = rng.uniform(1, 10, 5), rng.uniform(1, 10, 5) * rng.uniform(0.3, 3)
        cand, base = spread(list(a)), spread(list(b))
        assert cand is not None and base is not None
        for lower in (True, False):
            word = cell(cand, base, lower).word
            seen.add(word)
            overlap = cand["min"] <= base["max"] and base["min"] <= cand["max"]
            if overlap:
                assert word == "no clear difference", (cand, base)
            elif (cand["max"] < base["min"]) == lower:
                assert word == "better", (cand, base, lower)
            else:
                assert word == "worse", (cand, base, lower)
    assert seen == {"better", "worse", "no clear difference"}


def test_missing_figures_read_not_measured_and_no_baseline_no_rows() -> None:
    base = sample_results("userspace", seed=1)
    cand = sample_results("kernel_full", 0.5, seed=2)
    cand["tensor_series"] = {"model": None, "skipped": "no model", "points": []}
    cand["benchmarks"] = [b for b in cand["benchmarks"] if not b["contention"]]
    cells = verdict_table([base, cand]).rows[0][1]
    assert cells[SHM].word == cells[P99_CONTENDED].word == NOT_MEASURED
    assert cells[SHM].change_pct is None
    assert cells[P99_QUIET].word == "better"
    empty = verdict_table([sample_results("kernel_basic"), sample_results("kernel_full")])
    assert empty.base_name is None and not empty.rows


def test_the_heavy_model_and_the_llm_are_the_headline_when_measured() -> None:
    runs = []
    for mode, slow, seed in (("userspace", 1.0, 1), ("kernel_scheduler", 0.5, 2)):
        run = sample_results(mode, slow, seed)
        extra = copy.deepcopy(run["benchmarks"])
        for b in extra:
            b["model"] = heavy.NAME
            for r in b["repetitions"]:
                r["p99_ms"] *= 1 if mode == "userspace" else 3.0  # heavy: worse here
        run["benchmarks"] += extra
        run["llm"] = _llm(np.random.default_rng(seed), 100.0 * slow)
        runs.append(run)
    head = headline(runs[0])
    assert head is not None and head.model == heavy.NAME
    cells = verdict_table(runs).rows[0][1]
    assert cells[P99_QUIET].word == "worse"  # read from the heavy model, not mlp
    assert cells[LLM_QUIET].word == cells[LLM_CONTENDED].word == "better"
    assert cells[LLM_QUIET].change_pct == pytest.approx(-50, abs=5)


def test_the_verdict_table_opens_the_report_and_findings_are_folded() -> None:
    html = render_html([sample_results("userspace", 1.0, seed=1),
                        sample_results("kernel_scheduler", 1.0, seed=7),
                        sample_results("kernel_full", 0.5, seed=2)])
    sections = re.findall(r'<section id="([a-z-]+)">', html)
    assert sections[:3] == ["verdict", "release-versions", "findings"]
    verdict_html = html.split('<section id="verdict">')[1].split("</section>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", verdict_html)
    assert len(rows) == 1 + 3  # header, baseline, two kernel modes
    assert "userspace (baseline)" in rows[1]
    assert rows[2].startswith('<td class="l">kernel_scheduler</td>')
    assert "no clear difference" in rows[2] and ">better<" not in rows[2]
    assert rows[3].count(">better<") == 4 and rows[3].count(NOT_MEASURED) == 2
    assert re.search(r"[+-]\d+% <span class=\"spread\">\[[+-]\d+%…[+-]\d+%\]</span>", rows[3])
    findings_html = html.split('<section id="findings">')[1].split("</section>")[0]
    assert findings_html.count('<details class="group">') == 3
    assert "<ul" not in findings_html.split("<details")[0]  # every sentence is folded
    # One run alone has nothing to compare: no verdict table.
    assert '<section id="verdict">' not in render_html([sample_results("userspace")])
