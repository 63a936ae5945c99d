# SPDX-License-Identifier: Apache-2.0
"""The verdict table: each kernel mode against userspace on the headline metrics.

Rows are the kernel-mode runs, columns the headline metrics; each cell is the change of
the mode's median against userspace's median in %, the [min–max] of the mode's values
(over repetitions; over requests for shared memory) as changes against the same
userspace median, and one word from `findings.verdict`, the rule every Findings
sentence uses too: "better" only when the two min–max ranges do not overlap in the good
direction, "worse" when they do not overlap in the bad one, else "no clear difference".
A figure missing from either run reads "not measured".

The ONNX columns use one headline configuration, chosen from the userspace run: the
heavy-compute model when it was measured (else the model with the largest quiet p50,
the one where compute counts most), over REST (else its first protocol), at the lowest
concurrency for p99 and the highest for throughput.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlos_build.report import findings, heavy
from mlos_build.report.modes import BASELINE_MODE
from mlos_build.report.stats import spread

Spread = dict[str, float]

WORDS = {"better": "better", "worse": "worse", "overlap": "no clear difference"}
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Headline:
    """The configuration the ONNX columns read, named in the table's caption."""

    model: str
    protocol: str
    p99_concurrency: int
    throughput_concurrency: int


@dataclass(frozen=True)
class Column:
    title: str
    lower_is_better: bool
    unit: str
    figure: Callable[[dict[str, Any], Headline | None, dict[str, Any]], Spread | None]


@dataclass(frozen=True)
class Cell:
    word: str
    change_pct: float | None = None
    low_pct: float | None = None
    high_pct: float | None = None
    cand: Spread | None = None
    base: Spread | None = None


def headline(base: dict[str, Any]) -> Headline | None:
    """The headline ONNX configuration of the userspace run (None if it measured none)."""
    index = findings.bench_index(base)
    if not index:
        return None
    models = {k[0] for k in index}
    if heavy.NAME in models:
        model = heavy.NAME
    else:
        def quiet_p50(name: str) -> float:
            figs = [findings.figure(e, "p50_ms") for k, e in index.items()
                    if k[0] == name and not k[3]]
            return max((f["median"] for f in figs if f), default=0.0)
        model = max(sorted(models), key=quiet_p50)
    protocols = sorted({k[1] for k in index if k[0] == model})
    protocol = "http" if "http" in protocols else protocols[0]
    concs = sorted({k[2] for k in index if k[0] == model and k[1] == protocol})
    return Headline(model, protocol, concs[0], concs[-1])


def _bench(metric: str, contended: bool, throughput: bool) -> Callable[
        [dict[str, Any], Headline | None, dict[str, Any]], Spread | None]:
    def figure(run: dict[str, Any], head: Headline | None,
               _base: dict[str, Any]) -> Spread | None:
        if head is None:
            return None
        conc = head.throughput_concurrency if throughput else head.p99_concurrency
        entry = findings.bench_index(run).get((head.model, head.protocol, conc, contended))
        return findings.figure(entry, metric)
    return figure


def _shm(run: dict[str, Any], _head: Headline | None, base: dict[str, Any]) -> Spread | None:
    """Shared-memory latency at the largest tensor size the userspace run measured."""
    size = findings.largest_common(base, ("shm",))
    point = findings.tensor_point(run, "shm", size) if size is not None else None
    if point is None:
        return None
    return spread(point.get("samples_ms") or [point["p50_ms"]])


def _llm(contended: bool) -> Callable[
        [dict[str, Any], Headline | None, dict[str, Any]], Spread | None]:
    def figure(run: dict[str, Any], _head: Headline | None,
               _base: dict[str, Any]) -> Spread | None:
        for part in (run.get("llm") or {}).get("runs", []):
            if bool(part["contention"]) == contended:
                return spread([r.get("p99_ms") for r in part["repetitions"]])
        return None
    return figure


COLUMNS = (
    Column("p99 under contention", True, "ms", _bench("p99_ms", True, False)),
    Column("p99 quiet", True, "ms", _bench("p99_ms", False, False)),
    Column("throughput", False, "req/s", _bench("throughput_rps", False, True)),
    Column("large tensor through shared memory", True, "ms", _shm),
    Column("LLM p99 under contention", True, "ms", _llm(True)),
    Column("LLM p99 quiet", True, "ms", _llm(False)),
)


def cell(cand: Spread | None, base: Spread | None, lower_is_better: bool) -> Cell:
    """One mode's figure against userspace's: change, range and the word."""
    if cand is None or base is None:
        return Cell(NOT_MEASURED)
    word = WORDS[findings.verdict(cand, base, lower_is_better)]
    ref = base["median"]
    if ref == 0:
        return Cell(word, cand=cand, base=base)

    def pct(v: float) -> float:
        return (v - ref) / ref * 100
    return Cell(word, pct(cand["median"]), pct(cand["min"]), pct(cand["max"]), cand, base)


@dataclass(frozen=True)
class Table:
    base_name: str | None
    headline: Headline | None
    baseline: list[Spread | None]
    rows: list[tuple[str, list[Cell]]]


def verdict_table(runs: list[dict[str, Any]]) -> Table:
    """Rows for every kernel-mode run; no rows without a userspace run to compare with."""
    names = findings.run_names(runs)
    base_idx = next((i for i, r in enumerate(runs) if r.get("runtime_mode") == BASELINE_MODE),
                    None)
    if base_idx is None:
        return Table(None, None, [], [])
    base = runs[base_idx]
    head = headline(base)
    base_figs = [c.figure(base, head, base) for c in COLUMNS]
    rows = []
    for i, run in enumerate(runs):
        if run.get("runtime_mode") == BASELINE_MODE:
            continue
        rows.append((names[i], [cell(c.figure(run, head, base), ref, c.lower_is_better)
                                for c, ref in zip(COLUMNS, base_figs, strict=True)]))
    return Table(names[base_idx], head, base_figs, rows)
