# SPDX-License-Identifier: Apache-2.0
"""Sentences computed from the figures: where a mode wins, ties or loses, in words.

A mode "beats" the baseline on a figure only when its whole min..max range over the
repetitions is better than the baseline's whole range; overlapping ranges are reported
as "within run-to-run spread", which is not a win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlos_build.report.modes import BASELINE_MODE
from mlos_build.report.stats import fmt, spread

Key = tuple[str, str, int, bool]  # model, protocol, concurrency, contention


@dataclass
class Finding:
    level: str  # "win", "loss", "tie" or "info"
    text: str


def bench_index(run: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(b["model"], b["protocol"], int(b["concurrency"]), bool(b["contention"])): b
            for b in run.get("benchmarks", [])}


def figure(entry: dict[str, Any] | None, metric: str) -> dict[str, float] | None:
    if entry is None:
        return None
    return spread([r.get(metric) for r in entry.get("repetitions", [])])


def key_text(key: Key) -> str:
    model, protocol, conc, _ = key
    transport = "gRPC" if protocol == "grpc" else "REST"
    return f"{model} over {transport} at concurrency {conc}"


def verdict(cand: dict[str, float], base: dict[str, float], lower_is_better: bool) -> str:
    """'better', 'worse' or 'overlap' comparing min..max ranges."""
    if lower_is_better:
        if cand["max"] < base["min"]:
            return "better"
        if cand["min"] > base["max"]:
            return "worse"
    else:
        if cand["min"] > base["max"]:
            return "better"
        if cand["max"] < base["min"]:
            return "worse"
    return "overlap"


def _pct(cand: float, base: float) -> str:
    if base == 0:
        return "n/a"
    return f"{(cand - base) / base * 100:+.0f}%"


METRICS = (
    ("p99_ms", True, "p99 latency", "ms"),
    ("throughput_rps", False, "throughput", "req/s"),
)


def run_names(runs: list[dict[str, Any]]) -> list[str]:
    """Display names: the label, made unique by position where labels repeat."""
    labels = [str(r.get("label") or r.get("runtime_mode") or "run") for r in runs]
    return [f"{lab} #{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def compare_modes(runs: list[dict[str, Any]]) -> list[Finding]:
    """Each kernel-mode run against the userspace run, figure by figure."""
    names = run_names(runs)
    base_idx = next((i for i, r in enumerate(runs) if r.get("runtime_mode") == BASELINE_MODE),
                    None)
    if base_idx is None:
        return [Finding("info", "No run reports runtime_mode 'userspace' on /health, so no "
                                "mode is compared against a userspace baseline.")]
    out: list[Finding] = []
    base = runs[base_idx]
    base_name = names[base_idx]
    base_index = bench_index(base)
    for i, run in enumerate(runs):
        if i == base_idx:
            continue
        name = names[i]
        if run.get("runtime_mode") == BASELINE_MODE:
            out.append(Finding("info", f"{name} also ran in userspace mode; it is shown but "
                                       f"compared only with {base_name}."))
            continue
        index = bench_index(run)
        for contended in (True, False):
            for metric, lower, what, unit in METRICS:
                tally = {"better": 0, "overlap": 0, "worse": 0}
                misses = []
                for key, entry in sorted(index.items()):
                    if key[3] != contended or key not in base_index:
                        continue
                    cand, ref = figure(entry, metric), figure(base_index[key], metric)
                    if cand is None or ref is None:
                        continue
                    v = verdict(cand, ref, lower)
                    tally[v] += 1
                    if v != "better":
                        how = ("is worse than" if v == "worse"
                               else "does not clearly beat (ranges overlap)")
                        misses.append(
                            f"{key_text(key)}: {fmt(cand['median'])} {unit} median vs "
                            f"{fmt(ref['median'])} {unit} ({_pct(cand['median'], ref['median'])}) "
                            f"— {name} {how} {base_name}")
                total = sum(tally.values())
                if not total:
                    continue
                cond = "under CPU contention" if contended else "without contention"
                summary = (f"{name} vs {base_name}, {what} {cond}: better in "
                           f"{tally['better']} of {total} configurations, within run-to-run "
                           f"spread in {tally['overlap']}, worse in {tally['worse']}.")
                if tally["better"] == total:
                    out.append(Finding("win", summary))
                else:
                    level = "loss" if tally["worse"] else "tie"
                    out.append(Finding(level, summary + " Where it does not beat "
                                       f"{base_name}: " + "; ".join(misses) + "."))
        out.extend(_tensor_vs_base(run, base, name, base_name))
    return out


def tensor_point(run: dict[str, Any], transport: str, mib: float) -> dict[str, Any] | None:
    series = run.get("tensor_series") or {}
    for p in series.get("points", []):
        if p["transport"] == transport and p["mib"] == mib and p.get("p50_ms") is not None:
            return p
    return None


def largest_common(run: dict[str, Any], transports: tuple[str, ...]) -> float | None:
    sizes = {p["mib"] for p in (run.get("tensor_series") or {}).get("points", [])}
    ok = [s for s in sizes if all(tensor_point(run, t, s) for t in transports)]
    return max(ok) if ok else None


def _tensor_vs_base(run: dict[str, Any], base: dict[str, Any], name: str,
                    base_name: str) -> list[Finding]:
    size = largest_common(run, ("shm",))
    if size is None or tensor_point(base, "shm", size) is None:
        return []
    cand, ref = tensor_point(run, "shm", size), tensor_point(base, "shm", size)
    assert cand is not None and ref is not None
    c = spread(cand.get("samples_ms", [cand["p50_ms"]]))
    r = spread(ref.get("samples_ms", [ref["p50_ms"]]))
    assert c is not None and r is not None
    v = verdict(c, r, True)
    text = (f"{name} vs {base_name}, {size:g} MiB through shared memory: "
            f"{fmt(cand['p50_ms'])} ms p50 vs {fmt(ref['p50_ms'])} ms "
            f"({_pct(cand['p50_ms'], ref['p50_ms'])})")
    if v == "better":
        return [Finding("win", text + f": {name} beats {base_name}.")]
    how = "is slower than" if v == "worse" else "does not clearly beat (ranges overlap)"
    return [Finding("loss" if v == "worse" else "tie", text + f": {name} {how} {base_name}.")]


def zero_copy(run: dict[str, Any], name: str) -> list[Finding]:
    """Shared memory against each copy path at the largest size both were measured."""
    out = []
    series = run.get("tensor_series") or {}
    if series.get("skipped"):
        return [Finding("info", f"{name}: large-tensor series skipped: {series['skipped']}.")]
    shm_errors = [p for p in series.get("points", []) if p["transport"] == "shm"
                  and p.get("error")]
    if shm_errors and largest_common(run, ("shm",)) is None:
        return [Finding("info", f"{name}: shared memory could not be used: "
                                f"{shm_errors[0]['error']}")]
    for other in ("rest_binary", "grpc", "rest_json"):
        size = largest_common(run, ("shm", other))
        if size is None:
            continue
        shm, cp = tensor_point(run, "shm", size), tensor_point(run, other, size)
        assert shm is not None and cp is not None
        label = {"rest_binary": "binary REST", "grpc": "gRPC", "rest_json": "JSON REST"}[other]
        ratio = cp["p50_ms"] / shm["p50_ms"] if shm["p50_ms"] else float("inf")
        text = (f"{name}, {size:g} MiB tensor: shared memory {fmt(shm['p50_ms'])} ms p50 vs "
                f"{label} {fmt(cp['p50_ms'])} ms p50")
        if ratio > 1:
            out.append(Finding("win", text + f": zero-copy is {fmt(ratio)}x faster."))
        else:
            out.append(Finding("loss", text + f": zero-copy does not beat {label} "
                                              f"({fmt(1 / ratio)}x slower)."))
    return out


def _mem_hogs(cont: dict[str, Any]) -> str:
    n = cont.get("memory_hogs")
    return f" and {n} memory hog{'s' if n != 1 else ''}" if n else ""


def contention_effect(run: dict[str, Any], name: str) -> list[Finding]:
    """How much the hogs cost each configuration's p99 in one run."""
    out = []
    index = bench_index(run)
    cont = run.get("contention") or {}
    for key, entry in sorted(index.items()):
        if key[3]:
            continue
        loaded = index.get((key[0], key[1], key[2], True))
        quiet_p99, busy_p99 = figure(entry, "p99_ms"), figure(loaded, "p99_ms")
        if quiet_p99 is None or busy_p99 is None:
            continue
        factor = busy_p99["median"] / quiet_p99["median"] if quiet_p99["median"] else 0
        out.append(Finding("info", f"{name}, {key_text(key)}: median p99 "
                                   f"{fmt(quiet_p99['median'])} ms quiet, "
                                   f"{fmt(busy_p99['median'])} ms with {cont.get('hogs')} "
                                   f"CPU hogs{_mem_hogs(cont)} ({cont.get('where')}): "
                                   f"x{factor:.2f}."))
    return out


def llm_contention_effect(run: dict[str, Any], name: str) -> list[Finding]:
    """What the hogs cost the LLM's p99 completion latency in one run."""
    llm = run.get("llm") or {}
    parts = {bool(p["contention"]): p["repetitions"] for p in llm.get("runs", [])}
    quiet = spread([r.get("p99_ms") for r in parts.get(False, [])])
    busy = spread([r.get("p99_ms") for r in parts.get(True, [])])
    if quiet is None or busy is None:
        return []
    factor = busy["median"] / quiet["median"] if quiet["median"] else 0
    return [Finding("info", f"{name}, LLM {llm.get('model')} over /v1/completions: median "
                            f"p99 {fmt(quiet['median'])} ms quiet, {fmt(busy['median'])} ms "
                            f"contended: x{factor:.2f}.")]
